"""RFC 9457 problem details: the one shape every error of both roles takes.

Built as bytes with orjson, so that the gateway can answer 401/429 without
Pydantic or a framework, and so that no exception text ever reaches a client
unless a caller put it in ``detail`` on purpose.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson

from cachedapi import contract

CONTENT_TYPE = contract.PROBLEM_JSON


def problem(status: int, detail: str, *, title: str | None = None, **extra: Any) -> bytes:
    """The body of a problem+json answer; ``type`` stays ``about:blank`` as RFC 9457 allows."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    body.update(extra)
    return orjson.dumps(body)
