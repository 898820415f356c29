"""Fixtures of the gateway tests: the real api role behind real gateway processes.

One stack (api role + gateway, on the session's PostgreSQL and Redis, on a
database of its own) serves the module that asks for it; tests that need
another configuration (a low rate limit, JWT) start extra gateway processes
in front of that same api role with ``extra_gateway``, which costs one
process, not a stack. Every process is stopped by pid in every outcome.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from cachedapi import contract, model
from cachedapi.dev import devstack, embedded
from cachedapi.operator.children import config as x_config

API_KEY = "test-key-1"


def variant(
    api: model.CachedApi, *, gateway: dict[str, Any] | None = None, cache: dict[str, Any] | None = None
) -> model.CachedApi:
    """The same CachedApi with parts of ``spec.gateway`` / ``spec.cache`` replaced."""
    data = api.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["spec"]["gateway"].update(gateway or {})
    data["spec"]["cache"].update(cache or {})
    return model.CachedApi.model_validate(data)


@contextlib.contextmanager
def new_database(server: embedded.PostgresServer) -> Iterator[str]:
    name = f"g_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def running_stack(
    api: model.CachedApi,
    *,
    postgres: embedded.PostgresServer,
    redis: embedded.RedisServer,
    gateways: int = 1,
) -> Iterator[devstack.Stack]:
    with new_database(postgres) as url:
        stack = devstack.Stack(
            api,
            api_key=API_KEY,
            postgres=postgres,
            redis=redis,
            gateway_instances=gateways,
            extra_env={contract.ENV_DATABASE_URL: url},
        )
        with stack:
            try:
                yield stack
            except BaseException:
                print(stack.logs())
                raise


@contextlib.contextmanager
def extra_gateway(
    stack: devstack.Stack, api: model.CachedApi, *, env: dict[str, str] | None = None, upstream: str | None = None
) -> Iterator[devstack.Instance]:
    """One more gateway process with ``api``'s configuration, in front of the stack's api role."""
    config_path = stack.workdir / f"gateway-{uuid.uuid4().hex[:8]}.json"
    config_path.write_text(contract.dump_config(x_config.render_config(api)), encoding="utf-8")
    role_env = {
        **stack.gateways[0].env,
        contract.ENV_CONFIG: str(config_path),
        contract.ENV_UPSTREAM_URL: upstream or stack.apis[0].url,
        **(env or {}),
    }
    role = devstack.Instance(
        role="gateway", port=embedded.free_port(), env=role_env, log_path=Path(str(config_path) + ".log")
    )
    try:
        role.start()
        yield role
    except BaseException:
        print(role.log_path.read_text(errors="replace")[-4000:] if role.log_path.exists() else "(no log)")
        raise
    finally:
        role.stop()


@pytest.fixture(scope="module")
def stack(
    bookstore_module: model.CachedApi, postgres_server: embedded.PostgresServer, redis_server: embedded.RedisServer
) -> Iterator[devstack.Stack]:
    with running_stack(bookstore_module, postgres=postgres_server, redis=redis_server) as running:
        yield running


@pytest.fixture(scope="module")
def bookstore_module() -> model.CachedApi:
    return model.load_manifest(Path(__file__).resolve().parents[2] / "examples" / "bookstore.yaml")[0]


@pytest.fixture
def client(stack: devstack.Stack) -> Iterator[httpx.Client]:
    """An authenticated client of the stack's gateway."""
    with httpx.Client(base_url=stack.url, headers={"X-API-Key": API_KEY}, timeout=10) as http:
        yield http


@pytest.fixture
def anonymous(stack: devstack.Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=10) as http:
        yield http
