"""The gateway and api tiers: Deployment and Service for each runtime role.

Both run ``cachedapi runtime --role ...`` from one image, read the mounted
x-config file, and read each secret (database URL, external Redis URL, JWT
secret) from a mounted file named by ``<SETTING>_FILE`` (``contract``), so
no secret is in a pod's environment. The gateway alone mounts the API keys
Secret as a directory. The CA bundles of ``external.tls`` are mounted the
same way (both roles: Redis's; the api role: PostgreSQL's) and named by
``contract.ENV_REDIS_CA_FILE`` / ``ENV_DATABASE_CA_FILE``.

With ``spec.api.image`` the api tier runs the user's own API instead (``ownapi``), and the
gateway also mounts the generated admin key as the file ``contract.ENV_ADMIN_KEY_FILE`` names.
"""

from __future__ import annotations

from typing import Any

from cachedapi import contract, model
from cachedapi.operator.children import config, inputs, names, ownapi, pods, secrets

PORT_NAME = "http"


def tier(api: model.CachedApi, role: names.Component) -> model.Gateway | model.Api:
    return api.spec.gateway if role is names.Component.GATEWAY else api.spec.api


def port(role: names.Component) -> int:
    return contract.GATEWAY_PORT if role is names.Component.GATEWAY else contract.API_PORT


def image(api: model.CachedApi, inp: inputs.Inputs) -> str:
    return api.spec.image or inp.default_image


class _Wiring:
    """A pod's environment, volumes and mounts, built up one setting at a time."""

    def __init__(self) -> None:
        self.env: list[dict[str, Any]] = []
        self.volumes: list[dict[str, Any]] = []
        self.mounts: list[dict[str, Any]] = []

    def secret_file(self, setting: str, ref: model.SecretKeySelector) -> None:
        """One key of a Secret as a read-only file, named by ``<setting>_FILE`` (never the value in env)."""
        path = contract.secret_file_path(setting)
        volume = setting.lower().replace("_", "-")
        self.env.append({"name": setting + contract.FILE_SUFFIX, "value": path})
        self.volumes.append(
            {
                "name": volume,
                "secret": {
                    "secretName": ref.name,
                    "items": [{"key": ref.key, "path": "value"}],
                    "defaultMode": pods.SECRET_FILE_MODE,
                },
            }
        )
        self.mounts.append({"name": volume, "mountPath": path.rsplit("/", 1)[0], "readOnly": True})

    def ca_file(self, setting: str, ref: model.SecretKeySelector, *, path: str, volume: str) -> None:
        """A CA bundle from one key of a Secret as a read-only file at ``path``, which ``setting`` names."""
        directory, filename = path.rsplit("/", 1)
        self.env.append({"name": setting, "value": path})
        self.volumes.append(
            {
                "name": volume,
                "secret": {
                    "secretName": ref.name,
                    "items": [{"key": ref.key, "path": filename}],
                    "defaultMode": pods.SECRET_FILE_MODE,
                },
            }
        )
        self.mounts.append({"name": volume, "mountPath": directory, "readOnly": True})


def _redis_url(api: model.CachedApi, wiring: _Wiring) -> None:
    redis = api.spec.cache.redis
    if redis.external is not None:
        wiring.secret_file(contract.ENV_REDIS_URL, redis.external.urlSecretRef)
        if redis.external.tls is not None:
            ref = redis.external.tls.caSecretRef
            wiring.ca_file(contract.ENV_REDIS_CA_FILE, ref, path=contract.REDIS_CA_PATH, volume="redis-ca")
        return
    host = f"{names.child(api, names.Component.REDIS.value)}.{api.metadata.namespace}.svc"
    wiring.env.append({"name": contract.ENV_REDIS_URL, "value": f"redis://{host}:{contract.REDIS_PORT}/0"})


def _database_url(api: model.CachedApi, wiring: _Wiring) -> None:
    db = api.spec.database
    if db.external is not None:
        wiring.secret_file(contract.ENV_DATABASE_URL, db.external.urlSecretRef)
        if db.external.tls is not None:
            ca = db.external.tls.caSecretRef
            wiring.ca_file(contract.ENV_DATABASE_CA_FILE, ca, path=contract.DATABASE_CA_PATH, volume="database-ca")
    else:
        ref = model.SecretKeySelector(name=names.db_credentials(api), key="url")
        wiring.secret_file(contract.ENV_DATABASE_URL, ref)


def read_secrets(api: model.CachedApi, role: names.Component) -> list[str]:
    """The Secrets a role's pods read at start: a change to any of them rolls the pods."""
    spec = api.spec
    if role is names.Component.API and spec.api.own_image:
        return ownapi.read_secrets(api)
    out: list[str] = []
    redis = spec.cache.redis.external
    if redis is not None:
        out.append(redis.urlSecretRef.name)
        if redis.tls is not None:
            out.append(redis.tls.caSecretRef.name)
    if role is names.Component.API:
        db = spec.database
        out.append(db.external.urlSecretRef.name if db.external is not None else names.db_credentials(api))
        if db.external is not None and db.external.tls is not None:
            out.append(db.external.tls.caSecretRef.name)
    else:
        keys = names.api_keys_secret(api)
        if keys is not None:
            out.append(keys)
        jwt = spec.gateway.auth.jwt
        if spec.gateway.auth.mode == "jwt" and jwt is not None and jwt.secretRef is not None:
            out.append(jwt.secretRef.name)
        admin = names.admin_key_secret(api)
        if admin is not None:
            out.append(admin)
    return sorted(set(out))


