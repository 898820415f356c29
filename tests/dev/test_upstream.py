"""``cachedapi dev --upstream URL``: the gateway and an embedded Redis in front of an HTTP API that
the test runs (``origin``), as real processes; the command is run as a user runs it."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cachedapi import contract, model
from cachedapi.dev import embedded
from cachedapi.dev import upstream as dev_upstream
from cachedapi.operator.children import config as x_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def origin() -> Iterator[str]:
    """The small HTTP API the gateway fronts, as its own process."""
    port = embedded.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.dev.origin", str(port)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        embedded.wait_for_port(port, proc=proc, timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        embedded.stop_process(proc)


def _tree(root: int) -> dict[int, str]:
    """``root``'s descendants (pid -> command line), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        todo.extend(children.get(pid, []))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Dev:
    """``cachedapi dev --upstream`` as a process; its output read line by line in a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cachedapi", "dev", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("CACHEDAPI_")},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace"))
        self.lines.put(None)

    def read_until(self, marker: str, *, timeout: float = 60) -> str:
        """The output up to the first line containing ``marker``."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {marker!r} after {timeout}s:\n{''.join(self.output)}") from None
            if line is None:
                raise AssertionError(f"exited with {self.proc.wait()} before {marker!r}:\n{''.join(self.output)}")
            self.output.append(line)
            if marker in line:
                return "".join(self.output)

    def started(self) -> dict[str, Any]:
        """The banner's first line (JSON: url, apiKey, adminKey, upstream), once the banner is out."""
        text = self.read_until("Ctrl-C stops everything")
        return dict(json.loads(next(line for line in text.splitlines() if line.startswith("{"))))

    def interrupt(self) -> int:
        """Ctrl-C; its exit status, once all of its output is read."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=60)
        while (line := self.lines.get(timeout=10)) is not None:
            self.output.append(line)
        return code

    def stop(self) -> None:
        """In any outcome: Ctrl-C, with which the command stops what it started; if it has not gone in
        30 s, SIGKILL to it and to each process it started (each in a session of its own)."""
        if self.proc.poll() is not None:
            return
        started = _tree(self.proc.pid)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for pid in [self.proc.pid, *started]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def dev_factory() -> Iterator[list[Dev]]:
    made: list[Dev] = []
    yield made
    for dev in made:
        dev.stop()


def test_dev_upstream_fronts_the_api_with_a_key_forwards_the_caller_caches_and_stops_everything(
    origin: str, dev_factory: list[Dev]
) -> None:
    dev = Dev("--upstream", origin, "--port", "0")
    dev_factory.append(dev)
    banner = dev.started()
    url, key = banner["url"], banner["apiKey"]
    assert banner["upstream"] == origin and key and banner["adminKey"]
    text = "".join(dev.output)
    assert f"curl -i -H 'X-API-Key: {key}' {url}/" in text
    assert f"API key: {key}" in text

    # No PostgreSQL, no api role: the gateway (granian and its worker) and Redis only.
    started = _tree(dev.proc.pid)
    assert not any("postgres" in cmd or "--role api" in cmd for cmd in started.values()), started
    assert any("--role gateway" in cmd for cmd in started.values()), started
    assert any("redis-server" in cmd for cmd in started.values()), started

    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/v1/things/1").status_code == 401  # the key is checked
        first = client.get("/v1/things/1", headers={"X-API-Key": key})
        assert first.status_code == 200, first.text
        seen = first.json()
        assert seen["path"] == "/v1/things/1" and seen["count"] == 1
        # The upstream learns who called and how, from the gateway, never the key itself.
        assert "dev" in seen["headers"][contract.CALLER_HEADER]
        assert seen["headers"][contract.CALLER_AUTH_HEADER] == "apiKey"
        assert "x-api-key" not in seen["headers"]
        # public, max-age=60: the second is the gateway's, from Redis; the upstream saw one request.
        second = client.get("/v1/things/1", headers={"X-API-Key": key})
        assert second.headers["x-cache"] == "HIT", dict(second.headers)
        assert second.json()["count"] == 1
        assert client.get("/healthz").status_code == 200

    assert dev.interrupt() == 0, "".join(dev.output)
    assert "cachedapi dev: stopping" in "".join(dev.output)
    left = {pid: cmd for pid, cmd in started.items() if _alive(pid)}
    assert not left, left
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(TimeoutError):
        embedded.wait_for_port(port, timeout=0.2)


def test_dev_upstream_takes_gateway_and_cache_settings_from_a_manifest(
    origin: str, dev_factory: list[Dev], tmp_path: Path
) -> None:
    """auth none, and a cache route for answers whose upstream says nothing about caching."""
    manifest = tmp_path / "catalog.yaml"
    manifest.write_text(
        """
