"""Names, labels and owner references of the children: the one place that spells them."""

from __future__ import annotations

import enum
from typing import Any

from cachedapi import model

MANAGER = "cachedapi-operator"
APP = "cachedapi"
CONFIG_HASH_ANNOTATION = "cachedapi.dev/config-hash"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"


class Component(enum.Enum):
    """The workloads of one CachedApi (the ``app.kubernetes.io/component`` label, and the child-name
    suffix). Two of them run the runtime's two *roles*, ``gateway`` and ``api``."""

    GATEWAY = "gateway"
    API = "api"
    REDIS = "redis"
    DB = "db"


def child(api: model.CachedApi, suffix: str) -> str:
    return f"{api.metadata.name}-{suffix}"


def config_map(api: model.CachedApi) -> str:
    return child(api, "config")


def db_credentials(api: model.CachedApi) -> str:
    return child(api, "db-credentials")


def api_keys(api: model.CachedApi) -> str:
    return child(api, "api-keys")


def admin_key(api: model.CachedApi) -> str:
    return child(api, "admin-key")


def admin_key_secret(api: model.CachedApi) -> str | None:
    """The Secret holding the gateway's admin key (cache purges): only in front of the user's own API."""
    return admin_key(api) if api.spec.api.own_image else None


def api_keys_secret(api: model.CachedApi) -> str | None:
    """The Secret the gateway reads keys from: the user's, the generated one, or none."""
    auth = api.spec.gateway.auth
    if auth.mode != "apiKey":
        return None
    return auth.apiKeysSecretRef.name if auth.apiKeysSecretRef else api_keys(api)


def selector(api: model.CachedApi, component: str) -> dict[str, str]:
    """The labels that pick one component's pods: stable for the object's lifetime."""
    return {LABEL_NAME: APP, LABEL_INSTANCE: api.metadata.name, LABEL_COMPONENT: component}


def labels(api: model.CachedApi, component: str) -> dict[str, str]:
    return {**selector(api, component), LABEL_PART_OF: APP, LABEL_MANAGED_BY: MANAGER}


def owner_reference(api: model.CachedApi, uid: str) -> dict[str, Any]:
    """A controller reference: deleting the CachedApi deletes the child (garbage collection)."""
    return {
        "apiVersion": f"{model.API_GROUP}/{model.API_VERSION}",
        "kind": model.KIND,
        "name": api.metadata.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(api: model.CachedApi, *, name: str, component: str, uid: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": api.metadata.namespace,
        "labels": labels(api, component),
        "ownerReferences": [owner_reference(api, uid)],
    }


def endpoint(api: model.CachedApi) -> str:
    port = api.spec.gateway.service.port
    return f"http://{child(api, Component.GATEWAY.value)}.{api.metadata.namespace}.svc:{port}"
