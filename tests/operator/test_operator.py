"""The operator, run as itself (``cachedapi operator``, kopf inside), against a Kubernetes API
emulator over HTTP.

The emulator (kmock 0.8) stores objects and streams watch events, but it is
not a whole API server; where it lacks a behaviour, the test plays that part
explicitly, over HTTP, and says so:

- uid and generation: ``emulator.ApiServerEmulator`` assigns ``metadata.uid``
  on create and bumps ``metadata.generation`` on a change of ``spec``;
- workload controllers: the test writes a Deployment's or StatefulSet's
  status (``simulate_workload_controllers``), as the controller would;
- garbage collection: the test deletes the children that carry a controller
  reference to a deleted CachedApi, as the garbage collector would.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
import yaml

from cachedapi import contract, model
from cachedapi.operator import children, render
from cachedapi.operator.children import names

from ..conftest import EXAMPLES
from . import emulator as em
from . import podspec
from .bookstore import BOOKSTORE_CHILDREN

NS, NAME = "shop", "bookstore"
RESYNC_SECONDS = 1.0


@pytest.fixture
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[em.Cluster]:
    """The emulator with the operator running against it; the operator's log is shown when a test
    fails, and a traceback anywhere in it fails the test (kopf logs handler errors and goes on)."""
    async with em.emulated_cluster() as emulated:
        with em.operator_process(server=emulated.url, workdir=tmp_path, resync_seconds=RESYNC_SECONDS):
            yield emulated
    log = (tmp_path / "operator.log").read_text(errors="replace")
    request.node.add_report_section("teardown", "operator log", log[-20000:])
    assert "Traceback" not in log, log[log.index("Traceback") - 200 :][:3000]


def _bookstore() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / "bookstore.yaml").read_text(encoding="utf-8"))
    return body


async def _created(cluster: em.Cluster, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply the bookstore and wait for every child."""
    stored = await cluster.apply_cachedapi(body or _bookstore())
    await em.eventually(lambda: set(cluster.children(NS, NAME)) >= BOOKSTORE_CHILDREN)
    return stored


async def _status(cluster: em.Cluster) -> dict[str, Any]:
    obj = await cluster.get("CachedApi", NS, NAME)
    assert obj is not None
    return dict(obj.get("status") or {})


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


async def _ready(cluster: em.Cluster) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        st = await _status(cluster)
        return st if st.get("phase") == "Ready" else None

    found: dict[str, Any] = await em.eventually(check)
    return found


async def _change_spec(cluster: em.Cluster, patch: dict[str, Any]) -> None:
    await cluster.patch("CachedApi", NS, NAME, {"spec": patch})


def _config_hash(obj: dict[str, Any]) -> str:
    return str(obj["spec"]["template"]["metadata"]["annotations"][names.CONFIG_HASH_ANNOTATION])


