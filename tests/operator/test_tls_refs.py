"""The CA bundles of ``external.tls``: a Secret or key that is missing is ``SpecValid=False`` naming
the field, as for ``urlSecretRef``; once there, the api pods mount it.

One reconcile pass of the operator's own ``Reconciler``, in this process, against the API
emulator over HTTP (``emulator``): the Secrets are read and the status written as on a cluster.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cachedapi import contract
from cachedapi.operator import kube, reconcile

from . import emulator as em
from . import podspec

NS = "tls"


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def _body() -> dict[str, Any]:
    external = {"urlSecretRef": {"name": "stores", "key": "redis"}, "tls": {"caSecretRef": {"name": "redis-ca"}}}
    return {
        "metadata": {"name": "shop", "namespace": NS},
        "spec": {
            "resources": [{"name": "books"}],
            "gateway": {"auth": {"mode": "none"}},
            "cache": {"redis": {"external": external}},
            "database": {
                "external": {
                    "urlSecretRef": {"name": "stores", "key": "pg"},
                    "tls": {"caSecretRef": {"name": "pg-ca", "key": "root.pem"}},
                }
            },
        },
    }


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[em.Cluster, reconcile.Reconciler]]:
    async with em.emulated_cluster() as emulated:
        api_server = kube.ApiServer()
        await api_server.login(kube.Credentials(server=emulated.url))
        try:
            yield emulated, reconcile.Reconciler(api_server)
        finally:
            await api_server.close()


async def _pass(cluster: em.Cluster, reconciler: reconcile.Reconciler) -> dict[str, Any]:
    """One reconcile of the CachedApi as stored; its SpecValid condition afterwards."""
    reconciler.forget_secrets()  # as each periodic resync does
    body = await cluster.get("CachedApi", NS, "shop")
    assert body is not None
    await reconciler.reconcile(body, {})
    stored = await cluster.get("CachedApi", NS, "shop")
    assert stored is not None
    return next(c for c in stored["status"]["conditions"] if c["type"] == "SpecValid")


async def test_a_missing_ca_secret_or_key_is_spec_valid_false_naming_the_field_until_it_is_there(
    cluster: tuple[em.Cluster, reconcile.Reconciler],
) -> None:
    emulated, reconciler = cluster
    await emulated.create(_secret("stores", {"redis": "rediss://u:p@redis.example:6380/0", "pg": "postgresql://x"}))
    await emulated.apply_cachedapi(_body())

    valid = await _pass(emulated, reconciler)
    assert valid["status"] == "False"
    assert valid["message"] == f"spec.cache.redis.external.tls.caSecretRef: secret redis-ca not found in namespace {NS}"

    await emulated.create(_secret("redis-ca", {"ca.crt": "-----BEGIN CERTIFICATE-----\n"}))
    valid = await _pass(emulated, reconciler)
    assert valid["message"] == f"spec.database.external.tls.caSecretRef: secret pg-ca not found in namespace {NS}"

    await emulated.create(_secret("pg-ca", {"ca.crt": "-----BEGIN CERTIFICATE-----\n"}))
    valid = await _pass(emulated, reconciler)
    assert valid["message"] == "spec.database.external.tls.caSecretRef: secret pg-ca has no key 'root.pem'"

    await emulated.patch("Secret", NS, "pg-ca", {"data": {"root.pem": base64.b64encode(b"pem").decode()}})
    valid = await _pass(emulated, reconciler)
    assert valid["status"] == "True", valid
    deployment = await emulated.get("Deployment", NS, "shop-api")
    assert deployment is not None
    pod = deployment["spec"]["template"]["spec"]
    assert podspec.file_source(pod, contract.ENV_DATABASE_CA_FILE) == ("pg-ca", "root.pem")
    assert podspec.file_source(pod, contract.ENV_REDIS_CA_FILE) == ("redis-ca", "ca.crt")
