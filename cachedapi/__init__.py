"""CachedApi: a Kubernetes operator and the FastAPI runtime its pods run.

Layout: ``model`` (the CachedApi resource) and ``contract`` (what operator and
runtime agree on) are shared; ``operator/`` turns objects into Kubernetes
children; ``runtime/`` serves HTTP in two roles, ``gateway`` and ``api``.
The runtime never imports the operator.
"""

__version__ = "0.1.0"