async def test_new_cachedapi_gets_every_child_controlled_by_it(cluster: em.Cluster) -> None:
    stored = await _created(cluster)
    uid = stored["metadata"]["uid"]
    found = cluster.children(NS, NAME)
    assert set(found) == BOOKSTORE_CHILDREN
    for obj in found.values():
        assert obj["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "cachedapi.dev/v1alpha1",
                "kind": "CachedApi",
                "name": NAME,
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    st = await em.eventually(lambda: _status(cluster))
    assert st["endpoint"] == "http://bookstore-gateway.shop.svc:8080"
    assert st["apiKeysSecret"] == "bookstore-api-keys"
    assert st["phase"] in {"Pending", "Provisioning"} and _condition(st, "Ready")["status"] == "False"
    assert _condition(st, "SpecValid")["status"] == "True"


async def test_status_is_ready_only_while_every_workload_is_available(cluster: em.Cluster) -> None:
    await _created(cluster)
    await cluster.simulate_workload_controllers(NS, NAME)
    st = await _ready(cluster)
    assert _condition(st, "Ready")["status"] == "True" and st["ready"] == "2/2"
    assert st["gateway"] == {"replicas": 2, "readyReplicas": 2}
    for type_ in ("GatewayReady", "ApiReady", "CacheReady", "DatabaseReady", "SpecValid"):
        assert _condition(st, type_)["status"] == "True", type_
        assert _condition(st, type_)["observedGeneration"] == 1
    ready_since = _condition(st, "Ready")["lastTransitionTime"]

    # One workload stops being available (its controller says so): Ready goes False, phase Degraded.
    await cluster.patch(
        "StatefulSet", NS, "bookstore-db", {"status": {"readyReplicas": 0, "availableReplicas": 0}}, sub="status"
    )

    async def degraded() -> dict[str, Any] | None:
        now = await _status(cluster)
        return now if now.get("phase") == "Degraded" else None

    st = await em.eventually(degraded)
    assert _condition(st, "Ready")["status"] == "False" and _condition(st, "DatabaseReady")["status"] == "False"
    assert _condition(st, "GatewayReady")["status"] == "True"
    assert _condition(st, "Ready")["lastTransitionTime"] >= ready_since

    # A workload whose controller has not seen its latest spec is not ready, whatever its counts say.
    await cluster.simulate_workload_controllers(NS, NAME)
    await _ready(cluster)
    # (as if its spec had changed since its controller last reported)
    await cluster.patch("Deployment", NS, "bookstore-gateway", {"metadata": {"generation": 7}})
    st = await em.eventually(degraded)
    assert _condition(st, "GatewayReady")["status"] == "False"


async def test_spec_change_reaches_children_and_rolls_only_pods_whose_config_changed(cluster: em.Cluster) -> None:
    await _created(cluster)
    before = cluster.children(NS, NAME)

    await _change_spec(cluster, {"gateway": {"replicas": 4}})
    await em.eventually(
        lambda: cluster.children(NS, NAME)[("Deployment", "bookstore-gateway")]["spec"]["replicas"] == 4
    )
    after = cluster.children(NS, NAME)
    assert _config_hash(after[("Deployment", "bookstore-gateway")]) == _config_hash(
        before[("Deployment", "bookstore-gateway")]
    )

    resources = [*_bookstore()["spec"]["resources"], {"name": "reviews", "ttlSeconds": 5}]
    await _change_spec(cluster, {"cache": {"defaultTtlSeconds": 10}, "resources": resources})

    def config() -> contract.RuntimeConfig:
        data = cluster.children(NS, NAME)[("ConfigMap", "bookstore-config")]["data"][contract.CONFIG_FILE]
        return contract.parse_config(yaml.safe_load(data))

    await em.eventually(lambda: "reviews" in config().resources)
    assert config().resources["authors"].ttl_seconds == 10 and config().resources["reviews"].ttl_seconds == 5
    final = cluster.children(NS, NAME)
    for name in ("bookstore-gateway", "bookstore-api"):
        assert _config_hash(final[("Deployment", name)]) != _config_hash(before[("Deployment", name)]), name
    assert _config_hash(final[("Deployment", "bookstore-redis")]) == _config_hash(
        before[("Deployment", "bookstore-redis")]
    )
    await em.eventually(lambda: _observed(cluster, 3))


async def _observed(cluster: em.Cluster, generation: int) -> bool:
    return (await _status(cluster)).get("observedGeneration") == generation


async def test_child_deleted_by_hand_comes_back(cluster: em.Cluster) -> None:
    await _created(cluster)
    await cluster.delete("Deployment", NS, "bookstore-gateway")
    await cluster.delete("Service", NS, "bookstore-api")
    await cluster.delete("ConfigMap", NS, "bookstore-config")
    await em.eventually(lambda: set(cluster.children(NS, NAME)) >= BOOKSTORE_CHILDREN)


async def test_child_edited_by_hand_is_put_back(cluster: em.Cluster) -> None:
    await _created(cluster)
    original = copy.deepcopy(cluster.children(NS, NAME))
    await cluster.patch("Deployment", NS, "bookstore-gateway", {"spec": {"replicas": 9}})
    await cluster.patch("ConfigMap", NS, "bookstore-config", {"data": {contract.CONFIG_FILE: "{}"}})
    await cluster.patch("Service", NS, "bookstore-redis", {"metadata": {"labels": {names.LABEL_COMPONENT: "x"}}})

    def restored() -> bool:
        now = cluster.children(NS, NAME)
        return (
            now[("Deployment", "bookstore-gateway")]["spec"]["replicas"] == 2
            and now[("ConfigMap", "bookstore-config")]["data"] == original[("ConfigMap", "bookstore-config")]["data"]
            and now[("Service", "bookstore-redis")]["metadata"]["labels"][names.LABEL_COMPONENT] == "redis"
        )

    await em.eventually(restored)


async def test_unchanged_cachedapi_costs_zero_writes(cluster: em.Cluster) -> None:
    await _created(cluster)
    await cluster.simulate_workload_controllers(NS, NAME)
    await _ready(cluster)
    await asyncio.sleep(1.5)  # let the last status write's own watch event pass

    requests_before = len(cluster.operator_requests())
    writes_before = len(cluster.operator_writes())
    await asyncio.sleep(4 * RESYNC_SECONDS + 0.5)  # at least three periodic reconciles of the object
    writes = cluster.operator_writes()[writes_before:]
    assert [f"{r.method} {r.path}" for r in writes] == []
    # The window did hold reconciles: each one reads the Secrets it references.
    reads = [r for r in cluster.operator_requests()[requests_before:] if "/secrets/" in r.path]
    assert len(reads) >= 3

    # And kopf left nothing of its own on the object: no finalizer, no annotation.
    obj = await cluster.get("CachedApi", NS, NAME)
    assert obj is not None
    assert not obj["metadata"].get("finalizers")
    assert not [a for a in obj["metadata"].get("annotations") or {} if "kopf" in a]


async def test_missing_secret_is_reported_as_spec_invalid_without_a_retry_storm(cluster: em.Cluster) -> None:
    body = _bookstore()
    body["spec"]["gateway"]["auth"]["apiKeysSecretRef"] = {"name": "my-keys"}
    await cluster.apply_cachedapi(body)

    async def invalid() -> dict[str, Any] | None:
        st = await _status(cluster)
        return st if _condition(st, "SpecValid").get("status") == "False" else None

    st = await em.eventually(invalid)
    assert st["phase"] == "Failed"
    assert _condition(st, "SpecValid")["message"] == (
        "spec.gateway.auth.apiKeysSecretRef: secret my-keys not found in namespace shop"
    )
    assert not [k for k in cluster.children(NS, NAME) if k[0] != "Secret"], "nothing is built on an invalid spec"

    await asyncio.sleep(0.5)
    requests_before = len(cluster.operator_requests())
    writes_before = len(cluster.operator_writes())
    await asyncio.sleep(3 * RESYNC_SECONDS + 0.5)
    assert cluster.operator_writes()[writes_before:] == [], "the failure is reported once, not rewritten"
    assert len(cluster.operator_requests()) - requests_before < 30, "a slow periodic retry, not a storm"
    events = [
        o.raw for (res, _ns, _n), o in cluster.emulator.objects.items() if res.plural == "events" and not o.deleted
    ]
    warnings = [e for e in events if e["reason"] == "InvalidSpec"]
    assert len(warnings) == 1 and "spec.gateway.auth.apiKeysSecretRef" in warnings[0]["message"]

    # The user creates the Secret: the next resync finds it and builds everything.
    key = base64.b64encode(b"k1").decode()
    await cluster.create(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "my-keys", "namespace": NS}, "data": {"ci": key}}
    )
    expected = {c for c in BOOKSTORE_CHILDREN if c != ("Secret", "bookstore-api-keys")}
    await em.eventually(lambda: expected <= set(cluster.children(NS, NAME)))
    st = await em.eventually(lambda: _status_with(cluster, "SpecValid", "True"))
    assert st["apiKeysSecret"] == "my-keys"


