"""Benchmark: 100 CachedApis applied at once to the Kubernetes API emulator.

Measures the seconds from the first create until every CachedApi has all of
its children and a status, with the real operator (``cachedapi operator``,
kopf inside) in a subprocess talking HTTP to kmock's emulator. Prints the
figure and writes it to ``bench/results-operator.json``. The design target is
60 s (design.md section 7).

    python bench/operator_scale.py [--count 100]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.operator import emulator as em  # noqa: E402

EXPECTED_CHILDREN = 18  # bookstore: see tests/operator/test_operator.py
TARGET_SECONDS = 60.0


async def run(count: int, workdir: Path) -> dict[str, Any]:
    template = yaml.safe_load((ROOT / "examples" / "bookstore.yaml").read_text(encoding="utf-8"))
    async with em.emulated_cluster() as cluster:
        with em.operator_process(server=cluster.url, workdir=workdir, resync_seconds=60):
            await asyncio.sleep(3)  # the operator is up and watching (kopf's discovery done)
            bodies = []
            for i in range(count):
                body = copy.deepcopy(template)
                body["metadata"] = {"name": f"api{i:03d}", "namespace": f"team{i % 10}"}
                bodies.append(body)
            started = time.monotonic()
            await asyncio.gather(*(cluster.apply_cachedapi(b) for b in bodies))
            applied = time.monotonic() - started

            async def done() -> bool:
                for body in bodies:
                    meta = body["metadata"]
                    if len(cluster.children(meta["namespace"], meta["name"])) < EXPECTED_CHILDREN:
                        return False
                for body in bodies:
                    meta = body["metadata"]
                    obj = await cluster.get("CachedApi", meta["namespace"], meta["name"])
                    if not obj or not (obj.get("status") or {}).get("phase"):
                        return False
                return True

            await em.eventually(done, timeout=300, interval=0.25)
            converged = time.monotonic() - started
            writes = len(cluster.operator_writes())
            requests = len(cluster.operator_requests())
    return {
        "cachedapis": count,
        "children_each": EXPECTED_CHILDREN,
        "seconds_to_apply": round(applied, 2),
        "seconds_until_all_children_and_status": round(converged, 2),
        "target_seconds": TARGET_SECONDS,
        "met": converged <= TARGET_SECONDS,
        "operator_write_requests": writes,
        "operator_requests": requests,
        "machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--keep-log", type=Path, default=None, help="a directory to keep the operator's log in")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep_log or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(run(args.count, workdir))
    (ROOT / "bench" / "results-operator.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"{result['cachedapis']} CachedApis: every child and status in "
        f"{result['seconds_until_all_children_and_status']} s "
        f"(target {TARGET_SECONDS:.0f} s; {result['operator_write_requests']} writes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
