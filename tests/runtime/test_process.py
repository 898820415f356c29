"""``cachedapi runtime --role api`` as a real process, as a pod runs it (via the dev stack, no gateway)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from cachedapi import contract, model
from cachedapi.dev import devstack, embedded
from cachedapi.operator.children import config as x_config

from .conftest import metric


def test_the_api_role_process_serves_caches_and_stops_cleanly(
    bookstore: model.CachedApi, fresh_postgres: embedded.PostgresServer, fresh_redis: embedded.RedisServer
) -> None:
    stack = devstack.Stack(bookstore, gateway_instances=0, postgres=fresh_postgres, redis=fresh_redis)
    with stack:
        assert stack.url == stack.apis[0].url
        with httpx.Client(base_url=stack.url, timeout=10) as client:
            location = client.post("/v1/books", json={"title": "Dune", "author": "Herbert"}).headers["location"]
            assert client.get(location).headers["x-cache"] == "MISS"
            hit = client.get(location)
            assert hit.headers["x-cache"] == "HIT" and hit.json()["title"] == "Dune"
            assert metric(client.get("/metrics").text, "cachedapi_api_cache_total", result="hit") == 1
            assert client.get("/openapi.json").json()["openapi"] == "3.1.0"
        role = stack.apis[0]
        assert role.proc is not None
        role.stop()
        # uvicorn shuts down gracefully, then re-raises SIGTERM so that the exit status tells why it stopped
        assert role.proc.returncode in (0, -signal.SIGTERM), stack.logs()
        assert "Traceback" not in stack.logs()


def test_the_api_role_refuses_to_start_without_a_database_url(tmp_path: Path, bookstore: model.CachedApi) -> None:
    config = tmp_path / "config.json"
    config.write_text(contract.dump_config(x_config.render_config(bookstore)))
    env = {k: v for k, v in os.environ.items() if k not in (contract.ENV_DATABASE_URL, contract.ENV_REDIS_URL)}
    done = subprocess.run(
        [sys.executable, "-m", "cachedapi", "runtime", "--role", "api", "--config", str(config), "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert contract.ENV_DATABASE_URL in done.stderr


def test_the_roles_read_their_secrets_from_files_as_the_operator_mounts_them(
    tmp_path: Path,
    bookstore: model.CachedApi,
    fresh_postgres: embedded.PostgresServer,
    fresh_redis: embedded.RedisServer,
) -> None:
    """The operator sets CACHEDAPI_*_FILE, never the secret itself; both roles must start from that."""
    (tmp_path / "dsn").write_text(fresh_postgres.url + "\n")
    (tmp_path / "redis").write_text(fresh_redis.url + "\n")
    stack = devstack.Stack(
        bookstore,
        postgres=fresh_postgres,
        redis=fresh_redis,
        extra_env={
            contract.ENV_DATABASE_URL + contract.FILE_SUFFIX: str(tmp_path / "dsn"),
            contract.ENV_REDIS_URL + contract.FILE_SUFFIX: str(tmp_path / "redis"),
        },
    )
    for role in [*stack.apis, *stack.gateways]:  # what a pod has: the file settings only
        role.env.pop(contract.ENV_DATABASE_URL, None)
        role.env.pop(contract.ENV_REDIS_URL, None)
    with stack, httpx.Client(base_url=stack.url, headers={"X-API-Key": stack.api_key}, timeout=10) as client:
        location = client.post("/v1/books", json={"title": "Dune", "author": "Herbert"}).headers["location"]
        assert client.get(location).headers["x-cache"] == "MISS"
        assert client.get(location).headers["x-cache"] == "HIT"  # the gateway found Redis too