async def _status_with(cluster: em.Cluster, type_: str, value: str) -> dict[str, Any] | None:
    st = await _status(cluster)
    return st if _condition(st, type_).get("status") == value else None


async def test_spec_the_model_rejects_is_reported_with_the_field(cluster: em.Cluster) -> None:
    # The CRD schema would refuse this at the API server; the emulator does not validate, so the
    # operator's own check (the pydantic model) is what catches it here.
    body = _bookstore()
    body["spec"]["resources"].append({"name": "reviews", "ttlSeconds": -1})
    await cluster.apply_cachedapi(body)
    st = await em.eventually(lambda: _status_with(cluster, "SpecValid", "False"))
    assert st["phase"] == "Failed"
    assert _condition(st, "SpecValid")["message"].startswith("spec.resources[3].ttlSeconds: ")


async def test_children_the_spec_no_longer_asks_for_are_deleted(cluster: em.Cluster) -> None:
    await _created(cluster)
    url = base64.b64encode(b"redis://cache.example:6379/0").decode()
    await cluster.create(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "my-redis", "namespace": NS}, "data": {"url": url}}
    )
    await _change_spec(
        cluster,
        {
            "api": {"autoscaling": None},
            "cache": {"redis": {"managed": None, "external": {"urlSecretRef": {"name": "my-redis", "key": "url"}}}},
        },
    )
    gone = {
        ("HorizontalPodAutoscaler", "bookstore-api"),
        ("Deployment", "bookstore-redis"),
        ("Service", "bookstore-redis"),
        ("NetworkPolicy", "bookstore-redis"),
    }
    await em.eventually(lambda: not gone & set(cluster.children(NS, NAME)))
    now = cluster.children(NS, NAME)
    assert now[("Deployment", "bookstore-api")]["spec"]["replicas"] == 3  # back from the HPA to spec.api.replicas
    gateway_pod = now[("Deployment", "bookstore-gateway")]["spec"]["template"]["spec"]
    assert podspec.secret_source(gateway_pod, contract.ENV_REDIS_URL) == ("my-redis", "url")
    assert ("Secret", "bookstore-db-credentials") in now and ("Secret", "bookstore-api-keys") in now


