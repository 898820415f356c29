"""The benchmark: the gateway against its peers, side by side in one run, on this machine.

``python -m bench.run`` starts PostgreSQL, Redis and the api role (one stack),
seeds the same items for everyone (``data``), starts each contender
(``contenders.available``) and, scenario by scenario (``SCENARIOS``), warms
each up and runs ``wrk -t1 -c50`` against each in turn for several rounds,
the order rotated each round so that no contender always runs first. Then the
stampede: 200 simultaneous requests for one cold key per contender, counted at
PostgreSQL (``stampede``). It writes ``bench/results.json`` (every round),
``bench/results.md`` (the table, also printed) and ``bench/results.png``.
The "any upstream" scenarios (``upstream``: ``upstream-hit``, ``upstream-miss``,
``upstream-stampede``) put the gateway, Varnish and nginx ``proxy_cache`` in front of one
plain HTTP API instead; run alone, they start no PostgreSQL and no api role.
Every process it starts is stopped by pid, whatever happens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import contenders, data, report, stampede, upstream, wrk
from bench.peers import plain_peer
from cachedapi import listquery, model
from cachedapi.runtime.api import listing as api_listing

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench"

#: Scenario name -> what it measures.
SCENARIOS = {
    "hit": "GET of one cached 280-byte item; the gateway checks an API key and the rate limit on every request",
    "large": "GET of one cached 50 KB item",
    "miss": "GETs of cold items, each read once (gateway -> api -> PostgreSQL -> cache fill)",
    "mix": "GETs of 1,000 hot items with 5% PUTs of them (through the gateway: each PUT invalidates)",
    "list-miss": "GETs of cold filtered pages, ?author=<a different one each time>&sort=-year,title&limit=20, "
    "among {list_items:,} books, on the declared index (gateway -> api -> PostgreSQL -> cache fill)",
    "list-hit": "GET of one cached filtered page (20 books, 2.5 KB), and of the hit scenario's item in the same "
    "rounds (order rotated)",
}
SCENARIOS.update(upstream.SCENARIOS)  # "any upstream": shared HTTP caches in front of one plain API
STAMPEDE = "200 simultaneous GETs of one cold item; the database reads PostgreSQL counted"
#: In list-hit, the suffix of the rows of a contender's item hit, run in the same rounds.
ITEM_HIT = "/item-hit"


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
    if target.script == "list_miss.lua":
        contender.list_cursor += result.requests + connections
    per_request = round(spent / result.requests * 1e6, 1) if result.requests else 0.0
    return dataclasses.replace(result, cpu_us_per_request=per_request)


def measure(
    world: contenders.World, chosen: dict[str, contenders.Contender], *, args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario, what in SCENARIOS.items():
        # name -> the contender and the scenario whose requests it gets (its own, but see list-hit)
        taking_part = {n: (c, scenario) for n, c in chosen.items() if c.target(world, scenario) is not None}
        if not taking_part:
            continue
        if scenario == "list-hit":
            # Each contender's item hit too, in rounds interleaved with its page hits: the machine's
            # other load comes and goes, so only figures of the same rounds compare.
            for key, (c, _) in list(taking_part.items()):
                if c.target(world, "hit") is not None:
                    taking_part[key + ITEM_HIT] = (c, "hit")
        names = list(taking_part)
        for contender, asked in taking_part.values():
            contenders.warm(contender, world, asked)
            target = contender.target(world, asked)
            assert target is not None
            _drive(contender, target, world=world, seconds=args.warmup, connections=args.connections)
        runs: dict[str, list[wrk.Run]] = {name: [] for name in names}
        for round_no in range(args.rounds):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for name in order:
                contender, asked = taking_part[name]
                target = contender.target(world, asked)
                assert target is not None
                result = _drive(contender, target, world=world, seconds=args.duration, connections=args.connections)
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
        paired = [n for n in medians if n + ITEM_HIT in medians]
        if paired:  # list-hit: is a cached page as fast as a cached item?
            hit = {n: medians[n + ITEM_HIT] for n in paired}
            ratios["rps_vs_hit"] = {n: round(medians[n]["rps"] / hit[n]["rps"], 2) for n in paired}
            ratios["p99_vs_hit"] = {n: round(medians[n]["p99_ms"] / hit[n]["p99_ms"], 2) for n in paired}
        out[scenario] = {
            "what": what,
            "contenders": {
                name: {
                    "label": taking_part[name][0].name + (", item hit" if taking_part[name][1] != scenario else ""),
                    "median": medians[name],
                    "rss_mib_after": contenders.rss_mib(taking_part[name][0].pids()),
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
        data.new_cold_item(world.database_url, item_id)
        port = int(base.rsplit(":", 1)[1])
        outcome = stampede.run(
            port=port, path=contenders.BOOKS + item_id, headers=headers, database_url=world.database_url
        )
        print(f"  stampede {name}: {outcome.db_reads} database reads for {outcome.requests} requests", flush=True)
        stampedes[name] = {"label": label, "outcome": outcome.as_dict()}
    if stampedes:
        out["stampede"] = {"what": STAMPEDE, "contenders": stampedes}
    upstream_stampede = upstream.stampedes(chosen)
    if upstream_stampede:
        out[upstream.STAMPEDE] = upstream_stampede
    return out


def list_setup(world: contenders.World, sharing: list[contenders.Contender]) -> dict[str, Any]:
    """After the list rows are written: give the contenders that fill the same cache (the gateways)
    disjoint slices of the list authors, and check with EXPLAIN that the plain peer's query and the
    api role's use a declared index (the comparison means nothing otherwise)."""
    first, stop = contenders.list_miss_range(world)
    share = (stop - first) // max(1, len(sharing))
    for index, contender in enumerate(sharing):
        contender.list_cursor = first + index * share
        contender.list_stop = first + (index + 1) * share
    author = data.list_author(contenders.LIST_HIT_AUTHOR)
    books = next(r for r in world.api.spec.resources if r.name == "books")
    properties = listquery.properties(books.schema_)
    query = listquery.parse(contenders.list_path(contenders.LIST_HIT_AUTHOR).split("?", 1)[1], properties)
    api_statement, api_params = api_listing.page("books", query, properties, limit=query.limit + 1)
    plans = {
        "plain": data.explain(world.database_url, plain_peer.LIST_SQL, [json.dumps(author), query.limit + 1]),
        "api": data.explain(world.database_url, api_statement, api_params),
    }
    for name, plan in plans.items():
        print(f"bench: {name} list query plan: {' / '.join(line.strip() for line in plan.splitlines())}", flush=True)
        if "r_books_x_" not in plan:
            raise RuntimeError(f"the {name} list query does not use a declared index:\n{plan}")
    seeded = world.items
    print(
        f"bench: {seeded.list_items:,} list rows, {seeded.list_authors:,} authors, written, indexed and analysed "
        f"in {seeded.list_seconds:.0f} s",
        flush=True,
    )
    return {
        "items": seeded.list_items,
        "authors": seeded.list_authors,
        "seed_seconds": seeded.list_seconds,
        "plans": plans,
    }


