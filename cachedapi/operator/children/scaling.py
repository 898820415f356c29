"""PodDisruptionBudgets and HorizontalPodAutoscalers for the runtime tiers."""

from __future__ import annotations

from typing import Any

from cachedapi import model
from cachedapi.operator.children import inputs, names, runtime


def pod_disruption_budget(api: model.CachedApi, inp: inputs.Inputs, *, role: names.Component) -> dict[str, Any]:
    """At most one pod of a tier down at a time by voluntary disruption (never blocks a drain)."""
    name = names.child(api, role.value)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": names.metadata(api, name=name, component=role.value, uid=inp.owner_uid),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": names.selector(api, role.value)}},
    }


def horizontal_pod_autoscaler(
    api: model.CachedApi, inp: inputs.Inputs, *, role: names.Component
) -> dict[str, Any] | None:
    scaling = runtime.tier(api, role).autoscaling
    if scaling is None:
        return None
    name = names.child(api, role.value)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": names.metadata(api, name=name, component=role.value, uid=inp.owner_uid),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": scaling.minReplicas,
            "maxReplicas": scaling.maxReplicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": scaling.targetCPUUtilizationPercentage},
                    },
                }
            ],
        },
    }
