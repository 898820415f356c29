"""Shared fixtures: real PostgreSQL and Redis servers, started once per session.

Also the real Kubernetes control plane (``cluster``, ``deployed``), built and started once
per session for the e2e and security tests.

Each test gets its own empty database (CREATE DATABASE, about 0.1 s) and a
flushed Redis, so tests never see each other's rows or cache entries. Tests
that stop or kill a server ask for ``fresh_postgres`` / ``fresh_redis``,
which are theirs alone.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from cachedapi import model
from cachedapi.dev import embedded
from tests.e2e import build
from tests.e2e import cluster as control_plane

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DEPLOY = ROOT / "deploy"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[embedded.PostgresServer]:
    with embedded.PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[embedded.RedisServer]:
    with embedded.RedisServer() as server:
        yield server


@pytest.fixture
def database_url(postgres_server: embedded.PostgresServer) -> Iterator[str]:
    """A new empty database on the shared server, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url(redis_server: embedded.RedisServer) -> str:
    """The shared Redis, flushed before the test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def fresh_postgres() -> Iterator[embedded.PostgresServer]:
    """A PostgreSQL server of this test's own, which it may stop, kill and restart."""
    with embedded.PostgresServer() as server:
        yield server


@pytest.fixture
def fresh_redis() -> Iterator[embedded.RedisServer]:
    """A Redis server of this test's own, which it may stop, kill and restart."""
    with embedded.RedisServer() as server:
        yield server


@pytest.fixture
def bookstore() -> model.CachedApi:
    return model.load_manifest(EXAMPLES / "bookstore.yaml")[0]


@pytest.fixture(scope="session")
def cluster() -> Iterator[control_plane.Cluster]:
    """A real control plane (tests/e2e/cluster.py), built the first time; never skipped."""
    with control_plane.Cluster(binaries=build.ensure()) as running:
        yield running


@pytest.fixture(scope="session")
def deployed(cluster: control_plane.Cluster) -> control_plane.Cluster:
    """``kubectl apply -k deploy/``, and the CRD Established."""
    cluster.kubectl("apply", "-k", str(DEPLOY))
    cluster.kubectl("wait", "--for=condition=Established", "crd/cachedapis.cachedapi.dev", "--timeout=60s")
    return cluster


#: Test directories whose tests take more than seconds each: a real control plane, podman, load
#: scenarios, fuzzing, the policy scan. ``pytest -m "not slow"`` is a developer's inner loop
#: (a few minutes); plain ``pytest`` (the README's command, CI) runs everything.
SLOW = ("e2e", "reliability", "security")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI timeout, ``kill``, ``timeout``) stops the run as Ctrl-C does: the fixtures'
    teardowns still run, so every server and process a test started is stopped by its pid."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = Path(__file__).resolve().parent
    for item in items:
        parts = item.path.resolve().relative_to(tests).parts
        if parts and parts[0] in SLOW:
            item.add_marker(pytest.mark.slow)
        if parts and parts[0] in {"e2e", "security"}:
            item.add_marker(pytest.mark.e2e)
