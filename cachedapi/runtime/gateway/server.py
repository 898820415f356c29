"""Serving the gateway with granian, the HTTP server measured fastest for it.

On this 2-core machine, the gateway's cache-hit path served 1.2-1.8x the
requests per second under granian (its HTTP/1 parsing and socket work run in
Rust, outside the GIL) as under uvicorn with uvloop and httptools, whose
per-response header checks showed at the top of a profile (bench/README.md).
``CACHEDAPI_HTTP_SERVER=uvicorn`` keeps the other choice available, for
comparison and as a fallback.

granian runs the app in a worker process that it starts itself and that
imports the app by name, so the worker builds its own ``Gateway`` from the
same configuration file and environment (``from_environment``); the parent
has built one first only to refuse a bad configuration before serving.
"""

from __future__ import annotations

import os

from cachedapi import contract
from cachedapi.runtime.gateway import app

#: Which HTTP server runs the gateway role: granian (default) or uvicorn.
ENV_HTTP_SERVER = "CACHEDAPI_HTTP_SERVER"
#: granian's backpressure: how many requests the Python side works on at once (0 = no limit);
#: the others wait in granian's Rust side. Measured on the hit path (bench/README.md): 16
#: lowers p99 from about 7 ms to about 4.5 ms but costs about a third of the throughput, and
#: it would also cap concurrent forwards, so that a slow api role would hold up cache hits
#: behind it. So no limit by default; the setting is there for a hit-only deployment.
ENV_BACKPRESSURE = "CACHEDAPI_GATEWAY_BACKPRESSURE"
DEFAULT_BACKPRESSURE = 0


def from_environment() -> app.Gateway:
    """The granian worker's app: configuration as ``cachedapi runtime`` read it."""
    config = contract.load_config(os.environ[contract.ENV_CONFIG], os.environ)
    return app.create_app(config, contract.resolve_secret_files(os.environ))


def wanted() -> str:
    return os.environ.get(ENV_HTTP_SERVER, "granian")


def run_granian(*, config_path: str, host: str, port: int) -> None:
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    os.environ[contract.ENV_CONFIG] = os.path.abspath(config_path)
    backpressure = int(os.environ.get(ENV_BACKPRESSURE, DEFAULT_BACKPRESSURE)) or None
    Server(
        f"{__name__}:from_environment",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        websockets=False,
        log_access=False,
        log_level=LogLevels.warning,
        backlog=2048,
        backpressure=backpressure,
    ).serve()
