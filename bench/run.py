"""The benchmark: the gateway against its peers, side by side in one run, on this machine.

``python -m bench.run`` starts PostgreSQL, Redis and the api role (one stack),
seeds the same items for everyone (``data``), starts each contender
(``contenders.available``) and, scenario by scenario (``SCENARIOS``), warms
each up and runs ``wrk -t1 -c50`` against each in turn for several rounds,
the order rotated each round so that no contender always runs first. Then the
stampede: 200 simultaneous requests for one cold key per contender, counted at
PostgreSQL (``stampede``). It writes ``bench/results.json`` (every round),
``bench/results.md`` (the table, also printed) and ``bench/results.png``.
Every process it starts is stopped by pid, whatever happens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import contenders, report, stampede, wrk
from cachedapi import model

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench"

#: Scenario name -> what it measures.
SCENARIOS = {
    "hit": "GET of one cached 280-byte item; the gateway checks an API key and the rate limit on every request",
    "large": "GET of one cached 50 KB item",
    "miss": "GETs of cold items, each read once (gateway -> api -> PostgreSQL -> cache fill)",
    "mix": "GETs of 1,000 hot items with 5% PUTs of them (through the gateway: each PUT invalidates)",
}
STAMPEDE = "200 simultaneous GETs of one cold item; the database reads PostgreSQL counted"


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
    keys = ("rps", "p50_ms", "p90_ms", "p99_ms", "cpu_us_per_request")
    out = {key: round(statistics.median(getattr(r, key) for r in runs), 3) for key in keys}
    out["rps_min"] = min(r.rps for r in runs)
    out["rps_max"] = max(r.rps for r in runs)
    return out


def _drive(
    contender: contenders.Contender,
    target: wrk.Target,
    *,
    world: contenders.World,
    seconds: int,
    connections: int,
) -> wrk.Run:
    pids = contender.cpu_pids(world)
    before = contenders.cpu_seconds(pids)
    result = wrk.run(target, seconds=seconds, connections=connections)
    spent = contenders.cpu_seconds(pids) - before
    if target.script == "miss.lua":
        contender.cursor += result.requests + connections  # the ones still in flight at the end too
    per_request = round(spent / result.requests * 1e6, 1) if result.requests else 0.0
    return dataclasses.replace(result, cpu_us_per_request=per_request)


def measure(
    world: contenders.World, chosen: dict[str, contenders.Contender], *, args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario, what in SCENARIOS.items():
        taking_part = {n: c for n, c in chosen.items() if c.target(world, scenario) is not None}
        if not taking_part:
            continue
        names = list(taking_part)
        for contender in taking_part.values():
            contenders.warm(contender, world, scenario)
            target = contender.target(world, scenario)
            assert target is not None
            _drive(contender, target, world=world, seconds=args.warmup, connections=args.connections)
        runs: dict[str, list[wrk.Run]] = {name: [] for name in names}
        for round_no in range(args.rounds):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for name in order:
                target = taking_part[name].target(world, scenario)
                assert target is not None
                result = _drive(
                    taking_part[name], target, world=world, seconds=args.duration, connections=args.connections
                )
                runs[name].append(result)
                bad = f" ({result.non_2xx_3xx} non-2xx, {result.socket_errors} socket errors)" if (
                    result.non_2xx_3xx or result.socket_errors
                ) else ""  # fmt: skip
                print(
                    f"  {scenario} round {round_no + 1} {name}: {result.rps:,.0f} req/s "
                    f"p50 {result.p50_ms} ms p99 {result.p99_ms} ms, {result.cpu_us_per_request} us CPU/req{bad}",
                    flush=True,
                )
        medians = {name: _median(r) for name, r in runs.items()}
        ratios: dict[str, dict[str, float]] = {}
        for base in report.BASES:
            if base in medians:
                ratios[f"vs_{base}"] = {n: round(m["rps"] / medians[base]["rps"], 2) for n, m in medians.items()}
        if "plain" in medians:
            ratios["p50_vs_plain"] = {n: round(m["p50_ms"] / medians["plain"]["p50_ms"], 2) for n, m in medians.items()}
        out[scenario] = {
            "what": what,
            "contenders": {
                name: {
                    "label": taking_part[name].name,
                    "median": medians[name],
                    "rss_mib_after": contenders.rss_mib(taking_part[name].pids()),
                    "runs": [r.as_dict() for r in runs[name]],
                }
                for name in names
            },
            "ratios": ratios,
        }
    stampedes = {}
    # The gateway answers most of a burst from the entry its first forward filled; the api role
    # alone shows that its single flight holds when all 200 reach it as misses.
    targets = [(n, c.name, c.base, c.headers) for n, c in chosen.items() if "stampede" in c.scenarios]
    if targets and "gateway" in chosen:
        targets.insert(1, ("api", "cachedapi api role alone (no gateway)", world.stack.apis[0].url, {}))
    for n, (name, label, base, headers) in enumerate(targets):
        item_id = f"stampede-{n}"
        contenders.data.new_cold_item(world.database_url, item_id)
        port = int(base.rsplit(":", 1)[1])
        outcome = stampede.run(
            port=port, path=contenders.BOOKS + item_id, headers=headers, database_url=world.database_url
        )
        print(f"  stampede {name}: {outcome.db_reads} database reads for {outcome.requests} requests", flush=True)
        stampedes[name] = {"label": label, "outcome": outcome.as_dict()}
    if stampedes:
        out["stampede"] = {"what": STAMPEDE, "contenders": stampedes}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--contenders", default="", help="comma-separated names (default: all available)")
    parser.add_argument("--scenarios", default="", help=f"comma-separated, of {', '.join(SCENARIOS)}, stampede")
    parser.add_argument("--miss-items", type=int, default=150_000, help="cold items (each read once per run)")
    parser.add_argument("--output", type=Path, default=OUT, help="directory for results.json/.md/.png")
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
    if args.scenarios:
        picked = set(args.scenarios.split(","))
        for name in list(SCENARIOS):
            if name not in picked:
                del SCENARIOS[name]
        if "stampede" not in picked:
            for contender in everything.values():
                contender.scenarios = contender.scenarios - {"stampede"}
    chosen = {name: everything[name] for name in wanted}
    # Contenders that fill the world's Redis under the same keys (the gateways) read disjoint
    # slices of the cold ids: else the second to read an id would find it cached (a hit, not a miss).
    sharing = [c for c in chosen.values() if c.shares_cache]
    for index, contender in enumerate(sharing):
        contender.cursor = index * (args.miss_items // len(sharing))
    load_before = os.getloadavg()[0]
    world = contenders.World(bench_api(), miss_items=args.miss_items, mix_items=1000)
    started: list[contenders.Contender] = []
    try:
        print("bench: starting PostgreSQL, Redis, the api role, seeding, starting the contenders ...", flush=True)
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
        "settings": {
            "rounds": args.rounds,
            "duration": args.duration,
            "warmup": args.warmup,
            "connections": args.connections,
            "threads": 1,
        },
        "scenarios": scenarios,
        "api_rss_mib_after": api_rss,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    text = report.table(results)
    (args.output / "results.md").write_text(text + "\n", encoding="utf-8")
    report.chart(results, args.output / "results.png")
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
