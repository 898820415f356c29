"""The x-config ConfigMap: the runtime configuration rendered from a CachedApi.

``contract`` says what the configuration file holds and how the runtime reads it
(``contract.parse_config``); this is the operator's side, which writes it from the
model, so that the runtime never loads the model (pydantic, jsonschema, yaml).

A ConfigMap holds at most 1 MiB, and the configuration carries every resource's
JSON Schema: a CachedApi the API server stores (up to about 1.5 MB) can render a
configuration it would refuse. ``too_large`` says so before anything is built.
"""

from __future__ import annotations

from typing import Any

from cachedapi import contract, model
from cachedapi.operator.children import inputs, names


def key_prefix(api: model.CachedApi) -> str:
    """Every Redis key of one CachedApi starts with this, so that two share a Redis safely."""
    return f"ca:{api.metadata.namespace}:{api.metadata.name}"


def api_port(api: model.CachedApi) -> int:
    """The api tier's port: the bundled api role's, or the one the user's own API listens on."""
    return api.spec.api.port if api.spec.api.own_image else contract.API_PORT


def api_service_url(api: model.CachedApi) -> str:
    return f"http://{api.metadata.name}-api.{api.metadata.namespace}.svc:{api_port(api)}"


def _route(route: model.CacheRoute) -> dict[str, Any]:
    """One ``spec.cache.routes`` entry as ``contract.parse_config`` reads it into a ``contract.CacheRoute``."""
    out: dict[str, Any] = {"path": route.path, "varyHeaders": [h.lower() for h in route.varyHeaders]}
    if route.ttlSeconds is not None:
        out["ttlSeconds"] = route.ttlSeconds
    return out | {"byCaller": route.byCaller}


def _own_api(api: model.CachedApi) -> dict[str, Any]:
    """What the gateway needs to front the user's own API (``spec.api.image``); nothing for the
    bundled api role, so that its configuration, and so its pods, stay as they were."""
    if not api.spec.api.own_image:
        return {}
    return {
        "upstream": {"mode": contract.UPSTREAM_HTTP, "forwardCredentials": api.spec.api.forwardCredentials},
        "cacheRoutes": [_route(r) for r in api.spec.cache.routes],
    }


#: ``spec.gateway.timeouts`` and ``.capacity`` as rendered when left at their defaults.
_DEFAULT_CLIENTS = {
    "requestHeaderSeconds": contract.DEFAULT_REQUEST_HEADER_SECONDS,
    "requestBodySeconds": contract.DEFAULT_REQUEST_BODY_SECONDS,
    "maxConnections": contract.DEFAULT_MAX_CONNECTIONS,
    "maxForwardsPerClient": contract.DEFAULT_MAX_FORWARDS_PER_CLIENT,
}


def render_config(api: model.CachedApi, *, upstream_url: str | None = None) -> dict[str, Any]:
    """The runtime configuration for a CachedApi: what x-config holds, as plain JSON data.

    Pure and deterministic (keys sorted when dumped), so that its hash can roll pods.
    """
    spec = api.spec
    auth = spec.gateway.auth
    jwt = None
    if auth.mode == "jwt" and auth.jwt is not None:
        jwt = {
            "issuer": auth.jwt.issuer,
            "audience": auth.jwt.audience,
            "jwksUrl": auth.jwt.jwksUrl,
            "usesSecret": auth.jwt.secretRef is not None,
        }
    timeouts, capacity = spec.gateway.timeouts, spec.gateway.capacity
    clients = {
        "requestHeaderSeconds": timeouts.requestHeaderSeconds,
        "requestBodySeconds": timeouts.requestBodySeconds,
        "maxConnections": capacity.maxConnections,
        "maxForwardsPerClient": capacity.maxForwardsPerClient,
    }
    return {
        "version": contract.CONFIG_VERSION,
        "name": api.metadata.name,
        "namespace": api.metadata.namespace,
        "keyPrefix": key_prefix(api),
        "upstreamUrl": upstream_url or api_service_url(api),
        "cache": {
            "staleWhileRevalidateSeconds": spec.cache.staleWhileRevalidateSeconds,
            "staleIfErrorSeconds": spec.cache.staleIfErrorSeconds,
        },
        "auth": {"mode": auth.mode, "jwt": jwt},
        "rateLimit": {
            "requestsPerSecond": spec.gateway.rateLimit.requestsPerSecond,
            "burst": spec.gateway.rateLimit.burst,
            "by": spec.gateway.rateLimit.by,
        },
        # only when not the defaults (which the runtime reads as absent), so that adding the
        # fields rolled no existing deployment
        **({"clients": clients} if clients != _DEFAULT_CLIENTS else {}),
        "resources": [
            {"name": r.name, "ttlSeconds": r.effective_ttl(spec.cache), "schema": r.schema_}
            # only when declared, so that adding the field rolled no existing deployment
            | ({"indexes": [list(ix.keys) for ix in r.indexes]} if r.indexes else {})
            | ({"public": True} if r.public else {})
            for r in spec.resources
        ],
        **_own_api(api),
    }


def runtime_config(api: model.CachedApi, *, upstream_url: str | None = None) -> contract.RuntimeConfig:
    """The configuration a runtime role gets for ``api``, as the role reads it (``cachedapi dev``, tests)."""
    return contract.parse_config(render_config(api, upstream_url=upstream_url))


def text(api: model.CachedApi) -> str:
    return contract.dump_config(render_config(api))


#: The most data a ConfigMap may hold (the API server refuses more).
MAX_BYTES = 1024 * 1024


def too_large(api: model.CachedApi) -> str | None:
    """Why this CachedApi's configuration cannot be a ConfigMap, naming the field; None when it fits."""
    size = len(text(api).encode()) + len(contract.CONFIG_FILE)
    if size <= MAX_BYTES:
        return None
    return (
        f"spec.resources: the runtime configuration rendered from the resources and their schemas is "
        f"{size} bytes, over the {MAX_BYTES} a ConfigMap holds; make the schemas smaller or split the API"
    )


def config_map(api: model.CachedApi, inp: inputs.Inputs) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": names.metadata(api, name=names.config_map(api), component="config", uid=inp.owner_uid),
        "data": {contract.CONFIG_FILE: text(api)},
    }
