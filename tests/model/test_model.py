"""The CachedApi model: defaults a user relies on, and errors that name the field."""

from __future__ import annotations

import pytest

from cachedapi import contract, model
from cachedapi.operator.children import config as x_config

from ..conftest import EXAMPLES


def _api(**spec: object) -> dict[str, object]:
    return {"metadata": {"name": "shop"}, "spec": {"resources": [{"name": "books"}], **spec}}


def test_minimal_manifest_gets_documented_defaults() -> None:
    api = model.load_manifest(EXAMPLES / "minimal.yaml")[0]
    assert api.metadata.namespace == "default"
    assert api.spec.gateway.replicas == 2 and api.spec.api.replicas == 3
    assert api.spec.gateway.auth.mode == "apiKey"
    assert api.spec.cache.redis.managed is not None and api.spec.database.managed is not None
    assert api.spec.resources[0].effective_ttl(api.spec.cache) == 60


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_loads(path: object) -> None:
    assert model.load_manifest(path)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"resources": [{"name": "books", "ttlSeconds": -1}]}, "spec.resources[0].ttlSeconds"),
        ({"resources": [{"name": "Books"}]}, "spec.resources[0].name"),
        ({"resources": [{"name": "a"}, {"name": "a"}]}, "declared twice"),
        ({"resources": []}, "spec.resources"),
        ({"gateway": {"auth": {"mode": "jwt"}}}, "spec.gateway.auth"),
        ({"gateway": {"rateLimit": {"by": "cookie"}}}, "spec.gateway.rateLimit.by"),
        ({"gateway": {"replicaz": 2}}, "spec.gateway.replicaz"),
        (
            {"database": {"managed": {}, "external": {"urlSecretRef": {"name": "pg", "key": "dsn"}}}},
            "spec.database",
        ),
        ({"resources": [{"name": "b", "schema": {"type": "object", "minProperties": -1}}]}, "spec.resources[0]"),
        ({"api": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}, "spec.api.autoscaling"),
    ],
)
def test_bad_spec_error_names_the_field(spec: dict[str, object], field: str) -> None:
    body = _api()
    body["spec"] = {**body["spec"], **spec}  # type: ignore[dict-item]
    with pytest.raises(model.ManifestError) as err:
        model.parse(body)
    assert field in str(err.value)


_SHELF = {"type": "object", "properties": {"year": {"type": "integer"}, "tags": {"type": "array"}}}


@pytest.mark.parametrize(
    ("indexes", "message"),
    [
        ([{"keys": ["author"]}], "spec.resources[0]: indexes[0].keys[0]: 'author' is not a top-level property"),
        ([{"keys": ["-year", "tags"]}], "indexes[0].keys[1]: 'tags' has no scalar type"),
        ([{"keys": ["year", "-year"]}], "indexes[0]: a property is named twice"),
        ([{"keys": ["year"]}, {"keys": ["year"]}], "indexes[1]: the same index is declared twice"),
        ([{"keys": ["year desc"]}], "spec.resources[0].indexes[0].keys[0]"),
        ([{"keys": []}], "spec.resources[0].indexes[0].keys"),
    ],
)
def test_a_bad_index_is_refused_naming_its_key(indexes: list[object], message: str) -> None:
    body = _api(resources=[{"name": "shelf", "schema": _SHELF, "indexes": indexes}])
    with pytest.raises(model.ManifestError) as err:
        model.parse(body)
    assert message in str(err.value)


def test_declared_indexes_reach_the_runtime_configuration() -> None:
    api = model.load_manifest(EXAMPLES / "bookstore.yaml")[0]
    cfg = contract.parse_config(x_config.render_config(api))
    assert cfg.resources["books"].indexes == (("author",), ("-year", "title"))
    assert cfg.resources["authors"].indexes == ()
    assert "indexes" not in x_config.render_config(api)["resources"][1]  # none declared: none rendered


def test_config_carries_effective_ttls_and_is_deterministic() -> None:
    api = model.load_manifest(EXAMPLES / "bookstore.yaml")[0]
    first = contract.dump_config(x_config.render_config(api))
    assert first == contract.dump_config(x_config.render_config(api))
    cfg = contract.parse_config(x_config.render_config(api))
    assert cfg.resources["books"].ttl_seconds == 300
    assert cfg.resources["orders"].ttl_seconds == 0 and not cfg.resources["orders"].cacheable
    assert cfg.resources["authors"].ttl_seconds == 60
    assert cfg.upstream_url == "http://bookstore-api.shop.svc:8081"


def test_cache_entry_round_trips_body_bytes_unchanged() -> None:
    body = b'{"id":"x","title":"Dune \xc3\xa9"}'
    raw = contract.encode_entry(
        stored_at_ms=123, ttl_seconds=60, status=200, etag='"v7"', content_type="application/json", body=body
    )
    entry = contract.decode_entry(raw)
    assert entry is not None and entry.body == body and entry.etag == '"v7"' and entry.ttl_seconds == 60
    assert contract.decode_entry(b"garbage") is None


def test_secret_settings_can_come_from_files(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "dsn"
    path.write_text("postgresql://u:p@db/x\n", encoding="utf-8")
    env = {contract.ENV_DATABASE_URL + contract.FILE_SUFFIX: str(path), contract.ENV_REDIS_URL: "redis://r"}
    resolved = contract.resolve_secret_files(env)
    assert resolved[contract.ENV_DATABASE_URL] == "postgresql://u:p@db/x"
    assert resolved[contract.ENV_REDIS_URL] == "redis://r"
    with pytest.raises(ValueError, match=contract.ENV_JWT_SECRET + contract.FILE_SUFFIX):
        contract.resolve_secret_files({contract.ENV_JWT_SECRET + contract.FILE_SUFFIX: str(path) + ".missing"})
