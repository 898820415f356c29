"""A circuit breaker: after a failure, stop calling a dependency for ``backoff`` seconds.

The api role puts one in front of Redis (reads bypass the cache while it is
open) and one in front of PostgreSQL (requests fail at once instead of each
waiting for a connection timeout). It logs once per outage, at the first
failure and at the first success after it, instead of once per request.
"""

from __future__ import annotations

import logging
import time


class Breaker:
    """Open for ``backoff`` seconds after each failure; the first call after that is the probe."""

    def __init__(self, *, name: str, backoff: float, log: logging.Logger) -> None:
        self.name = name
        self.backoff = backoff
        self._log = log
        self._open_until = 0.0
        self._down = False

    @property
    def open(self) -> bool:
        return time.monotonic() < self._open_until

    def failure(self, reason: object) -> None:
        self._open_until = time.monotonic() + self.backoff
        if not self._down:
            self._down = True
            self._log.warning("%s unreachable (%s): failing fast, probing every %.1fs", self.name, reason, self.backoff)

    def success(self) -> None:
        if self._down:
            self._down = False
            self._log.warning("%s reachable again", self.name)
