"""A circuit breaker: after a failure, stop calling a dependency for a while. One policy, everywhere.

Both roles have one in front of Redis (inside ``redisconn.PipelinedRedis``, their one
Redis client), and the api role one in front of PostgreSQL. While it is open, calls
fail at once instead of each waiting for a timeout. The policy: the first failure opens
it for 0.1 s, each further failure in a row doubles that, up to 2 s; a success closes it
and starts the backoff over. An outage is reported once when it begins and once when it
ends (``on_down`` / ``on_up``, or a log line each), never once per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

FIRST_BACKOFF = 0.1
LONGEST_BACKOFF = 2.0


class Breaker:
    def __init__(
        self,
        *,
        on_down: Callable[[str], None] | None = None,
        on_up: Callable[[], None] | None = None,
    ) -> None:
        self._on_down = on_down
        self._on_up = on_up
        self._open_until = 0.0
        self._backoff = 0.0
        #: True from the first failure of an outage to the next success.
        self.down = False

    @classmethod
    def logging_to(cls, log: logging.Logger, *, name: str) -> Breaker:
        """A breaker that logs each outage of ``name`` as two warnings, its start and its end."""
        on_down, on_up = log_outages(log, name=name)
        return cls(on_down=on_down, on_up=on_up)

    @property
    def open(self) -> bool:
        return time.monotonic() < self._open_until

    @property
    def retry_after(self) -> float:
        """Seconds until the breaker lets a call through again (0 when closed)."""
        return max(0.0, self._open_until - time.monotonic())

    def failure(self, reason: object) -> None:
        self._backoff = min(max(self._backoff * 2, FIRST_BACKOFF), LONGEST_BACKOFF)
        self._open_until = time.monotonic() + self._backoff
        if not self.down:
            self.down = True
            if self._on_down is not None:
                self._on_down(str(reason))

    def success(self) -> None:
        self._backoff = 0.0
        self._open_until = 0.0
        if self.down:
            self.down = False
            if self._on_up is not None:
                self._on_up()


def log_outages(log: logging.Logger, *, name: str) -> tuple[Callable[[str], None], Callable[[], None]]:
    """``on_down`` and ``on_up`` that log an outage of ``name`` as two warnings."""

    def on_down(reason: str) -> None:
        log.warning("%s unreachable (%s): failing fast, trying again after a short backoff", name, reason)

    def on_up() -> None:
        log.warning("%s reachable again", name)

    return on_down, on_up
