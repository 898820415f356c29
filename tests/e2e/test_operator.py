"""The operator, run as itself with the shipped RBAC, against a real control plane.

Everything the emulator tests used to play by hand is real here: uids and
generations from the API server, Deployments and StatefulSets driven by their
controllers (kwok makes the pods Ready), volume claims bound, owner references
honoured by the garbage collector, Pod Security admission in every namespace.
Writes are counted from the API server's audit log, by the operator's user.
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from cachedapi import contract, model
from cachedapi.operator import children, drift, render
from cachedapi.operator.children import names
from tests.e2e import cluster as control_plane
from tests.operator import podspec
from tests.operator.bookstore import BOOKSTORE_CHILDREN

from .harness import EXAMPLES, RESYNC_SECONDS, Operator, apply, condition, eventually, load

NAME = "bookstore"
KINDS = (
    "deployments,statefulsets,services,configmaps,secrets,networkpolicies,poddisruptionbudgets,horizontalpodautoscalers"
)
WRITES = {"create", "update", "patch", "delete", "deletecollection"}
#: kwok leaves a pod with this annotation alone (--disregard-status-with-annotation-selector):
#: it stays Pending, never Ready, like a pod whose image will not start.
NEVER_READY = {"kwok.x-k8s.io/status": "custom"}

pytestmark = pytest.mark.usefixtures("operator")


def _bookstore(namespace: str) -> dict[str, Any]:
    return load(EXAMPLES / "bookstore.yaml", namespace=namespace)


def _get(cluster: control_plane.Cluster, namespace: str, name: str = NAME) -> dict[str, Any]:
    done = cluster.kubectl("get", "cachedapi", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else {}


def _children(cluster: control_plane.Cluster, namespace: str, name: str = NAME) -> dict[tuple[str, str], Any]:
    items = cluster.get_json(KINDS, "-n", namespace, "-l", f"{names.LABEL_INSTANCE}={name}")["items"]
    return {(o["kind"], o["metadata"]["name"]): o for o in items}


def _ready(cluster: control_plane.Cluster, namespace: str, name: str = NAME) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = _get(cluster, namespace, name)
        return obj if condition(obj, "Ready").get("status") == "True" else None

    return eventually(check, what=f"CachedApi {namespace}/{name} Ready")


def _created(cluster: control_plane.Cluster, namespace: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    apply(cluster, body or _bookstore(namespace))
    eventually(lambda: set(_children(cluster, namespace)) >= BOOKSTORE_CHILDREN, what="every child")
    return _get(cluster, namespace)


def _config_hash(obj: dict[str, Any]) -> str:
    return str(obj["spec"]["template"]["metadata"]["annotations"][names.CONFIG_HASH_ANNOTATION])


def _workloads_available(cluster: control_plane.Cluster, namespace: str) -> list[str]:
    """The workloads of the namespace that are not fully rolled out and available: kinds/names."""
    waiting = []
    for kind in ("deployments", "statefulsets"):
        for obj in cluster.get_json(kind, "-n", namespace)["items"]:
            spec, status = obj["spec"], obj.get("status") or {}
            want = spec.get("replicas", 1)
            done = (
                status.get("observedGeneration", 0) >= obj["metadata"]["generation"]
                and status.get("updatedReplicas", 0) >= want
                and status.get("readyReplicas", 0) >= want
                and status.get("availableReplicas", want) >= want
            )
            if not done:
                waiting.append(f"{kind}/{obj['metadata']['name']}")
    return waiting


def _operator_requests(cluster: control_plane.Cluster, namespace: str, *, since: str) -> list[dict[str, Any]]:
    """The operator's requests in ``namespace`` that completed after ``since`` (audit log)."""
    return [
        e
        for e in cluster.audit_events()
        if e["user"]["username"] == control_plane.OPERATOR_USER
        and (e.get("objectRef") or {}).get("namespace") == namespace
        and e["stageTimestamp"] > since
    ]


