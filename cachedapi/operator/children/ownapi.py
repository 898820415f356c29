"""The user's own API (``spec.api.image``) as the api tier's pods, in place of the bundled api role.

The container runs the user's image, command and args, listening on ``spec.api.port``, under the
same restricted pod security as every other pod (uid 65532 whatever the image's USER says, a
read-only root filesystem with an emptyDir at /tmp, no privilege escalation, every capability
dropped, the RuntimeDefault seccomp profile), probed over HTTP on the user's paths.

What the operator hands it is by reference only: the database URL (``databaseUrlEnv``) and the
Redis URL (``redisUrlEnv``) are ``valueFrom.secretKeyRef`` to the Secret that holds them (the
generated database credentials, or the user's ``urlSecretRef``), which the kubelet resolves; no
secret value is ever in the pod spec. The managed Redis's URL holds no credential and is given as
a value. The user's own ``env`` is passed as written, after those two, so that it may refer to
them (``$(DATABASE_URL)``).

The pods' config-hash covers the Secrets they read, so that a changed Secret rolls them; the
gateway's configuration is not theirs, so a new caching rule does not restart the user's API.
"""

from __future__ import annotations

from typing import Any

from cachedapi import contract, model
from cachedapi.operator.children import inputs, names, pods, secrets

PORT_NAME = "http"
#: A request and a limit for an API whose owner gave none: more than the bundled role's, since
#: nothing is known of it (``spec.api.resources`` says otherwise).
CPU_REQUEST = "100m"
MEMORY_REQUEST = "128Mi"
MEMORY_LIMIT = "512Mi"


def _own(api: model.CachedApi) -> model.Api:
    if not api.spec.api.own_image:
        raise ValueError("spec.api.image is not set: the bundled api role runs")
    return api.spec.api


def _secret_ref(name: str, ref: model.SecretKeySelector) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def database_url_ref(api: model.CachedApi) -> model.SecretKeySelector | None:
    """The Secret key that holds the database URL; None without a database."""
    db = api.spec.database
    if db.external is not None:
        return db.external.urlSecretRef
    if db.managed is not None:
        return model.SecretKeySelector(name=names.db_credentials(api), key=secrets.DB_URL_KEY)
    return None


def handed_env(api: model.CachedApi) -> list[dict[str, Any]]:
    """The variables the operator sets: the database and Redis URLs, where the spec names them."""
    own = _own(api)
    out: list[dict[str, Any]] = []
    db_ref = database_url_ref(api)
    if own.databaseUrlEnv is not None and db_ref is not None:
        out.append(_secret_ref(own.databaseUrlEnv, db_ref))
    if own.redisUrlEnv is not None:
        redis = api.spec.cache.redis.external
        if redis is not None:
            out.append(_secret_ref(own.redisUrlEnv, redis.urlSecretRef))
        else:
            host = f"{names.child(api, names.Component.REDIS.value)}.{api.metadata.namespace}.svc"
            out.append({"name": own.redisUrlEnv, "value": f"redis://{host}:{contract.REDIS_PORT}/0"})
    return out


def _user_var(var: model.EnvVar) -> dict[str, Any]:
    out = var.model_dump(mode="json", exclude_none=True)
    if out.get("value") == "":
        del out["value"]  # the API server drops an empty value; written, it would look edited by hand
    return out


def env(api: model.CachedApi) -> list[dict[str, Any]]:
    """Every variable of the container: the handed ones first, then the user's, as written."""
    return handed_env(api) + [_user_var(var) for var in _own(api).env]


def read_secrets(api: model.CachedApi) -> list[str]:
    """The Secrets the pods read (through their environment): a change to any of them rolls the pods."""
    return sorted(
        {e["valueFrom"]["secretKeyRef"]["name"] for e in env(api) if "secretKeyRef" in e.get("valueFrom", {})}
    )


def pod_hash(api: model.CachedApi, inp: inputs.Inputs) -> str:
    return pods.config_hash(texts=[], secrets={name: inp.digest(name) for name in read_secrets(api)})


def container(api: model.CachedApi) -> dict[str, Any]:
    own = _own(api)
    out: dict[str, Any] = {"name": names.Component.API.value, "image": own.image, "imagePullPolicy": "IfNotPresent"}
    # An empty list is left out, as the API server would drop it (then it would look edited by hand).
    if own.command:
        out["command"] = list(own.command)
    if own.args:
        out["args"] = list(own.args)
    out["ports"] = [{"name": PORT_NAME, "containerPort": own.port, "protocol": "TCP"}]
    variables = env(api)
    if variables:
        out["env"] = variables
    return out | {
        "volumeMounts": [{"name": "tmp", "mountPath": pods.TMP_DIR}],
        "resources": pods.resources(own.resources, cpu=CPU_REQUEST, memory=MEMORY_REQUEST, memory_limit=MEMORY_LIMIT),
        "securityContext": pods.container_security(pods.RUNTIME_UID),
        # A slow start (a JVM, a migration) gets two minutes before liveness may restart it.
        "startupProbe": pods.http_probe(own.probes.livenessPath, PORT_NAME, period=2, failures=60),
        "livenessProbe": pods.http_probe(own.probes.livenessPath, PORT_NAME, period=10, failures=3),
        "readinessProbe": pods.http_probe(own.probes.readinessPath, PORT_NAME, period=5, failures=2),
    }


def pod_spec(api: model.CachedApi) -> dict[str, Any]:
    return {
        "securityContext": pods.pod_security(pods.RUNTIME_UID),
        "terminationGracePeriodSeconds": 30,
        "containers": [container(api)],
        "volumes": [pods.empty_dir("tmp")],
    }
