"""``cachedapi operator``: read the environment, then run the kopf operator.

Settings come from the environment, as in a Deployment:

- ``CACHEDAPI_NAMESPACES``: comma-separated namespaces to serve; empty = the whole cluster;
- ``CACHEDAPI_LIVENESS_ENDPOINT``: kopf's liveness probe (default
  ``http://0.0.0.0:8080/healthz``; empty = none);
- ``CACHEDAPI_RESYNC_SECONDS``: how often every CachedApi is reconciled even
  when nothing happened (default 60);
- ``CACHEDAPI_RETRY_SECONDS``: how long after a failed reconcile it is tried
  again (default 10; doubled with each failure in a row, up to 8 times);
- ``CACHEDAPI_LOG_LEVEL``: DEBUG, INFO (default), WARNING or ERROR.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"cachedapi operator: {name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise SystemExit(f"cachedapi operator: {name} must be positive")
    return value


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=os.environ.get("CACHEDAPI_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per watch event otherwise
    from cachedapi.operator import handlers

    namespaces = [ns.strip() for ns in os.environ.get("CACHEDAPI_NAMESPACES", "").split(",") if ns.strip()]
    liveness = os.environ.get("CACHEDAPI_LIVENESS_ENDPOINT", DEFAULT_LIVENESS) or None
    return handlers.run(
        namespaces=namespaces,
        liveness_endpoint=liveness,
        resync_seconds=_seconds(handlers.ENV_RESYNC_SECONDS, 60.0),
        retry_seconds=_seconds(handlers.ENV_RETRY_SECONDS, 10.0),
    )


if __name__ == "__main__":
    sys.exit(main(argparse.Namespace()))