apiVersion: cachedapi.dev/v1alpha1
kind: CachedApi
metadata:
  name: catalog
spec:
  gateway:
    auth:
      mode: none
  cache:
    routes:
      - path: /plain/*
        ttlSeconds: 30
""",
        encoding="utf-8",
    )
    dev = Dev("--upstream", origin, str(manifest), "--port", "0")
    dev_factory.append(dev)
    banner = dev.started()
    url = banner["url"]
    assert banner["apiKey"] is None
    assert f"curl -i {url}/plain/" in "".join(dev.output)
    with httpx.Client(base_url=url, timeout=10) as client:
        first = client.get("/plain/a")
        assert first.status_code == 200, first.text
        assert first.json()["headers"][contract.CALLER_AUTH_HEADER] == "none"
        second = client.get("/plain/a")
        assert second.headers["x-cache"] == "HIT", dict(second.headers)
        assert second.json()["count"] == 1
    assert dev.interrupt() == 0, "".join(dev.output)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--upstream", "localhost:3000"], "an http:// or https:// URL with a host is needed"),
        (["--upstream", "http://127.0.0.1:9", "/nonexistent/manifest.yaml"], "No such file"),
        ([], "a CachedApi manifest is needed (or --upstream URL)"),
        (["examples/custom-api.yaml"], "start your API yourself, then put the gateway in front of it with"),
    ],
    ids=["url-without-scheme", "missing-manifest", "neither-manifest-nor-upstream", "own-image-without-upstream"],
)
def test_dev_upstream_refuses_bad_arguments_before_starting_anything(args: list[str], says: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cachedapi", "dev", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert says in done.stderr
    assert "starting" not in done.stdout


def test_the_gateway_configuration_is_the_operators_for_your_own_api_with_the_url_as_upstream(tmp_path: Path) -> None:
    """What the gateway reads: the operator's rendering for ``spec.api.image``, whatever the manifest
    says about the image, resources or database; no manifest: an API key and no routes."""
    manifest = tmp_path / "shop.yaml"
    manifest.write_text(
        """
apiVersion: cachedapi.dev/v1alpha1
kind: CachedApi
metadata: {name: shop, namespace: retail}
spec:
  api: {image: registry.example/shop:1.2, forwardCredentials: true}
  gateway: {rateLimit: {requestsPerSecond: 5, burst: 10, by: clientIP}}
  cache:
    routes:
      - {path: /v1/products/*, ttlSeconds: 30, varyHeaders: [Accept-Language]}
      - {path: /v1/me, byCaller: true}
---
apiVersion: cachedapi.dev/v1alpha1
kind: CachedApi
metadata: {name: other}
spec: {}
""",
        encoding="utf-8",
    )
    api = dev_upstream.load_api(str(manifest), "shop")
    assert api.spec.api.image == "registry.example/shop:1.2"  # kept; only a missing one is filled in
    data = dev_upstream.render_config(api, "http://127.0.0.1:3000")
    assert {k: v for k, v in data.items() if k != "upstreamUrl"} == {
        k: v for k, v in x_config.render_config(api).items() if k != "upstreamUrl"
    }
    config = contract.parse_config(data)
    assert config.upstream_mode == contract.UPSTREAM_HTTP
    assert config.upstream_url == "http://127.0.0.1:3000"
    assert config.forward_credentials is True
    assert config.rate_per_second == 5 and config.rate_by == "clientIP"
    assert config.cache_routes == (
        contract.CacheRoute("/v1/products/*", ttl_seconds=30, vary_headers=("accept-language",)),
        contract.CacheRoute("/v1/me", by_caller=True),
    )
    with pytest.raises(model.ManifestError, match="several CachedApis"):
        dev_upstream.load_api(str(manifest), None)

    default = contract.parse_config(dev_upstream.render_config(dev_upstream.default_api(), "https://api.example/v2/"))
    assert default.upstream_mode == contract.UPSTREAM_HTTP and default.upstream_url == "https://api.example/v2"
    assert default.auth_mode == "apiKey" and default.cache_routes == () and not default.resources
