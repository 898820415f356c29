"""Running wrk and reading its report: requests per second and latency percentiles.

A scenario that is more than one URL (cold reads, a read/write mix) gives wrk a
Lua script from ``bench/lua`` and its arguments; wrk stays the one load generator.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LUA = Path(__file__).resolve().parent / "lua"

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Run:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    non_2xx_3xx: int
    socket_errors: int
    #: CPU (user + system) the contender's processes spent per request, in microseconds: steadier
    #: than req/s on a machine where other work runs (set by the caller, which knows the processes).
    cpu_us_per_request: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"wrk: cannot read latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse(report: str) -> Run:
    percentiles = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(\d+)%\s+(\S+)$", report, re.M)}
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", report, re.M)
    total = re.search(r"^\s+(\d+) requests in", report, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report)
    if rps is None or total is None or "99" not in percentiles:
        raise ValueError(f"wrk: unexpected report:\n{report}")
    return Run(
        rps=float(rps.group(1)),
        p50_ms=percentiles["50"],
        p90_ms=percentiles["90"],
        p99_ms=percentiles["99"],
        requests=int(total.group(1)),
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
    )


@dataclass(frozen=True)
class Target:
    """What wrk sends: one URL and its headers, or a Lua script (``LUA / script``) with arguments."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    script: str = ""
    args: tuple[str, ...] = ()


def run(target: Target, *, seconds: int, connections: int, threads: int = 1) -> Run:
    """One wrk run against 127.0.0.1, bounded in time (wrk's own -d, and a kill after twice that)."""
    assert target.url.startswith("http://127.0.0.1:"), "load goes to the loopback interface only"
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    for name, value in target.headers.items():
        command += ["-H", f"{name}: {value}"]
    if target.script:
        command += ["-s", str(LUA / target.script)]
    command.append(target.url)
    if target.args:
        command += ["--", *target.args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds * 2 + 10, check=True)
    return parse(done.stdout)
