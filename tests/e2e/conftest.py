"""The e2e suite's fixtures: the operator run as itself (one per module), a restricted namespace
per test. The control plane itself (``cluster``, ``deployed``) is a session fixture of the
top-level conftest, which the security tests share; the helpers are in ``harness``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from tests.e2e import cluster as control_plane
from tests.e2e.harness import Operator, restricted_namespace, running_operator


@pytest.fixture(scope="module")
def operator(deployed: control_plane.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    with running_operator(deployed, tmp_path_factory.mktemp("operator")) as running:
        yield running
    running.assert_clean()


@pytest.fixture
def namespace(deployed: control_plane.Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new restricted namespace for one test, deleted after it (the collector takes the rest)."""
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8]
    name = restricted_namespace(deployed, f"t-{digest}")
    yield name
    deployed.kubectl("delete", "namespace", name, "--wait=false")
