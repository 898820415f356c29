"""JWTs signed with keys from a JWKS URL: fetched asynchronously, refreshed on an unknown key id."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cachedapi import contract, model
from cachedapi.dev import devstack
from cachedapi.runtime.gateway import auth
from tests.gateway.conftest import extra_gateway, variant

ISSUER = "https://idp.test"
AUDIENCE = "bookstore"


class Jwks:
    """A real HTTP server publishing a key set that a test can change, counting fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def publish(self, kid: str, private_key: Any) -> None:
        algorithm = (
            jwt.algorithms.RSAAlgorithm if isinstance(private_key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
        )
        jwk = json.loads(algorithm.to_jwk(private_key.public_key()))
        jwk.update(kid=kid, use="sig", alg="RS256" if algorithm is jwt.algorithms.RSAAlgorithm else "ES256")
        self.keys.append(jwk)


@pytest.fixture
def jwks_server() -> Iterator[Jwks]:
    server = Jwks()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def _token(private_key: Any, kid: str, **claims: object) -> bytes:
    body = {"sub": "bob", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60, **claims}
    algorithm = "RS256" if isinstance(private_key, rsa.RSAPrivateKey) else "ES256"
    return jwt.encode(body, private_key, algorithm=algorithm, headers={"kid": kid}).encode()


def _config(url: str) -> contract.JwtConfig:
    return contract.JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=url, uses_secret=False)


async def test_rs256_and_es256_tokens_verify_with_keys_from_the_jwks(jwks_server: Jwks) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks_server.publish("r1", rsa_key)
    jwks_server.publish("e1", ec_key)
    authenticator = auth.Jwt(_config(jwks_server.url), secret=None)
    await authenticator.start()
    try:
        assert authenticator.check(_token(rsa_key, "r1")) == "sub:bob"
        assert authenticator.check(_token(ec_key, "e1", sub="carol")) == "sub:carol"
        wrong_kid = authenticator.check(_token(rsa_key, "e1"))
        assert isinstance(wrong_kid, auth.Denied)
    finally:
        await authenticator.close()


async def test_a_rotated_key_is_fetched_when_a_token_names_it(jwks_server: Jwks) -> None:
    old, new = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    jwks_server.publish("old", old)
    authenticator = auth.Jwt(_config(jwks_server.url), secret=None, jwks_min_refresh=0)
    await authenticator.start()
    try:
        jwks_server.publish("new", new)
        assert await authenticator.check_slow(_token(new, "new")) == "sub:bob"
        assert jwks_server.fetches == 2
    finally:
        await authenticator.close()


async def test_unknown_key_ids_refetch_the_jwks_at_most_once_per_interval(jwks_server: Jwks) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_server.publish("k", key)
    authenticator = auth.Jwt(_config(jwks_server.url), secret=None, jwks_min_refresh=60)
    await authenticator.start()
    try:
        for kid in ("x1", "x2", "x3"):
            denied = await authenticator.check_slow(_token(key, kid))
            assert isinstance(denied, auth.Denied)
            assert "unknown key id" in denied.detail
        assert jwks_server.fetches == 1
    finally:
        await authenticator.close()


def test_gateway_in_jwks_mode_accepts_a_signed_token_and_refuses_a_forged_one(
    jwks_server: Jwks, stack: devstack.Stack, bookstore_module: model.CachedApi
) -> None:
    key, forger = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    jwks_server.publish("k1", key)
    api = variant(
        bookstore_module,
        gateway={"auth": {"mode": "jwt", "jwt": {"issuer": ISSUER, "audience": AUDIENCE, "jwksUrl": jwks_server.url}}},
    )
    with extra_gateway(stack, api) as gateway:
        good = httpx.get(f"{gateway.url}/v1/books", headers={"Authorization": f"Bearer {_token(key, 'k1').decode()}"})
        forged = httpx.get(
            f"{gateway.url}/v1/books", headers={"Authorization": f"Bearer {_token(forger, 'k1').decode()}"}
        )
    assert good.status_code == 200
    assert forged.status_code == 401
    assert "signature" in forged.json()["detail"].lower()
