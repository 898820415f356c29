"""The "any upstream" scenarios: shared HTTP caches in front of one plain HTTP API, side by side.

The upstream (``bench/peers/origin.py``) answers every GET with the same 280-byte
JSON body and ``Cache-Control: public, max-age=3600``, and counts the requests
that reach it. In front of it, each a process of its own with one worker:

- ``gateway-upstream``: the cachedapi gateway in upstream mode ``http`` (what
  ``cachedapi dev --upstream`` runs: ``cachedapi.dev.upstream.UpstreamStack``), on an
  embedded Redis of its own, with an API key checked and the rate limit counted
  on every request, as in the bookstore scenarios;
- ``varnish``: varnishd, the default VCL's caching rules, ``malloc`` storage, one
  thread pool;
- ``nginx-proxy``: nginx ``proxy_cache`` (on disk, in a temporary directory),
  ``proxy_cache_lock on`` so that concurrent misses of one key wait for one fetch,
  one worker.

The scenarios (``SCENARIOS``, wrk ``-t1 -c50``): ``upstream-hit`` (one URL, cached in the
warm-up), ``upstream-miss`` (every request a URL never asked before:
``lua/upstream_miss.lua``), and ``upstream-stampede`` (``stampedes``: 200 simultaneous
GETs of one uncached URL, which the upstream answers after 100 ms, and how many
reached the upstream, counted by the upstream).
"""

from __future__ import annotations

import collections
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bench import contenders, stampede, wrk
from bench.peers import origin as origin_peer
from cachedapi import model
from cachedapi.dev import embedded
from cachedapi.dev import upstream as dev_upstream

ROOT = Path(__file__).resolve().parent.parent

SCENARIOS = {
    "upstream-hit": "any upstream: GET of one cached 280-byte answer (Cache-Control: public, max-age=3600)",
    "upstream-miss": "any upstream: GETs of URLs never asked before (cache -> upstream -> store)",
}
STAMPEDE = "upstream-stampede"
STAMPEDE_WHAT = (
    "any upstream: 200 simultaneous GETs of one uncached URL that the upstream answers in 100 ms; "
    "the requests that reached the upstream, counted by it"
)
HOT_PATH = "/v1/items/hot"
TAKES_PART = frozenset({*SCENARIOS, STAMPEDE})


class Origin:
    """The upstream process, shared by every contender of a run: started by the first that needs it,
    stopped by the last (``acquire``/``release``)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.users = 0
        self.dir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def acquire(self) -> str:
        if self.users == 0:
            self.port = embedded.free_port()
            self.dir = Path(tempfile.mkdtemp(prefix="cachedapi-bench-origin-"))
            with open(self.dir / "origin.log", "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "bench.peers.origin", str(self.port)],
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            try:
                embedded.wait_for_port(self.port, proc=self.proc, timeout=30)
            except BaseException:
                self._stop()
                raise
        self.users += 1
        return self.url

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            self._stop()

    def _stop(self) -> None:
        if self.proc is not None:
            embedded.stop_process(self.proc)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.proc, self.dir = None, None

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []

    def count(self, path: str) -> int:
        """Requests for exactly ``path`` (a ``/slow/`` one) that reached the upstream so far."""
        query = urllib.parse.urlencode({"path": path})
        with urllib.request.urlopen(f"{self.url}{origin_peer.COUNT_PATH}?{query}", timeout=10) as resp:  # noqa: S310
            return int(json.loads(resp.read())["count"])


ORIGIN = Origin()


class UpstreamContender(contenders.Contender):
    """A shared cache in front of ``ORIGIN``: it takes part in the upstream scenarios only."""

    expect = ("x-cache", "HIT")
    scenarios = TAKES_PART
    #: The short name, in the URLs it is sent (each contender's misses are its own).
    key = ""

    def __init__(self) -> None:
        super().__init__()
        self._runs = itertools.count(1)
        self._acquired = False

    def start(self, world: contenders.World) -> None:
        upstream_url = ORIGIN.acquire()
        self._acquired = True
        try:
            self._start(upstream_url)
        except BaseException:
            self.stop()
            raise

    def _start(self, upstream_url: str) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop()
        if self._acquired:
            self._acquired = False
            ORIGIN.release()

    def _stop(self) -> None:
        raise NotImplementedError

    def target(self, world: contenders.World, scenario: str) -> wrk.Target | None:
        if scenario not in self.scenarios or scenario not in SCENARIOS:
            return None
        if scenario == "upstream-miss":
            # a new prefix for every run of wrk: its counter starts at 1 each time
            prefix = f"/v1/miss/{self.key}/{next(self._runs)}/"
            return wrk.Target(self.base + prefix, self.headers, script="upstream_miss.lua", args=(prefix,))
        return wrk.Target(self.base + HOT_PATH, self.headers)


def bench_api() -> model.CachedApi:
    """The gateway's CachedApi: an API key, a rate limit no load reaches (still counted), and no cap
    on a client address's concurrent forwards (every request here comes from 127.0.0.1)."""
    return dev_upstream.api_from(
        {
            "metadata": {"name": "bench-upstream", "namespace": "bench"},
            "spec": {
                "gateway": {
                    "auth": {"mode": "apiKey"},
                    "rateLimit": {"requestsPerSecond": 1_000_000, "burst": 10_000_000, "by": "apiKey"},
                    "capacity": {"maxForwardsPerClient": 0},
                },
                "database": {"none": {}},
            },
        }
    )


