"""The operator half: the CRD, the pure builders of child objects, and the kopf operator.

Layers, outer to inner:

- ``main`` (``cachedapi operator``) reads the environment and starts kopf;
- ``handlers``, the only module that imports kopf: indexes and watch-event spies;
- ``controller`` decides when to reconcile (``scheduler``: coalesced, retried slowly);
- ``reconcile`` observes, validates, converges (``drift``) and reports (``status``);
- ``kube``, the only module that talks to the Kubernetes API;
- ``children``, pure functions from the model to the child objects, shared with
  ``render`` (``cachedapi render``); ``crd`` generates the CustomResourceDefinition.
"""
