"""The api role's ASGI app: ``create_app(config, environ)``, what ``cachedapi runtime --role api`` serves.

Everything is built here once, at start: the pool, the Redis client and cache
store, the compiled validators, the OpenAPI document. The app starts even when
PostgreSQL or Redis is down (the pool connects in the background; tables are
created as soon as PostgreSQL answers).

Readiness (``/readyz``) is PostgreSQL: without it the api can only serve stale
entries. Redis being down does not make the api unready, because every request
still succeeds from the database; ``/readyz`` says so in its body (``redis``). Redis
refusing this process from the start (a certificate that does not verify, AUTH refused)
does: that is a configuration a rollout should stop at. The body then says why
(``redisError``, ``databaseError``: "certificate verify failed ...").
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import orjson
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from cachedapi import contract
from cachedapi.runtime.api import cache, documents, handlers, middleware, openapi, protocol, reads
from cachedapi.runtime.api import db as db_mod
from cachedapi.runtime.api import metrics as metrics_mod

log = logging.getLogger(__name__)
Endpoint = Callable[[Request], Awaitable[Response]]


def _guard(endpoint: Endpoint, *, path: str) -> Endpoint:
    """Turn every failure into problem+json, never a stack trace (it is logged here); name the route."""

    async def guarded(request: Request) -> Response:
        slot = request.scope.get(middleware.ROUTE_SLOT)
        if slot is not None:
            slot[0] = path
        try:
            return await endpoint(request)
        except protocol.Problem as exc:
            return exc.response()
        except documents.Invalid as exc:
            return protocol.problem_response(422, str(exc), errors=exc.errors)
        except db_mod.DatabaseUnavailable as exc:
            # The database's breaker logs the outage once; one line per request would flood.
            log.debug("%s %s: database unavailable: %s", request.method, request.url.path, exc)
            return protocol.database_unavailable().response()
        except db_mod.NotFound:
            params = request.path_params
            return protocol.problem_response(
                404, f"no {params['resource']} item with id {protocol.shown(params['id'])}"
            )
        except db_mod.Unstorable as exc:
            return protocol.problem_response(422, f"the database cannot store this body: {exc}")
        except db_mod.PreconditionFailed:
            return protocol.problem_response(412, "the If-Match / If-None-Match precondition does not hold")
        except Exception:
            rid = request.headers.get(contract.REQUEST_ID_HEADER, "-")
            log.exception("%s %s failed (request id %s)", request.method, request.url.path, rid)
            return protocol.problem_response(500, "an unexpected error occurred; it has been logged")

    return guarded


def create_app(config: contract.RuntimeConfig, environ: Mapping[str, str]) -> FastAPI:
    """The api role. Raises ValueError when the environment lacks the database URL."""
    database_url = environ.get(contract.ENV_DATABASE_URL)
    if not database_url:
        raise ValueError(f"{contract.ENV_DATABASE_URL} is not set")
    redis_url = environ.get(contract.ENV_REDIS_URL)
    # The pool warns on every failed reconnection attempt; the Database logs once per outage instead.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    metrics = metrics_mod.Metrics()
    database = db_mod.Database(
        url=database_url,
        resources=config.resources,
        metrics=metrics,
        indexes={name: res.indexes for name, res in config.resources.items()},
        schemas={name: res.schema for name, res in config.resources.items()},
        ca_file=environ.get(contract.ENV_DATABASE_CA_FILE) or None,
    )
    store = None
    if redis_url:
        redis = cache.connection(redis_url, ca_file=environ.get(contract.ENV_REDIS_CA_FILE) or None)
        store = cache.CacheStore(redis=redis, config=config, metrics=metrics)
    else:
        log.warning("%s is not set: every read goes to the database (X-Cache: BYPASS)", contract.ENV_REDIS_URL)
    reader = reads.Reader(store=store, config=config, metrics=metrics)
    endpoints = handlers.Handlers(config=config, database=database, reader=reader, store=store)
    document = openapi.build(config)

    @contextlib.asynccontextmanager
    async def lifespan(started: FastAPI) -> AsyncIterator[None]:
        await database.open()
        if store is not None:
            store.start()
        if getattr(started.state, "freeze_after_start", False):
            # What is loaded by now (the frameworks, the app, its validators, the server) lives as long
            # as the process: out of the cyclic collector's reach, as the gateway does after its
            # start-up. A full collection of it took 40 ms (81 ms under load), a stall of every request
            # in flight, every few seconds of the bench's mix (2 Dec). Not in tests, which make many apps.
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await reader.close()
            if store is not None:
                await store.close()
            await database.close()

    app = FastAPI(title=document["info"]["title"], lifespan=lifespan, openapi_url="/openapi.json", docs_url="/docs")
    app.openapi = lambda: document  # type: ignore[method-assign]
    app.state.metrics = metrics
    app.state.store = store
    app.state.database = database

    async def healthz(_: Request) -> Response:
        return protocol.json_response(b'{"status":"ok"}')

    async def readyz(_: Request) -> Response:
        try:
            await database.ensure_schema()
            db_ok = await database.ping()
        except db_mod.DatabaseUnavailable:
            db_ok = False
        redis_state = "absent" if store is None else ("ok" if await store.ping() else "unreachable")
        # Redis down only degrades the api; Redis refusing it (TLS, AUTH) from the start is a
        # configuration error that a rollout must stop at (``redisconn.PipelinedRedis.misconfigured``).
        refused = store.misconfigured if store is not None else None
        ready = db_ok and refused is None
        body = {
            "status": "ready" if ready else "unready",
            "database": "ok" if db_ok else "unreachable",
            "redis": "refused"
            if refused
            else redis_state
            if redis_state != "unreachable"
            else "unreachable (degraded: reads bypass the cache)",
        }
        if not db_ok and database.last_error:
            body["databaseError"] = database.last_error
        if refused:
            body["redisError"] = refused
        return protocol.json_response(orjson.dumps(body), status=200 if ready else 503)

    async def metrics_endpoint(_: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    routes: list[tuple[str, Endpoint, list[str]]] = [
        ("/healthz", healthz, ["GET"]),
        ("/readyz", readyz, ["GET"]),
        ("/metrics", metrics_endpoint, ["GET"]),
        ("/v1/{resource}", endpoints.list, ["GET"]),
        ("/v1/{resource}", endpoints.create, ["POST"]),
        ("/v1/{resource}/{id}", endpoints.get, ["GET"]),
        ("/v1/{resource}/{id}", endpoints.put, ["PUT"]),
        ("/v1/{resource}/{id}", endpoints.patch, ["PATCH"]),
        ("/v1/{resource}/{id}", endpoints.delete, ["DELETE"]),
    ]
    for path, endpoint, methods in routes:
        app.add_route(path, _guard(endpoint, path=path), methods=methods, include_in_schema=False)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            detail = f"no route for {request.url.path}"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
            # One route per method, so Starlette's Allow names only the first route's methods:
            # name every method that some route of this path takes.
            allowed = sorted(
                {
                    method
                    for route in app.router.routes
                    if isinstance(route, Route) and route.matches(request.scope)[0] == Match.PARTIAL
                    for method in route.methods or ()
                }
            )
            return protocol.problem_response(405, detail, headers={"Allow": ", ".join(allowed)})
        else:
            detail = str(exc.detail)
        return protocol.problem_response(exc.status_code, detail, headers=dict(exc.headers or {}))

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Outside the resource endpoints (which _guard covers): still problem+json, never a trace.
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return protocol.problem_response(500, "an unexpected error occurred; it has been logged")

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
    app.add_middleware(middleware.HeaderLimits)
    app.add_middleware(middleware.Instrument, metrics=metrics)  # outermost: counts the 431s too
    return app