class GatewayUpstream(UpstreamContender):
    """The cachedapi gateway in upstream mode ``http``, on an embedded Redis of its own."""

    name = "cachedapi gateway, upstream mode http (granian)"
    key = "gateway"

    def __init__(self) -> None:
        super().__init__()
        self.stack: dev_upstream.UpstreamStack | None = None

    def _start(self, upstream_url: str) -> None:
        self.stack = dev_upstream.UpstreamStack(
            bench_api(),
            upstream_url=upstream_url,
            api_key=contenders.API_KEY,
            extra_env={"CACHEDAPI_HTTP_SERVER": "granian"},
        )
        self.stack.start()

    @property
    def base(self) -> str:
        assert self.stack is not None
        return self.stack.url

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": contenders.API_KEY}

    def _stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()

    def pids(self) -> list[int]:
        if self.stack is None:
            return []
        return [g.pid for g in self.stack.gateways if g.pid is not None]

    def cpu_pids(self, world: contenders.World) -> list[int]:
        """The gateway and its Redis: Varnish and nginx keep their entries in their own process."""
        redis = self.stack.redis.pid if self.stack is not None else None
        return [*self.pids(), *([redis] if redis is not None else [])]


class _Server(UpstreamContender):
    """A cache that is one server process (and its children), configured by a file in a temporary directory."""

    def __init__(self) -> None:
        super().__init__()
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.dir: Path | None = None

    def _spawn(self, command: list[str]) -> None:
        assert self.dir is not None
        with open(self.dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                command,
                cwd=self.dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        embedded.wait_for_port(self.port, proc=self.proc, timeout=30)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _stop(self) -> None:
        if self.proc is not None:
            embedded.stop_process(self.proc)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []


class Varnish(_Server):
    """varnishd in the foreground (``-F``), its working directory (``-n``) and VCL in a temporary
    directory: the default VCL's rules (RFC 9111 freshness from Cache-Control; concurrent misses
    of one object wait on the first fetch), ``X-Cache`` added, 256 MB of ``malloc`` storage, one
    thread pool of 100 to 1,000 threads (a thread per request in progress: 50 connections of wrk,
    200 of the stampede)."""

    name = "Varnish (malloc, 1 thread pool)"
    key = "varnish"

    def _start(self, upstream_url: str) -> None:
        parts = urllib.parse.urlsplit(upstream_url)
        self.dir = Path(tempfile.mkdtemp(prefix="cachedapi-bench-varnish-"))
        self.dir.chmod(0o755)  # varnishd reads the VCL as its own unprivileged user
        vcl = self.dir / "bench.vcl"
        vcl.write_text(
            f"""vcl 4.1;
backend origin {{ .host = "{parts.hostname}"; .port = "{parts.port}"; }}
sub vcl_deliver {{
    if (obj.hits > 0) {{ set resp.http.X-Cache = "HIT"; }} else {{ set resp.http.X-Cache = "MISS"; }}
}}
""",
            encoding="utf-8",
        )
        vcl.chmod(0o644)
        self.port = embedded.free_port()
        self._spawn(
            [
                "varnishd", "-F",
                "-n", str(self.dir / "work"),
                "-a", f"127.0.0.1:{self.port}",
                "-T", "none",
                "-f", str(vcl),
                "-s", "malloc,256m",
                "-p", "thread_pools=1",
                "-p", "thread_pool_min=100",
                "-p", "thread_pool_max=1000",
            ]
        )  # fmt: skip


class NginxProxy(_Server):
    """nginx ``proxy_cache`` in front of the upstream: one worker, the cache on disk in a temporary
    directory (its keys in a 32 MB shared zone), keep-alive connections to the upstream,
    ``proxy_cache_lock on`` (a miss's concurrent requests wait for its fetch, re-checking every
    500 ms: nginx's own interval), ``X-Cache`` from ``$upstream_cache_status``."""

    name = "nginx proxy_cache (1 worker)"
    key = "nginx"

    def _start(self, upstream_url: str) -> None:
        parts = urllib.parse.urlsplit(upstream_url)
        self.dir = Path(tempfile.mkdtemp(prefix="cachedapi-bench-nginx-proxy-"))
        self.port = embedded.free_port()
        d = self.dir
        conf = d / "nginx.conf"
        conf.write_text(
            f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
{"user root;" if contenders._root() else ""}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=api:32m max_size=1g inactive=2h use_temp_path=off;
    upstream origin {{ server {parts.hostname}:{parts.port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{self.port} backlog=1024;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache api;
            proxy_cache_lock on;
            add_header X-Cache $upstream_cache_status always;
        }}
    }}
}}
""",
            encoding="utf-8",
        )
        self._spawn(["nginx", "-c", str(conf), "-p", str(d)])


def available() -> dict[str, contenders.Contender]:
    """The upstream contenders this machine can run: the gateway always; Varnish and nginx when installed."""
    found: dict[str, contenders.Contender] = {"gateway-upstream": GatewayUpstream()}
    if shutil.which("varnishd"):
        found["varnish"] = Varnish()
    if shutil.which("nginx"):
        found["nginx-proxy"] = NginxProxy()
    return found


def stampedes(chosen: dict[str, contenders.Contender], *, n: int = 200) -> dict[str, Any]:
    """For each contender in ``upstream-stampede``: ``n`` simultaneous GETs of a URL of its own that
    no one asked before, and how many requests for it reached the upstream (counted there)."""
    out: dict[str, Any] = {}
    for name, contender in chosen.items():
        if not isinstance(contender, UpstreamContender) or STAMPEDE not in contender.scenarios:
            continue
        path = f"{origin_peer.SLOW_PREFIX}stampede-{contender.key}"
        before = ORIGIN.count(path)
        port = int(contender.base.rsplit(":", 1)[1])
        answers, seconds = stampede.burst(port=port, path=path, headers=contender.headers, n=n)
        time.sleep(0.5)  # a fetch a cache made late would still be counted
        reached = ORIGIN.count(path) - before
        print(f"  {STAMPEDE} {name}: {reached} upstream requests for {n} requests", flush=True)
        out[name] = {
            "label": contender.name,
            "outcome": {
                "requests": n,
                "statuses": {str(k): v for k, v in collections.Counter(s for s, _ in answers).items()},
                "x_cache": dict(collections.Counter(x for _, x in answers)),
                "upstream_requests": reached,
                "seconds": round(seconds, 4),
            },
        }
    return {"what": STAMPEDE_WHAT, "contenders": out} if out else {}
