"""What the CachedApi's status says, computed from the children as observed. Pure.

``Ready`` is True only when every workload is available *at its current
generation* (the controller has seen the latest spec, and enough updated
pods are available), so ``kubectl wait --for=condition=Ready`` never returns
while an old ReplicaSet is still serving. A workload the operator wrote to in
this pass is not ready either: whatever its status says predates the write.
Conditions keep their ``lastTransitionTime`` unless their status flips, so
that an unchanged world computes an identical status and nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cachedapi import model
from cachedapi.operator.children import names

Component = names.Component


@dataclass(frozen=True, kw_only=True)
class Workload:
    """One Deployment or StatefulSet as observed: desired replicas and what is ready."""

    role: Component
    kind: str
    present: bool
    reported: bool  # the workload controller has written any status at all
    desired: int
    ready: int
    available: bool
    touched: bool = False  # written by this reconcile pass

    @property
    def ok(self) -> bool:
        return self.present and self.available and not self.touched


def observe(*, role: Component, kind: str, live: dict[str, Any] | None, desired: int | None, touched: bool) -> Workload:
    """``desired`` is None when an HPA owns the replica count (then the live spec says)."""
    if live is None:
        return Workload(
            role=role, kind=kind, present=False, reported=False, desired=desired or 0, ready=0, available=False
        )
    spec = live.get("spec") or {}
    status = live.get("status") or {}
    want = desired if desired is not None else int(spec.get("replicas", 1))
    generation = int((live.get("metadata") or {}).get("generation") or 1)
    current = "observedGeneration" in status and int(status["observedGeneration"]) >= generation
    # The API server leaves out counts that are 0: absent means none, never "all of them".
    ready = int(status.get("readyReplicas") or 0)
    available_count = int(status.get("availableReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    available = current and available_count >= want and updated >= want and ready >= want
    return Workload(
        role=role,
        kind=kind,
        present=True,
        reported=bool(status),
        desired=want,
        ready=ready,
        available=available,
        touched=touched,
    )


def _condition(type_: str, ok: bool, *, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason, "message": message}


def _workload_condition(type_: str, w: Workload) -> dict[str, Any]:
    name = f"{w.kind} {w.role.value}"
    if not w.present:
        return _condition(type_, False, reason="Missing", message=f"{name} does not exist yet")
    if w.touched:
        return _condition(
            type_, False, reason="Updating", message=f"{name} was just updated; waiting for its controller"
        )
    if w.available:
        return _condition(type_, True, reason="Available", message=f"{w.ready}/{w.desired} ready")
    return _condition(
        type_, False, reason="Progressing", message=f"{w.ready}/{w.desired} ready at the current generation"
    )


def _merge_conditions(
    old: list[dict[str, Any]], new: list[dict[str, Any]], *, generation: int, now: str
) -> list[dict[str, Any]]:
    previous = {c.get("type"): c for c in old}
    out = []
    for cond in new:
        before = previous.get(cond["type"])
        kept_since = before.get("lastTransitionTime") if before and before.get("status") == cond["status"] else None
        since = kept_since if isinstance(kept_since, str) else now
        out.append({**cond, "observedGeneration": generation, "lastTransitionTime": since})
    kept = {c["type"] for c in new}
    out += [c for c in old if c.get("type") not in kept]
    order = ["Ready", "GatewayReady", "ApiReady", "CacheReady", "DatabaseReady", "SpecValid"]
    return sorted(out, key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))


def readable(stored: Any) -> dict[str, Any]:
    """The stored status as far as it can be read. Anyone allowed to write the status subresource
    can write it wrong (the emulator in the tests stores anything); what cannot be read is
    treated as absent, and the next status write replaces it, rather than failing every reconcile."""
    if not isinstance(stored, dict):
        return {}
    out = dict(stored)
    conditions = out.get("conditions")
    if conditions is not None:
        items = conditions if isinstance(conditions, list) else []
        out["conditions"] = [c for c in items if isinstance(c, dict) and isinstance(c.get("type"), str)]
    return out


def invalid(*, old: dict[str, Any], error: str, generation: int, now: str) -> dict[str, Any]:
    """The status of a CachedApi whose spec cannot be acted on."""
    conditions = [
        _condition("Ready", False, reason="SpecInvalid", message="the spec is not valid; see SpecValid"),
        _condition("SpecValid", False, reason="Invalid", message=error),
    ]
    return {
        **{k: v for k, v in old.items() if k != "conditions"},
        "observedGeneration": generation,
        "phase": "Failed",
        "conditions": _merge_conditions(old.get("conditions") or [], conditions, generation=generation, now=now),
    }


def compute(
    *,
    api: model.CachedApi,
    old: dict[str, Any],
    workloads: dict[Component, Workload],
    generation: int,
    api_keys_secret: str | None,
    now: str,
) -> dict[str, Any]:
    gateway, api_tier = workloads[Component.GATEWAY], workloads[Component.API]
    conditions = [
        _workload_condition("GatewayReady", gateway),
        _workload_condition("ApiReady", api_tier),
    ]
    redis_ref = api.spec.cache.redis.external
    if redis_ref is not None:
        conditions.append(
            _condition(
                "CacheReady", True, reason="External", message=f"Redis URL from secret {redis_ref.urlSecretRef.name}"
            )
        )
    else:
        conditions.append(_workload_condition("CacheReady", workloads[Component.REDIS]))
    db_ref = api.spec.database.external
    if db_ref is not None:
        conditions.append(
            _condition(
                "DatabaseReady", True, reason="External", message=f"database URL from secret {db_ref.urlSecretRef.name}"
            )
        )
    elif api.spec.database.none is not None:
        conditions.append(_condition("DatabaseReady", True, reason="NoDatabase", message="no database (none)"))
    else:
        conditions.append(_workload_condition("DatabaseReady", workloads[Component.DB]))
    waiting = [c["type"] for c in conditions if c["status"] != "True"]
    all_ready = not waiting
    conditions.insert(
        0,
        _condition("Ready", True, reason="AllComponentsReady", message="every component is available")
        if all_ready
        else _condition("Ready", False, reason="ComponentsNotReady", message="waiting for " + ", ".join(waiting)),
    )
    conditions.append(
        _condition("SpecValid", True, reason="Valid", message="the spec is valid and every referenced Secret exists")
    )

    if all_ready:
        phase = "Ready"
    elif not any(w.reported for w in workloads.values()):
        phase = "Pending"
    elif old.get("phase") in {"Ready", "Degraded"} and old.get("observedGeneration") == generation:
        phase = "Degraded"
    else:
        phase = "Provisioning"

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "ready": f"{gateway.ready}/{gateway.desired}",
        "endpoint": names.endpoint(api),
        "selector": ",".join(f"{k}={v}" for k, v in names.selector(api, Component.GATEWAY.value).items()),
        "gateway": {"replicas": gateway.desired, "readyReplicas": gateway.ready},
        "api": {"replicas": api_tier.desired, "readyReplicas": api_tier.ready},
        "conditions": _merge_conditions(old.get("conditions") or [], conditions, generation=generation, now=now),
    }
    if api_keys_secret is not None:
        status["apiKeysSecret"] = api_keys_secret
    admin_key = names.admin_key_secret(api)
    if admin_key is not None:
        status["adminKeySecret"] = admin_key
    return status