async def test_generated_secrets_are_never_overwritten_and_a_rotated_key_rolls_the_gateway(cluster: em.Cluster) -> None:
    await _created(cluster)
    first = cluster.children(NS, NAME)
    generated_key = first[("Secret", "bookstore-api-keys")]["data"]["default"]
    assert base64.b64decode(generated_key) and generated_key != base64.b64encode(b"").decode()
    gateway_hash = _config_hash(first[("Deployment", "bookstore-gateway")])
    api_hash = _config_hash(first[("Deployment", "bookstore-api")])

    rotated = base64.b64encode(b"a-key-the-user-chose").decode()
    await cluster.patch("Secret", NS, "bookstore-api-keys", {"data": {"default": rotated}})
    await em.eventually(
        lambda: _config_hash(cluster.children(NS, NAME)[("Deployment", "bookstore-gateway")]) != gateway_hash
    )
    await asyncio.sleep(2 * RESYNC_SECONDS)
    now = cluster.children(NS, NAME)
    assert now[("Secret", "bookstore-api-keys")]["data"]["default"] == rotated
    assert _config_hash(now[("Deployment", "bookstore-api")]) == api_hash


async def test_deleting_the_cachedapi_leaves_clean_up_to_owner_references(cluster: em.Cluster) -> None:
    stored = await _created(cluster)
    uid = stored["metadata"]["uid"]
    await cluster.delete("CachedApi", NS, NAME)  # no finalizer: gone at once
    assert await cluster.get("CachedApi", NS, NAME) is None

    # The garbage collector deletes every object whose controller reference names the deleted uid.
    # The emulator has no garbage collector, so the test does its work, reading the same references,
    # and keeps doing it for a while, as the real one does: an operator that had not yet seen the
    # deletion may recreate a child, which then carries the dead uid and is collected too.
    # The volume claims are the StatefulSet's, not the CachedApi's: it deletes them with itself.
    sts = cluster.children(NS, NAME)[("StatefulSet", "bookstore-db")]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    deadline = asyncio.get_running_loop().time() + 2.0
    while asyncio.get_running_loop().time() < deadline:
        for (kind, name), obj in cluster.children(NS, NAME).items():
            refs = obj["metadata"]["ownerReferences"]
            assert any(r["uid"] == uid and r["controller"] and r["blockOwnerDeletion"] for r in refs)
            await cluster.delete(kind, NS, name)
        await asyncio.sleep(0.1)

    writes_before = len(cluster.operator_writes())
    await asyncio.sleep(2 * RESYNC_SECONDS + 0.5)
    assert cluster.children(NS, NAME) == {}, "nothing is resurrected for a deleted CachedApi"
    assert cluster.operator_writes()[writes_before:] == []


async def test_a_restarted_operator_writes_nothing_to_a_converged_cachedapi(tmp_path: Path) -> None:
    async with em.emulated_cluster() as cluster:
        with em.operator_process(server=cluster.url, workdir=tmp_path / "first", resync_seconds=RESYNC_SECONDS):
            await _created(cluster)
            await cluster.simulate_workload_controllers(NS, NAME)
            await _ready(cluster)
            await asyncio.sleep(1.0)
        writes_before = len(cluster.operator_writes())
        requests_before = len(cluster.operator_requests())
        with em.operator_process(server=cluster.url, workdir=tmp_path / "second", resync_seconds=RESYNC_SECONDS):
            # The new operator lists everything, reconciles everything, and finds nothing to do.
            await em.eventually(lambda: len(cluster.operator_requests()) > requests_before + 20)
            await asyncio.sleep(3 * RESYNC_SECONDS)
        assert [f"{r.method} {r.path}" for r in cluster.operator_writes()[writes_before:]] == []


