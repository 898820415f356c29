"""``POST contract.ADMIN_PURGE_PATH``: purge cache tags and paths on every replica, on demand.

For what the upstream's answers cannot say (a change made behind its back: a batch job, a
database migration). Authenticated by the gateway's admin key (``contract.ENV_ADMIN_KEY``, a
Secret), never by an API key: a caller of the API must not be able to empty its cache. The
key is compared in constant time; without one configured every purge is refused (403).
Failed attempts count against the caller's IP in the rate limit, as failed API keys do.

The purge is the invalidation a write makes (``store.invalidate``): when the answer is 200
no replica serves what the tags and paths retired. A path purges every query string of it.
"""

from __future__ import annotations

import hmac

import orjson

from cachedapi import contract
from cachedapi.runtime.gateway import answers, checkpoint, forwarding
from cachedapi.runtime.gateway.answers import Headers, Receive, Scope, Send
from cachedapi.runtime.gateway.httpcache import store

MAX_BODY = 1_048_576


class Purger:
    def __init__(
        self, *, cache: store.Store | None, limiter: checkpoint.Checkpoint, admin_key: str | None, realm: bytes
    ) -> None:
        self.cache = cache
        self.limiter = limiter
        self.admin_key = admin_key.encode() if admin_key else None
        self.realm = realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: Headers = []
        if scope["method"] != "POST":
            await answers.send_problem(
                send,
                405,
                detail=f"{contract.ADMIN_PURGE_PATH} takes POST",
                headers=[(b"allow", b"POST")],
            )
            return
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                token = value[7:].strip()
        if token is None or self.admin_key is None or not hmac.compare_digest(token, self.admin_key):
            status = 401 if token is None else 403
            if status == 401:
                headers.append(answers.www_authenticate(self.realm, invalid=False, detail=""))
            if await self.limiter.limit_only(scope, client="", headers=headers):
                await self.limiter.too_many(send, headers)
                return
            detail = (
                "send the admin key: 'Authorization: Bearer <key>'"
                if status == 401
                else f"the gateway has no admin key ({contract.ENV_ADMIN_KEY})"
                if self.admin_key is None
                else "wrong admin key"
            )
            await answers.send_problem(send, status, detail=detail, headers=headers)
            return
        body = await forwarding.read_body(scope, receive, limit=MAX_BODY)
        if body is None:
            await answers.send_problem(send, 413, detail=f"at most {MAX_BODY} bytes")
            return
        request = parse(body)
        if isinstance(request, str):
            await answers.send_problem(send, 400, detail=request)
            return
        tags, paths = request
        if self.cache is None or not await self.cache.invalidate(paths, tags):
            await answers.send_problem(
                send,
                503,
                detail="Redis is unavailable: the purge is queued in this replica only; retry",
                headers=[(b"retry-after", b"1")],
            )
            return
        answer = orjson.dumps(
            {"purged": {"tags": [t.decode() for t in tags], "paths": [p.decode("latin-1") for p in paths]}}
        )
        await answers.send_answer(
            send,
            200,
            headers=[(b"content-type", answers.JSON_TYPE), (b"content-length", b"%d" % len(answer)), answers.NO_STORE],
            body=answer,
        )


def parse(body: bytes) -> tuple[list[bytes], list[bytes]] | str:
    """(tags, paths) of a purge request, or what is wrong with it."""
    try:
        data = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        return f"the body is not JSON: {exc}"
    if not isinstance(data, dict) or set(data) - {"tags", "paths"}:
        return 'the body is {"tags": [...], "paths": [...]}'
    tags, paths = data.get("tags", []), data.get("paths", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t and " " not in t for t in tags):
        return "tags: a list of tag names (no spaces)"
    if not isinstance(paths, list) or not all(isinstance(p, str) and p.startswith("/") for p in paths):
        return "paths: a list of paths, each starting with '/'"
    if not tags and not paths:
        return "nothing to purge: give tags or paths"
    return [t.encode() for t in tags], [p.partition("?")[0].encode("latin-1", "replace") for p in paths]
