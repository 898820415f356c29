"""The status computation: stable when nothing changed, honest about generations."""

from __future__ import annotations

from typing import Any

from cachedapi import model
from cachedapi.operator import status
from cachedapi.operator.children import names

Component = names.Component


def _api() -> model.CachedApi:
    return model.parse({"metadata": {"name": "shop", "namespace": "ns"}, "spec": {"resources": [{"name": "books"}]}})


def _deployment(*, replicas: int, ready: int, generation: int = 1, observed: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
        },
    }


def _workloads(**overrides: dict[str, Any] | None) -> dict[Component, status.Workload]:
    lives = {
        Component.GATEWAY: _deployment(replicas=2, ready=2),
        Component.API: _deployment(replicas=3, ready=3),
        Component.REDIS: _deployment(replicas=1, ready=1),
        Component.DB: _deployment(replicas=1, ready=1),
    }
    for role, live in overrides.items():
        lives[Component[role.upper()]] = live
    desired = {Component.GATEWAY: 2, Component.API: 3, Component.REDIS: 1, Component.DB: 1}
    return {
        role: status.observe(role=role, kind="Deployment", live=live, desired=desired[role], touched=False)
        for role, live in lives.items()
    }


def _compute(old: dict[str, Any], workloads: dict[Component, status.Workload], now: str) -> dict[str, Any]:
    return status.compute(
        api=_api(), old=old, workloads=workloads, generation=1, api_keys_secret="shop-api-keys", now=now
    )


def test_the_same_world_later_computes_the_identical_status() -> None:
    first = _compute({}, _workloads(), now="2026-01-01T00:00:00Z")
    again = _compute(first, _workloads(), now="2026-01-01T00:05:00Z")
    assert again == first
    assert first["phase"] == "Ready" and first["ready"] == "2/2"


def test_only_the_condition_that_flipped_gets_a_new_transition_time() -> None:
    first = _compute({}, _workloads(), now="T1")
    second = _compute(first, _workloads(api=_deployment(replicas=3, ready=1)), now="T2")
    times = {c["type"]: c["lastTransitionTime"] for c in second["conditions"]}
    assert times["ApiReady"] == "T2" and times["Ready"] == "T2"
    assert times["GatewayReady"] == "T1" and times["SpecValid"] == "T1"
    assert second["phase"] == "Degraded"


def test_a_workload_whose_controller_lags_a_generation_is_not_ready() -> None:
    lagging = _workloads(gateway=_deployment(replicas=2, ready=2, generation=5, observed=4))
    st = _compute({}, lagging, now="T")
    assert st["phase"] != "Ready"
    gateway = next(c for c in st["conditions"] if c["type"] == "GatewayReady")
    assert gateway["status"] == "False" and gateway["reason"] == "Progressing"


def test_no_workload_reporting_yet_is_pending_and_missing_ones_are_named() -> None:
    st = _compute({}, _workloads(gateway=None, api=None, redis=None, db=None), now="T")
    assert st["phase"] == "Pending"
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["message"] == "waiting for GatewayReady, ApiReady, CacheReady, DatabaseReady"


def test_an_invalid_spec_keeps_what_was_known_and_says_why() -> None:
    first = _compute({}, _workloads(), now="T1")
    bad = status.invalid(old=first, error="spec.x: wrong", generation=2, now="T2")
    assert bad["phase"] == "Failed" and bad["observedGeneration"] == 2
    conditions = {c["type"]: c for c in bad["conditions"]}
    assert conditions["SpecValid"]["message"] == "spec.x: wrong" and conditions["Ready"]["status"] == "False"
    assert conditions["GatewayReady"]["lastTransitionTime"] == "T1"
    assert bad["endpoint"] == first["endpoint"]


def test_a_count_the_api_server_left_out_is_zero_not_all() -> None:
    # A rollout that has just begun: the new ReplicaSet has no pod yet, so updatedReplicas is 0,
    # and the API server leaves zero counts out. The old pods are all ready and available.
    live = _deployment(replicas=3, ready=3)
    del live["status"]["updatedReplicas"]
    seen = status.observe(role=Component.API, kind="Deployment", live=live, desired=3, touched=False)
    assert not seen.available
    st = _compute({}, {**_workloads(), Component.API: seen}, now="2026-01-01T00:00:00Z")
    assert st["phase"] != "Ready"
