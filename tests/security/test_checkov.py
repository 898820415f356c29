"""What the project ships, scanned by checkov's Kubernetes and Dockerfile policies: every object
``cachedapi render`` prints for the examples (and for a variant with every external server and
JWT), ``deploy/``, and the image's Dockerfile.

checkov must run from a virtualenv of its own (its pins conflict with this project's): the test
uses ``$CACHEDAPI_CHECKOV``, else ``checkov`` on PATH, else ``~/.cache/cachedapi-tools/bin/checkov``,
which it installs there the first time (about a minute). The target is no failure at all, except the checks listed in
``EXCEPTIONS``, each with the objects it is allowed for and why; an exception no longer needed
fails the test too, so the list cannot go stale.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e import build

from ..conftest import EXAMPLES, ROOT


@dataclass(frozen=True)
class Excused:
    """A check allowed to fail for the objects whose ``Kind.namespace.name`` matches ``resources``."""

    resources: str
    reason: str


EXCEPTIONS: dict[str, Excused] = {
    "CKV_K8S_11": Excused(
        r"(Deployment|StatefulSet)\..*",
        "CPU limits: none by default, on purpose. A CPU limit throttles a pod by CFS quota even on an idle "
        "node, which shows up in a latency-sensitive server's slowest answers; requests reserve the CPU. "
        "A user who wants limits sets spec.*.resources.limits.cpu.",
    ),
    "CKV_K8S_43": Excused(
        r"(Deployment|StatefulSet)\..*",
        "Image digests: the runtime image is the user's choice (spec.image; a digest there passes), the "
        "operator image is the user's in deploy/ (kustomize `images:` can pin a digest), and redis:7.4-alpine "
        "and postgres:16-alpine are tags that receive security fixes; a digest would freeze them.",
    ),
    "CKV_K8S_15": Excused(
        r"(Deployment|StatefulSet)\..*",
        "imagePullPolicy IfNotPresent: release tags are not rewritten, so Always would only add a registry "
        "round trip to every pod start and make pods unable to restart while the registry is unreachable.",
    ),
    "CKV_K8S_40": Excused(
        r"StatefulSet\.[^.]+\.[^.]+-db",
        "PostgreSQL runs as the stock alpine image's own user (uid 70): its initdb must find its uid in "
        "/etc/passwd, and the alpine image has no nss_wrapper to run as any other. The pod is otherwise "
        "restricted (non-root, no privilege escalation, no capabilities, read-only root filesystem).",
    ),
    "CKV_K8S_38": Excused(
        r"Deployment\.cachedapi-system\.cachedapi-operator",
        "The operator's service account token is mounted: the operator talks to the API server with it. "
        "Every pod the operator creates has automountServiceAccountToken: false.",
    ),
    "CKV_DOCKER_2": Excused(
        r"/Dockerfile\.",
        "No HEALTHCHECK in the image: Kubernetes ignores it and probes each pod instead (every manifest has "
        "them), and one image runs three roles (operator, gateway, api), each healthy on its own port.",
    ),
    "CKV_K8S_35": Excused(
        r"Deployment\.shop\.catalog-api",
        "Secrets as environment variables, in the user's own API only (spec.api.image, examples/custom-api.yaml): "
        "an image of the user's reads its settings from the environment, as it was written to (spec.api.env, "
        "databaseUrlEnv). The pod spec holds references (secretKeyRef) that the kubelet resolves, never a value; "
        "the operator's own pods read every secret from a file.",
    ),
    "CKV_K8S_21": Excused(
        r"[A-Za-z]+\.default\..*",
        "The default namespace: examples/minimal.yaml names no namespace, so its objects go where the user "
        "applies it; the namespace is the user's choice, not the operator's.",
    ),
}

#: A CachedApi with every external server and JWT from a Secret, so that those paths are scanned too.
EXTERNAL = {
    "apiVersion": "cachedapi.dev/v1alpha1",
    "kind": "CachedApi",
    "metadata": {"name": "external", "namespace": "shop"},
    "spec": {
        "gateway": {
            "auth": {"mode": "jwt", "jwt": {"issuer": "me", "secretRef": {"name": "jwt", "key": "hs256"}}},
            "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
        },
        "cache": {"redis": {"external": {"urlSecretRef": {"name": "redis", "key": "url"}}}},
        "database": {"external": {"urlSecretRef": {"name": "pg", "key": "dsn"}}},
        "resources": [{"name": "items"}],
    },
}


def _checkov() -> str:
    candidates = [
        os.environ.get("CACHEDAPI_CHECKOV", ""),
        shutil.which("checkov") or "",
        str(Path.home() / ".cache" / "cachedapi-tools" / "bin" / "checkov"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    tools = Path(candidates[-1]).parent.parent
    subprocess.run([sys.executable, "-m", "venv", str(tools)], check=True, timeout=300)
    subprocess.run(
        [str(tools / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "checkov"],
        check=True,
        timeout=1200,
    )
    return candidates[-1]


def _render(source: Path, target: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cachedapi", "render", str(source)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    target.write_text(done.stdout, encoding="utf-8")


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    checkov = _checkov()
    workdir = tmp_path_factory.mktemp("checkov")
    manifests = workdir / "manifests"
    manifests.mkdir()
    for example in sorted(EXAMPLES.glob("*.yaml")):
        _render(example, manifests / f"render-{example.name}")
    external = workdir / "external.yaml"
    external.write_text(yaml.safe_dump(EXTERNAL), encoding="utf-8")
    _render(external, manifests / "render-external.yaml")
    kustomized = subprocess.run(
        [build.ensure(quiet=True).path("kubectl"), "kustomize", str(ROOT / "deploy")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert kustomized.returncode == 0, kustomized.stderr
    (manifests / "deploy.yaml").write_text(kustomized.stdout, encoding="utf-8")
    shutil.copy(ROOT / "Dockerfile", manifests / "Dockerfile")

    command = [checkov, "--directory", str(manifests), "--framework", "kubernetes", "dockerfile", "--output", "json"]
    done = subprocess.run(
        [*command, "--compact", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "ERROR"},
        cwd=workdir,
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: some check failed
    reports = json.loads(done.stdout)
    by_type = {r["check_type"]: r for r in (reports if isinstance(reports, list) else [reports])}
    assert set(by_type) == {"kubernetes", "dockerfile"}, set(by_type)
    merged: dict[str, Any] = {"results": {"passed_checks": [], "failed_checks": []}, "summary": {}}
    for report in by_type.values():
        for key in ("passed_checks", "failed_checks"):
            merged["results"][key] += report["results"][key]
        for key, value in report["summary"].items():
            merged["summary"][key] = value if isinstance(value, str) else merged["summary"].get(key, 0) + value
    return merged


def _failures(scan: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c["check_id"], c["resource"], c["file_path"]) for c in scan["results"]["failed_checks"]]


def test_checkov_finds_nothing_but_the_justified_exceptions(scan: dict[str, Any]) -> None:
    unexplained = [
        f"{check} {resource} ({path})"
        for check, resource, path in _failures(scan)
        if check not in EXCEPTIONS or not re.fullmatch(EXCEPTIONS[check].resources, resource)
    ]
    assert unexplained == []
    summary = scan["summary"]
    assert summary["parsing_errors"] == 0 and summary["resource_count"] >= 40
    excused = {check for check, _, _ in _failures(scan)}
    print(
        f"\ncheckov {summary['checkov_version']}: {summary['resource_count']} objects, {summary['passed']} checks "
        f"passed, 0 failed, {summary['failed']} excused by {len(excused)} justified exceptions"
    )


def test_every_exception_is_still_needed(scan: dict[str, Any]) -> None:
    used = {check for check, _, _ in _failures(scan)}
    assert set(EXCEPTIONS) - used == set(), "an exception no check needs any more: remove it"


def test_the_fixes_hold_memory_limits_high_uids_file_secrets_and_a_policy_for_the_operator(
    scan: dict[str, Any],
) -> None:
    passed = {(c["check_id"], c["resource"]) for c in scan["results"]["passed_checks"]}
    assert ("CKV_K8S_13", "Deployment.shop.bookstore-redis") in passed  # memory limits by default
    assert ("CKV_K8S_13", "StatefulSet.shop.bookstore-db") in passed
    assert ("CKV_K8S_40", "Deployment.shop.bookstore-redis") in passed  # a high uid
    assert ("CKV_K8S_35", "StatefulSet.shop.bookstore-db") in passed  # the password as a file
    assert ("CKV_K8S_9", "Deployment.cachedapi-system.cachedapi-operator") in passed  # a readiness probe
    operator_pod = [r for check, r in passed if check == "CKV2_K8S_6" and "cachedapi-operator" in r]
    assert operator_pod, "the operator's pod has a NetworkPolicy"
