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


def api_service_url(api: model.CachedApi) -> str:
    return f"http://{api.metadata.name}-api.{api.metadata.namespace}.svc:{contract.API_PORT}"


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
        "resources": [
            {"name": r.name, "ttlSeconds": r.effective_ttl(spec.cache), "schema": r.schema_} for r in spec.resources
        ],
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
