"""``cachedapi runtime --role gateway|api``: read the configuration once, then serve.

The api role's HTTP server is uvicorn with uvloop and httptools; the gateway's is
granian (``gateway/server``), each measured against the alternatives in ``bench/``.
Access logs are off because the roles count requests in ``/metrics`` instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cachedapi import contract


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``cachedapi runtime``'s options (also ``python -m cachedapi.runtime``'s)."""
    parser.add_argument("--role", choices=["gateway", "api"], required=True)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=None, help="default: the role's port from the contract")
    parser.add_argument("--config", default=None, help="configuration file (default: $CACHEDAPI_CONFIG)")
    return parser


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=os.environ.get(contract.ENV_LOG_LEVEL, "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    config_path = (
        args.config or os.environ.get(contract.ENV_CONFIG) or os.path.join(contract.CONFIG_DIR, contract.CONFIG_FILE)
    )
    try:
        config = contract.load_config(config_path, os.environ)
    except (OSError, ValueError) as exc:
        print(f"cachedapi runtime: cannot read configuration {config_path}: {exc}", file=sys.stderr)
        return 2

    if args.role == "api":
        from cachedapi.runtime.api import app as role_app

        port = args.port or contract.API_PORT
    else:
        from cachedapi.runtime.gateway import app as role_app  # type: ignore[no-redef]

        port = args.port or contract.GATEWAY_PORT
    try:
        app = role_app.create_app(config, contract.resolve_secret_files(os.environ))
    except ValueError as exc:
        print(f"cachedapi runtime --role {args.role}: {exc}", file=sys.stderr)
        return 2

    if args.role == "gateway":
        from cachedapi.runtime.gateway import server

        if server.wanted() == "granian":
            server.run_granian(config_path=config_path, host=args.host, port=port, config=config)
            return 0

    import uvicorn

    if args.role == "api":
        app.state.freeze_after_start = True  # the api role's own process: ``api.app``'s lifespan
    uvicorn.run(
        app,
        host=args.host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
        timeout_keep_alive=30,
    )
    return 0
