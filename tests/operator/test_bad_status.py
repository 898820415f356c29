"""A status someone else wrote wrong is read as far as it can be and rewritten, never choked on.

A real API server's schema refuses such statuses; anyone allowed to patch the status
subresource of a server with another CRD version (or the emulator here, which enforces no
schema) can still store one. The operator must go on reconciling those objects and the
others, and replace what it cannot read. (A status that is not an object at all is not here:
kmock cannot merge-patch an object into a string.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import emulator as em

NS = "corpus"
BAD_STATUSES: dict[str, Any] = {
    "conditions-not-objects": {"conditions": ["x", {"type": 5}, {"status": "True"}]},
    "conditions-not-a-list": {"conditions": "x", "phase": 3, "observedGeneration": "seven"},
}


def _body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "cachedapi.dev/v1alpha1",
        "kind": "CachedApi",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"resources": [{"name": "notes"}]},
    }


async def test_an_unreadable_status_is_rewritten_and_the_object_served(tmp_path: Path) -> None:
    async with em.emulated_cluster() as cluster:
        with em.operator_process(server=cluster.url, workdir=tmp_path, resync_seconds=2.0) as proc:
            for name, bad_status in BAD_STATUSES.items():
                await cluster.apply_cachedapi({**_body(name), "status": bad_status})
            for name in BAD_STATUSES:
                await em.eventually(lambda n=name: ("Deployment", f"{n}-gateway") in cluster.children(NS, n))

                async def rewritten(n: str = name) -> dict[str, Any] | None:
                    st = ((await cluster.get("CachedApi", NS, n)) or {}).get("status") or {}
                    return st if isinstance(st, dict) and st.get("phase") in {"Pending", "Provisioning"} else None

                status = await em.eventually(rewritten)
                assert {c["type"] for c in status["conditions"]} >= {"Ready", "SpecValid"}, name
                assert all(isinstance(c, dict) and isinstance(c["type"], str) for c in status["conditions"]), name
            assert proc.poll() is None, "the operator exited"
    log = (tmp_path / "operator.log").read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 200 :][:3000]
    assert [line for line in log.splitlines() if " ERROR " in line] == []
