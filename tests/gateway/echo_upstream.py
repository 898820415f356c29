"""A tiny upstream that answers with the request it received, for the header-forwarding tests and
the tests of the gateway's HTTP client.

The api role has no reason to show the headers a request reached it with, so
these tests put this echo behind a real gateway instead; it also answers with
hop-by-hop headers, which the gateway must not pass back. Run as
``python -m tests.gateway.echo_upstream PORT``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import uvicorn

Message = MutableMapping[str, Any]


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if scope["path"] == "/v1/orders/slow":
        await asyncio.sleep(10)
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    seen = [[name.decode("latin-1"), value.decode("latin-1")] for name, value in scope["headers"]]
    payload = orjson.dumps(
        {
            "headers": seen,
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode("latin-1"),
            "body": body.decode("latin-1"),
            "bodyBytes": len(body),
            "clientPort": scope["client"][1] if scope.get("client") else None,
        }
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"connection", b"x-upstream-hop"),
        (b"x-upstream-hop", b"secret"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-authenticate", b"Basic"),
        (b"x-end-to-end", b"kept"),
        (b"content-length", b"%d" % len(payload)),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
