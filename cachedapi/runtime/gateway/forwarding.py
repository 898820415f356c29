"""Forwarding a request to the api role, and the background refresh of a stale entry.

The request body is read whole but bounded by ``max_body_bytes`` (413 when
larger, judged by Content-Length before reading when there is one), since
the api role's bodies are single JSON documents. When the forward was for an
entry stale within stale-if-error, a failed answer (unreachable, timeout,
5xx) is replaced by that entry. The gateway passes the api role's X-Cache
through: it never fills the cache itself, and leaves its Cache-Control as it is,
except that an answer to an authenticated caller is made ``private`` when it
does not say who may keep it (``answers.make_private``).
"""

from __future__ import annotations

import asyncio
import urllib.parse

from cachedapi import contract
from cachedapi.runtime.gateway import answers, metrics, upstream
from cachedapi.runtime.gateway.answers import Headers, Receive, Scope, Send

STALE = b"STALE"


class Forwarder:
    def __init__(self, api: upstream.Upstream, *, counts: metrics.Counts, max_body: int) -> None:
        self.upstream = api
        self.counts = counts
        self.max_body = max_body
        self._refreshing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1)

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        request_id: bytes,
        headers: Headers,
        stale: tuple[contract.Entry, int, bytes] | None = None,
        private: bool = False,
    ) -> None:
        """Forward and answer; ``headers`` (RateLimit, X-Request-Id) are added to the answer.

        ``stale``: the entry, its age and its resource's Cache-Control format; ``private``: the
        caller authenticated."""
        if not any(name == b"x-request-id" for name, _ in headers):
            headers.append((b"x-request-id", request_id))
        body = await read_body(scope, receive, limit=self.max_body)
        if body is None:
            detail = f"request body larger than {self.max_body} bytes"
            await answers.send_problem(send, 413, detail=detail, headers=headers)
            return
        peer = scope.get("client")
        out_headers = upstream.request_headers(
            scope["headers"],
            client_ip=peer[0] if peer else "unknown",
            scheme=scope.get("scheme", "http"),
            request_id=request_id,
        )
        result = await self.upstream.forward(scope["method"], target(scope), headers=out_headers, body=body)
        failed = isinstance(result, upstream.Failure) or result.status >= 500
        if stale is not None and failed:
            self.counts.stale += 1
            entry, age_ms, cache_control = stale
            await answers.send_entry(
                send,
                entry,
                result=STALE,
                age_ms=age_ms,
                max_age=0,
                cache_control=cache_control,
                headers=headers,
                if_none_match=None,
                head=scope["method"] == "HEAD",
            )
            return
        if isinstance(result, upstream.Failure):
            await answers.send_problem(send, result.status, detail=result.detail, headers=headers)
            return
        out = [(n, v) for n, v in result.headers if n != b"x-request-id"]
        for name, value in out:
            if name == b"x-cache":
                if value == b"MISS":
                    self.counts.miss += 1
                break
        if private:
            answers.make_private(out)
        out.extend(headers)
        length = len(result.body)
        if scope["method"] == "HEAD" and result.content_length is not None:
            length = result.content_length
        out.append((b"content-length", b"%d" % length))
        await answers.send_answer(send, result.status, headers=out, body=result.body)

    def refresh(self, scope: Scope, request_id: bytes) -> None:
        """One background GET per stale key in this process, asking the api role to refill."""
        path = target(scope)
        if path in self._refreshing:
            return
        self._refreshing.add(path)
        self.counts.refreshes += 1
        task = asyncio.get_running_loop().create_task(self._refresh(path, request_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self, path: str, request_id: bytes) -> None:
        headers = [(contract.REVALIDATE_HEADER, "1"), ("X-Request-Id", request_id.decode("latin-1"))]
        try:
            await self.upstream.forward("GET", path, headers=headers, body=b"")
        finally:
            self._refreshing.discard(path)


def target(scope: Scope) -> str:
    """The path and query as the client sent them."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else urllib.parse.quote(scope["path"])
    query: bytes = scope["query_string"]
    return f"{path}?{query.decode('latin-1')}" if query else path


async def read_body(scope: Scope, receive: Receive, *, limit: int) -> bytes | None:
    """The whole request body, or None when it is larger than ``limit``."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                if int(value) > limit:
                    return None
            except ValueError:
                return None
    if scope["method"] in ("GET", "HEAD"):
        return b""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
