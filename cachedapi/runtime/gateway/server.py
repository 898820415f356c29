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

Slow and idle clients (README "Slow and idle clients") meet granian's own
limits here, which run in Rust before a request reaches Python:

- ``spec.gateway.timeouts.requestHeaderSeconds`` is hyper's HTTP/1 header read
  timeout. Its timer starts when the connection is ready for a request (opened,
  or idle after an answer) and is not reset by progress, so a client sending a
  header line a second is cut off too, and an idle keep-alive connection is
  closed after the same time. The connection is closed without an answer: hyper
  writes none for it (nor does NGINX for its ``client_header_timeout``).
- ``spec.gateway.capacity.maxConnections`` is granian's ``backpressure``: a
  semaphore permit per accepted connection, held until it closes (granian's
  ``src/workers.rs``), so it caps connections, not requests in Python. Beyond
  it granian accepts nothing: new connections wait in the kernel's listen queue
  (``backlog``) until one closes; no 503 can be sent from there.
- The read buffer bounds a request's header: a larger one is answered 431 by hyper.

What granian does not offer is done in the app (``clients``: the body deadline,
the per-address cap) or belongs in front of it (a per-address connection cap).
"""

from __future__ import annotations

import logging
import os
import resource

from cachedapi import contract
from cachedapi.runtime.gateway import app

#: Which HTTP server runs the gateway role: granian (default) or uvicorn.
ENV_HTTP_SERVER = "CACHEDAPI_HTTP_SERVER"
#: Overrides ``maxConnections`` (granian's ``backpressure``, which is a cap on connections: see
#: above), for the bench's ``gateway-bp<N>``. Its earlier reading, "requests in Python at once",
#: was wrong: at 16, 16 of wrk's 50 keep-alive connections were served and the other 34 waited
#: to be accepted, which is why it "lowered p99" and "cost a third of the throughput".
ENV_BACKPRESSURE = "CACHEDAPI_GATEWAY_BACKPRESSURE"
#: Connections granian may hold in the kernel's listen queue while it accepts no more.
BACKLOG = 2048
#: granian's HTTP/1 read buffer, which bounds a request line and header: the app's own limit
#: (``contract.MAX_HEADER_BYTES``, also answered 431) and room for the request line. hyper's
#: check is per read, so a connection can hold up to about twice this (measured: about 37 KiB
#: with a 45 KB unfinished header, against 61 KiB under granian's default of 408 KiB).
HTTP1_BUFFER_BYTES = contract.MAX_HEADER_BYTES + 16 * 1024
#: File descriptors kept for what is not a client connection (the api role's pool, Redis, logs).
FD_RESERVE = 1024

log = logging.getLogger("cachedapi.gateway")


def from_environment() -> app.Gateway:
    """The granian worker's app: configuration as ``cachedapi runtime`` read it."""
    config = contract.load_config(os.environ[contract.ENV_CONFIG], os.environ)
    return app.create_app(config, contract.resolve_secret_files(os.environ))


def wanted() -> str:
    return os.environ.get(ENV_HTTP_SERVER, "granian")


def connection_cap(wanted: int) -> int:
    """How many connections this process can hold, up to ``wanted``: its soft file-descriptor
    limit is raised as far as its hard limit allows (granian's worker process inherits it). A
    container runtime may start it at 1024 whatever the hard limit is, and past the limit granian's
    accept loop fails on every connection without accepting it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + FD_RESERVE
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    have = target if soft == resource.RLIM_INFINITY else soft
    cap = min(wanted, have - min(FD_RESERVE, have // 4))
    if cap < wanted:
        log.warning(
            "maxConnections %d lowered to %d: the file-descriptor limit is %d (raise the hard limit)",
            wanted,
            cap,
            have,
        )
    return cap


def run_granian(*, config_path: str, host: str, port: int, config: contract.RuntimeConfig) -> None:
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server

    os.environ[contract.ENV_CONFIG] = os.path.abspath(config_path)
    override = os.environ.get(ENV_BACKPRESSURE)
    max_connections = connection_cap(int(override) if override else config.max_connections)
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
        backlog=BACKLOG,
        backpressure=max_connections,
        http1_settings=HTTP1Settings(
            header_read_timeout=config.request_header_seconds * 1000,
            keep_alive=True,
            max_buffer_size=HTTP1_BUFFER_BYTES,
        ),
    ).serve()
