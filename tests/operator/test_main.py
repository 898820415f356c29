"""``cachedapi operator`` without a cluster: a message and an exit status, not a hang or a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_without_a_cluster_the_operator_exits_with_a_message_not_a_hang(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "KUBECONFIG": str(tmp_path / "absent"),
        "CACHEDAPI_LIVENESS_ENDPOINT": "",
        "HOME": str(tmp_path),  # no ~/.kube/config either
    }
    done = subprocess.run(
        [sys.executable, "-m", "cachedapi", "operator"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "cachedapi operator: cannot reach a cluster" in done.stderr
