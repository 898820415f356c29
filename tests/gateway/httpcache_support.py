"""What the shared-cache tests share: the configurable upstream process and gateways in http mode.

Gateways here are real ``cachedapi runtime --role gateway`` processes (granian) whose
configuration says ``upstream.mode: http``, in front of ``http_upstream`` (a real process),
on the session's real Redis. Every process is stopped by its pid in every outcome, ports are
free ones, files go to temporary directories.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from cachedapi import contract
from cachedapi.dev import devstack, embedded

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "admin-secret-1"
#: API keys by label (the file names in the keys directory): the caller's identity.
API_KEYS = {"alice": "alice-key-1", "bob": "bob-key-2"}


class Upstream:
    """``tests.gateway.http_upstream`` as a process; ``route`` sets what a path answers."""

    def __init__(self) -> None:
        self.port = embedded.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.gateway.http_upstream", str(self.port)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        embedded.wait_for_port(self.port, proc=self.proc, timeout=20)

    def stop(self) -> None:
        if self.proc is not None:
            embedded.stop_process(self.proc, sig=signal.SIGKILL)  # a slow answer may be sleeping

    def route(self, path: str, **config: Any) -> None:
        httpx.post(f"{self.url}/__control/route", json={"path": path, **config}, timeout=5).raise_for_status()

    def counts(self) -> dict[str, int]:
        data: dict[str, int] = httpx.get(f"{self.url}/__control/counts", timeout=5).json()
        return data

    def count(self, path: str, method: str = "GET") -> int:
        return self.counts().get(f"{method} {path}", 0)


@contextlib.contextmanager
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def config(
    upstream_url: str,
    *,
    auth: str = "none",
    routes: list[dict[str, Any]] | None = None,
    swr: int = 0,
    sie: int = 0,
    forward_credentials: bool = False,
    prefix: str | None = None,
) -> dict[str, Any]:
    """A runtime configuration (what the operator would render) for a gateway in http mode."""
    return {
        "version": contract.CONFIG_VERSION,
        "name": "shop",
        "namespace": "default",
        "keyPrefix": prefix or f"hc{uuid.uuid4().hex[:6]}",
        "upstreamUrl": upstream_url,
        "resources": [],
        "cache": {"staleWhileRevalidateSeconds": swr, "staleIfErrorSeconds": sie},
        "auth": {"mode": auth},
        "rateLimit": {"requestsPerSecond": 100000, "burst": 100000, "by": "client"},
        "upstream": {"mode": contract.UPSTREAM_HTTP, "forwardCredentials": forward_credentials},
        "cacheRoutes": routes or [],
    }


@contextlib.contextmanager
def gateways(
    data: dict[str, Any], *, redis_url: str, count: int = 1, env: dict[str, str] | None = None
) -> Iterator[list[devstack.Instance]]:
    """``count`` gateway processes with one configuration (the same key prefix: replicas)."""
    contract.parse_config(data)  # a bad test configuration fails here, not in a child process
    workdir = Path(tempfile.mkdtemp(prefix="cachedapi-httpcache-"))
    keys = workdir / "keys"
    keys.mkdir()
    for label, key in API_KEYS.items():
        (keys / label).write_text(key, encoding="utf-8")
    config_path = workdir / contract.CONFIG_FILE
    config_path.write_text(contract.dump_config(data), encoding="utf-8")
    role_env = {
        **os.environ,
        contract.ENV_CONFIG: str(config_path),
        contract.ENV_REDIS_URL: redis_url,
        contract.ENV_API_KEYS_DIR: str(keys),
        contract.ENV_ADMIN_KEY: ADMIN_KEY,
        **(env or {}),
    }
    role_env.pop(contract.ENV_UPSTREAM_URL, None)
    roles = [
        devstack.Instance(
            role="gateway", port=embedded.free_port(), env=role_env, log_path=workdir / f"gateway-{i}.log", cwd=ROOT
        )
        for i in range(count)
    ]
    try:
        for role in roles:
            role.start()
        yield roles
    except BaseException:
        for path in sorted(workdir.glob("*.log")):
            print(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        for role in roles:
            role.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def unique(prefix: str = "/p") -> str:
    """A path no other test uses (the upstream and Redis live for the whole module)."""
    return f"{prefix}/{uuid.uuid4().hex[:10]}"
