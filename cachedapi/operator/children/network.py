"""NetworkPolicies: the only paths are client -> gateway, gateway -> api, api -> db,
gateway/api -> redis, and DNS.

A server the operator does not run (an external Redis or PostgreSQL, a JWKS
URL) has an address no policy can know in advance, so a tier that talks to
one may reach any address on egress; everything else is closed.

The api tier's port is the bundled api role's, or ``spec.api.port`` for the user's own API,
which gets the same egress as the api role: DNS, the managed Redis and PostgreSQL. Policies
add up, so a user's API that calls other services is let out by a NetworkPolicy of the
user's own that selects the api pods.
"""

from __future__ import annotations

from typing import Any

from cachedapi import contract, model
from cachedapi.operator.children import config, inputs, names

GATEWAY, API, REDIS, DB = (role.value for role in names.Component)


def _dns() -> dict[str, Any]:
    return {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}


def _anywhere() -> dict[str, Any]:
    return {}


def _from(api: model.CachedApi, *components: str) -> list[dict[str, Any]]:
    return [{"podSelector": {"matchLabels": names.selector(api, c)}} for c in components]


def _to(api: model.CachedApi, component: str, *, port: int) -> dict[str, Any]:
    return {"to": _from(api, component), "ports": [{"protocol": "TCP", "port": port}]}


def _policy(
    api: model.CachedApi, inp: inputs.Inputs, *, component: str, ingress: list[Any], egress: list[Any]
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": names.selector(api, component)},
        "policyTypes": ["Ingress", "Egress"],
    }
    # No rules for a direction means nothing is allowed that way (policyTypes names both). An
    # empty list is left out rather than written: the API server drops it, as it drops every
    # empty optional list, and the object would then look edited by hand on every pass.
    if ingress:
        spec["ingress"] = ingress
    if egress:
        spec["egress"] = egress
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": names.metadata(api, name=names.child(api, component), component=component, uid=inp.owner_uid),
        "spec": spec,
    }


def policies(api: model.CachedApi, inp: inputs.Inputs) -> list[dict[str, Any]]:
    spec = api.spec
    redis_managed = spec.cache.redis.managed is not None
    db_managed = spec.database.managed is not None
    db_external = spec.database.external is not None  # neither: no database (database.none)
    api_port = config.api_port(api)  # the bundled api role's, or the user's own API's
    jwt = spec.gateway.auth.jwt
    fetches_jwks = spec.gateway.auth.mode == "jwt" and jwt is not None and jwt.jwksUrl is not None

    gateway_egress: list[Any] = [_dns(), _to(api, API, port=api_port)]
    api_egress: list[Any] = [_dns()]
    if redis_managed:
        gateway_egress.append(_to(api, REDIS, port=contract.REDIS_PORT))
        api_egress.append(_to(api, REDIS, port=contract.REDIS_PORT))
    if db_managed:
        api_egress.append(_to(api, DB, port=contract.POSTGRES_PORT))
    if not redis_managed or fetches_jwks:
        gateway_egress.append(_anywhere())
    if not redis_managed or db_external:
        api_egress.append(_anywhere())

    gateway_port = {"ports": [{"protocol": "TCP", "port": contract.GATEWAY_PORT}]}
    out = [
        _policy(api, inp, component=GATEWAY, ingress=[gateway_port], egress=gateway_egress),
        _policy(
            api,
            inp,
            component=API,
            ingress=[{"from": _from(api, GATEWAY), "ports": [{"protocol": "TCP", "port": api_port}]}],
            egress=api_egress,
        ),
    ]
    if redis_managed:
        redis_in = {"from": _from(api, GATEWAY, API), "ports": [{"protocol": "TCP", "port": contract.REDIS_PORT}]}
        out.append(_policy(api, inp, component=REDIS, ingress=[redis_in], egress=[]))
    if db_managed:
        db_in = {"from": _from(api, API), "ports": [{"protocol": "TCP", "port": contract.POSTGRES_PORT}]}
        out.append(_policy(api, inp, component=DB, ingress=[db_in], egress=[]))
    return out
