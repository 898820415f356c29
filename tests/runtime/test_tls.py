"""TLS to Redis and to PostgreSQL, in both roles, against real servers that speak nothing else.

The servers and certificates are ``tls_servers``'s: Debian's redis-server on a TLS port only,
whose default user is off (every client must AUTH as the ACL user), and PostgreSQL whose
pg_hba takes TLS connections only; the server certificate names ``localhost`` and is signed by
the test's CA. A second CA, and the same server reached as ``127.0.0.1``, are what must be
refused: at once, never after a hang, with ``/readyz`` and the log saying why.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from cachedapi import contract, model
from cachedapi.dev import devstack, embedded
from cachedapi.operator.children import config as x_config
from cachedapi.runtime import redisconn
from cachedapi.runtime.api import db as db_mod
from cachedapi.runtime.api import metrics as metrics_mod

from . import tls_servers
from .conftest import runtime_config, serve

API_KEY = "tls-test-key"
BOOK = {"title": "Dune", "author": "Frank Herbert"}
#: The longest a refusal may take to show: one connect (TLS handshake included) and one reply,
#: each bounded by the client's timeouts (0.5 s), with room for a machine under load.
PROMPT = 2.0
#: PostgreSQL's: the pool's wait for a connection (1.5 s), then the answer.
PG_PROMPT = 4.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tls_servers.Pki:
    return tls_servers.Pki.make(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_redis(pki: tls_servers.Pki) -> Iterator[tls_servers.TlsRedisServer]:
    with tls_servers.TlsRedisServer(pki) as server:
        yield server


@pytest.fixture(scope="module")
def tls_postgres(pki: tls_servers.Pki) -> Iterator[tls_servers.TlsPostgresServer]:
    with tls_servers.TlsPostgresServer(pki) as server:
        yield server


@pytest.fixture
def flushed(tls_redis: tls_servers.TlsRedisServer, pki: tls_servers.Pki) -> tls_servers.TlsRedisServer:
    with redis.Redis.from_url(tls_redis.url, ssl_ca_certs=str(pki.ca)) as client:
        client.flushall()
    return tls_redis


@pytest.fixture
def tls_database(tls_postgres: tls_servers.TlsPostgresServer) -> Iterator[str]:
    """A new database on the TLS server, as a URL that says nothing of TLS (the role adds it)."""
    name = f"tls_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(tls_postgres.admin_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield tls_postgres.url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(tls_postgres.admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the one Redis client, alone ----------------------------------------------------------------


async def test_redis_over_tls_verified_against_the_ca_with_an_acl_user(
    flushed: tls_servers.TlsRedisServer, pki: tls_servers.Pki
) -> None:
    conn = redisconn.PipelinedRedis(flushed.url_for(db=2), ca_file=str(pki.ca))
    try:
        assert await conn.call(b"ACL", b"WHOAMI") == tls_servers.REDIS_USER.encode()
        await asyncio.gather(*(conn.call(b"SET", b"k%d" % i, b"v%d" % i) for i in range(50)))
        assert await asyncio.gather(*(conn.call(b"GET", b"k%d" % i) for i in range(50))) == [
            b"v%d" % i for i in range(50)
        ]
        assert await conn.check() is None and conn.misconfigured is None
    finally:
        await conn.close()


REFUSALS = {
    "wrong CA": ("wrong_ca", tls_servers.SERVER_NAME, tls_servers.REDIS_PASSWORD, "certificate verify failed"),
    "wrong host name": ("ca", tls_servers.UNNAMED_HOST, tls_servers.REDIS_PASSWORD, "certificate verify failed"),
    "wrong password": ("ca", tls_servers.SERVER_NAME, "not-the-password", "WRONGPASS"),
}


def _refused_setup(case: str, server: tls_servers.TlsRedisServer, pki: tls_servers.Pki) -> tuple[str, str, str]:
    """(URL, CA file, what the refusal must say) for one of ``REFUSALS``."""
    ca, host, password, said = REFUSALS[case]
    return server.url_for(host=host, password=password), str(getattr(pki, ca)), said


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_redis_that_cannot_be_trusted_or_refuses_the_password_is_refused_at_once_saying_why(
    case: str, flushed: tls_servers.TlsRedisServer, pki: tls_servers.Pki
) -> None:
    url, ca, said = _refused_setup(case, flushed, pki)
    downs: list[str] = []
    conn = redisconn.PipelinedRedis(url, ca_file=ca, on_down=downs.append)
    try:
        started = time.monotonic()
        with pytest.raises(redisconn.RedisRefused, match=said):
            await conn.call(b"GET", b"k")
        assert time.monotonic() - started < PROMPT
        assert conn.misconfigured is not None and said in conn.misconfigured
        assert len(downs) == 1 and said in downs[0], downs  # the log line of the outage says it too
        checked = await conn.check()  # while the breaker is open: the remembered reason, at once
        assert checked is not None and said in checked
    finally:
        await conn.close()


def test_a_ca_bundle_that_cannot_work_stops_the_role_at_start_naming_the_setting(
    tmp_path: Path, pki: tls_servers.Pki
) -> None:
    with pytest.raises(ValueError, match="rediss://"):
        redisconn.PipelinedRedis("redis://localhost:6379/0", ca_file=str(pki.ca))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=contract.ENV_REDIS_CA_FILE):
        redisconn.PipelinedRedis("rediss://localhost:6379/0", ca_file=str(junk))
    with pytest.raises(ValueError, match=contract.ENV_REDIS_CA_FILE):
        redisconn.PipelinedRedis("rediss://localhost:6379/0", ca_file=str(tmp_path / "absent.pem"))
    with pytest.raises(ValueError, match=contract.ENV_DATABASE_CA_FILE):
        db_mod.Database(url="postgresql://x", resources=[], metrics=metrics_mod.Metrics(), ca_file=str(junk))


# --- both roles, as processes ---------------------------------------------------------------


def _ready(url: str) -> httpx.Response:
    return httpx.get(f"{url}/readyz", timeout=10)


def test_both_roles_serve_reads_through_verified_tls_to_redis_and_postgres(
    bookstore: model.CachedApi,
    pki: tls_servers.Pki,
    flushed: tls_servers.TlsRedisServer,
    tls_postgres: tls_servers.TlsPostgresServer,
    tls_database: str,
) -> None:
    env = {
        contract.ENV_DATABASE_URL: tls_database,
        contract.ENV_REDIS_CA_FILE: str(pki.ca),
        contract.ENV_DATABASE_CA_FILE: str(pki.ca),
    }
    stack = devstack.Stack(bookstore, api_key=API_KEY, postgres=tls_postgres, redis=flushed, extra_env=env)
    with stack:
        try:
            with httpx.Client(base_url=stack.url, headers={"X-API-Key": API_KEY}, timeout=10) as client:
                created = client.post("/v1/books", json=BOOK)
                assert created.status_code == 201, created.text
                location = created.headers["location"]
                first = client.get(location)
                assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
                # The api role's client stored it in Redis; the gateway's read it from there.
                second = client.get(location)
                assert second.headers["x-cache"] == "HIT" and second.json() == first.json()
            for role in (stack.apis[0], stack.gateways[0]):
                ready = _ready(role.url)
                assert ready.status_code == 200 and ready.json()["redis"] in {"ok", "up"}, ready.text
        except BaseException:
            print(stack.logs())
            raise
    # Every connection the api role made was TLS: pg_hba takes nothing else; Redis listens on TLS only.


@pytest.mark.parametrize("case", list(REFUSALS))
def test_both_roles_are_unready_at_once_saying_why_when_redis_cannot_be_trusted_or_refuses_the_password(
    case: str,
    bookstore: model.CachedApi,
    pki: tls_servers.Pki,
    flushed: tls_servers.TlsRedisServer,
    tls_database: str,
    tmp_path: Path,
) -> None:
    url, ca, said = _refused_setup(case, flushed, pki)
    config_path = tmp_path / contract.CONFIG_FILE
    config_path.write_text(contract.dump_config(x_config.render_config(bookstore)), encoding="utf-8")
    env = {
        **os.environ,
        contract.ENV_CONFIG: str(config_path),
        contract.ENV_API_KEYS: API_KEY,
        contract.ENV_REDIS_URL: url,
        contract.ENV_REDIS_CA_FILE: ca,
        contract.ENV_DATABASE_URL: tls_database,
        contract.ENV_DATABASE_CA_FILE: str(pki.ca),
    }
    api = devstack.Instance(role="api", port=embedded.free_port(), env=env, log_path=tmp_path / "api.log")
    gateway = devstack.Instance(
        role="gateway",
        port=embedded.free_port(),
        env={**env, contract.ENV_UPSTREAM_URL: api.url},
        log_path=tmp_path / "gateway.log",
    )
    try:
        api.start()
        gateway.start()
        for role in (api, gateway):
            started = time.monotonic()
            ready = _ready(role.url)
            assert time.monotonic() - started < PROMPT, role.role
            assert ready.status_code == 503, (role.role, ready.text)
            assert ready.json()["redis"] == "refused" and said in ready.json()["redisError"], ready.text
        # The api role still answers from PostgreSQL (the role is unready, not broken).
        with httpx.Client(base_url=api.url, timeout=10) as client:
            assert client.post("/v1/books", json=BOOK).status_code == 201
        for role in (api, gateway):
            log = role.log_path.read_text(errors="replace")
            assert said in log, (role.role, log[-3000:])
    finally:
        gateway.stop()
        api.stop()


# --- PostgreSQL, sslmode=verify-full ----------------------------------------------------------


async def test_the_api_role_reaches_postgres_with_verify_full_against_the_mounted_ca(
    bookstore: model.CachedApi,
    pki: tls_servers.Pki,
    tls_postgres: tls_servers.TlsPostgresServer,
    tls_database: str,
) -> None:
    env = {contract.ENV_DATABASE_CA_FILE: str(pki.ca)}
    async with serve(runtime_config(bookstore), database_url=tls_database, redis_url=None, extra_env=env) as (
        _,
        client,
    ):
        assert (await client.put("/v1/books/dune", json=BOOK)).status_code == 201
        assert (await client.get("/v1/books/dune")).json()["title"] == "Dune"
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and "databaseError" not in ready.json()
        name = tls_database.rsplit("/", 1)[1]
        with psycopg.connect(tls_postgres.admin_url()) as admin:
            rows = admin.execute(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = %s",
                [name],
            ).fetchall()
        assert rows and all(ssl for (ssl,) in rows)


PG_REFUSALS = {
    "wrong CA": ("wrong_ca", tls_servers.SERVER_NAME, "certificate verify failed"),
    "wrong host name": ("ca", tls_servers.UNNAMED_HOST, 'does not match host name "127.0.0.1"'),
}


@pytest.mark.parametrize("case", list(PG_REFUSALS))
async def test_a_postgres_that_cannot_be_trusted_makes_the_api_role_unready_at_once_saying_why(
    case: str,
    bookstore: model.CachedApi,
    pki: tls_servers.Pki,
    tls_database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ca, host, said = PG_REFUSALS[case]
    url = tls_database.replace(f"@{tls_servers.SERVER_NAME}:", f"@{host}:")
    env = {contract.ENV_DATABASE_CA_FILE: str(getattr(pki, ca))}
    caplog.set_level(logging.WARNING, logger=db_mod.__name__)
    async with serve(runtime_config(bookstore), database_url=url, redis_url=None, extra_env=env) as (_, client):
        started = time.monotonic()
        ready = await client.get("/readyz")
        assert time.monotonic() - started < PG_PROMPT
        assert ready.status_code == 503 and ready.json()["database"] == "unreachable"
        assert said in ready.json()["databaseError"], ready.text
        read = await client.get("/v1/books/dune")
        assert read.status_code == 503 and time.monotonic() - started < 2 * PG_PROMPT
    assert any(said in record.getMessage() for record in caplog.records), [r.getMessage() for r in caplog.records]
