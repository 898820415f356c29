"""Who is calling: API keys, JWTs, or nobody, decided once at start from the configuration.

Each authenticator maps the credential a request carries to a *client label*
(what the rate limit is keyed by) or to a ``Denied`` that says what was wrong.

API keys are held only as SHA-256 digests, never as the keys themselves. A
request's key is hashed and its digest looked up in a dict. That lookup is
not constant-time in the digest, but timing can only reveal how much of the
*digest* of a guess matches a stored digest, and choosing a guess whose
digest shares a prefix with a target digest is a preimage search: the timing
of the comparison tells an attacker nothing about the key's bytes. So the
dict gives the safety of ``hmac.compare_digest`` at O(1) for any number of keys.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import jwt.types

from cachedapi import contract
from cachedapi.runtime.gateway import jwks


@dataclass(frozen=True, slots=True)
class Denied:
    """Why a request is not authenticated; ``token_given`` selects error="invalid_token"."""

    detail: str
    token_given: bool
    #: JWT signed with a key id the JWKS does not hold yet: refresh it, then try again.
    unknown_kid: bool = False


MISSING = Denied("missing credentials: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'", token_given=False)
INVALID_KEY = Denied("invalid API key", token_given=True)


def digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class Authenticator:
    """The interface: ``check`` is the synchronous fast path, ``check_slow`` may await I/O."""

    #: False only in mode none: a request without credentials is let through.
    required = True

    def check(self, token: bytes) -> str | Denied:
        raise NotImplementedError

    async def check_slow(self, token: bytes) -> str | Denied:
        return self.check(token)

    async def start(self) -> None:
        """Fetch what the authenticator needs before the gateway is ready (JWKS)."""

    async def close(self) -> None:
        pass


class NoAuth(Authenticator):
    required = False

    def check(self, token: bytes) -> str | Denied:
        return ""


class ApiKeys(Authenticator):
    def __init__(self, keys: Mapping[str, str]) -> None:
        """``keys``: client label -> key. Only the digests are kept."""
        if not keys:
            raise ValueError(
                f"auth mode apiKey needs at least one key ({contract.ENV_API_KEYS_DIR} or {contract.ENV_API_KEYS})"
            )
        # Prefixed so that a key's label can never name another kind of bucket (``ip:``, ``sub:``).
        self._labels = {digest(key.encode()): f"key:{label}" for label, key in keys.items()}

    def check(self, token: bytes) -> str | Denied:
        label = self._labels.get(digest(token))
        return INVALID_KEY if label is None else label


def load_api_keys(environ: Mapping[str, str]) -> dict[str, str]:
    """label -> key, from a directory of files (a mounted Secret) or a comma-separated list."""
    keys: dict[str, str] = {}
    directory = environ.get(contract.ENV_API_KEYS_DIR)
    if directory:
        for path in sorted(Path(directory).iterdir()):
            # A mounted Secret also holds ..data and timestamped directories: skip dotted names.
            if path.name.startswith(".") or not path.is_file():
                continue
            key = path.read_text(encoding="utf-8").strip()
            if key:
                keys[path.name] = key
    for key in filter(None, (k.strip() for k in environ.get(contract.ENV_API_KEYS, "").split(","))):
        keys.setdefault("env-" + hashlib.sha256(key.encode()).hexdigest()[:12], key)
    return keys


class Jwt(Authenticator):
    """Bearer JWTs: HS256 with a shared secret, or RS256/ES256 keys from a JWKS URL.

    Algorithms are pinned (a token cannot choose ``none`` or switch an RSA key
    to HMAC); ``exp`` is required, and issuer and audience are checked when
    configured. Verified tokens are remembered until they expire, in a
    bounded dict, so a client that reuses its token pays for one signature
    check, not one per request.
    """

    CACHE_SIZE = 4096

    def __init__(self, cfg: contract.JwtConfig, *, secret: str | None, jwks_min_refresh: float = 30.0) -> None:
        self.cfg = cfg
        self._options: jwt.types.Options = {"require": ["exp"], "verify_aud": cfg.audience is not None}
        self._secret = secret
        self._jwks: jwks.JwksClient | None = None
        if cfg.uses_secret or cfg.jwks_url is None:
            if not secret:
                raise ValueError(f"auth mode jwt with a secret needs {contract.ENV_JWT_SECRET}")
        else:
            self._jwks = jwks.JwksClient(cfg.jwks_url, min_refresh=jwks_min_refresh)
        self._verified: dict[bytes, tuple[str, float]] = {}

    async def start(self) -> None:
        if self._jwks is not None:
            await self._jwks.start()

    async def close(self) -> None:
        if self._jwks is not None:
            await self._jwks.close()

    def check(self, token: bytes, *, now: float | None = None) -> str | Denied:
        hit = self._verified.get(token)
        current = now if now is not None else time.time()
        if hit is not None and hit[1] > current:
            return hit[0]
        try:
            text = token.decode("ascii")
            if self._jwks is None:
                assert self._secret is not None
                claims = self._decode(text, key=self._secret, algorithm="HS256")
            else:
                kid = jwt.get_unverified_header(text).get("kid")
                found = self._jwks.key(kid)
                if found is None:
                    return Denied(f"invalid token: unknown key id {kid!r}", token_given=True, unknown_kid=True)
                claims = self._decode(text, key=found.key, algorithm=found.algorithm_name)
        except (jwt.PyJWTError, UnicodeDecodeError, ValueError) as exc:
            return Denied(f"invalid token: {exc}", token_given=True)
        subject = claims.get("sub")
        label = f"sub:{subject}" if isinstance(subject, str) and subject else "jwt:" + digest(token).hex()[:16]
        if len(self._verified) >= self.CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (label, float(claims["exp"]))
        return label

    def _decode(self, text: str, *, key: Any, algorithm: str) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(
            text,
            key,
            algorithms=[algorithm],
            audience=self.cfg.audience,
            issuer=self.cfg.issuer,
            options=self._options,
        )
        return claims

    async def check_slow(self, token: bytes) -> str | Denied:
        result = self.check(token)
        if isinstance(result, Denied) and result.unknown_kid and self._jwks is not None:
            if await self._jwks.refresh():
                result = self.check(token)
            if isinstance(result, Denied) and result.unknown_kid:
                return Denied(result.detail, token_given=True)
        return result


def build(config: contract.RuntimeConfig, environ: Mapping[str, str]) -> Authenticator:
    if config.auth_mode == "none":
        return NoAuth()
    if config.auth_mode == "apiKey":
        return ApiKeys(load_api_keys(environ))
    if config.auth_mode == "jwt":
        if config.jwt is None:
            raise ValueError("auth mode jwt needs auth.jwt in the configuration")
        return Jwt(config.jwt, secret=environ.get(contract.ENV_JWT_SECRET))
    raise ValueError(f"auth.mode: unknown mode {config.auth_mode!r}")