def _stop_on_sigterm() -> None:
    """``timeout`` and ``kill`` send SIGTERM: raise, so that every ``with`` and ``finally`` below
    stops what it started (servers, peers, load) instead of leaving them running."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    _stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--contenders", default="", help="comma-separated names (default: all available)")
    parser.add_argument(
        "--scenarios", default="", help=f"comma-separated, of {', '.join(SCENARIOS)}, stampede, {upstream.STAMPEDE}"
    )
    parser.add_argument("--miss-items", type=int, default=150_000, help="cold items (each read once per run)")
    parser.add_argument(
        "--list-items",
        type=int,
        default=1_000_000,
        help=f"books of the list scenarios, {data.LIST_ROWS_PER_AUTHOR} per author (written only if one runs; "
        "0: no list scenarios)",
    )
    parser.add_argument("--output", type=Path, default=OUT, help="directory for results.json/.md/.png")
    args = parser.parse_args(argv)

    everything = contenders.available() | upstream.available()
    wanted = [n for n in args.contenders.split(",") if n] or list(everything)
    for name in wanted:
        made = contenders.variant(name)
        if made is not None:
            everything[name] = made
    unknown = [n for n in wanted if n not in everything]
    if unknown:
        print(f"bench: unknown or unavailable contenders {unknown}; available: {list(everything)}", file=sys.stderr)
        return 2
    if 0 < args.list_items < 4 * data.LIST_ROWS_PER_AUTHOR:
        parser.error(f"--list-items: 0 (no list scenarios) or at least {4 * data.LIST_ROWS_PER_AUTHOR}")
    if args.list_items == 0:
        for name in contenders.LIST_SCENARIOS:
            SCENARIOS.pop(name, None)
    else:
        SCENARIOS["list-miss"] = SCENARIOS["list-miss"].format(list_items=args.list_items)
    if args.scenarios:
        picked = set(args.scenarios.split(","))
        for name in list(SCENARIOS):
            if name not in picked:
                del SCENARIOS[name]
        for burst in ("stampede", upstream.STAMPEDE):
            if burst not in picked:
                for contender in everything.values():
                    contender.scenarios = contender.scenarios - {burst}
    chosen = {name: everything[name] for name in wanted}
    # Contenders that fill the world's Redis under the same keys (the gateways) read disjoint
    # slices of the cold ids: else the second to read an id would find it cached (a hit, not a miss).
    sharing = [c for c in chosen.values() if c.shares_cache]
    for index, contender in enumerate(sharing):
        contender.cursor = index * (args.miss_items // len(sharing))
    lists = any(name in SCENARIOS for name in contenders.LIST_SCENARIOS)
    # The bookstore's PostgreSQL, api role and items only when a scenario of theirs runs; the
    # upstream contenders bring their own upstream (``upstream.ORIGIN``).
    bookstore = any(name not in upstream.SCENARIOS for name in SCENARIOS) or any(
        "stampede" in c.scenarios for c in chosen.values()
    )
    if not bookstore:
        chosen = {n: c for n, c in chosen.items() if isinstance(c, upstream.UpstreamContender)}
    load_before = os.getloadavg()[0]
    world = contenders.World(
        bench_api(), miss_items=args.miss_items, mix_items=1000, list_items=args.list_items if lists else 0
    )
    started: list[contenders.Contender] = []
    listing: dict[str, Any] = {}
    try:
        print(
            "bench: starting PostgreSQL, Redis, the api role, seeding, starting the contenders ..."
            if bookstore
            else "bench: starting the upstream and the contenders ...",
            flush=True,
        )
        if bookstore:
            world.start()
        if lists:
            listing = list_setup(world, sharing)
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
        "list_data": listing,
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