def _env_and_volumes(api: model.CachedApi, role: names.Component) -> tuple[list[Any], list[Any], list[Any]]:
    wiring = _Wiring()
    wiring.env.append({"name": contract.ENV_CONFIG, "value": f"{contract.CONFIG_DIR}/{contract.CONFIG_FILE}"})
    wiring.volumes += [{"name": "config", "configMap": {"name": names.config_map(api)}}, pods.empty_dir("tmp")]
    wiring.mounts += [
        {"name": "config", "mountPath": contract.CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": pods.TMP_DIR},
    ]
    _redis_url(api, wiring)
    if role is names.Component.API:
        _database_url(api, wiring)
        return wiring.env, wiring.volumes, wiring.mounts
    keys = names.api_keys_secret(api)
    if keys is not None:
        wiring.env.append({"name": contract.ENV_API_KEYS_DIR, "value": contract.API_KEYS_DIR})
        wiring.volumes.append(
            {"name": "api-keys", "secret": {"secretName": keys, "defaultMode": pods.SECRET_FILE_MODE}}
        )
        wiring.mounts.append({"name": "api-keys", "mountPath": contract.API_KEYS_DIR, "readOnly": True})
    jwt = api.spec.gateway.auth.jwt
    if api.spec.gateway.auth.mode == "jwt" and jwt is not None and jwt.secretRef is not None:
        wiring.secret_file(contract.ENV_JWT_SECRET, jwt.secretRef)
    admin = names.admin_key_secret(api)
    if admin is not None:
        wiring.secret_file(contract.ENV_ADMIN_KEY, model.SecretKeySelector(name=admin, key=secrets.ADMIN_KEY_KEY))
    return wiring.env, wiring.volumes, wiring.mounts


def pod_hash(api: model.CachedApi, inp: inputs.Inputs, *, role: names.Component) -> str:
    if role is names.Component.API and api.spec.api.own_image:
        return ownapi.pod_hash(api, inp)
    return pods.config_hash(
        texts=[config.text(api)], secrets={name: inp.digest(name) for name in read_secrets(api, role)}
    )


def _runtime_pod_spec(api: model.CachedApi, inp: inputs.Inputs, *, role: names.Component) -> dict[str, Any]:
    """The pod of a runtime role (``cachedapi runtime --role ...``)."""
    settings = tier(api, role)
    env, volumes, mounts = _env_and_volumes(api, role)
    memory = "64Mi" if role is names.Component.GATEWAY else "96Mi"
    #: Each process is measured at <= 100 MiB RSS under load (bench/); the limit leaves room.
    limit = "256Mi"
    container = {
        "name": role.value,
        "image": image(api, inp),
        "imagePullPolicy": "IfNotPresent",
        "command": ["cachedapi"],
        "args": ["runtime", "--role", role.value],
        "ports": [{"name": PORT_NAME, "containerPort": port(role), "protocol": "TCP"}],
        "env": env,
        "volumeMounts": mounts,
        "resources": pods.resources(settings.resources, cpu="100m", memory=memory, memory_limit=limit),
        "securityContext": pods.container_security(pods.RUNTIME_UID),
        "livenessProbe": pods.http_probe("/healthz", PORT_NAME, period=10, failures=3),
        "readinessProbe": pods.http_probe("/readyz", PORT_NAME, period=5, failures=2),
    }
    return {
        "securityContext": pods.pod_security(pods.RUNTIME_UID),
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": volumes,
    }


def deployment(api: model.CachedApi, inp: inputs.Inputs, *, role: names.Component) -> dict[str, Any]:
    settings = tier(api, role)
    if role is names.Component.API and api.spec.api.own_image:
        pod_spec = ownapi.pod_spec(api)
    else:
        pod_spec = _runtime_pod_spec(api, inp, role=role)
    replicas = settings.autoscaling.minReplicas if settings.autoscaling is not None else settings.replicas
    name = names.child(api, role.value)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": names.metadata(api, name=name, component=role.value, uid=inp.owner_uid),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": names.selector(api, role.value)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": pods.template(api, component=role.value, spec=pod_spec, hash_=pod_hash(api, inp, role=role)),
        },
    }


def service(api: model.CachedApi, inp: inputs.Inputs, *, role: names.Component) -> dict[str, Any]:
    if role is names.Component.GATEWAY:
        svc_type, svc_port = api.spec.gateway.service.type, api.spec.gateway.service.port
    else:
        svc_type, svc_port = "ClusterIP", config.api_port(api)
    name = names.child(api, role.value)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": names.metadata(api, name=name, component=role.value, uid=inp.owner_uid),
        "spec": {
            "type": svc_type,
            "selector": names.selector(api, role.value),
            "ports": [{"name": PORT_NAME, "port": svc_port, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }
