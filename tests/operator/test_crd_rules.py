"""The CRD's CEL rules agree with the model: what one refuses, so does the other."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from cachedapi import model

from ..conftest import EXAMPLES
from . import admission


def _api(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "cachedapi.dev/v1alpha1",
        "kind": "CachedApi",
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": {"resources": [{"name": "books"}], **spec},
    }


SECRET = {"name": "s", "key": "k"}
REFUSED = {
    "redis both managed and external": {"cache": {"redis": {"managed": {}, "external": {"urlSecretRef": SECRET}}}},
    "database both managed and external": {"database": {"managed": {}, "external": {"urlSecretRef": SECRET}}},
    "jwt mode without jwt": {"gateway": {"auth": {"mode": "jwt"}}},
    "jwt with both key sources": {
        "gateway": {"auth": {"mode": "jwt", "jwt": {"jwksUrl": "https://idp/jwks", "secretRef": SECRET}}}
    },
    "jwt with no key source": {"gateway": {"auth": {"mode": "jwt", "jwt": {"issuer": "me"}}}},
    "autoscaling min above max": {"api": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}},
    "autoscaling max below the default min": {"gateway": {"autoscaling": {"maxReplicas": 1}}},
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_one_of_violations_are_refused_by_the_crd_and_the_model(case: str) -> None:
    body = _api(**REFUSED[case])
    assert admission.admit(body), f"the CRD admits {case}"
    with pytest.raises(model.ManifestError):
        model.parse(body)


ACCEPTED = {
    "external redis": {"cache": {"redis": {"external": {"urlSecretRef": SECRET}}}},
    "empty redis means managed": {"cache": {"redis": {}}},
    "jwt from a jwks url": {"gateway": {"auth": {"mode": "jwt", "jwt": {"jwksUrl": "https://idp/jwks"}}}},
    "jwt from a secret": {"gateway": {"auth": {"mode": "jwt", "jwt": {"secretRef": SECRET}}}},
    "autoscaling with defaults": {"api": {"autoscaling": {}}},
}


@pytest.mark.parametrize("case", ACCEPTED, ids=list(ACCEPTED))
def test_valid_variants_are_admitted_by_the_crd_and_the_model(case: str) -> None:
    body = _api(**ACCEPTED[case])
    assert admission.admit(body) == []
    model.parse(body)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_admitted(path: Any) -> None:
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if doc:
            assert admission.admit(doc) == []


def test_storage_class_cannot_change_after_creation() -> None:
    old = _api(database={"managed": {"storageClassName": "fast"}})
    new = copy.deepcopy(old)
    new["spec"]["database"]["managed"]["storageClassName"] = "slow"
    assert any("storageClassName is immutable" in e for e in admission.admit(new, old=old))
    assert admission.admit(old, old=old) == []


def test_database_storage_cannot_change_silently() -> None:
    old = _api(database={"managed": {"storage": "1Gi"}})
    new = copy.deepcopy(old)
    new["spec"]["database"]["managed"]["storage"] = "5Gi"
    assert any("expand its PersistentVolumeClaim" in e for e in admission.admit(new, old=old))
    assert admission.admit(old, old=old) == []


def test_database_cannot_switch_between_managed_and_external() -> None:
    managed = _api()
    external = _api(database={"external": {"urlSecretRef": SECRET}})
    assert any("switching the database" in e for e in admission.admit(external, old=managed))
    assert any("switching the database" in e for e in admission.admit(managed, old=external))


def test_redis_may_switch_from_managed_to_external() -> None:
    managed = _api()
    external = _api(cache={"redis": {"external": {"urlSecretRef": SECRET}}})
    assert admission.admit(external, old=managed) == []


def test_defaults_fill_what_the_user_left_out() -> None:
    stored = admission.apply_defaults(admission.schema(), _api())
    assert stored["spec"]["gateway"]["replicas"] == 2
    assert stored["spec"]["database"] == {
        "managed": {"storage": "1Gi", "storageClassName": "", "resources": {"requests": {}, "limits": {}}}
    }
