"""Authentication at the gateway: API keys in either header, JWTs, and clear 401s."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import jwt
import pytest

from cachedapi import contract, model
from cachedapi.dev import devstack
from tests.gateway.conftest import API_KEY, extra_gateway, variant

JWT_SECRET = "a-test-secret-of-at-least-32-bytes!!"
ISSUER = "https://issuer.test"


def test_request_without_credentials_is_401_naming_the_missing_header(anonymous: httpx.Client) -> None:
    resp = anonymous.get("/v1/books")
    assert resp.status_code == 401
    assert resp.headers["content-type"] == contract.PROBLEM_JSON
    assert resp.headers["www-authenticate"] == 'Bearer realm="bookstore"'
    assert "missing credentials" in resp.json()["detail"]


def test_wrong_key_is_401_invalid_token(anonymous: httpx.Client) -> None:
    resp = anonymous.get("/v1/books", headers={"X-API-Key": "not-the-key"})
    assert resp.status_code == 401
    assert 'error="invalid_token"' in resp.headers["www-authenticate"]
    assert resp.json()["detail"] == "invalid API key"


def test_key_in_query_string_is_refused_and_the_answer_says_why(anonymous: httpx.Client) -> None:
    resp = anonymous.get("/v1/books", params={"api_key": API_KEY})
    assert resp.status_code == 401
    assert "query string are not accepted" in resp.json()["detail"]


@pytest.mark.parametrize("headers", [{"X-API-Key": API_KEY}, {"Authorization": f"Bearer {API_KEY}"}])
def test_both_header_forms_are_accepted(anonymous: httpx.Client, headers: dict[str, str]) -> None:
    resp = anonymous.get("/v1/books", headers=headers)
    assert resp.status_code == 200
    assert resp.headers["ratelimit-limit"] == "200"


def test_health_and_metrics_need_no_key(anonymous: httpx.Client) -> None:
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/readyz").json()["status"] == "ready"
    assert "cachedapi_gateway_cache_requests_total" in anonymous.get("/metrics").text


def test_docs_are_forwarded_without_a_key(anonymous: httpx.Client) -> None:
    resp = anonymous.get("/openapi.json")
    assert resp.status_code == 200
    assert "/v1/books" in resp.text


@pytest.fixture(scope="module")
def jwt_gateway(stack: devstack.Stack, bookstore_module: model.CachedApi) -> Iterator[devstack.Instance]:
    api = variant(
        bookstore_module,
        gateway={
            "auth": {
                "mode": "jwt",
                "jwt": {
                    "issuer": ISSUER,
                    "audience": "bookstore",
                    "secretRef": {"name": "j", "key": "k"},
                },
            }
        },
    )
    with extra_gateway(stack, api, env={contract.ENV_JWT_SECRET: JWT_SECRET}) as role:
        yield role


def _token(**overrides: object) -> str:
    claims = {"sub": "alice", "iss": ISSUER, "aud": "bookstore", "exp": int(time.time()) + 60}
    claims.update(overrides)
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def test_valid_hs256_token_is_accepted(jwt_gateway: devstack.Instance) -> None:
    resp = httpx.get(f"{jwt_gateway.url}/v1/books", headers={"Authorization": f"Bearer {_token()}"}, timeout=10)
    assert resp.status_code == 200


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"aud": "another-api"}, "audience"),
        ({"iss": "https://elsewhere.test"}, "issuer"),
    ],
)
def test_bad_token_is_401_saying_what_is_wrong(
    jwt_gateway: devstack.Instance, claims: dict[str, object], reason: str
) -> None:
    headers = {"Authorization": f"Bearer {_token(**claims)}"}
    resp = httpx.get(f"{jwt_gateway.url}/v1/books", headers=headers, timeout=10)
    assert resp.status_code == 401
    assert 'error="invalid_token"' in resp.headers["www-authenticate"]
    assert reason in resp.json()["detail"].lower()


def test_token_signed_with_another_secret_or_algorithm_is_refused(jwt_gateway: devstack.Instance) -> None:
    claims = {"sub": "mallory", "aud": "bookstore", "iss": ISSUER, "exp": int(time.time()) + 60}
    forged = jwt.encode(claims, "some-other-secret-of-32-bytes-or-more", algorithm="HS256")
    unsigned = jwt.encode(claims, None, algorithm="none")
    for token in (forged, unsigned):
        resp = httpx.get(f"{jwt_gateway.url}/v1/books", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert resp.status_code == 401
