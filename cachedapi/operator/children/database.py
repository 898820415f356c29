"""The managed PostgreSQL: one StatefulSet pod with a volume claim, behind a headless Service.

The stock image runs as its own user (uid 70 in the alpine build) under a
read-only root filesystem: the socket directory and /tmp are emptyDirs, and
PGDATA is a subdirectory of the volume (initdb refuses a non-empty mount point
such as one holding lost+found). Its user, password and database name come
from x-db-credentials mounted as files (the image's ``POSTGRES_*_FILE``), not
from environment variables, which anything that can read the process's
environment or a crash dump would see.
"""

from __future__ import annotations

from typing import Any

from cachedapi import contract, model
from cachedapi.operator.children import inputs, names, pods, secrets

IMAGE = "postgres:16-alpine"
DATA_DIR = "/var/lib/postgresql/data"
CREDENTIALS_DIR = "/etc/postgresql-credentials"


def _managed(api: model.CachedApi) -> model.ManagedDatabase:
    managed = api.spec.database.managed
    if managed is None:
        raise ValueError("the database is not managed")
    return managed


def stateful_set(api: model.CachedApi, inp: inputs.Inputs) -> dict[str, Any]:
    role = names.Component.DB.value
    managed = _managed(api)
    creds = names.db_credentials(api)
    ready = ["pg_isready", "-h", "127.0.0.1", "-p", str(contract.POSTGRES_PORT), "-U", secrets.DB_USER]
    container = {
        "name": "postgres",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "postgres", "containerPort": contract.POSTGRES_PORT, "protocol": "TCP"}],
        "env": [
            {"name": "POSTGRES_USER_FILE", "value": f"{CREDENTIALS_DIR}/username"},
            {"name": "POSTGRES_PASSWORD_FILE", "value": f"{CREDENTIALS_DIR}/password"},
            {"name": "POSTGRES_DB_FILE", "value": f"{CREDENTIALS_DIR}/database"},
            {"name": "PGDATA", "value": f"{DATA_DIR}/pgdata"},
        ],
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True},
            {"name": "run", "mountPath": "/var/run/postgresql"},
            {"name": "tmp", "mountPath": pods.TMP_DIR},
        ],
        "resources": pods.resources(managed.resources, cpu="100m", memory="128Mi", memory_limit="512Mi"),
        "securityContext": pods.container_security(pods.POSTGRES_UID),
        # initdb on a new volume takes a while: liveness starts counting only once it answers.
        "startupProbe": pods.exec_probe(ready, period=5, failures=60),
        "livenessProbe": pods.exec_probe(ready, period=10, failures=6),
        "readinessProbe": pods.exec_probe(ready, period=5, failures=2),
    }
    pod_spec = {
        "securityContext": pods.pod_security(pods.POSTGRES_UID),
        "terminationGracePeriodSeconds": 60,
        "containers": [container],
        "volumes": [
            pods.empty_dir("run"),
            pods.empty_dir("tmp"),
            {
                "name": "credentials",
                "secret": {
                    "secretName": creds,
                    "defaultMode": pods.SECRET_FILE_MODE,
                    "items": [{"key": k, "path": k} for k in ("username", "password", "database")],
                },
            },
        ],
    }
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": managed.storage}},
    }
    if managed.storageClassName:
        claim["storageClassName"] = managed.storageClassName
    hash_ = pods.config_hash(texts=[IMAGE], secrets={creds: inp.digest(creds)})
    name = names.child(api, role)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": names.metadata(api, name=name, component=role, uid=inp.owner_uid),
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": names.selector(api, role)},
            "template": pods.template(api, component=role, spec=pod_spec, hash_=hash_),
            "volumeClaimTemplates": [
                {"metadata": {"name": "data", "labels": names.selector(api, role)}, "spec": claim}
            ],
            # The claim goes with the StatefulSet, which goes with the CachedApi: nothing is left behind.
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
        },
    }


def service(api: model.CachedApi, inp: inputs.Inputs) -> dict[str, Any]:
    role = names.Component.DB.value
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": names.metadata(api, name=names.child(api, role), component=role, uid=inp.owner_uid),
        "spec": {
            "clusterIP": "None",
            "selector": names.selector(api, role),
            "ports": [
                {"name": "postgres", "port": contract.POSTGRES_PORT, "targetPort": "postgres", "protocol": "TCP"}
            ],
        },
    }
