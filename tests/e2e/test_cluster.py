"""Against a real Kubernetes API server: what the emulator cannot show.

Runs only when ``KUBECONFIG`` names a reachable cluster (skipped otherwise,
with that reason). Everything here is a server-side dry run: the CRD's
structural schema and CEL rules are checked by a real API server, and the
rendered children are admitted by it, without leaving anything behind
(except the CRD, which ``kubectl apply`` installs if it is missing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cachedapi import model
from cachedapi.operator import children, crd, render

from ..conftest import EXAMPLES

pytestmark = pytest.mark.e2e


def _kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module", autouse=True)
def real_cluster() -> None:
    config = os.environ.get("KUBECONFIG", "")
    if not config or not all(Path(p).exists() for p in config.split(os.pathsep)) or shutil.which("kubectl") is None:
        pytest.skip("needs KUBECONFIG naming a real cluster (and kubectl)")
    if _kubectl("version", "--request-timeout=5s").returncode != 0:
        pytest.skip("needs KUBECONFIG naming a reachable cluster")
    done = _kubectl("apply", "--server-side", "-f", str(crd.CRD_PATHS[0]))
    assert done.returncode == 0, done.stderr


def _dry_run(obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return _kubectl("create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(obj))


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_admitted_by_a_real_api_server(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if doc:
            doc["metadata"]["namespace"] = "default"
            done = _dry_run(doc)
            assert done.returncode == 0, done.stderr


def test_the_cel_one_of_rule_is_enforced_by_the_api_server() -> None:
    doc = {
        "apiVersion": "cachedapi.dev/v1alpha1",
        "kind": "CachedApi",
        "metadata": {"name": "e2e-bad", "namespace": "default"},
        "spec": {
            "resources": [{"name": "books"}],
            "database": {"managed": {}, "external": {"urlSecretRef": {"name": "s", "key": "k"}}},
        },
    }
    done = _dry_run(doc)
    assert done.returncode != 0 and "exactly one of managed or external" in done.stderr


def test_rendered_children_are_admitted_by_the_api_server() -> None:
    api = model.load_manifest(EXAMPLES / "bookstore.yaml")[0]
    api = model.parse({**api.model_dump(by_alias=True), "metadata": {"name": "bookstore", "namespace": "default"}})
    for obj in children.desired_objects(api, render.render_inputs(api)):
        obj["metadata"].pop("ownerReferences")  # the placeholder owner does not exist
        done = _dry_run(obj)
        assert done.returncode == 0, f"{obj['kind']} {obj['metadata']['name']}: {done.stderr}"
