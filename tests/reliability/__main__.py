"""``python -m tests.reliability [--seconds N]``: every scenario, long mode, as a markdown table."""

from __future__ import annotations

import argparse
import json

from . import scenarios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    rows = []
    for scenario in scenarios.ALL:
        outcome = scenario(args.seconds)
        rows.append({"scenario": outcome.name, "seconds": args.seconds, **outcome.figures})
        print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| scenario | reads by status | writes by status | acked / lost writes | acked / lost inserts "
        "| stale reads | stale cache entries | slowest write |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        reads = ", ".join(f"{k}: {v}" for k, v in r["reads"].items())
        writes = ", ".join(f"{k}: {v}" for k, v in r["writes"].items())
        print(
            f"| {r['scenario']} | {reads} | {writes} | {r['acked_writes']} / {r['lost_writes']} "
            f"| {r['acked_creates']} / {r['lost_creates']} | {r['stale_reads']} | {r['stale_cache_entries']} "
            f"| {r['max_write_seconds']} s |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
