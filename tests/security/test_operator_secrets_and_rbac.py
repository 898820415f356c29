"""Secrets stay in Secrets, and the operator's ClusterRole is exactly what it uses.

Both read one recorded run of the operator on the real control plane (``scenario``): secret
values must appear in no log line and no stored object but a Secret (ConfigMaps, CachedApi
statuses and Events included), base64 or not; and every (verb, resource) the operator called,
as the API server's audit log recorded it, must have been allowed by deploy/'s ClusterRole
(which the server enforced: the operator runs as its ServiceAccount), and the ClusterRole must
grant nothing the run did not use. (kopf's own share is in there too:
list and watch of CustomResourceDefinitions, of CachedApis and of every child kind; no grant is
needed only for situations the run does not reach, so there is no list of exceptions.)
"""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from cachedapi import model
from cachedapi.operator import children
from tests.e2e import cluster as control_plane

from ..conftest import EXAMPLES, ROOT
from . import scenario


@pytest.fixture(scope="module")
def record(deployed: control_plane.Cluster, tmp_path_factory: pytest.TempPathFactory) -> scenario.Record:
    return scenario.run(deployed, tmp_path_factory.mktemp("scenario"))


def _forms(value: str) -> list[str]:
    """A value as it could leak: plain, base64 (as in a Secret's data), and JSON-escaped."""
    return [value, base64.b64encode(value.encode()).decode(), json.dumps(value)[1:-1]]


def test_no_secret_value_appears_in_the_operator_log(record: scenario.Record) -> None:
    assert len(record.secret_values) >= len(scenario.SENTINELS) + 3, "the generated values are checked too"
    assert "Traceback" not in record.log
    assert len(record.log.splitlines()) > 100, "the run logged (at DEBUG)"
    for value in record.secret_values:
        for form in _forms(value):
            assert form not in record.log, f"a secret value ({value[:12]}...) is in the operator's log"


def test_no_secret_value_is_stored_anywhere_but_in_secrets(record: scenario.Record) -> None:
    kinds = {obj.get("kind") for obj in record.objects}
    assert {"ConfigMap", "CachedApi", "Event", "Deployment"} <= kinds, "the run made what it should"
    for obj in record.objects:
        if obj.get("kind") == "Secret":
            continue
        text = json.dumps(obj)
        for value in record.secret_values:
            for form in _forms(value):
                assert form not in text, f"a secret value is in {obj['kind']} {obj['metadata']['name']}"


def test_render_puts_secret_values_in_secrets_only() -> None:
    api = model.load_manifest(EXAMPLES / "bookstore.yaml")[0]
    values = ["RENDER-SENTINEL-key-93b1", "RENDER-SENTINEL-password-2c7d"]
    inputs = children.Inputs(owner_uid="uid", api_key=values[0], db_password=values[1])
    objects = children.desired_objects(api, inputs)
    holders = {o["kind"] for o in objects for v in values for f in _forms(v) if f in json.dumps(o)}
    assert holders == {"Secret"}


def _granted() -> set[tuple[str, str, str]]:
    """(verb, group, resource) that deploy/'s ClusterRole grants."""
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text(encoding="utf-8")))
    (role,) = [d for d in docs if d and d["kind"] == "ClusterRole"]
    return {
        (verb, group, resource)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _used(record: scenario.Record) -> set[tuple[str, str, str]]:
    used = set()
    for event in record.requests:
        ref = event.get("objectRef")
        if not ref:
            continue  # discovery (open to every authenticated user)
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((event["verb"], ref.get("apiGroup", ""), resource))
    return used


def test_every_call_the_operator_made_is_granted_by_its_cluster_role(record: scenario.Record) -> None:
    used = _used(record)
    assert ("create", "", "secrets") in used and ("patch", "cachedapi.dev", "cachedapis/status") in used
    refused = [f"{e['verb']} {e['requestURI']}" for e in record.requests if e["responseStatus"]["code"] == 403]
    assert refused == [], "the API server refused the operator"
    assert used - _granted() == set(), "the operator called what its ClusterRole does not grant"


def test_the_cluster_role_grants_nothing_the_operator_does_not_use(record: scenario.Record) -> None:
    assert _granted() - _used(record) == set(), "granted and never used"
    print(f"\nRBAC: {len(_used(record))} (verb, resource) pairs used, all granted, none granted unused")