def _now() -> str:
    """Now, as the audit log writes its timestamps (so that they compare as strings)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _wait_ready(cluster: control_plane.Cluster, namespace: str, *, timeout: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(
        "wait", "--for=condition=Ready", f"cachedapi/{NAME}", "-n", namespace, f"--timeout={timeout}",
        check=False, timeout=300,
    )  # fmt: skip


# --- creation, admission, readiness --------------------------------------------------------


def test_a_cachedapi_gets_every_child_and_every_pod_is_admitted_as_restricted(
    deployed: control_plane.Cluster, namespace: str
) -> None:
    stored = _created(deployed, namespace)
    uid = stored["metadata"]["uid"]
    found = _children(deployed, namespace)
    assert set(found) == BOOKSTORE_CHILDREN
    for obj in found.values():
        refs = obj["metadata"]["ownerReferences"]
        assert refs == [
            {"apiVersion": "cachedapi.dev/v1alpha1", "kind": "CachedApi", "name": NAME, "uid": uid,
             "controller": True, "blockOwnerDeletion": True}
        ]  # fmt: skip

    st = _ready(deployed, namespace)["status"]
    # Every pod the workload controllers made was admitted under the restricted standard.
    pods = deployed.get_json("pods", "-n", namespace)["items"]
    assert len(pods) == 2 + 3 + 1 + 1 and all(p["status"]["phase"] == "Running" for p in pods)
    refused = [
        e["message"] for e in deployed.get_json("events", "-n", namespace)["items"] if e["reason"] == "FailedCreate"
    ]
    assert refused == []
    assert deployed.get_json("pvc", "data-bookstore-db-0", "-n", namespace)["status"]["phase"] == "Bound"
    assert st["endpoint"] == f"http://bookstore-gateway.{namespace}.svc:8080"
    assert st["apiKeysSecret"] == "bookstore-api-keys" and st["phase"] == "Ready"
    for type_ in ("GatewayReady", "ApiReady", "CacheReady", "DatabaseReady", "SpecValid"):
        assert condition({"status": st}, type_)["status"] == "True", type_
        assert condition({"status": st}, type_)["observedGeneration"] == 1

    table = deployed.kubectl("get", "cachedapis", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "READY", "ENDPOINT", "AGE"]
    assert table[1].split()[:4] == [NAME, "Ready", "2/2", st["endpoint"]]
    assert (
        deployed.kubectl("get", "capi", "-n", namespace, "-o", "name").stdout.strip()
        == f"cachedapi.cachedapi.dev/{NAME}"
    )


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_becomes_ready_in_a_restricted_namespace(
    deployed: control_plane.Cluster, namespace: str, path: Path
) -> None:
    names_ = []
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if doc:
            doc["metadata"]["namespace"] = namespace
            apply(deployed, doc)
            if doc["kind"] == model.KIND:  # an example may carry the Secrets it refers to
                names_.append(doc["metadata"]["name"])
    for name in names_:
        _ready(deployed, namespace, name)
    assert _workloads_available(deployed, namespace) == []


def test_kubectl_wait_returns_only_once_every_workload_is_rolled_out(
    deployed: control_plane.Cluster, namespace: str
) -> None:
    _created(deployed, namespace)
    assert _wait_ready(deployed, namespace, timeout="120s").returncode == 0
    assert _workloads_available(deployed, namespace) == []

    # A rollout that cannot finish: the api's new pods never become Ready (kwok leaves them alone,
    # as a kubelet would a crashing image). The old pods keep serving, maxUnavailable is 0, so the
    # Deployment's counts look healthy; only its updated replicas say otherwise.
    annotations = {"spec": {"template": {"metadata": {"annotations": NEVER_READY}}}}
    deployed.kubectl(
        "patch", "deployment", "bookstore-api", "-n", namespace, "--type=merge", "-p", json.dumps(annotations)
    )
    eventually(lambda: condition(_get(deployed, namespace), "Ready").get("status") == "False", what="Ready False")
    assert _wait_ready(deployed, namespace, timeout="8s").returncode != 0, "kubectl wait returned during a rollout"
    obj = _get(deployed, namespace)
    assert condition(obj, "ApiReady")["status"] == "False" and "ApiReady" in condition(obj, "Ready")["message"]
    assert obj["status"]["phase"] == "Degraded"

    # The user takes the change back: the rollout completes, and only then is the CachedApi Ready.
    deployed.kubectl(
        "patch", "deployment", "bookstore-api", "-n", namespace, "--type=json",
        "-p", json.dumps([{"op": "remove", "path": "/spec/template/metadata/annotations/kwok.x-k8s.io~1status"}]),
    )  # fmt: skip
    assert _wait_ready(deployed, namespace, timeout="120s").returncode == 0
    assert _workloads_available(deployed, namespace) == []

    # A spec change: `kubectl wait` right after the apply must not see the old generation's Ready.
    body = _bookstore(namespace)
    body["spec"]["cache"]["defaultTtlSeconds"] = 30  # a new configuration: the runtime pods roll
    apply(deployed, body)
    assert _wait_ready(deployed, namespace, timeout="120s").returncode == 0
    obj = _get(deployed, namespace)
    assert obj["metadata"]["generation"] == 2 and obj["status"]["observedGeneration"] == 2
    assert _workloads_available(deployed, namespace) == []


def test_kubectl_scale_reaches_the_gateway_deployment(deployed: control_plane.Cluster, namespace: str) -> None:
    _created(deployed, namespace)
    _ready(deployed, namespace)
    deployed.kubectl("scale", f"cachedapi/{NAME}", "-n", namespace, "--replicas=3")

    def scaled() -> bool:
        gateway = deployed.get_json("deployment", "bookstore-gateway", "-n", namespace)
        return gateway["spec"]["replicas"] == 3 and (gateway.get("status") or {}).get("readyReplicas") == 3

    eventually(scaled, what="the gateway at 3 ready replicas")
    eventually(lambda: _get(deployed, namespace)["status"].get("ready") == "3/3", what="READY 3/3")
    scale = json.loads(
        deployed.kubectl(
            "get", "--raw", f"/apis/cachedapi.dev/v1alpha1/namespaces/{namespace}/cachedapis/{NAME}/scale"
        ).stdout
    )
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3
    assert "app.kubernetes.io/component=gateway" in scale["status"]["selector"]


# --- level-based: drift, deletion, no-op ------------------------------------------------------


def test_children_edited_or_deleted_by_hand_are_put_back(deployed: control_plane.Cluster, namespace: str) -> None:
    _created(deployed, namespace)
    original = _children(deployed, namespace)
    deployed.kubectl("scale", "deployment/bookstore-gateway", "-n", namespace, "--replicas=9")
    deployed.kubectl("patch", "configmap", "bookstore-config", "-n", namespace, "--type=merge",
                     "-p", json.dumps({"data": {contract.CONFIG_FILE: "{}"}}))  # fmt: skip
    deployed.kubectl(
        "label", "service", "bookstore-redis", "-n", namespace, f"{names.LABEL_COMPONENT}=x", "--overwrite"
    )
    deployed.kubectl("delete", "service", "bookstore-api", "-n", namespace)
    deployed.kubectl("delete", "networkpolicy", "bookstore-db", "-n", namespace)

    def restored() -> bool:
        now = _children(deployed, namespace)
        return (
            set(now) == BOOKSTORE_CHILDREN
            and now[("Deployment", "bookstore-gateway")]["spec"]["replicas"] == 2
            and now[("ConfigMap", "bookstore-config")]["data"] == original[("ConfigMap", "bookstore-config")]["data"]
            and now[("Service", "bookstore-redis")]["metadata"]["labels"][names.LABEL_COMPONENT] == "redis"
        )

    eventually(restored, what="every child as the spec says")
    # Deleted and created again: a new object (new uid), still controlled by the CachedApi.
    api_service = _children(deployed, namespace)[("Service", "bookstore-api")]
    assert api_service["metadata"]["uid"] != original[("Service", "bookstore-api")]["metadata"]["uid"]


def test_an_unchanged_cachedapi_costs_zero_writes_even_after_an_operator_restart(
    deployed: control_plane.Cluster, namespace: str, operator: Operator
) -> None:
    _created(deployed, namespace)
    _ready(deployed, namespace)
    time.sleep(1.5)  # the last status write's own watch event passes
    since = _now()
    time.sleep(4 * RESYNC_SECONDS + 0.5)  # at least three periodic reconciles
    seen = _operator_requests(deployed, namespace, since=since)
    assert [f"{e['verb']} {e['requestURI']}" for e in seen if e["verb"] in WRITES] == []
    # The window did hold reconciles: each reads the Secrets its CachedApi uses.
    assert len([e for e in seen if e["verb"] == "get" and e["objectRef"]["resource"] == "secrets"]) >= 3

    # A new operator process knows nothing; it lists, reconciles everything, and writes nothing.
    operator.stop()
    since = _now()
    operator.start()
    eventually(lambda: len(_operator_requests(deployed, namespace, since=since)) >= 4, what="the new operator's reads")
    time.sleep(2 * RESYNC_SECONDS)
    seen = _operator_requests(deployed, namespace, since=since)
    assert [f"{e['verb']} {e['requestURI']}" for e in seen if e["verb"] in WRITES] == []

    # kopf left nothing of its own on the object: no finalizer, no annotation.
    meta = _get(deployed, namespace)["metadata"]
    assert not meta.get("finalizers") and not [a for a in meta.get("annotations") or {} if "kopf" in a]


def test_deleting_the_cachedapi_removes_every_child_through_the_garbage_collector(
    deployed: control_plane.Cluster, namespace: str
) -> None:
    _created(deployed, namespace)
    _ready(deployed, namespace)
    deployed.kubectl("delete", "cachedapi", NAME, "-n", namespace, "--wait=true", "--timeout=60s")
    since = _now()

    def everything_gone() -> bool:
        left = deployed.get_json(f"{KINDS},pods,replicasets,persistentvolumeclaims", "-n", namespace)["items"]
        return not [o for o in left if o["kind"] != "ConfigMap" or o["metadata"]["name"] != "kube-root-ca.crt"]

    eventually(everything_gone, what="no child, pod, ReplicaSet or claim left")
    time.sleep(2 * RESYNC_SECONDS + 0.5)
    assert everything_gone(), "nothing is resurrected for a deleted CachedApi"
    seen = _operator_requests(deployed, namespace, since=since)
    assert [f"{e['verb']} {e['requestURI']}" for e in seen if e["verb"] in WRITES] == []


# --- spec changes ---------------------------------------------------------------------------


def test_a_spec_change_rolls_only_the_pods_whose_configuration_changed(
    deployed: control_plane.Cluster, namespace: str
) -> None:
    _created(deployed, namespace)
    before = _children(deployed, namespace)
    body = _bookstore(namespace)
    body["spec"]["gateway"]["replicas"] = 4
    apply(deployed, body)
    eventually(lambda: _children(deployed, namespace)[("Deployment", "bookstore-gateway")]["spec"]["replicas"] == 4)
    after = _children(deployed, namespace)
    assert _config_hash(after[("Deployment", "bookstore-gateway")]) == _config_hash(
        before[("Deployment", "bookstore-gateway")]
    )

    body["spec"]["cache"]["defaultTtlSeconds"] = 10
    body["spec"]["resources"].append({"name": "reviews", "ttlSeconds": 5})
    apply(deployed, body)

    def config() -> contract.RuntimeConfig:
        data = _children(deployed, namespace)[("ConfigMap", "bookstore-config")]["data"][contract.CONFIG_FILE]
        return contract.parse_config(yaml.safe_load(data))

    eventually(lambda: "reviews" in config().resources, what="the new resource in the configuration")
    assert config().resources["authors"].ttl_seconds == 10 and config().resources["reviews"].ttl_seconds == 5
    final = _children(deployed, namespace)
    for name in ("bookstore-gateway", "bookstore-api"):
        assert _config_hash(final[("Deployment", name)]) != _config_hash(before[("Deployment", name)]), name
    assert _config_hash(final[("Deployment", "bookstore-redis")]) == _config_hash(
        before[("Deployment", "bookstore-redis")]
    )
    obj = _ready(deployed, namespace)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 3


def test_children_the_spec_no_longer_asks_for_are_deleted(deployed: control_plane.Cluster, namespace: str) -> None:
    _created(deployed, namespace)
    url = base64.b64encode(b"redis://cache.example:6379/0").decode()
    apply(deployed, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "my-redis", "namespace": namespace},
                     "data": {"url": url}})  # fmt: skip
    body = _bookstore(namespace)
    del body["spec"]["api"]["autoscaling"]
    body["spec"]["cache"]["redis"] = {"external": {"urlSecretRef": {"name": "my-redis", "key": "url"}}}
    apply(deployed, body)
    gone = {("HorizontalPodAutoscaler", "bookstore-api"), ("Deployment", "bookstore-redis"),
            ("Service", "bookstore-redis"), ("NetworkPolicy", "bookstore-redis")}  # fmt: skip
    eventually(lambda: not gone & set(_children(deployed, namespace)), what="the children no longer asked for gone")
    now = _children(deployed, namespace)
    assert now[("Deployment", "bookstore-api")]["spec"]["replicas"] == 3  # from the HPA back to spec.api.replicas
    gateway_pod = now[("Deployment", "bookstore-gateway")]["spec"]["template"]["spec"]
    assert podspec.secret_source(gateway_pod, contract.ENV_REDIS_URL) == ("my-redis", "url")
    obj = _ready(deployed, namespace)
    assert condition(obj, "CacheReady")["reason"] == "External"


def test_generated_secrets_are_never_overwritten_and_a_rotated_key_rolls_the_gateway(
    deployed: control_plane.Cluster, namespace: str
) -> None:
    _created(deployed, namespace)
    first = _children(deployed, namespace)
    assert base64.b64decode(first[("Secret", "bookstore-api-keys")]["data"]["default"])
    gateway_hash = _config_hash(first[("Deployment", "bookstore-gateway")])
    api_hash = _config_hash(first[("Deployment", "bookstore-api")])

    rotated = base64.b64encode(b"a-key-the-user-chose").decode()
    deployed.kubectl("patch", "secret", "bookstore-api-keys", "-n", namespace, "--type=merge",
                     "-p", json.dumps({"data": {"default": rotated}}))  # fmt: skip
    eventually(
        lambda: _config_hash(_children(deployed, namespace)[("Deployment", "bookstore-gateway")]) != gateway_hash
    )
    time.sleep(2 * RESYNC_SECONDS)
    now = _children(deployed, namespace)
    assert now[("Secret", "bookstore-api-keys")]["data"]["default"] == rotated
    assert _config_hash(now[("Deployment", "bookstore-api")]) == api_hash


# --- specs the operator cannot act on -------------------------------------------------------


def test_a_missing_secret_is_reported_once_as_spec_invalid_until_it_exists(
    deployed: control_plane.Cluster, namespace: str
) -> None:
    body = _bookstore(namespace)
    body["spec"]["gateway"]["auth"]["apiKeysSecretRef"] = {"name": "my-keys"}
    apply(deployed, body)
    obj = eventually(
        lambda: (o := _get(deployed, namespace)) and condition(o, "SpecValid").get("status") == "False" and o
    )
    assert obj["status"]["phase"] == "Failed"
    assert (
        condition(obj, "SpecValid")["message"]
        == f"spec.gateway.auth.apiKeysSecretRef: secret my-keys not found in namespace {namespace}"
    )
    assert not [k for k in _children(deployed, namespace) if k[0] != "Secret"], "nothing is built on an invalid spec"

    time.sleep(0.5)
    since = _now()
    time.sleep(3 * RESYNC_SECONDS + 0.5)
    seen = _operator_requests(deployed, namespace, since=since)
    assert [e["requestURI"] for e in seen if e["verb"] in WRITES] == [], "the failure is reported once, not rewritten"
    assert len(seen) < 30, "a slow periodic look, not a storm"
    warnings = [e for e in deployed.get_json("events", "-n", namespace)["items"] if e["reason"] == "InvalidSpec"]
    assert len(warnings) == 1 and "spec.gateway.auth.apiKeysSecretRef" in warnings[0]["message"]
    assert warnings[0]["type"] == "Warning" and warnings[0]["involvedObject"]["uid"] == obj["metadata"]["uid"]

    key = base64.b64encode(b"k1").decode()
    apply(deployed, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "my-keys", "namespace": namespace},
                     "data": {"ci": key}})  # fmt: skip
    obj = _ready(deployed, namespace)
    assert obj["status"]["apiKeysSecret"] == "my-keys"
    assert ("Secret", "bookstore-api-keys") not in _children(deployed, namespace)


def test_a_secret_without_the_named_key_is_reported_with_the_field(
    deployed: control_plane.Cluster, namespace: str
) -> None:
    dsn = base64.b64encode(b"postgresql://u:p@pg:5432/db").decode()
    apply(deployed, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "my-pg", "namespace": namespace},
                     "data": {"url": dsn}})  # fmt: skip
    body = _bookstore(namespace)
    body["spec"]["database"] = {"external": {"urlSecretRef": {"name": "my-pg", "key": "dsn"}}}
    apply(deployed, body)
    obj = eventually(
        lambda: (o := _get(deployed, namespace)) and condition(o, "SpecValid").get("status") == "False" and o
    )
    assert (
        condition(obj, "SpecValid")["message"] == "spec.database.external.urlSecretRef: secret my-pg has no key 'dsn'"
    )

    body["spec"]["database"]["external"]["urlSecretRef"]["key"] = "url"
    apply(deployed, body)
    obj = _ready(deployed, namespace)
    assert condition(obj, "DatabaseReady")["reason"] == "External"
    assert not {("StatefulSet", "bookstore-db"), ("Secret", "bookstore-db-credentials")} & set(
        _children(deployed, namespace)
    )


def test_a_foreign_object_with_a_childs_name_is_reported_not_taken_over(
    deployed: control_plane.Cluster, namespace: str
) -> None:
    meta = {"name": "bookstore-config", "namespace": namespace}
    apply(deployed, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"owner": "someone else"}})
    apply(deployed, _bookstore(namespace))
    message = "ConfigMap bookstore-config already exists and is not controlled"
    eventually(lambda: message in condition(_get(deployed, namespace), "Ready").get("message", ""), timeout=60)
    stored = deployed.get_json("configmap", "bookstore-config", "-n", namespace)
    assert stored["data"] == {"owner": "someone else"} and not stored["metadata"].get("ownerReferences")

    deployed.kubectl("delete", "configmap", "bookstore-config", "-n", namespace)
    _ready(deployed, namespace)
    assert "already exists" not in condition(_get(deployed, namespace), "Ready")["message"]


# --- the user's own API ----------------------------------------------------------------------

CATALOG = "catalog"


def _catalog(namespace: str) -> dict[str, Any]:
    """The CachedApi of examples/custom-api.yaml (without the Secret and ConfigMap beside it)."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / "custom-api.yaml").read_text(encoding="utf-8")) if d]
    (body,) = [d for d in docs if d["kind"] == model.KIND]
    body["metadata"]["namespace"] = namespace
    return body


