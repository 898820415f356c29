"""The model of the user's own API behind the gateway (``spec.api.image``): its defaults, and the
errors of the rules that tell it from the bundled api role, each naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from cachedapi import contract, model

from ..conftest import EXAMPLES

IMAGE = "ghcr.io/example/catalog:1.4"
SECRET_REF = {"secretKeyRef": {"name": "tokens", "key": "t"}}


def _parse(spec: dict[str, Any]) -> model.CachedApi:
    return model.parse({"metadata": {"name": "shop"}, "spec": spec})


def _own(**spec: Any) -> dict[str, Any]:
    return {**spec, "api": {"image": IMAGE, **spec.get("api", {})}}


def test_an_own_image_needs_no_resources_nor_database_and_gets_documented_defaults() -> None:
    api = _parse(_own(database={"none": {}}))
    own = api.spec.api
    assert own.own_image and api.spec.resources == [] and api.spec.database.none is not None
    assert (own.port, own.probes.readinessPath, own.probes.livenessPath) == (8080, "/", "/")
    assert own.command is None and own.args is None and own.env == []
    assert (own.databaseUrlEnv, own.redisUrlEnv, own.forwardCredentials) == (None, None, False)
    assert api.spec.database.managed is None and api.spec.database.external is None
    # Left out, the database is managed, as with the bundled role.
    assert _parse(_own()).spec.database.managed is not None
    assert not model.load_manifest(EXAMPLES / "minimal.yaml")[0].spec.api.own_image


def test_the_example_declares_its_routes_and_env_by_reference() -> None:
    api = model.load_manifest(EXAMPLES / "custom-api.yaml")[0]
    assert api.spec.api.image == IMAGE and api.spec.api.databaseUrlEnv == "DATABASE_URL"
    assert [r.path for r in api.spec.cache.routes] == ["/v1/products/*", "/v1/cart/*", "/v1/status"]
    assert {v.name for v in api.spec.api.env if v.valueFrom is not None} == {"PAYMENTS_TOKEN", "FEATURE_FLAGS"}


def test_routes_map_one_to_one_onto_the_contract() -> None:
    route = model.CacheRoute(path="/v1/p/*", ttlSeconds=30, varyHeaders=["Accept-Language"], byCaller=True)
    assert route.to_contract() == contract.CacheRoute("/v1/p/*", 30, ("accept-language",), True)
    bare = model.CacheRoute(path="/v1/status").to_contract()
    assert bare == contract.CacheRoute("/v1/status") and bare.matches("/v1/status") and not bare.matches("/v1/s")
    assert route.to_contract().matches("/v1/p/42")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        # The bundled api role (no api.image) needs resources and a database, and takes no own-image field.
        ({}, "spec.resources: at least one resource is required (or api.image for your own API)"),
        ({"resources": []}, "spec.resources: at least one resource is required"),
        ({"resources": [{"name": "b"}], "database": {"none": {}}}, "spec.database.none: the bundled api role needs"),
        (
            {"resources": [{"name": "b"}], "cache": {"routes": [{"path": "/x"}]}},
            "spec.cache.routes: only with api.image",
        ),
        ({"resources": [{"name": "b"}], "api": {"env": [{"name": "A"}]}}, "spec.api.env: only with api.image"),
        (
            {"resources": [{"name": "b"}], "api": {"databaseUrlEnv": "DB"}},
            "spec.api.databaseUrlEnv: only with api.image",
        ),
        ({"resources": [{"name": "b"}], "api": {"command": ["x"]}}, "spec.api.command: only with api.image"),
        ({"resources": [{"name": "b"}], "api": {"forwardCredentials": True}}, "spec.api.forwardCredentials: only"),
        # The user's own API.
        (_own(database={"none": {}}, api={"databaseUrlEnv": "DB"}), "spec.api.databaseUrlEnv: there is no database"),
        (_own(database={"none": {}, "managed": {}}), "spec.database: exactly one of managed, external or none"),
        (_own(api={"image": ""}), "spec.api.image"),
        (_own(api={"image": "ghcr.io/x y"}), "spec.api.image"),
        (_own(api={"port": 0}), "spec.api.port"),
        (_own(api={"port": 70000}), "spec.api.port"),
        (_own(api={"probes": {"readinessPath": "ready"}}), "spec.api.probes.readinessPath"),
        (_own(api={"probes": {"livenessPath": "/live?x=1"}}), "spec.api.probes.livenessPath"),
        (_own(api={"databaseUrlEnv": "1DB"}), "spec.api.databaseUrlEnv"),
        (_own(api={"env": [{"name": "A=B"}]}), "spec.api.env[0].name"),
        (_own(api={"env": [{"name": "A", "value": "x", "valueFrom": SECRET_REF}]}), "spec.api.env[0]: set value or"),
        (_own(api={"env": [{"name": "A", "valueFrom": {}}]}), "spec.api.env[0].valueFrom: exactly one of"),
        (
            _own(
                api={"env": [{"name": "A", "valueFrom": {**SECRET_REF, "configMapKeyRef": {"name": "c", "key": "k"}}}]}
            ),
            "spec.api.env[0].valueFrom: exactly one of secretKeyRef or configMapKeyRef",
        ),
        (_own(api={"env": [{"name": "A"}, {"name": "A"}]}), "spec.api.env[1].name: 'A' is already env[0]"),
        (
            _own(api={"databaseUrlEnv": "DB", "env": [{"name": "DB"}]}),
            "spec.api.env[0].name: 'DB' is already databaseUrlEnv",
        ),
        (_own(api={"databaseUrlEnv": "U", "redisUrlEnv": "U"}), "spec.api.redisUrlEnv: 'U' is already databaseUrlEnv"),
        (_own(cache={"routes": [{"path": "v1/*"}]}), "spec.cache.routes[0].path"),
        (_own(cache={"routes": [{"path": "/v1/*/x"}]}), "spec.cache.routes[0].path"),
        (_own(cache={"routes": [{"path": "/a"}, {"path": "/a"}]}), "spec.cache.routes[1].path: '/a' is declared twice"),
        (
            _own(cache={"routes": [{"path": "/a", "ttlSeconds": model.MAX_SECONDS + 1}]}),
            "spec.cache.routes[0].ttlSeconds",
        ),
        (_own(cache={"routes": [{"path": "/a", "ttlSeconds": -1}]}), "spec.cache.routes[0].ttlSeconds"),
        (
            _own(cache={"routes": [{"path": "/a", "varyHeaders": ["Accept Language"]}]}),
            "spec.cache.routes[0].varyHeaders[0]",
        ),
        (_own(cache={"routes": [{"ttlSeconds": 5}]}), "spec.cache.routes[0].path: Field required"),
        (_own(cache={"redis": {"none": {}}}), "spec.cache.redis.none"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(model.ManifestError) as err:
        _parse(spec)
    assert message in str(err.value)


def test_the_operator_view_names_the_field_too() -> None:
    with pytest.raises(model.ManifestError, match=r"^spec\.api\.databaseUrlEnv: there is no database"):
        model.parse_spec(_own(database={"none": {}}, api={"databaseUrlEnv": "DB"}))
