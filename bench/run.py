"""The benchmark: the gateway against its peers, side by side in one run, on this machine.

``python -m bench.run`` starts PostgreSQL, Redis and the api role (one stack),
stores one item, starts each contender (``contenders.available``), warms it
up, then runs ``wrk -t1 -c50`` against each in turn for several rounds, the
order rotated each round so that no contender always runs first. It records
the median requests per second and latency percentiles per contender in
``bench/results.json`` and prints a markdown table with the ratios that
design.md section 7 asks for. Scenarios (``SCENARIOS``) and contenders are
tables, so that a later scenario (misses, mixes, stampede) is a new entry.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import contenders, wrk
from cachedapi import model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"

#: Scenario name -> what it measures (the contenders' ``target`` gives the URL).
SCENARIOS = {
    "hit": "GET of one cached item; the gateway checks an API key and the rate limit on every request",
}
PEER = "fastapi-cache2"
REFERENCE = "nginx"


def bench_api() -> model.CachedApi:
    """The bookstore example, with a limit no load reaches (still checked) and a day-long TTL."""
    api = model.load_manifest(ROOT / "examples" / "bookstore.yaml")[0]
    data = api.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["spec"]["gateway"]["rateLimit"] = {"requestsPerSecond": 1_000_000, "burst": 10_000_000, "by": "apiKey"}
    for resource in data["spec"]["resources"]:
        if resource["name"] == "books":
            resource["ttlSeconds"] = 86_400
    return model.CachedApi.model_validate(data)


def _median(runs: list[wrk.Run]) -> dict[str, float]:
    return {
        key: round(statistics.median(getattr(r, key) for r in runs), 3) for key in ("rps", "p50_ms", "p90_ms", "p99_ms")
    }


def measure(
    world: contenders.World, chosen: dict[str, contenders.Contender], *, args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = list(chosen)
    for scenario, what in SCENARIOS.items():
        for contender in chosen.values():
            contenders.warm(contender, world, scenario)
            url, headers = contender.target(world, scenario)
            wrk.run(url, headers=headers, seconds=args.warmup, connections=args.connections)
        runs: dict[str, list[wrk.Run]] = {name: [] for name in names}
        for round_no in range(args.rounds):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for name in order:
                url, headers = chosen[name].target(world, scenario)
                result = wrk.run(url, headers=headers, seconds=args.duration, connections=args.connections)
                runs[name].append(result)
                print(f"  {scenario} round {round_no + 1} {name}: {result.rps:,.0f} req/s p99 {result.p99_ms} ms")
        medians = {name: _median(r) for name, r in runs.items()}
        ratios = {}
        for base in (PEER, REFERENCE):
            if base in medians:
                ratios[f"vs_{base}"] = {n: round(m["rps"] / medians[base]["rps"], 2) for n, m in medians.items()}
        out[scenario] = {
            "what": what,
            "contenders": {
                name: {
                    "label": chosen[name].name,
                    "median": medians[name],
                    "rss_mib_after": contenders.rss_mib(chosen[name].pids()),
                    "runs": [r.as_dict() for r in runs[name]],
                }
                for name in names
            },
            "ratios": ratios,
        }
    return out


def table(results: dict[str, Any]) -> str:
    lines = []
    for scenario, data in results["scenarios"].items():
        bases = [b for b in (PEER, REFERENCE) if f"vs_{b}" in data["ratios"]]
        head = ["contender", "req/s (median)", "p50 ms", "p99 ms", *[f"x {b}" for b in bases], "RSS MiB after"]
        lines += [f"Scenario `{scenario}`: {data['what']}.", "", "| " + " | ".join(head) + " |"]
        lines.append("|" + "---|" * len(head))
        for name, entry in data["contenders"].items():
            m = entry["median"]
            cells = [entry["label"], f"{m['rps']:,.0f}", f"{m['p50_ms']:.2f}", f"{m['p99_ms']:.2f}"]
            cells += [f"{data['ratios'][f'vs_{b}'][name]:.2f}" for b in bases]
            cells.append(f"{entry['rss_mib_after']:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    s = results["settings"]
    api_rss = results.get("api_rss_mib_after")
    if api_rss is not None:
        lines.append(f"The api role's RSS after the run: {api_rss:.0f} MiB.")
    lines.append(
        f"wrk -t1 -c{s['connections']} -d{s['duration']}s, {s['rounds']} rounds (median), one worker per server, "
        f"{results['machine']['cpus']} CPUs, load average before/after {results['machine']['load_before']} / "
        f"{results['machine']['load_after']}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--contenders", default="", help="comma-separated names (default: all available)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    everything = contenders.available()
    wanted = [n for n in args.contenders.split(",") if n] or list(everything)
    for name in wanted:
        made = contenders.variant(name)
        if made is not None:
            everything[name] = made
    unknown = [n for n in wanted if n not in everything]
    if unknown:
        print(f"bench: unknown or unavailable contenders {unknown}; available: {list(everything)}", file=sys.stderr)
        return 2
    chosen = {name: everything[name] for name in wanted}
    load_before = os.getloadavg()[0]
    world = contenders.World(bench_api())
    started: list[contenders.Contender] = []
    try:
        print("bench: starting PostgreSQL, Redis, the api role and the contenders ...", flush=True)
        world.start()
        for contender in chosen.values():
            contender.start(world)
            started.append(contender)
        scenarios = measure(world, chosen, args=args)
        api_pid = world.stack.apis[0].pid
        api_rss = contenders.rss_mib([api_pid]) if api_pid is not None else None
    finally:
        for contender in started:
            contender.stop()
        world.stop()
    results = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2),
        },
        "settings": {"rounds": args.rounds, "duration": args.duration, "connections": args.connections, "threads": 1},
        "scenarios": scenarios,
        "api_rss_mib_after": api_rss,
    }
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