async def test_a_secret_without_the_named_key_is_reported_with_the_field(cluster: em.Cluster) -> None:
    dsn = base64.b64encode(b"postgresql://u:p@pg:5432/db").decode()
    await cluster.create(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "my-pg", "namespace": NS}, "data": {"url": dsn}}
    )
    body = _bookstore()
    body["spec"]["database"] = {"external": {"urlSecretRef": {"name": "my-pg", "key": "dsn"}}}
    await cluster.apply_cachedapi(body)
    st = await em.eventually(lambda: _status_with(cluster, "SpecValid", "False"))
    assert (
        _condition(st, "SpecValid")["message"] == "spec.database.external.urlSecretRef: secret my-pg has no key 'dsn'"
    )

    # The user fixes the reference; the operator builds everything but a database of its own.
    await _change_spec(cluster, {"database": {"external": {"urlSecretRef": {"name": "my-pg", "key": "url"}}}})
    await em.eventually(lambda: _status_with(cluster, "SpecValid", "True"))
    await em.eventually(lambda: ("Deployment", "bookstore-api") in cluster.children(NS, NAME))
    assert not {("StatefulSet", "bookstore-db"), ("Secret", "bookstore-db-credentials")} & set(
        cluster.children(NS, NAME)
    )


async def test_what_render_prints_is_what_the_operator_creates(cluster: em.Cluster) -> None:
    stored = await _created(cluster)
    api = model.parse(_bookstore())
    rendered = children.desired_objects(api, render.render_inputs(api))
    live = cluster.children(NS, NAME)
    assert {(o["kind"], o["metadata"]["name"]) for o in rendered} == set(live)

    def comparable(obj: dict[str, Any]) -> dict[str, Any]:
        # What differs by design: the owner's uid, generated Secret values, and so the config hashes.
        out = copy.deepcopy({k: v for k, v in obj.items() if k not in {"status", "data"} or obj["kind"] != "Secret"})
        out.pop("status", None)
        out["metadata"] = {k: v for k, v in out["metadata"].items() if k in {"name", "namespace", "labels"}}
        template = (out.get("spec") or {}).get("template")
        if template:
            template["metadata"]["annotations"].pop(names.CONFIG_HASH_ANNOTATION)
        return out

    for obj in rendered:
        key = (obj["kind"], obj["metadata"]["name"])
        assert comparable(live[key]) == comparable(obj), key
        assert live[key]["metadata"]["ownerReferences"][0]["uid"] == stored["metadata"]["uid"]


async def test_the_operator_answers_its_liveness_probe(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}/healthz"
    async with em.emulated_cluster() as cluster:
        with em.operator_process(
            server=cluster.url, workdir=tmp_path, extra_env={"CACHEDAPI_LIVENESS_ENDPOINT": endpoint}
        ):

            async def healthy() -> bool:
                try:
                    async with aiohttp.ClientSession() as session, session.get(endpoint) as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await em.eventually(healthy)


def test_without_a_cluster_the_operator_exits_with_a_message_not_a_hang(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "KUBECONFIG": str(tmp_path / "absent"),
        "CACHEDAPI_LIVENESS_ENDPOINT": "",
        "HOME": str(tmp_path),  # no ~/.kube/config either
    }
    done = subprocess.run(
        [sys.executable, "-m", "cachedapi", "operator"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "cachedapi operator: cannot reach a cluster" in done.stderr


async def test_a_foreign_object_with_a_childs_name_is_reported_not_taken_over(cluster: em.Cluster) -> None:
    foreign = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bookstore-config", "namespace": NS}}
    await cluster.create({**foreign, "data": {"owner": "someone else"}})
    await cluster.apply_cachedapi(_bookstore())

    async def reported() -> dict[str, Any] | None:
        st = await _status(cluster)
        message = _condition(st, "Ready").get("message", "")
        return st if "ConfigMap bookstore-config already exists and is not controlled" in message else None

    await em.eventually(reported, timeout=40)
    # Someone else's object is left as it was.
    stored = cluster.emulator.objects[(kmock.resource("", "v1", "configmaps"), NS, "bookstore-config")].raw
    assert stored["data"] == {"owner": "someone else"}

    # Once it is gone, the operator makes its own and the message goes.
    await cluster.delete("ConfigMap", NS, "bookstore-config")
    await em.eventually(lambda: ("ConfigMap", "bookstore-config") in cluster.children(NS, NAME))
    st = await em.eventually(lambda: _status_with_not(cluster))
    assert "already exists" not in _condition(st, "Ready").get("message", "")


async def _status_with_not(cluster: em.Cluster) -> dict[str, Any] | None:
    st = await _status(cluster)
    return None if "already exists" in _condition(st, "Ready").get("message", "") else st
