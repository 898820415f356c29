"""schemathesis against the OpenAPI document, at the api role directly and through the gateway.

Every check schemathesis has runs, except two that do not describe this API:

- ``positive_data_acceptance`` expects every schema-valid request to succeed, but
  a PUT/PATCH/DELETE with a random ``If-Match`` must fail with 412, and ids or
  cursors the server never issued are rightly 404/400;
- ``ignored_auth``, at the api role only: it is reached from the gateway alone
  (the operator's NetworkPolicy), and authenticating is the gateway's job.

So: no 5xx, answers and headers conform to the documented schemas and status
codes, schema-violating bodies are rejected, undeclared methods get 405 with
a correct ``Allow``. The fuzzer's data goes to a temporary directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from cachedapi import model
from cachedapi.dev import devstack

from ..conftest import EXAMPLES

EXAMPLES_PER_OPERATION = os.environ.get("CACHEDAPI_FUZZ_EXAMPLES", "25")


@pytest.fixture(scope="module")
def stack() -> Iterator[devstack.Stack]:
    api = model.load_manifest(EXAMPLES / "bookstore.yaml")[0]
    # A limit the fuzzer cannot reach: 429s are documented, but they would hide the answers under test.
    api = api.model_copy(
        update={
            "spec": api.spec.model_copy(
                update={
                    "gateway": api.spec.gateway.model_copy(
                        update={"rateLimit": api.spec.gateway.rateLimit.model_copy(update={"burst": 1_000_000})}
                    )
                }
            )
        }
    )
    with devstack.Stack(api) as s:
        yield s
        assert not s.dead_instances(), s.logs()


def _schemathesis(url: str, api_key: str, *, exclude: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as workdir:
        return subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
                "--url", url,
                "--checks", "all",
                "--exclude-checks", exclude,
                "--max-examples", EXAMPLES_PER_OPERATION,
                "--header", f"X-API-Key: {api_key}",
                "--seed", "20261125",
                "--no-color",
            ],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )  # fmt: skip


def test_api_role_conforms_to_its_openapi_document(stack: devstack.Stack) -> None:
    done = _schemathesis(stack.apis[0].url, stack.api_key, exclude="positive_data_acceptance,ignored_auth")
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]


def test_gateway_conforms_to_the_openapi_document(stack: devstack.Stack) -> None:
    done = _schemathesis(stack.url, stack.api_key, exclude="positive_data_acceptance")
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