def test_your_own_api_without_a_database_becomes_ready_once_the_secret_its_env_names_exists(
    deployed: control_plane.Cluster, namespace: str
) -> None:
    body = _catalog(namespace)
    body["spec"]["database"] = {"none": {}}
    del body["spec"]["api"]["databaseUrlEnv"]
    apply(deployed, body)
    obj = eventually(
        lambda: (o := _get(deployed, namespace, CATALOG)) and condition(o, "SpecValid").get("status") == "False" and o
    )
    assert condition(obj, "SpecValid")["message"] == (
        f"spec.api.env[1].valueFrom.secretKeyRef: secret catalog-payments not found in namespace {namespace}"
    )
    token = base64.b64encode(b"a-payments-token").decode()
    meta = {"name": "catalog-payments", "namespace": namespace}
    apply(deployed, {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": {"token": token}})
    obj = _ready(deployed, namespace, CATALOG)

    found = _children(deployed, namespace, CATALOG)
    workloads = {("Deployment", f"{CATALOG}-{c}") for c in ("gateway", "api", "redis")}
    assert {k for k in found if k[0] in {"Deployment", "StatefulSet"}} == workloads, "no PostgreSQL"
    assert ("Secret", "catalog-admin-key") in found and ("Secret", "catalog-db-credentials") not in found
    assert ("NetworkPolicy", "catalog-db") not in found
    st = obj["status"]
    assert st["adminKeySecret"] == "catalog-admin-key" and st["phase"] == "Ready" and st["api"]["readyReplicas"] == 2
    assert condition(obj, "DatabaseReady")["reason"] == "NoDatabase"
    # Every pod admitted under the restricted standard, the user's image among them.
    pods = deployed.get_json("pods", "-n", namespace)["items"]
    images = sorted(p["spec"]["containers"][0]["image"] for p in pods)
    assert images.count("ghcr.io/example/catalog:1.4") == 2 and len(pods) == 2 + 2 + 1
    assert all(p["status"]["phase"] == "Running" for p in pods)
    api_pod = found[("Deployment", "catalog-api")]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in api_pod["containers"][0]["env"]}
    assert env["PAYMENTS_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "catalog-payments", "key": "token"}}
    assert env["REDIS_URL"]["value"] == f"redis://catalog-redis.{namespace}.svc:6379/0"
    gateway_pod = found[("Deployment", "catalog-gateway")]["spec"]["template"]["spec"]
    assert podspec.secret_source(gateway_pod, contract.ENV_ADMIN_KEY) == ("catalog-admin-key", "key")
    data = found[("ConfigMap", "catalog-config")]["data"][contract.CONFIG_FILE]
    cfg = contract.parse_config(json.loads(data))
    assert (
        cfg.upstream_mode == contract.UPSTREAM_HTTP and cfg.upstream_url == f"http://catalog-api.{namespace}.svc:8080"
    )
    assert [r.path for r in cfg.cache_routes] == ["/v1/products/*", "/v1/cart/*", "/v1/status"]

    # The Secret the env names changes: the api pods roll, the gateway's do not; a new caching rule
    # rolls the gateway's, not the user's API.
    api_hash = _config_hash(found[("Deployment", "catalog-api")])
    gateway_hash = _config_hash(found[("Deployment", "catalog-gateway")])
    rotated = base64.b64encode(b"another-token").decode()
    deployed.kubectl("patch", "secret", "catalog-payments", "-n", namespace, "--type=merge",
                     "-p", json.dumps({"data": {"token": rotated}}))  # fmt: skip
    body["spec"]["cache"]["routes"].append({"path": "/v1/search", "ttlSeconds": 10})
    apply(deployed, body)

    def rolled() -> bool:
        now = _children(deployed, namespace, CATALOG)
        return (
            _config_hash(now[("Deployment", "catalog-gateway")]) != gateway_hash
            and _config_hash(now[("Deployment", "catalog-api")]) != api_hash
        )

    eventually(rolled, what="both tiers rolled, each for its own reason")
    admin_key = found[("Secret", "catalog-admin-key")]["data"]
    obj = _ready(deployed, namespace, CATALOG)
    assert _children(deployed, namespace, CATALOG)[("Secret", "catalog-admin-key")]["data"] == admin_key
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]


# --- render, probes --------------------------------------------------------------------------


def test_what_render_prints_is_what_the_operator_creates(deployed: control_plane.Cluster, namespace: str) -> None:
    stored = _created(deployed, namespace)
    api = model.parse(_bookstore(namespace))
    rendered = children.desired_objects(api, render.render_inputs(api))
    live = _children(deployed, namespace)
    assert {(o["kind"], o["metadata"]["name"]) for o in rendered} == set(live)

    def comparable(obj: dict[str, Any]) -> dict[str, Any]:
        # What differs by design: the owner's uid and the generated Secret values (so the config
        # hashes). What the server adds (defaults, status) is left out by keeping only what we set.
        out = copy.deepcopy({k: v for k, v in obj.items() if k not in {"status", "data"} or obj["kind"] != "Secret"})
        out.pop("status", None)
        out["metadata"] = {k: v for k, v in out["metadata"].items() if k in {"name", "namespace", "labels"}}
        template = (out.get("spec") or {}).get("template")
        if template:
            template["metadata"]["annotations"].pop(names.CONFIG_HASH_ANNOTATION)
        return out

    for obj in rendered:
        key = (obj["kind"], obj["metadata"]["name"])
        assert drift.contains(comparable(obj), live[key]), key
        assert live[key]["metadata"]["ownerReferences"][0]["uid"] == stored["metadata"]["uid"]


def test_the_operator_answers_its_liveness_probe(operator: Operator) -> None:
    def healthy() -> bool:
        try:
            with urllib.request.urlopen(operator.liveness, timeout=2) as response:  # noqa: S310  (loopback)
                return bool(response.status == 200)
        except OSError:
            return False

    eventually(healthy, what="kopf's liveness endpoint")
