"""The OpenAPI 3.1 document of the api role, built once at start from the declared resources.

Each resource gets its own paths with its own JSON Schema: ``<name>`` is the
schema a client writes, ``<name>.item`` the representation read back (the same
schema with the server's ``id`` added), ``<name>.page`` a list page. ``$ref``s
inside a resource schema (``#/$defs/...``) are rewritten to point into its
component, so they resolve inside this document; ``<name>.listed`` is an item as a
page lists it (only ``id`` is required, since ``?fields=`` may leave out the rest). Every error is
``application/problem+json``; ETag, If-Match, If-None-Match and the cache
headers are documented on the operations that use them.
"""

from __future__ import annotations

import copy
from typing import Any

from cachedapi import contract, listquery
from cachedapi.runtime import problems
from cachedapi.runtime.api import documents, protocol

_PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"pointer": {"type": "string"}, "detail": {"type": "string"}},
            },
        },
    },
}
_REASONS = {
    304: "Not modified (If-None-Match matched)",
    400: "Bad request: invalid JSON, query parameter or id",
    404: "No such item",
    412: "Precondition failed (If-Match / If-None-Match)",
    413: "Body too large",
    415: "Unsupported Content-Type",
    422: "The body breaks the resource's schema; detail and errors name each field",
    500: "Unexpected error",
    503: "The database is unreachable",
    # Answered by the gateway, which is where clients reach this API:
    401: "Missing or invalid credentials (gateway)",
    429: "Over the rate limit (gateway); Retry-After says when to retry",
    431: "Too many or too large request headers",
    502: "The api role is unreachable (gateway)",
    504: "The api role did not answer in time (gateway)",
}
#: What every /v1 operation can meet on its way through the gateway.
_GATEWAY_CODES = (401, 429, 431, 502, 504)
_HEADER = {"schema": {"type": "string"}}
_CACHE_HEADERS = {
    "ETag": {"description": "Strong entity tag", **_HEADER},
    "X-Cache": {"description": "HIT, MISS, STALE or BYPASS", "schema": {"enum": ["HIT", "MISS", "STALE", "BYPASS"]}},
    "Age": {"description": "Seconds since the answer was read from the database", "schema": {"type": "integer"}},
    "Cache-Control": {
        "description": "max-age = seconds of freshness left; private (authenticated callers) or public "
        "(a resource declared public) says whether a shared cache may keep it; no-store: never cached",
        **_HEADER,
    },
}
_PARAMETERS = {
    "id": {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": documents.ID_PATTERN}},
    "If-Match": {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"}},
    "If-None-Match": {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
    "limit": {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": contract.MAX_PAGE_LIMIT},
    },
    "cursor": {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _rebase(schema: Any, base: str) -> Any:
    """Rewrite local ``$ref``s (``#/...``) to ``#/components/schemas/<base>/...``."""
    if isinstance(schema, dict):
        out = {k: _rebase(v, base) for k, v in schema.items()}
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            out["$ref"] = f"#/components/schemas/{base}{ref[1:]}"
        return out
    if isinstance(schema, list):
        return [_rebase(v, base) for v in schema]
    return schema


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _ref("responses", f"E{c}") for c in sorted({*codes, *_GATEWAY_CODES, 500})}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {contract.JSON: {"schema": schema}}


_LIST_SYNTAX = (
    "Filters on the schema's top-level properties of scalar type, read as that type: `?author=Frank%20Herbert` "
    "(or `author[eq]=`), `?year[gt]=1960` (also `[gte]`, `[lt]`, `[lte]`, `[ne]`), `?year[in]=1965,1969` "
    '(or a JSON array, `?author[in]=["Le Guin, Ursula","Herbert"]`); `null` is JSON null where the type allows '
    "it, and an absent property compares as null; comparisons match values of their own type only. "
    "`?sort=-year,title` (`-` descending; ties in creation order), `?fields=title,year` (`id` always comes), "
    "`limit`, and `cursor` (the `nextCursor` of the previous page, with the same filters and sort). "
    "An unknown parameter, an undeclared property or a value of the wrong type answers 400 naming it."
)


def _list_parameters(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """``limit``, ``cursor``, ``sort``, ``fields`` and one parameter per filter a property allows."""
    props = listquery.properties(schema)
    usable = sorted(n for n, p in props.items() if p.types)
    names = "|".join(usable) or "id"
    out: list[dict[str, Any]] = [_ref("parameters", "limit"), _ref("parameters", "cursor")]
    if usable:
        out.append(
            {
                "name": "sort",
                "in": "query",
                "required": False,
                "description": "Sort keys, `-` for descending; ties in creation order",
                "schema": {"type": "string", "pattern": f"^-?({names})(,-?({names}))*$"},
                "example": ",".join(usable[:2]),
            }
        )
    every = "|".join(["id", *sorted(props)])
    out.append(
        {
            "name": "fields",
            "in": "query",
            "required": False,
            "description": "The properties to return (`id` always comes)",
            "schema": {"type": "string", "pattern": f"^({every})(,({every}))*$"},
        }
    )
    for name in usable:
        prop = props[name]
        typed = {"type": sorted(prop.types)}
        for op in listquery.OPERATORS:
            if op in listquery.RANGE_OPERATORS and not prop.comparable:
                continue
            param = name if op == "eq" else f"{name}[{op}]"
            described = {
                "eq": f"{name} equals this",
                "ne": f"{name} differs from this (or is absent)",
                "gt": f"{name} is greater than this",
                "gte": f"{name} is at least this",
                "lt": f"{name} is less than this",
                "lte": f"{name} is at most this",
                "in": f"{name} is one of these: comma-separated, or a JSON array",
            }[op]
            schema_of = {"type": "string"} if op == "in" else typed
            out.append({"name": param, "in": "query", "required": False, "description": described, "schema": schema_of})
    return out


def _resource_paths(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    item, page = _ref("schemas", f"{name}.item"), _ref("schemas", f"{name}.page")
    body = {"required": True, "content": _json(_ref("schemas", name))}
    item_ok: dict[str, Any] = {
        "description": f"The {name} item",
        "headers": {"ETag": _CACHE_HEADERS["ETag"]},
        "content": _json(item),
    }
    created = {**item_ok, "headers": {**item_ok["headers"], "Location": {"description": "The item's URL", **_HEADER}}}
    ids = [_ref("parameters", "id")]
    writes = [*ids, _ref("parameters", "If-Match"), _ref("parameters", "If-None-Match")]
    tag = [name]
    return {
        f"/v1/{name}": {
            "get": {
                "tags": tag,
                "operationId": f"list_{name}",
                "summary": f"A page of {name}: filtered, sorted and with the fields asked for",
                "description": _LIST_SYNTAX,
                "parameters": _list_parameters(schema),
                "responses": {
                    "200": {"description": "A page", "headers": _CACHE_HEADERS, "content": _json(page)},
                    **_errors(400, 503),
                },
            },
            "post": {
                "tags": tag,
                "operationId": f"create_{name}",
                "summary": f"Create a {name} item (the server assigns its id)",
                "requestBody": body,
                "responses": {"201": created, **_errors(400, 413, 415, 422, 503)},
            },
        },
        f"/v1/{name}/{{id}}": {
            "get": {
                "tags": tag,
                "operationId": f"get_{name}",
                "parameters": [*ids, _ref("parameters", "If-None-Match")],
                "responses": {
                    "200": {**item_ok, "headers": _CACHE_HEADERS},
                    "304": {"description": _REASONS[304]},
                    **_errors(404, 503),
                },
            },
            "put": {
                "tags": tag,
                "operationId": f"put_{name}",
                "summary": "Create or replace; a body 'id' must equal the path's",
                "parameters": writes,
                "requestBody": body,
                "responses": {"200": item_ok, "201": created, **_errors(400, 412, 413, 415, 422, 503)},
            },
            "patch": {
                "tags": tag,
                "operationId": f"patch_{name}",
                "summary": "JSON merge patch (RFC 7396); null removes a member",
                "parameters": writes,
                "requestBody": {
                    "required": True,
                    "content": {protocol.MERGE_PATCH: {"schema": {"type": "object"}}, **_json({"type": "object"})},
                },
                "responses": {"200": item_ok, **_errors(400, 404, 412, 413, 415, 422, 503)},
            },
            "delete": {
                "tags": tag,
                "operationId": f"delete_{name}",
                "parameters": writes,
                "responses": {"204": {"description": "Deleted"}, **_errors(404, 412, 503)},
            },
        },
    }


def _item_schema(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = copy.deepcopy(_rebase(schema, name))
    item["properties"] = {"id": {"type": "string", "readOnly": True}, **item.get("properties", {})}
    item["required"] = ["id", *[r for r in item.get("required", []) if r != "id"]]
    return item


def _service_paths() -> dict[str, Any]:
    text = {"text/plain": {"schema": {"type": "string"}}}
    status = _json({"type": "object"})
    return {
        "/healthz": {
            "get": {"operationId": "healthz", "responses": {"200": {"description": "Alive", "content": status}}}
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "responses": {
                    "200": {"description": "PostgreSQL reachable (Redis may be degraded)", "content": status},
                    "503": {"description": "PostgreSQL unreachable", "content": status},
                },
            }
        },
        "/metrics": {
            "get": {"operationId": "metrics", "responses": {"200": {"description": "Prometheus", "content": text}}}
        },
    }


def build(config: contract.RuntimeConfig) -> dict[str, Any]:
    schemas: dict[str, Any] = {"Problem": _PROBLEM}
    paths: dict[str, Any] = {}
    for name, res in sorted(config.resources.items()):
        schemas[name] = _rebase(res.schema, name)
        schemas[f"{name}.item"] = _item_schema(name, res.schema)
        # As listed: every property, or only the ones ``?fields=`` names (``id`` always).
        schemas[f"{name}.listed"] = {**schemas[f"{name}.item"], "required": ["id"]}
        schemas[f"{name}.page"] = {
            "type": "object",
            "required": ["items", "nextCursor"],
            "properties": {
                "items": {"type": "array", "items": _ref("schemas", f"{name}.listed")},
                "nextCursor": {"type": ["string", "null"]},
            },
        }
        paths.update(_resource_paths(name, res.schema))
    paths.update(_service_paths())
    problem = {problems.CONTENT_TYPE: {"schema": _ref("schemas", "Problem")}}
    responses = {
        f"E{code}": {"description": text, "content": problem} for code, text in _REASONS.items() if code != 304
    }
    responses["E503"]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    responses["E429"]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    responses["E401"]["headers"] = {"WWW-Authenticate": _HEADER}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": f"{config.name} API", "version": "v1", "description": "Served by the CachedApi api role."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "parameters": _PARAMETERS,
            "securitySchemes": _SECURITY_SCHEMES,
        },
    }
    security = _SECURITY.get(config.auth_mode)
    if security:
        for path, operations in paths.items():
            if path.startswith("/v1/"):
                for operation in operations.values():
                    operation["security"] = security
    return document


_SECURITY_SCHEMES = {
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "apiKeyBearer": {"type": "http", "scheme": "bearer", "description": "The API key as a bearer token"},
    "jwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
}
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "apiKey": [{"apiKeyHeader": []}, {"apiKeyBearer": []}],
    "jwt": [{"jwt": []}],
}
