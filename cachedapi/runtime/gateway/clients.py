"""What one client may hold of the gateway beyond its cache: the limits granian does not offer.

granian closes a connection whose header is late and caps connections
(``server``), but reads a request's body only when the app asks for it and
knows nothing of client addresses. So the two limits that need the request
are here, on the forwarding path only (misses, writes, documentation): a cache
hit is one Redis round trip that holds nothing, and its path is left as it was.

- The body deadline: from the first read of a request body until its last
  byte, ``requestBodySeconds``; past it the answer is 408 and the connection
  is closed (``Connection: close``), so a client that trickles a PUT holds a
  connection and a task for that long at most.
- The per-address cap: at most ``maxForwardsPerClient`` requests of one peer
  address forwarded (or reading a body) at once; more are answered 503 with
  ``Retry-After``, without reading their body, so that one address cannot
  hold the api role's connections and the gateway's tasks from the others.

What is not here, and why: a cap on *connections* per address. A connection
reaches Python only with its first complete header, and ASGI says nothing when
it closes, so the app cannot count them; granian has no hook at accept. It
belongs in front of the gateway (the ingress or load balancer: NGINX's
``limit_conn``, ingress-nginx's ``limit-connections``), where the client's
address is also the real one; behind such a proxy every request here has the
proxy's address, which is why ``maxForwardsPerClient`` may be 0 (no cap).
"""

from __future__ import annotations

import asyncio
from typing import Any

from cachedapi import contract
from cachedapi.runtime.gateway import answers, forwarding, metrics, upstream
from cachedapi.runtime.gateway.answers import Headers, Message, Receive, Scope, Send

#: The methods whose body ``forwarding.read_body`` does not read.
_NO_BODY = frozenset({"GET", "HEAD"})


class BodyTimeout(Exception):
    """The request body did not arrive within the deadline."""


def bounded(receive: Receive, seconds: float) -> Receive:
    """``receive`` that raises BodyTimeout once ``seconds`` have passed since its first call."""
    loop = asyncio.get_running_loop()
    deadline: float | None = None

    async def receive_within() -> Message:
        nonlocal deadline
        if deadline is None:
            deadline = loop.time() + seconds
        try:
            async with asyncio.timeout_at(deadline):
                return await receive()
        except TimeoutError:
            raise BodyTimeout from None

    return receive_within


class LimitedForwarder(forwarding.Forwarder):
    """The forwarder, with the body deadline and the per-address cap around every forward."""

    def __init__(self, api: upstream.Upstream, *, counts: metrics.Counts, config: contract.RuntimeConfig) -> None:
        super().__init__(api, counts=counts, max_body=config.max_body_bytes)
        self.body_seconds = float(config.request_body_seconds)
        self.per_client = config.max_forwards_per_client
        #: peer address -> its requests being forwarded now (absent: none).
        self.in_flight: dict[str, int] = {}

    async def forward(self, scope: Scope, receive: Receive, send: Send, *args: Any, **kwargs: Any) -> None:
        peer = scope.get("client")
        address = peer[0] if peer else ""
        held = self.in_flight.get(address, 0)
        if self.per_client and held >= self.per_client:
            self.counts.over_capacity += 1
            headers: Headers = [*kwargs.get("headers", ()), (b"retry-after", b"1")]
            if not any(name == b"x-request-id" for name, _ in headers):
                headers.append((b"x-request-id", kwargs.get("request_id", b"")))
            await answers.send_problem(
                send,
                503,
                detail=f"this client has {held} requests in progress past the cache, the most one address may "
                "have: retry once one has been answered",
                headers=headers,
            )
            return
        if scope["method"] not in _NO_BODY:
            receive = bounded(receive, self.body_seconds)
        self.in_flight[address] = held + 1
        try:
            await super().forward(scope, receive, send, *args, **kwargs)
        except BodyTimeout:
            # Raised while the body was read, before anything was sent or forwarded.
            self.counts.body_timeouts += 1
            headers = [*kwargs.get("headers", ()), (b"connection", b"close")]
            detail = f"the request body did not arrive within {self.body_seconds:g} s"
            await answers.send_problem(send, 408, detail=detail, headers=headers)
        finally:
            left = self.in_flight[address] - 1
            if left:
                self.in_flight[address] = left
            else:
                del self.in_flight[address]
