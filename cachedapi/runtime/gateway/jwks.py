"""The JSON Web Key Set of a JWT issuer, fetched without ever blocking the event loop.

Fetched by PyJWT's own ``PyJWKClient`` (in a thread: it is synchronous, and the set is
fetched rarely) when the gateway starts, and again when a token names a key id the
set does not hold (the issuer rotated its keys), at most once per ``min_refresh``
seconds however many such tokens arrive, and with concurrent refreshes joined into
one request. PyJWKClient refuses redirects and checks TLS certificates. Only RS256
and ES256 keys are kept: the algorithm is pinned per key, never taken from the token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import jwt

log = logging.getLogger("cachedapi.gateway.jwks")

ALGORITHMS = frozenset({"RS256", "ES256"})


class JwksClient:
    def __init__(self, url: str, *, min_refresh: float = 30.0, timeout: float = 5.0) -> None:
        self.url = url
        self.min_refresh = min_refresh
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=timeout)
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._last_fetch = float("-inf")
        self._inflight: asyncio.Task[bool] | None = None

    def key(self, kid: Any) -> jwt.PyJWK | None:
        found = self._keys.get(kid)
        if found is None and kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return found

    async def start(self) -> None:
        if not await self.refresh():
            log.warning("JWKS %s could not be fetched at start; tokens are refused until it can", self.url)

    async def refresh(self) -> bool:
        """Fetch the set unless fetched recently; True when the set changed or was fetched."""
        if self._inflight is not None:
            return await asyncio.shield(self._inflight)
        if time.monotonic() - self._last_fetch < self.min_refresh:
            return False
        self._last_fetch = time.monotonic()
        self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        try:
            return await asyncio.shield(self._inflight)
        finally:
            self._inflight = None

    async def _fetch(self) -> bool:
        try:
            data = await asyncio.to_thread(self._client.fetch_data)
            keys: dict[str | None, jwt.PyJWK] = {}
            for raw in data.get("keys", []):
                try:
                    key = jwt.PyJWK(raw)
                except jwt.PyJWTError:
                    continue
                if key.algorithm_name in ALGORITHMS and raw.get("use", "sig") == "sig":
                    keys[raw.get("kid")] = key
        except (jwt.PyJWKClientError, ValueError, AttributeError) as exc:
            log.warning("JWKS %s: fetch failed: %s", self.url, exc)
            return False
        self._keys = keys
        log.info("JWKS %s: %d signing keys", self.url, len(keys))
        return True

    async def close(self) -> None:
        """Nothing is held open between fetches."""
