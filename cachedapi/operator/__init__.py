"""The operator half: the CRD, the pure renderers of child objects, and the kopf operator.

Layers, outer to inner: ``handlers`` (the only module that imports kopf) ->
``reconcile`` (observe, status, converge) -> ``kube`` (the only module that
talks to the Kubernetes API) and ``children`` (pure functions from the model to
dicts, shared with ``cachedapi render``).
"""
