"""A configurable upstream for the shared-cache tests: the user's own API, as a real process.

Each path answers what a test set for it (``POST /__control/route``): status, header fields,
body, a delay, an ETag and a Last-Modified honoured in conditional requests (304). Every
request is counted per method and path (``GET /__control/counts``). Paths nobody set answer
200 with no caching fields. Unless a body is set, the body is JSON naming the request: the
count ``n`` of requests to the path so far (so a test can tell a cached answer from a new
one), the method, query, header fields and body the request reached the upstream with.

``/kv/{key}`` and ``/kvlist`` are a small key-value API for the load scenario: ``PUT
/kv/{key}`` with ``{"n": 5}`` stores 5 and answers ``Cache-Tag-Purge: kvlist``; ``GET
/kv/{key}`` answers ``{"n": ...}`` (max-age=300, ``Cache-Tag: kv-{key}``) after a random
delay of up to ``KV_DELAY`` seconds, so reads race writes; ``GET /kvlist`` answers every key
(``Cache-Tag: kvlist``).

Run as ``python -m tests.gateway.http_upstream PORT``.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import uvicorn

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]

KV_DELAY = 0.02

routes: dict[tuple[str, str], dict[str, Any]] = {}
counts: Counter[str] = Counter()
kv: dict[str, int] = {}


async def answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    if status not in (204, 304):
        headers = [*headers, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if status in (204, 304) else body})


async def read_body(receive: Callable[[], Awaitable[Message]]) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def control(scope: MutableMapping[str, Any], body: bytes, send: Send) -> None:
    path = scope["path"]
    if path == "/__control/route":
        cfg = orjson.loads(body)
        routes[(cfg.get("method", "GET"), cfg["path"])] = cfg
    elif path == "/__control/reset":
        routes.clear()
        counts.clear()
        kv.clear()
    elif path == "/__control/counts":
        await answer(send, 200, [(b"content-type", b"application/json")], orjson.dumps(dict(counts)))
        return
    await answer(send, 204, [], b"")


def _header(scope: MutableMapping[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def key_value(scope: MutableMapping[str, Any], method: str, body: bytes, send: Send) -> None:
    path: str = scope["path"]
    if path == "/kvlist":
        payload = orjson.dumps(dict(kv))
        await asyncio.sleep(random.random() * KV_DELAY)
        headers = [(b"cache-control", b"max-age=300"), (b"cache-tag", b"kvlist")]
        await answer(send, 200, [(b"content-type", b"application/json"), *headers], payload)
        return
    key = path[len("/kv/") :]
    if method == "GET":
        value = kv.get(key, 0)
        await asyncio.sleep(random.random() * KV_DELAY)
        headers = [(b"cache-control", b"max-age=300"), (b"cache-tag", b"kv-" + key.encode())]
        await answer(send, 200, [(b"content-type", b"application/json"), *headers], orjson.dumps({"n": value}))
        return
    kv[key] = int(orjson.loads(body)["n"])
    await answer(send, 200, [(b"cache-tag-purge", b"kvlist")], orjson.dumps({"n": kv[key]}))


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    body = await read_body(receive)
    path: str = scope["path"]
    if path.startswith("/__control/"):
        await control(scope, body, send)
        return
    method: str = scope["method"]
    counts[f"{method} {path}"] += 1
    n = counts[f"{method} {path}"]  # this request's number, whatever arrives during its delay
    if path.startswith("/kv/") or path == "/kvlist":
        await key_value(scope, method, body, send)
        return
    cfg = routes.get((method, path)) or routes.get(("*", path)) or {}
    if cfg.get("delay"):
        await asyncio.sleep(float(cfg["delay"]))
    headers = [(name.lower().encode(), value.encode()) for name, value in cfg.get("headers", [])]
    etag = cfg.get("etag")
    modified = cfg.get("last_modified")
    if etag:
        headers.append((b"etag", etag.encode()))
    if modified:
        headers.append((b"last-modified", modified.encode()))
    if method == "GET":
        inm, ims = _header(scope, b"if-none-match"), _header(scope, b"if-modified-since")
        if (etag and inm is not None and etag.encode() in inm) or (
            modified and inm is None and ims is not None and ims == modified.encode()
        ):
            counts[f"304 {path}"] += 1
            await answer(send, 304, headers, b"")
            return
    if "body" in cfg:
        payload = cfg["body"].encode()
    else:
        payload = orjson.dumps(
            {
                "n": n,
                "method": method,
                "path": path,
                "query": scope["query_string"].decode("latin-1"),
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
                "body": body.decode("latin-1"),
            }
        )
        headers.append((b"content-type", b"application/json"))
    await answer(send, int(cfg.get("status", 200)), headers, payload)


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
