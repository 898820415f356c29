"""The Secrets the operator generates once (database credentials, an API key, the gateway's
admin key in front of the user's own API) and a digest
of any Secret's data for the pods' config-hash.

The values come in through ``Inputs`` so that building stays pure; the
operator creates these Secrets only when they are missing and never
overwrites them.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from typing import Any

from cachedapi import contract, model
from cachedapi.operator.children import inputs, names

DB_USER = "cachedapi"
DB_NAME = "cachedapi"
#: The client label of the generated key (a Secret's data key is the label of the key it holds).
DEFAULT_KEY_LABEL = "default"
#: The data key of the admin key Secret (``names.admin_key``).
ADMIN_KEY_KEY = "key"
#: The data key of the database URL in the generated database credentials Secret.
DB_URL_KEY = "url"


def new_token() -> str:
    """A fresh secret value: URL-safe, so that it needs no escaping in a connection URL."""
    return secrets.token_urlsafe(32)


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def db_url(api: model.CachedApi, password: str) -> str:
    host = f"{names.child(api, names.Component.DB.value)}.{api.metadata.namespace}.svc"
    return f"postgresql://{DB_USER}:{password}@{host}:{contract.POSTGRES_PORT}/{DB_NAME}"


def _secret(api: model.CachedApi, inp: inputs.Inputs, *, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": names.metadata(api, name=name, component="credentials", uid=inp.owner_uid),
        "type": "Opaque",
        "data": {key: _b64(value) for key, value in data.items()},
    }


def db_credentials(api: model.CachedApi, inp: inputs.Inputs) -> dict[str, Any]:
    data = {"username": DB_USER, "password": inp.db_password, "database": DB_NAME}
    data[DB_URL_KEY] = db_url(api, inp.db_password)
    return _secret(api, inp, name=names.db_credentials(api), data=data)


def api_keys(api: model.CachedApi, inp: inputs.Inputs) -> dict[str, Any]:
    return _secret(api, inp, name=names.api_keys(api), data={DEFAULT_KEY_LABEL: inp.api_key})


def admin_key(api: model.CachedApi, inp: inputs.Inputs) -> dict[str, Any]:
    return _secret(api, inp, name=names.admin_key(api), data={ADMIN_KEY_KEY: inp.admin_key})


def generated(api: model.CachedApi, inp: inputs.Inputs) -> list[dict[str, Any]]:
    """The generated Secrets this spec needs (none when the user brings their own)."""
    out = []
    if api.spec.database.managed is not None:
        out.append(db_credentials(api, inp))
    if api.spec.gateway.auth.mode == "apiKey" and api.spec.gateway.auth.apiKeysSecretRef is None:
        out.append(api_keys(api, inp))
    if names.admin_key_secret(api) is not None:
        out.append(admin_key(api, inp))
    return out


def digest(data: Mapping[str, str] | None) -> str:
    """A digest of a Secret's ``data`` (base64 values, as the API returns them)."""
    hasher = hashlib.sha256()
    for key in sorted(data or {}):
        hasher.update(f"{key}={(data or {})[key]}\n".encode())
    return hasher.hexdigest()[:16]


def referenced(api: model.CachedApi) -> dict[str, str]:
    """Every Secret the pods read that the user owns: name -> the spec field that names it."""
    spec = api.spec
    out: dict[str, str] = {}
    auth = spec.gateway.auth
    if auth.mode == "apiKey" and auth.apiKeysSecretRef is not None:
        out[auth.apiKeysSecretRef.name] = "spec.gateway.auth.apiKeysSecretRef"
    if auth.mode == "jwt" and auth.jwt is not None and auth.jwt.secretRef is not None:
        out.setdefault(auth.jwt.secretRef.name, "spec.gateway.auth.jwt.secretRef")
    for field, ref in _external_refs(api) + _env_refs(api):
        out.setdefault(ref.name, field)
    return out


def _env_refs(api: model.CachedApi) -> list[tuple[str, model.SecretKeySelector]]:
    """The Secrets the user's own API reads through its environment (``spec.api.env``), each with
    its field. (ConfigMaps are not looked up: the operator reads no ConfigMap it does not own.)"""
    out: list[tuple[str, model.SecretKeySelector]] = []
    if not api.spec.api.own_image:
        return out
    for i, var in enumerate(api.spec.api.env):
        if var.valueFrom is not None and var.valueFrom.secretKeyRef is not None:
            out.append((f"spec.api.env[{i}].valueFrom.secretKeyRef", var.valueFrom.secretKeyRef))
    return out


def _external_refs(api: model.CachedApi) -> list[tuple[str, model.SecretKeySelector]]:
    """The external stores' Secret references, each with the spec field that names it."""
    out: list[tuple[str, model.SecretKeySelector]] = []
    for where, external in (
        ("spec.cache.redis.external", api.spec.cache.redis.external),
        ("spec.database.external", api.spec.database.external),
    ):
        if external is not None:
            out.append((f"{where}.urlSecretRef", external.urlSecretRef))
            if external.tls is not None:
                out.append((f"{where}.tls.caSecretRef", external.tls.caSecretRef))
    return out


def required_keys(api: model.CachedApi) -> dict[tuple[str, str], str]:
    """(secret, key) pairs the pods read, with the spec field that names them."""
    spec = api.spec
    out: dict[tuple[str, str], str] = {}
    auth = spec.gateway.auth
    if auth.mode == "jwt" and auth.jwt is not None and auth.jwt.secretRef is not None:
        out[(auth.jwt.secretRef.name, auth.jwt.secretRef.key)] = "spec.gateway.auth.jwt.secretRef"
    for field, ref in _external_refs(api) + _env_refs(api):
        out.setdefault((ref.name, ref.key), field)
    return out
