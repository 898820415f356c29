"""The user's own API behind the gateway (``spec.api.image``): what the operator renders for it,
and that the bundled api role's objects are exactly what they were (so nothing rolls)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import kubernetes_validate
import pytest

from cachedapi import contract, model
from cachedapi.operator import children, render, status
from cachedapi.operator.children import config, names, ownapi, secrets

from ..conftest import EXAMPLES
from . import podspec
from .bookstore import BOOKSTORE_CHILDREN

K8S_VERSION = kubernetes_validate.latest_version()
IMAGE = "ghcr.io/example/catalog:1.4"

#: What examples/custom-api.yaml must become.
CATALOG_CHILDREN = {
    ("Secret", "catalog-db-credentials"),
    ("Secret", "catalog-api-keys"),
    ("Secret", "catalog-admin-key"),
    ("ConfigMap", "catalog-config"),
    ("Service", "catalog-db"),
    ("StatefulSet", "catalog-db"),
    ("Service", "catalog-redis"),
    ("Deployment", "catalog-redis"),
    ("Service", "catalog-api"),
    ("Deployment", "catalog-api"),
    ("PodDisruptionBudget", "catalog-api"),
    ("Service", "catalog-gateway"),
    ("Deployment", "catalog-gateway"),
    ("PodDisruptionBudget", "catalog-gateway"),
    ("NetworkPolicy", "catalog-gateway"),
    ("NetworkPolicy", "catalog-api"),
    ("NetworkPolicy", "catalog-redis"),
    ("NetworkPolicy", "catalog-db"),
}

#: examples/bookstore.yaml's configuration and its runtime pods' config-hash (with ``cachedapi
#: render``'s placeholders), as they were before the any-upstream fields: a change of any of them
#: rolls every bundled deployment there is, so it must be deliberate, never a side effect.
BOOKSTORE_CONFIG_SHA256 = "6446092b2b12241d61988fa14990786686c2840b2283440709216fa4f2e292ba"
BOOKSTORE_POD_HASHES = {
    "bookstore-api": "20b7283ce29631442d445f059afb7e22",
    "bookstore-gateway": "4fcf15c018803f602d09550c7de67742",
}


def _own(**spec: Any) -> model.CachedApi:
    api = {"image": IMAGE, **spec.pop("api", {})}
    return model.parse({"metadata": {"name": "shop", "namespace": "ns"}, "spec": {"api": api, **spec}})


def _objects(api: model.CachedApi, **digests: str) -> dict[tuple[str, str], dict[str, Any]]:
    inputs = children.Inputs(
        owner_uid="uid-1", api_key="k", db_password="p", admin_key="admin-secret", secret_digests=digests
    )
    return {(o["kind"], o["metadata"]["name"]): o for o in children.desired_objects(api, inputs)}


def _pod(objects: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, Any]:
    pod: dict[str, Any] = objects[("Deployment", name)]["spec"]["template"]["spec"]
    return pod


def _hash(objects: dict[tuple[str, str], dict[str, Any]], name: str) -> str:
    return str(
        objects[("Deployment", name)]["spec"]["template"]["metadata"]["annotations"][names.CONFIG_HASH_ANNOTATION]
    )


def _catalog() -> model.CachedApi:
    return model.load_manifest(EXAMPLES / "custom-api.yaml")[0]


# --- the bundled api role: nothing new ------------------------------------------------------------


def test_the_bundled_configuration_and_pods_are_byte_for_byte_what_they_were(bookstore: model.CachedApi) -> None:
    text = config.text(bookstore)
    assert hashlib.sha256(text.encode()).hexdigest() == BOOKSTORE_CONFIG_SHA256, text
    assert not {"upstream", "cacheRoutes"} & set(json.loads(text))
    assert contract.parse_config(json.loads(text)).upstream_mode == contract.UPSTREAM_BUNDLED
    objects = {
        (o["kind"], o["metadata"]["name"]): o
        for o in children.desired_objects(bookstore, render.render_inputs(bookstore))
    }
    assert set(objects) == BOOKSTORE_CHILDREN  # no admin key Secret
    assert {name: _hash(objects, name) for name in BOOKSTORE_POD_HASHES} == BOOKSTORE_POD_HASHES
    gateway_env = {e["name"] for e in _pod(objects, "bookstore-gateway")["containers"][0]["env"]}
    assert contract.ENV_ADMIN_KEY + contract.FILE_SUFFIX not in gateway_env
    assert names.admin_key_secret(bookstore) is None


# --- the example ------------------------------------------------------------------------------


def test_the_example_renders_every_child_valid_for_kubernetes() -> None:
    api = _catalog()
    rendered = children.desired_objects(api, render.render_inputs(api))
    for obj in rendered:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    found = [(o["kind"], o["metadata"]["name"]) for o in rendered]
    assert set(found) == CATALOG_CHILDREN and len(found) == len(set(found))
    text = render.render_text([api])
    assert render.PLACEHOLDER_ADMIN_KEY in text.split("---")[0], "the header says the admin key is a placeholder"


# --- the api pods ------------------------------------------------------------------------------


def test_the_api_pod_runs_the_users_image_restricted_and_probed_on_the_users_paths() -> None:
    api = _own(
        api={
            "port": 9000,
            "command": ["/app/serve"],
            "args": ["--port", "9000"],
            "probes": {"readinessPath": "/ready", "livenessPath": "/live"},
            "resources": {"requests": {"cpu": "250m"}},
        },
        database={"none": {}},
    )
    objects = _objects(api)
    for obj in objects.values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    pod = _pod(objects, "shop-api")
    (container,) = pod["containers"]
    assert (container["image"], container["command"], container["args"]) == (IMAGE, ["/app/serve"], ["--port", "9000"])
    assert container["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    # The restricted Pod Security Standard, and a writable /tmp under the read-only root filesystem.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert objects[("Deployment", "shop-api")]["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    # HTTP probes on the user's paths, on the user's port (by name).
    probes = {kind: container[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"] == {"path": "/ready", "port": "http", "scheme": "HTTP"}
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/live"
    # The user's resources, with a memory request and limit when they give none.
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
    # Nothing of the bundled role: no configuration, no secret files, no environment (none asked for).
    assert "env" not in container
    assert not [v for v in pod["volumes"] if "configMap" in v or "secret" in v]


def test_probes_default_to_the_root_path_and_the_port_to_8080() -> None:
    container = _pod(_objects(_own()), "shop-api")["containers"][0]
    assert container["ports"][0]["containerPort"] == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == container["livenessProbe"]["httpGet"]["path"] == "/"
    assert "command" not in container and "args" not in container  # the image's own


def test_what_the_api_server_would_drop_is_not_written_so_the_pods_never_look_edited() -> None:
    api = _own(api={"command": [], "args": [], "env": [{"name": "EMPTY", "value": ""}]})
    container = _pod(_objects(api), "shop-api")["containers"][0]
    assert "command" not in container and "args" not in container
    assert container["env"] == [{"name": "EMPTY"}]


def test_database_and_redis_urls_are_handed_by_reference_to_the_secrets_that_hold_them() -> None:
    env_names = {"databaseUrlEnv": "DATABASE_URL", "redisUrlEnv": "REDIS_URL"}
    user_env = [{"name": "MODE", "value": "prod"}, {"name": "DSN", "value": "$(DATABASE_URL)?sslmode=require"}]
    # The managed database: the generated Secret's url key (which it has), the managed Redis's URL as a value.
    objects = _objects(_own(api={**env_names, "env": user_env}))
    env = _pod(objects, "shop-api")["containers"][0]["env"]
    assert [e["name"] for e in env] == ["DATABASE_URL", "REDIS_URL", "MODE", "DSN"], "handed first, for $(...)"
    assert env[0] == {
        "name": "DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "shop-db-credentials", "key": "url"}},
    }
    assert env[1] == {"name": "REDIS_URL", "value": "redis://shop-redis.ns.svc:6379/0"}
    generated = objects[("Secret", "shop-db-credentials")]["data"]
    assert base64.b64decode(generated[secrets.DB_URL_KEY]).decode().startswith("postgresql://cachedapi:p@shop-db.")
    # External stores: the user's own Secrets, by reference.
    external = _own(
        api=env_names,
        database={"external": {"urlSecretRef": {"name": "my-pg", "key": "dsn"}}},
        cache={"redis": {"external": {"urlSecretRef": {"name": "my-redis", "key": "url"}}}},
    )
    env = _pod(_objects(external), "shop-api")["containers"][0]["env"]
    assert env == [
        {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "my-pg", "key": "dsn"}}},
        {"name": "REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "my-redis", "key": "url"}}},
    ]
    # Not named: not passed.
    assert "env" not in _pod(_objects(_own()), "shop-api")["containers"][0]


def test_no_secret_value_is_ever_in_the_api_pod_spec() -> None:
    api = _own(
        api={
            "databaseUrlEnv": "DATABASE_URL",
            "env": [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tokens", "key": "payments"}}},
                {"name": "FLAGS", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "flags"}}},
            ],
        }
    )
    values = {"api_key": "key-0123456789", "db_password": "password-0123456789", "admin_key": "admin-0123456789"}
    inputs = children.Inputs(owner_uid="uid-1", **values)
    objects = {(o["kind"], o["metadata"]["name"]): o for o in children.desired_objects(api, inputs)}
    text = json.dumps([obj for (kind, _), obj in objects.items() if kind != "Secret"])
    for value in values.values():
        assert value not in text and base64.b64encode(value.encode()).decode() not in text
    env = {e["name"]: e for e in _pod(objects, "shop-api")["containers"][0]["env"]}
    assert env["TOKEN"] == {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tokens", "key": "payments"}}}
    assert env["FLAGS"]["valueFrom"] == {"configMapKeyRef": {"name": "settings", "key": "flags"}}


def test_the_api_pods_roll_when_a_secret_they_read_changes_not_when_a_caching_rule_does() -> None:
    api = _own(
        api={
            "databaseUrlEnv": "DB",
            "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "tokens", "key": "t"}}}],
        }
    )
    assert ownapi.read_secrets(api) == ["shop-db-credentials", "tokens"]
    base = {"shop-db-credentials": "1", "shop-api-keys": "1", "shop-admin-key": "1", "tokens": "a"}
    before = _objects(api, **base)
    token_changed = _objects(api, **{**base, "tokens": "b"})
    assert _hash(before, "shop-api") != _hash(token_changed, "shop-api")
    assert _hash(before, "shop-gateway") == _hash(token_changed, "shop-gateway")
    routed = _objects(_own(api=api.spec.api.model_dump(exclude_none=True), cache={"routes": [{"path": "/x"}]}), **base)
    assert _hash(before, "shop-api") == _hash(routed, "shop-api")
    assert _hash(before, "shop-gateway") != _hash(routed, "shop-gateway")
    # A new image or env is a new pod template anyway.
    assert _pod(before, "shop-api") != _pod(_objects(_own(api={"image": IMAGE + "-2"}), **base), "shop-api")


def test_the_secrets_of_the_api_env_are_looked_up_and_a_missing_one_names_its_field() -> None:
    api = _own(
        api={
            "env": [
                {"name": "A", "value": "x"},
                {"name": "T", "valueFrom": {"secretKeyRef": {"name": "tokens", "key": "payments"}}},
                {"name": "F", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "flags"}}},
            ]
        }
    )
    assert secrets.referenced(api) == {"tokens": "spec.api.env[1].valueFrom.secretKeyRef"}
    assert secrets.required_keys(api) == {("tokens", "payments"): "spec.api.env[1].valueFrom.secretKeyRef"}


# --- the gateway in front of it ---------------------------------------------------------------


def test_the_configuration_fronts_the_api_service_on_the_users_port_with_the_routes() -> None:
    routes = [
        {"path": "/v1/products/*", "ttlSeconds": 300, "varyHeaders": ["Accept-Language"]},
        {"path": "/v1/cart/*", "byCaller": True},
        {"path": "/v1/status", "ttlSeconds": 0},
    ]
    api = _own(api={"port": 9000, "forwardCredentials": True}, cache={"routes": routes})
    objects = _objects(api)
    data = json.loads(objects[("ConfigMap", "shop-config")]["data"][contract.CONFIG_FILE])
    assert data["upstream"] == {"mode": contract.UPSTREAM_HTTP, "forwardCredentials": True}
    cfg = contract.parse_config(data)
    assert cfg.upstream_mode == contract.UPSTREAM_HTTP and cfg.forward_credentials is True
    assert cfg.upstream_url == "http://shop-api.ns.svc:9000"
    # spec.cache.routes map one to one, in order, onto contract.CacheRoute.
    assert cfg.cache_routes == tuple(r.to_contract() for r in api.spec.cache.routes)
    assert cfg.cache_routes == (
        contract.CacheRoute("/v1/products/*", 300, ("accept-language",), False),
        contract.CacheRoute("/v1/cart/*", None, (), True),
        contract.CacheRoute("/v1/status", 0, (), False),
    )
    assert cfg.resources == {}
    service = objects[("Service", "shop-api")]["spec"]
    assert service["ports"] == [{"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"}]
    # Without routes, still an HTTP upstream; credentials not forwarded unless asked.
    plain = contract.parse_config(config.render_config(_own()))
    assert (plain.upstream_mode, plain.cache_routes, plain.forward_credentials) == (contract.UPSTREAM_HTTP, (), False)


def test_the_admin_key_is_generated_once_and_mounted_into_the_gateway_only() -> None:
    objects = _objects(_own())
    secret = objects[("Secret", "shop-admin-key")]
    assert base64.b64decode(secret["data"][secrets.ADMIN_KEY_KEY]) == b"admin-secret"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    gateway = _pod(objects, "shop-gateway")
    assert podspec.secret_source(gateway, contract.ENV_ADMIN_KEY) == ("shop-admin-key", secrets.ADMIN_KEY_KEY)
    env = {e["name"]: e for e in gateway["containers"][0]["env"]}
    assert env[contract.ENV_ADMIN_KEY + contract.FILE_SUFFIX]["value"] == contract.secret_file_path(
        contract.ENV_ADMIN_KEY
    )
    assert "shop-admin-key" not in json.dumps(_pod(objects, "shop-api"))
    # A rotated admin key rolls the gateway.
    rotated = _objects(_own(), **{"shop-admin-key": "new"})
    assert _hash(objects, "shop-gateway") != _hash(rotated, "shop-gateway")


def _component(peer: dict[str, Any]) -> str:
    return str(peer["podSelector"]["matchLabels"][names.LABEL_COMPONENT])


def test_network_policies_open_the_users_port_and_the_stores_as_for_the_api_role() -> None:
    objects = _objects(_own(api={"port": 9000}))
    gateway = objects[("NetworkPolicy", "shop-gateway")]["spec"]
    api_policy = objects[("NetworkPolicy", "shop-api")]["spec"]
    to_api = [r for r in gateway["egress"] if "to" in r and _component(r["to"][0]) == "api"]
    assert [r["ports"] for r in to_api] == [[{"protocol": "TCP", "port": 9000}]]
    assert api_policy["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 9000}]
    egress_to = sorted(_component(r["to"][0]) for r in api_policy["egress"] if "to" in r)
    assert egress_to == ["db", "redis"] and {} not in api_policy["egress"]


def test_no_database_makes_no_postgresql_and_opens_nothing_for_one() -> None:
    api = _own(database={"none": {}})
    objects = _objects(api)
    assert not [key for key in objects if key[1] in {"shop-db", "shop-db-credentials"}]
    api_policy = objects[("NetworkPolicy", "shop-api")]["spec"]
    assert {} not in api_policy["egress"], "no database is not an external one: no open egress"
    egress_to = [
        r["to"][0]["podSelector"]["matchLabels"][names.LABEL_COMPONENT] for r in api_policy["egress"] if "to" in r
    ]
    assert egress_to == ["redis"]
    # Ready without one: DatabaseReady says there is none; the status names the admin key Secret.
    workloads = {
        role: status.observe(role=role, kind="Deployment", live=_available(), desired=2, touched=False)
        for role in (names.Component.GATEWAY, names.Component.API, names.Component.REDIS)
    }
    st = status.compute(
        api=api, old={}, workloads=workloads, generation=1, api_keys_secret="shop-api-keys", now="2026-01-01T00:00:00Z"
    )
    conditions = {c["type"]: c for c in st["conditions"]}
    assert conditions["DatabaseReady"]["status"] == "True" and conditions["DatabaseReady"]["reason"] == "NoDatabase"
    assert st["phase"] == "Ready" and st["adminKeySecret"] == "shop-admin-key"


def _available() -> dict[str, Any]:
    counts = {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2}
    return {"metadata": {"generation": 1}, "spec": {"replicas": 2}, "status": counts}


def test_replicas_autoscaling_and_disruption_budget_as_for_the_api_role() -> None:
    scaled = _own(api={"autoscaling": {"minReplicas": 2, "maxReplicas": 6}})
    objects = _objects(scaled)
    hpa = objects[("HorizontalPodAutoscaler", "shop-api")]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"], hpa["scaleTargetRef"]["name"]) == (2, 6, "shop-api")
    assert objects[("PodDisruptionBudget", "shop-api")]["spec"]["maxUnavailable"] == 1
    assert children.create_only_paths(scaled) == {("Deployment", "shop-api"): [("spec", "replicas")]}
    assert _objects(_own(api={"replicas": 5}))[("Deployment", "shop-api")]["spec"]["replicas"] == 5


@pytest.mark.parametrize("resources", [None, [{"name": "books"}]], ids=["no resources", "resources too"])
def test_resources_are_optional_with_an_own_image(resources: list[dict[str, str]] | None) -> None:
    spec: dict[str, Any] = {} if resources is None else {"resources": resources}
    api = _own(**spec)
    assert len(api.spec.resources) == (0 if resources is None else 1)
    assert config.too_large(api) is None
    for obj in _objects(api).values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
