"""Fixtures of the api role tests: the app in-process, on the shared servers, with small TTLs."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from cachedapi import contract, model
from cachedapi.operator.children import config as x_config
from cachedapi.runtime.api import app as api_app


def runtime_config(
    api: model.CachedApi, *, ttl: int | None = None, stale_if_error: int | None = None
) -> contract.RuntimeConfig:
    """The api's runtime configuration, with every cacheable resource's ttl and the stale window overridden."""
    config = x_config.runtime_config(api)
    resources = {
        name: dataclasses.replace(res, ttl_seconds=ttl) if ttl is not None and res.cacheable else res
        for name, res in config.resources.items()
    }
    return dataclasses.replace(
        config,
        resources=resources,
        stale_if_error_seconds=config.stale_if_error_seconds if stale_if_error is None else stale_if_error,
    )


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` with these labels, in a Prometheus text exposition."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def app_metric(app: FastAPI, name: str, **labels: str) -> float:
    return metric(app.state.metrics.render().decode(), name, **labels)


@contextlib.asynccontextmanager
async def serve(
    config: contract.RuntimeConfig,
    *,
    database_url: str,
    redis_url: str | None,
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The api role in this process (lifespan started), and a client talking to it over ASGI.
    ``extra_env``: more of the role's environment (the TLS tests' CA bundles)."""
    environ = {contract.ENV_DATABASE_URL: database_url, **(extra_env or {})}
    if redis_url:
        environ[contract.ENV_REDIS_URL] = redis_url
    app = api_app.create_app(config, environ)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=30) as client:
            yield app, client


@pytest.fixture
async def api(
    bookstore: model.CachedApi, database_url: str, redis_url: str
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The bookstore api role on a fresh database and a flushed Redis."""
    async with serve(runtime_config(bookstore), database_url=database_url, redis_url=redis_url) as pair:
        yield pair


@pytest.fixture
async def client(api: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return api[1]
