"""``cachedapi render``: what the operator would create, valid for Kubernetes and safe by default."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cachedapi import contract, model
from cachedapi.operator import children, render
from cachedapi.operator.children import names, secrets

from ..conftest import EXAMPLES
from . import podspec
from .bookstore import BOOKSTORE_CHILDREN

K8S_VERSION = kubernetes_validate.latest_version()


def _render_cli(path: Any) -> tuple[str, list[dict[str, Any]]]:
    done = subprocess.run(
        [sys.executable, "-m", "cachedapi", "render", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, [d for d in yaml.safe_load_all(done.stdout) if d]


def _objects(api: model.CachedApi, **digests: str) -> dict[tuple[str, str], dict[str, Any]]:
    inputs = children.Inputs(owner_uid="uid-1", api_key="k", db_password="p", secret_digests=digests)
    return {(o["kind"], o["metadata"]["name"]): o for o in children.desired_objects(api, inputs)}


def _api(**spec: Any) -> model.CachedApi:
    return model.parse(
        {"metadata": {"name": "shop", "namespace": "ns"}, "spec": {"resources": [{"name": "books"}], **spec}}
    )


def _pod_templates(objects: Any) -> list[dict[str, Any]]:
    return [o["spec"]["template"] for o in objects if o["kind"] in {"Deployment", "StatefulSet"}]


def test_render_of_bookstore_prints_every_child_valid_for_kubernetes() -> None:
    text, docs = _render_cli(EXAMPLES / "bookstore.yaml")
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = sorted({(d["kind"], d["metadata"]["name"]) for d in docs})
    assert set(kinds) == BOOKSTORE_CHILDREN and len(kinds) == len(docs)
    assert "placeholder" in text.splitlines()[1].lower()


def test_render_is_the_same_every_time() -> None:
    first, _ = _render_cli(EXAMPLES / "minimal.yaml")
    second, _ = _render_cli(EXAMPLES / "minimal.yaml")
    assert first == second


def test_render_of_a_bad_file_names_the_field_and_fails(tmp_path: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: CachedApi\nmetadata: {name: x}\nspec: {resources: [{name: Books}]}\n")
    done = subprocess.run(
        [sys.executable, "-m", "cachedapi", "render", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2 and "spec.resources[0].name" in done.stderr


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_renders_valid_objects(path: Any) -> None:
    for api in model.load_manifest(path):
        for obj in children.desired_objects(api, render.render_inputs(api)):
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_every_child_is_labelled_and_controlled_by_its_cachedapi(bookstore: model.CachedApi) -> None:
    for obj in _objects(bookstore).values():
        meta = obj["metadata"]
        assert meta["namespace"] == "shop"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "cachedapi.dev/v1alpha1",
                "kind": "CachedApi",
                "name": "bookstore",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        for key in ("name", "instance", "component", "part-of", "managed-by"):
            assert f"app.kubernetes.io/{key}" in meta["labels"]


def test_every_pod_meets_the_restricted_pod_security_standard(bookstore: model.CachedApi) -> None:
    templates = _pod_templates(_objects(bookstore).values())
    assert len(templates) == 4
    for template in templates:
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert container["livenessProbe"] and container["readinessProbe"]
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert "memory" in container["resources"]["limits"], "a memory limit by default"
        assert template["metadata"]["annotations"][names.CONFIG_HASH_ANNOTATION]


def test_runtime_pods_run_their_role_with_the_config_and_secrets_from_the_contract(bookstore: model.CachedApi) -> None:
    objects = _objects(bookstore)
    gateway = objects[("Deployment", "bookstore-gateway")]["spec"]["template"]["spec"]["containers"][0]
    api = objects[("Deployment", "bookstore-api")]["spec"]["template"]["spec"]["containers"][0]
    assert [gateway["command"][0], *gateway["args"]] == ["cachedapi", "runtime", "--role", "gateway"]
    assert [api["command"][0], *api["args"]] == ["cachedapi", "runtime", "--role", "api"]
    assert gateway["image"] == children.inputs.DEFAULT_IMAGE
    gateway_env = {e["name"]: e for e in gateway["env"]}
    api_env = {e["name"]: e for e in api["env"]}
    assert gateway_env[contract.ENV_CONFIG]["value"] == f"{contract.CONFIG_DIR}/{contract.CONFIG_FILE}"
    assert gateway_env[contract.ENV_API_KEYS_DIR]["value"] == contract.API_KEYS_DIR
    assert gateway_env[contract.ENV_REDIS_URL]["value"] == "redis://bookstore-redis.shop.svc:6379/0"
    api_pod = objects[("Deployment", "bookstore-api")]["spec"]["template"]["spec"]
    assert podspec.secret_source(api_pod, contract.ENV_DATABASE_URL) == ("bookstore-db-credentials", "url")
    assert contract.ENV_API_KEYS_DIR not in api_env
    assert contract.ENV_DATABASE_URL + contract.FILE_SUFFIX not in gateway_env
    mounts = {m["mountPath"] for m in gateway["volumeMounts"]}
    assert {contract.CONFIG_DIR, contract.API_KEYS_DIR} <= mounts
    config = objects[("ConfigMap", "bookstore-config")]["data"][contract.CONFIG_FILE]
    assert contract.parse_config(yaml.safe_load(config)).resources["books"].ttl_seconds == 300


def _hash(objects: dict[tuple[str, str], dict[str, Any]], name: str) -> str:
    return str(
        objects[("Deployment", name)]["spec"]["template"]["metadata"]["annotations"][names.CONFIG_HASH_ANNOTATION]
    )


def test_config_hash_changes_with_configuration_not_with_replicas() -> None:
    base = _objects(_api())
    more = _objects(_api(gateway={"replicas": 5}, api={"replicas": 7}))
    ttl = _objects(_api(cache={"defaultTtlSeconds": 5}))
    for name in ("shop-gateway", "shop-api"):
        assert _hash(base, name) == _hash(more, name)
        assert _hash(base, name) != _hash(ttl, name)


def test_a_changed_secret_rolls_only_the_pods_that_read_it() -> None:
    before = _objects(_api(), **{"shop-api-keys": "a", "shop-db-credentials": "x"})
    keys_changed = _objects(_api(), **{"shop-api-keys": "b", "shop-db-credentials": "x"})
    assert _hash(before, "shop-gateway") != _hash(keys_changed, "shop-gateway")
    assert _hash(before, "shop-api") == _hash(keys_changed, "shop-api")


def test_external_stores_get_no_managed_servers_and_urls_from_the_users_secrets() -> None:
    api = _api(
        cache={"redis": {"external": {"urlSecretRef": {"name": "my-redis", "key": "url"}}}},
        database={"external": {"urlSecretRef": {"name": "my-pg", "key": "dsn"}}},
        gateway={"auth": {"mode": "apiKey", "apiKeysSecretRef": {"name": "my-keys"}}},
    )
    objects = _objects(api)
    assert not any(name in {"shop-redis", "shop-db"} for kind, name in objects if kind != "NetworkPolicy")
    assert ("Secret", "shop-db-credentials") not in objects and ("Secret", "shop-api-keys") not in objects
    api_pod = objects[("Deployment", "shop-api")]["spec"]["template"]["spec"]
    assert podspec.secret_source(api_pod, contract.ENV_DATABASE_URL) == ("my-pg", "dsn")
    assert podspec.secret_source(api_pod, contract.ENV_REDIS_URL) == ("my-redis", "url")
    gateway = objects[("Deployment", "shop-gateway")]["spec"]["template"]["spec"]
    assert {"name": "api-keys", "secret": {"secretName": "my-keys", "defaultMode": 0o440}} in gateway["volumes"]


def _external_tls() -> model.CachedApi:
    return _api(
        cache={
            "redis": {
                "external": {
                    "urlSecretRef": {"name": "my-redis", "key": "url"},
                    "tls": {"caSecretRef": {"name": "r-ca"}},
                }
            }
        },
        database={
            "external": {
                "urlSecretRef": {"name": "my-pg", "key": "dsn"},
                "tls": {"caSecretRef": {"name": "pg-ca", "key": "root.pem"}},
            }
        },
    )


def test_external_tls_mounts_each_ca_bundle_from_its_secret_as_a_file_where_the_contract_says() -> None:
    objects = _objects(_external_tls())
    for obj in objects.values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    api_pod = objects[("Deployment", "shop-api")]["spec"]["template"]["spec"]
    gateway_pod = objects[("Deployment", "shop-gateway")]["spec"]["template"]["spec"]
    # Both roles talk to Redis; only the api role to PostgreSQL. The key defaults to ca.crt.
    assert podspec.file_source(api_pod, contract.ENV_REDIS_CA_FILE) == ("r-ca", "ca.crt")
    assert podspec.file_source(gateway_pod, contract.ENV_REDIS_CA_FILE) == ("r-ca", "ca.crt")
    assert podspec.file_source(api_pod, contract.ENV_DATABASE_CA_FILE) == ("pg-ca", "root.pem")
    assert contract.ENV_DATABASE_CA_FILE not in {e["name"] for e in gateway_pod["containers"][0]["env"]}
    api_env = {e["name"]: e for e in api_pod["containers"][0]["env"]}
    assert api_env[contract.ENV_REDIS_CA_FILE]["value"] == contract.REDIS_CA_PATH
    assert api_env[contract.ENV_DATABASE_CA_FILE]["value"] == contract.DATABASE_CA_PATH
    # Files, never values: nothing in any container's environment comes from a Secret.
    for pod in (api_pod, gateway_pod):
        assert not [e for e in pod["containers"][0]["env"] if "valueFrom" in e]
    # Without tls, nothing of it is rendered.
    plain = _objects(_api(cache={"redis": {"external": {"urlSecretRef": {"name": "my-redis", "key": "url"}}}}))
    plain_pod = plain[("Deployment", "shop-api")]["spec"]["template"]["spec"]
    plain_env = {e["name"] for e in plain_pod["containers"][0]["env"]}
    assert not {contract.ENV_REDIS_CA_FILE, contract.ENV_DATABASE_CA_FILE} & plain_env


def test_a_changed_ca_secret_rolls_the_pods_that_read_it_and_a_missing_one_is_named_by_its_field() -> None:
    api = _external_tls()
    base = {"my-redis": "1", "my-pg": "1", "shop-api-keys": "1"}
    before = _objects(api, **base, **{"r-ca": "a", "pg-ca": "a"})
    pg_ca_changed = _objects(api, **base, **{"r-ca": "a", "pg-ca": "b"})
    redis_ca_changed = _objects(api, **base, **{"r-ca": "b", "pg-ca": "a"})
    assert _hash(before, "shop-gateway") == _hash(pg_ca_changed, "shop-gateway")
    assert _hash(before, "shop-api") != _hash(pg_ca_changed, "shop-api")
    assert _hash(before, "shop-gateway") != _hash(redis_ca_changed, "shop-gateway")
    assert _hash(before, "shop-api") != _hash(redis_ca_changed, "shop-api")
    # What the reconciler looks up (a missing Secret or key: SpecValid=False naming the field).
    assert secrets.referenced(api) == {
        "my-redis": "spec.cache.redis.external.urlSecretRef",
        "r-ca": "spec.cache.redis.external.tls.caSecretRef",
        "my-pg": "spec.database.external.urlSecretRef",
        "pg-ca": "spec.database.external.tls.caSecretRef",
    }
    assert secrets.required_keys(api)[("pg-ca", "root.pem")] == "spec.database.external.tls.caSecretRef"
    assert secrets.required_keys(api)[("r-ca", "ca.crt")] == "spec.cache.redis.external.tls.caSecretRef"


def test_network_policies_allow_only_the_request_path() -> None:
    objects = _objects(_api())

    def policy(component: str) -> dict[str, Any]:
        spec: dict[str, Any] = objects[("NetworkPolicy", f"shop-{component}")]["spec"]
        return spec

    def sources(component: str) -> list[str]:
        return [
            peer["podSelector"]["matchLabels"][names.LABEL_COMPONENT]
            for rule in policy(component)["ingress"]
            for peer in rule.get("from", [])
        ]

    assert policy("gateway")["ingress"] == [{"ports": [{"protocol": "TCP", "port": contract.GATEWAY_PORT}]}]
    assert sources("api") == ["gateway"]
    assert sorted(sources("redis")) == ["api", "gateway"]
    assert sources("db") == ["api"]
    assert "egress" not in policy("db") and "egress" not in policy("redis")
    for component in ("gateway", "api"):
        assert all(rule != {} for rule in policy(component).get("egress", [])), "managed stores need no open egress"


def test_autoscaling_adds_an_hpa_and_leaves_replicas_to_it() -> None:
    plain = _objects(_api())
    scaled_api = _api(api={"autoscaling": {"minReplicas": 3, "maxReplicas": 9}})
    scaled = _objects(scaled_api)
    assert ("HorizontalPodAutoscaler", "shop-api") not in plain
    hpa = scaled[("HorizontalPodAutoscaler", "shop-api")]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 9)
    assert children.create_only_paths(scaled_api) == {("Deployment", "shop-api"): [("spec", "replicas")]}


def test_managed_redis_is_bounded_and_keeps_nothing_on_disk() -> None:
    command = _objects(_api())[("Deployment", "shop-redis")]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--maxmemory") + 1] == str(256 * 1024 * 1024)
    assert command[command.index("--save") + 1] == "" and command[command.index("--appendonly") + 1] == "no"


def test_managed_database_keeps_its_data_on_a_claim_and_reads_its_password_from_a_secret_file() -> None:
    sts = _objects(_api(database={"managed": {"storage": "5Gi", "storageClassName": "fast"}}))[
        ("StatefulSet", "shop-db")
    ]
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["resources"]["requests"]["storage"] == "5Gi" and claim["storageClassName"] == "fast"
    pod = sts["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert not [e for e in env.values() if "valueFrom" in e], "no secret in the environment"
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "shop-db-credentials" and volume["secret"]["defaultMode"] == 0o440
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert env["POSTGRES_PASSWORD_FILE"]["value"] == mount["mountPath"] + "/password" and mount["readOnly"]
    assert env["PGDATA"]["value"].startswith("/var/lib/postgresql/data/")


def test_memory_is_limited_by_default_never_below_the_request_and_cpu_only_when_asked() -> None:
    objects = _objects(_api(api={"resources": {"requests": {"memory": "1Gi"}}}))

    def resources(name: str, kind: str = "Deployment") -> dict[str, Any]:
        found: dict[str, Any] = objects[(kind, name)]["spec"]["template"]["spec"]["containers"][0]["resources"]
        return found

    assert resources("shop-gateway")["limits"] == {"memory": "256Mi"}
    assert resources("shop-api")["limits"] == {"memory": "1Gi"}  # the request, not below it
    assert resources("shop-redis")["limits"] == {"memory": "352Mi"}  # maxMemory 256Mi + 1/4 + 32Mi
    assert resources("shop-db", "StatefulSet")["limits"] == {"memory": "512Mi"}
    chosen = _objects(_api(gateway={"resources": {"limits": {"cpu": "2", "memory": "100Mi"}}}))
    gateway = chosen[("Deployment", "shop-gateway")]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["resources"]["limits"] == {"cpu": "2", "memory": "100Mi"}
