"""Slow clients against the gateway and NGINX, side by side in one run (issue 12).

Why it exists: a server's throughput says nothing of what a few thousand
clients that never finish their request do to everyone else. ``python -m
bench.flood`` starts the bench's stack (``contenders.World``: embedded
PostgreSQL and Redis and the api role, on the bookstore example) and, one
contender at a time, the gateway (granian, the spec's defaults) and NGINX
(one worker, Debian's 768 connections and its default timeouts, serving the
same item from a file); then, against each in turn:

- the flood: ``--connections`` (3,000) connections, each sending a request
  line and then one header line a second for ``--seconds`` (25), never the
  blank line that ends a header; they are opened in a process of their own
  (``--flooder``), so that its event loop does not delay the ordinary client;
- the ordinary client, meanwhile: a new connection and an authenticated GET of
  a cached item every ``--interval`` (0.5 s), 2 s to connect and 2 s to be
  answered, as the measurement on the old main did; its successes and the
  latency percentiles of its answers;
- the deadline probe, after the flood: ``--probe`` (32) connections that send
  a request line and one header line, then nothing: how many the server closed
  within ``--probe-wait`` (15 s) of their last byte, and when.

It writes ``bench/results-flood.json`` and prints a markdown table, one row a
contender. Every process it starts is stopped by pid in every outcome (the
contenders' and the world's own ``stop``); ports are free ones; data are in
temporary directories. The file-descriptor limit is raised as far as the hard
limit allows, for the flooder, the gateway and NGINX alike.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import contenders
from bench.run import bench_api

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results-flood.json"
ITEM = contenders.BOOKS + "small"


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft limit on open files towards ``wanted`` (at most the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


# --- The flooder (a process of its own) ---------------------------------------------------------


@dataclass
class FloodStats:
    attempted: int = 0
    opened: int = 0
    connect_failed: int = 0
    #: Reset by the server (RST), with the seconds from open.
    reset_after: list[float] = field(default_factory=list)
    #: Closed by the server (FIN), with the seconds from open and from the client's last byte.
    closed_after: list[float] = field(default_factory=list)
    closed_after_last_byte: list[float] = field(default_factory=list)
    #: Answers the server sent to an unfinished header, by status.
    answered: Counter[str] = field(default_factory=Counter)
    open_at_end: int = 0
    ramp_seconds: float = 0.0


def _status(data: bytes) -> str:
    parts = data.split(b" ", 2)
    return parts[1].decode("ascii", "replace") if len(parts) > 1 and data.startswith(b"HTTP/") else "other"


async def _slow_one(
    port: int, *, until: float, lines: bool, stats: FloodStats, connecting: asyncio.Semaphore, path: str
) -> None:
    """One slow connection, from open until the server ends it or the flood does."""
    loop = asyncio.get_running_loop()
    stats.attempted += 1
    async with connecting:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
        except (OSError, TimeoutError):
            stats.connect_failed += 1
            return
    opened = last_sent = loop.time()
    stats.opened += 1
    answered = False
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: flood\r\nX-Flood: 0\r\n".encode())
        line = 0
        while True:
            now = loop.time()
            if now >= until:
                stats.open_at_end += 1
                return
            next_line = opened + line + 1 if lines else until
            try:
                data = await asyncio.wait_for(reader.read(65536), timeout=max(0.0, min(next_line, until) - now))
            except TimeoutError:
                if lines and loop.time() < until:
                    line += 1
                    writer.write(b"X-Flood-%d: %d\r\n" % (line, line))
                    last_sent = loop.time()
                continue
            if not data:
                now = loop.time()
                stats.closed_after.append(round(now - opened, 3))
                stats.closed_after_last_byte.append(round(now - last_sent, 3))
                return
            if not answered:
                answered = True
                stats.answered[_status(data)] += 1
    except (ConnectionResetError, BrokenPipeError):
        stats.reset_after.append(round(loop.time() - opened, 3))
    finally:
        writer.close()


async def _slow(
    port: int, *, until: float, lines: bool, reopen: bool, stats: FloodStats, connecting: asyncio.Semaphore, path: str
) -> None:
    """A slow client: one connection, or with ``reopen`` a new one a second after each ends."""
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        await _slow_one(port, until=until, lines=lines, stats=stats, connecting=connecting, path=path)
        if not reopen:
            return
        await asyncio.sleep(1.0)


async def _flood(port: int, *, connections: int, seconds: float, lines: bool, reopen: bool, path: str) -> FloodStats:
    loop = asyncio.get_running_loop()
    stats = FloodStats()
    until = loop.time() + seconds
    connecting = asyncio.Semaphore(256)
    started = loop.time()
    tasks = [
        asyncio.create_task(
            _slow(port, until=until, lines=lines, reopen=reopen, stats=stats, connecting=connecting, path=path)
        )
        for _ in range(connections)
    ]
    while stats.opened + stats.connect_failed < connections and loop.time() < until:
        await asyncio.sleep(0.05)
    stats.ramp_seconds = round(loop.time() - started, 2)
    print(f"ramped {max(0.0, until - loop.time()):.3f}", flush=True)
    await asyncio.gather(*tasks)
    return stats


def flooder(args: argparse.Namespace) -> int:
    """``--flooder``: the slow connections; a line ``ramped`` once all are open, then the stats as JSON."""
    raise_fd_limit(args.connections + 256)
    stats = asyncio.run(
        _flood(
            args.port,
            connections=args.connections,
            seconds=args.seconds,
            lines=not args.silent,
            reopen=args.reopen,
            path=args.path,
        )
    )
    print(json.dumps(asdict(stats)), flush=True)
    return 0


# --- The ordinary client ------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    ok: bool
    status: int
    seconds: float
    failure: str


def ordinary_request(port: int, headers: dict[str, str]) -> Attempt:
    """One GET on a new connection: 2 s to connect, then 2 s to be answered in full."""
    started = time.monotonic()
    lines = [f"GET {ITEM} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2.0)
    except OSError as exc:
        return Attempt(False, 0, time.monotonic() - started, f"connect: {exc.__class__.__name__}")
    answer = b""
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer_by = time.monotonic() + 2.0
        while True:
            sock.settimeout(max(0.001, answer_by - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    except OSError as exc:
        return Attempt(False, 0, time.monotonic() - started, f"answer: {exc.__class__.__name__}")
    finally:
        sock.close()
    status = int(_status(answer)) if _status(answer).isdigit() else 0
    return Attempt(status == 200, status, time.monotonic() - started, "" if status == 200 else f"status {status}")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def _spawn_flooder(port: int, *, connections: int, seconds: float, silent: bool, reopen: bool) -> Any:
    command = [
        sys.executable, "-m", "bench.flood", "--flooder", "--port", str(port), "--path", ITEM,
        "--connections", str(connections), "--seconds", str(seconds),
        *(["--silent"] if silent else []), *(["--reopen"] if reopen else []),
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def _finish(proc: subprocess.Popen[str], *, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    last = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not last:
        raise RuntimeError(f"the flooder exited with {proc.returncode}")
    result: dict[str, Any] = json.loads(last[-1])
    return result


def measure(contender: contenders.Contender, args: argparse.Namespace) -> dict[str, Any]:
    port = int(contender.base.rsplit(":", 1)[1])
    rss_before = contenders.rss_mib(contender.pids())
    proc = _spawn_flooder(port, connections=args.connections, seconds=args.seconds, silent=False, reopen=args.reopen)
    try:
        assert proc.stdout is not None
        ramped = proc.stdout.readline().split()
        # The ordinary client runs from the moment every slow connection is open to the flood's
        # end, whether or not the server has cut them before.
        flood_ends = time.monotonic() + float(ramped[1]) if ramped[:1] == ["ramped"] else 0.0
        attempts: list[Attempt] = []
        rss_peak = rss_before
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            futures = []
            tick = time.monotonic()
            while time.monotonic() < flood_ends:
                futures.append(pool.submit(ordinary_request, port, contender.headers))
                rss_peak = max(rss_peak, contenders.rss_mib(contender.pids()))
                tick += args.interval
                time.sleep(max(0.0, tick - time.monotonic()))
            attempts = [f.result() for f in futures]
        flood = _finish(proc, timeout=args.seconds + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(1)
    probe_proc = _spawn_flooder(port, connections=args.probe, seconds=args.probe_wait, silent=True, reopen=False)
    try:
        probe = _finish(probe_proc, timeout=args.probe_wait + 30)
    finally:
        if probe_proc.poll() is None:
            probe_proc.kill()
            probe_proc.wait()
    ok = [a.seconds for a in attempts if a.ok]
    return {
        "label": contender.name,
        "flood": flood,
        "ordinary": {
            "sent": len(attempts),
            "ok": len(ok),
            "failures": dict(Counter(a.failure for a in attempts if not a.ok)),
            "p50_ms": _percentile(ok, 0.50),
            "p99_ms": _percentile(ok, 0.99),
            "max_ms": _percentile(ok, 1.0),
        },
        "probe": {
            "connections": args.probe,
            "closed": len(probe["closed_after"]) + len(probe["reset_after"]),
            "closed_after_last_byte_median_s": statistics.median(probe["closed_after_last_byte"])
            if probe["closed_after_last_byte"]
            else None,
            "still_open_after_s": args.probe_wait,
            "still_open": probe["open_at_end"],
        },
        "rss_mib": {"before": rss_before, "peak_during_flood": rss_peak},
    }


def row(name: str, r: dict[str, Any]) -> str:
    f, o, p = r["flood"], r["ordinary"], r["probe"]
    closed = f["closed_after"]
    closed_at = f" (median {statistics.median(closed):.1f} s after open)" if closed else ""
    probe_at = (
        f", median {p['closed_after_last_byte_median_s']:.1f} s after the last byte"
        if p["closed_after_last_byte_median_s"] is not None
        else ""
    )
    latency = f"{o['p50_ms']} / {o['p99_ms']} / {o['max_ms']}" if o["ok"] else "-"
    return (
        f"| {r['label']} | {f['opened']:,} opened, {f['connect_failed']:,} not | {len(f['reset_after']):,} reset, "
        f"{len(closed):,} closed{closed_at}, {f['open_at_end']:,} open at the end | {o['ok']} of {o['sent']} | "
        f"{latency} | {p['closed']} of {p['connections']} closed within {p['still_open_after_s']:g} s{probe_at} | "
        f"{r['rss_mib']['before']} -> {r['rss_mib']['peak_during_flood']} |"
    )


HEADER = (
    "| server | slow connections | what the server did with them | ordinary GETs answered 200 | "
    "p50 / p99 / max ms | silent connections (deadline probe) | RSS MiB before -> peak |\n"
    "|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=3000, help="slow connections in the flood")
    parser.add_argument("--seconds", type=float, default=25.0, help="how long the flood lasts")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between ordinary requests")
    parser.add_argument("--probe", type=int, default=32, help="silent connections of the deadline probe")
    parser.add_argument("--probe-wait", type=float, default=15.0, help="seconds the probe waits for them to close")
    parser.add_argument("--reopen", action="store_true", help="a slow client opens a new connection when one ends")
    parser.add_argument("--contenders", default="gateway,nginx", help="gateway, nginx, gateway-at-<revision>")
    parser.add_argument("--output", type=Path, default=OUT)
    parser.add_argument("--flooder", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=ITEM, help=argparse.SUPPRESS)
    parser.add_argument("--silent", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.flooder:
        return flooder(args)

    limit = raise_fd_limit(args.connections + 4096 + 1024)
    chosen: dict[str, contenders.Contender] = {}
    for name in args.contenders.split(","):
        if name == "gateway":
            chosen[name] = contenders.Gateway("granian")
        elif name == "nginx":
            chosen[name] = contenders.Nginx(worker_connections=768)
        else:
            made = contenders.variant(name)
            if made is None:
                print(f"flood: unknown contender {name!r}", file=sys.stderr)
                return 2
            chosen[name] = made
    load_before = os.getloadavg()[0]
    world = contenders.World(bench_api(), miss_items=0, mix_items=0)
    started: list[contenders.Contender] = []
    results: dict[str, Any] = {}
    try:
        print("flood: starting PostgreSQL, Redis, the api role and the contenders ...", flush=True)
        world.start()
        for contender in chosen.values():
            contender.start(world)
            started.append(contender)
            contenders.warm(contender, world, "hit")
        for name, contender in chosen.items():
            print(f"flood: {args.connections} slow connections against {contender.name} ...", flush=True)
            results[name] = measure(contender, args)
            print(row(name, results[name]), flush=True)
            time.sleep(2)
    finally:
        for contender in started:
            contender.stop()
        world.stop()
    out = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2),
            "fd_limit": limit,
        },
        "settings": {
            "connections": args.connections,
            "seconds": args.seconds,
            "interval": args.interval,
            "probe": args.probe,
            "probe_wait": args.probe_wait,
            "reopen": args.reopen,
        },
        "contenders": results,
    }
    args.output.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print()
    print(f"{out['date']}, load {out['machine']['load_before']} -> {out['machine']['load_after']}:")
    print(HEADER)
    for name, result in results.items():
        print(row(name, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
