"""Pure builders: a CachedApi in, the Kubernetes objects it should have out.

No client in sight (CloudNativePG's ``pkg/specs``): ``cachedapi render`` and
the operator call the same ``desired_objects``, so what the command prints is
what a cluster gets. Everything that would make the output vary from run to
run (the owner's uid, generated secret values, the digests of Secrets the
user owns) comes in through ``Inputs``.
"""

from __future__ import annotations

from typing import Any

from cachedapi import model
from cachedapi.operator.children import config, database, inputs, names, network, redis, runtime, scaling, secrets

Inputs = inputs.Inputs


def desired_objects(api: model.CachedApi, inp: inputs.Inputs) -> list[dict[str, Any]]:
    """Every child object, in the order a human would apply them (config before workloads)."""
    spec = api.spec
    objects: list[dict[str, Any]] = []
    objects += secrets.generated(api, inp)
    objects.append(config.config_map(api, inp))
    if spec.database.managed is not None:
        objects += [database.service(api, inp), database.stateful_set(api, inp)]
    if spec.cache.redis.managed is not None:
        objects += [redis.service(api, inp), redis.deployment(api, inp)]
    for role in (names.Component.API, names.Component.GATEWAY):
        objects += [runtime.service(api, inp, role=role), runtime.deployment(api, inp, role=role)]
        objects.append(scaling.pod_disruption_budget(api, inp, role=role))
        hpa = scaling.horizontal_pod_autoscaler(api, inp, role=role)
        if hpa is not None:
            objects.append(hpa)
    objects += network.policies(api, inp)
    return objects


def create_only_paths(api: model.CachedApi) -> dict[tuple[str, str], list[tuple[str, ...]]]:
    """Fields set on creation and then left to someone else: (kind, name) -> paths.

    A Deployment that an HPA scales keeps the replicas the HPA chose; the
    operator only seeds them.
    """
    out: dict[tuple[str, str], list[tuple[str, ...]]] = {}
    for role in (names.Component.API, names.Component.GATEWAY):
        if runtime.tier(api, role).autoscaling is not None:
            out[("Deployment", names.child(api, role.value))] = [("spec", "replicas")]
    return out
