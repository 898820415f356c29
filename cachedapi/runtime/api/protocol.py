"""HTTP details shared by the handlers: problems, bodies, preconditions, responses.

Everything here works on raw Starlette requests and answers bytes that were
encoded once (orjson), so that what the cache stores is exactly what was sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cachedapi import contract
from cachedapi.runtime import problems

MERGE_PATCH = "application/merge-patch+json"


class Problem(Exception):
    """An error answer: raised anywhere in a handler, turned into problem+json by the app."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> Response:
        return problem_response(self.status, self.detail, headers=self.headers, **self.extra)


def problem_response(status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    """An error answer; ``no-store``, so that no cache in front of the gateway keeps it (a 404 is
    otherwise heuristically cacheable, and would outlive the PUT that creates the item)."""
    return Response(
        problems.problem(status, detail, **extra),
        status_code=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
        media_type=problems.CONTENT_TYPE,
    )


def shown(value: str, *, limit: int = 64) -> str:
    """A client's value quoted for an error message, cut short so that a message stays small."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def database_unavailable() -> Problem:
    return Problem(503, "the database is unreachable; retry shortly", headers={"Retry-After": "2"})


def require_content_type(request: Request, accepted: Iterable[str]) -> None:
    """415 unless the Content-Type (parameters aside) is one of ``accepted``."""
    raw = request.headers.get("content-type")
    media = (raw or "").split(";", 1)[0].strip().lower()
    allowed = tuple(accepted)
    if media not in allowed:
        got = f"{raw!r}" if raw else "no Content-Type"
        raise Problem(
            415, f"Content-Type must be {' or '.join(allowed)}, got {got}", headers={"Accept-Patch": MERGE_PATCH}
        )


async def read_json(request: Request, *, limit: int) -> Any:
    """The parsed body: 413 past ``limit`` bytes (counted while reading), 400 if not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem(413, f"the body is {declared} bytes; the limit is {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, f"the body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise Problem(400, f"the body is not valid JSON: {exc}") from None


def _etags(value: str) -> list[str]:
    return [tag.strip() for tag in value.split(",") if tag.strip()]


class Preconditions:
    """If-Match / If-None-Match of a write, checked against the stored version (None = absent)."""

    def __init__(self, request: Request) -> None:
        self.if_match = request.headers.get("if-match")
        self.if_none_match = request.headers.get("if-none-match")

    @property
    def any(self) -> bool:
        return self.if_match is not None or self.if_none_match is not None

    def __call__(self, version: int | None) -> bool:
        current = f'"v{version}"' if version is not None else None
        if self.if_match is not None:
            tags = _etags(self.if_match)
            if current is None or ("*" not in tags and current not in tags):
                return False
        if self.if_none_match is not None:
            tags = _etags(self.if_none_match)
            if current is not None and ("*" in tags or current in tags):
                return False
        return True


def not_modified(request: Request, etag: str) -> bool:
    """True when If-None-Match names ``etag`` (weak comparison, as RFC 9110 asks for GET)."""
    value = request.headers.get("if-none-match")
    if value is None:
        return False
    tags = [t.removeprefix("W/") for t in _etags(value)]
    return "*" in tags or etag in tags


def json_response(body: bytes, *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, headers=headers, media_type=contract.JSON)
