"""The CustomResourceDefinition, generated from the one pydantic model.

The committed ``crds/cachedapis.cachedapi.dev.yaml`` (and its copy under
``deploy/``) is this module's output; a test fails when they drift apart.
Regenerate both with::

    python -m cachedapi.operator.crd --write

pydantic speaks JSON Schema 2020-12; a CRD wants a *structural* OpenAPI v3
schema. The conversion inlines every ``$ref``, turns ``X | None`` into an
optional ``X``, keeps defaults, enums and bounds, spells an exclusive bound
the OpenAPI v3.0 way, drops ``additionalProperties: false`` (the API server
prunes unknown fields instead), and gives each object field with a default
factory the smallest default that means the same thing, so that
``kubectl get -o yaml`` shows the defaults a user relies on. What a schema
cannot say (one-of rules, immutable fields) is added as CEL rules.
"""

from __future__ import annotations

import argparse
import copy
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydantic
import yaml

from cachedapi import model

CRD_NAME = f"{model.PLURAL}.{model.API_GROUP}"
CRD_FILE = f"{CRD_NAME}.yaml"
ROOT = Path(__file__).resolve().parent.parent.parent
#: Where the generated CRD is committed: the canonical copy and the one kustomize loads.
CRD_PATHS = (ROOT / "crds" / CRD_FILE, ROOT / "deploy" / CRD_FILE)

PHASES = ["Pending", "Provisioning", "Ready", "Degraded", "Failed"]
CONDITION_TYPES = ["Ready", "GatewayReady", "ApiReady", "CacheReady", "DatabaseReady", "SpecValid"]

#: The longest CachedApi name, as the model says (``model.ObjectMeta.name``).
NAME_MAX: int = next(
    m.max_length for m in model.ObjectMeta.model_fields["name"].metadata if getattr(m, "max_length", None)
)

#: CEL rules, keyed by the dotted path of the object they sit on (after ``spec``; "" is spec itself).
_RULES: dict[str, list[dict[str, str]]] = {
    # The bundled api role and the user's own API (``api.image``): what each needs. ``fieldPath``
    # makes the API server's message name the field, as the model's does.
    "": [
        {
            "rule": "(has(self.api) && has(self.api.image)) || (has(self.resources) && size(self.resources) > 0)",
            "message": "at least one resource is required (or api.image for your own API)",
            "fieldPath": ".resources",
        },
        {
            "rule": "!has(self.database) || !has(self.database.none) || (has(self.api) && has(self.api.image))",
            "message": "the bundled api role needs a database (none only with api.image)",
            "fieldPath": ".database.none",
        },
        {
            "rule": "!has(self.cache) || !has(self.cache.routes) || size(self.cache.routes) == 0"
            " || (has(self.api) && has(self.api.image))",
            "message": "only with api.image (the bundled api role's caching is per resource)",
            "fieldPath": ".cache.routes",
        },
    ],
    "cache.redis": [
        {
            "rule": "!(has(self.managed) && has(self.external))",
            "message": "set exactly one of managed or external (neither means managed)",
        }
    ],
    "database": [
        {
            "rule": "!(has(self.managed) && has(self.external))",
            "message": "set exactly one of managed or external (neither means managed)",
        },
        {
            "rule": "!has(self.none) || !(has(self.managed) || has(self.external))",
            "message": "set exactly one of managed, external or none (neither means managed)",
        },
        {
            "rule": "has(self.external) == has(oldSelf.external) || has(self.none) || has(oldSelf.none)",
            "message": "switching the database between managed and external is not supported; "
            "create a new CachedApi and move the data",
        },
        # The volume claim goes with the StatefulSet: no database would delete the data.
        {
            "rule": "!has(oldSelf.managed) || has(self.managed)",
            "message": "the managed database cannot be removed (its volume would be deleted with it); "
            "create a new CachedApi and move the data",
        },
    ],
    "database.managed.storageClassName": [
        {"rule": "self == oldSelf", "message": "storageClassName is immutable"},
    ],
    # A StatefulSet's volume claim template cannot change, so a new size would be silently
    # ignored; refusing it says so (expand the PersistentVolumeClaim itself instead).
    "database.managed.storage": [
        {
            "rule": "self == oldSelf",
            "message": "storage cannot change once the database exists; expand its PersistentVolumeClaim instead",
        },
    ],
    # ``mode`` may be absent: the API server checks the rule against the bare default ``{}`` too.
    "gateway.auth": [
        {
            "rule": "!has(self.mode) || self.mode != 'jwt' || has(self.jwt)",
            "message": "jwt must be set when mode is jwt",
        },
    ],
    "gateway.auth.jwt": [
        {
            "rule": "has(self.jwksUrl) != has(self.secretRef)",
            "message": "exactly one of jwksUrl or secretRef must be set",
        },
    ],
    "gateway.autoscaling": [
        {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"},
    ],
    "api.autoscaling": [
        {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"},
    ],
    "api.env[]": [
        {"rule": "!(has(self.value) && has(self.valueFrom))", "message": "set value or valueFrom, not both"},
    ],
    "api.env[].valueFrom": [
        {
            "rule": "has(self.secretKeyRef) != has(self.configMapKeyRef)",
            "message": "exactly one of secretKeyRef or configMapKeyRef must be set",
        },
    ],
}

_DROPPED_KEYS = {"title", "additionalProperties", "$defs"}


def _model_classes(root: type[pydantic.BaseModel]) -> dict[str, type[pydantic.BaseModel]]:
    """Every model class reachable from ``root``, by the name pydantic gives its ``$defs`` entry."""
    found: dict[str, type[pydantic.BaseModel]] = {}

    def walk_type(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
            if tp.__name__ not in found:
                found[tp.__name__] = tp
                for field in tp.model_fields.values():
                    walk_type(field.annotation)
            return
        for arg in typing.get_args(tp):
            walk_type(arg)

    walk_type(root)
    return found


def _factory_default(cls: type[pydantic.BaseModel], field_name: str) -> Any:
    """The smallest JSON value that means what the field's default factory builds, or None."""
    field = cls.model_fields[field_name]
    if field.default_factory is None:
        return None
    value = field.default_factory()  # type: ignore[call-arg]
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return copy.deepcopy(value)


def _is_null(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def _structural(
    schema: dict[str, Any], *, defs: dict[str, Any], classes: dict[str, type[pydantic.BaseModel]], path: str
) -> dict[str, Any]:
    """Convert one (sub)schema; ``path`` is the dotted location under ``spec`` for the CEL rules."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        merged = {**defs[name], **{k: v for k, v in schema.items() if k != "$ref"}}
        merged["x-cachedapi-class"] = name
        return _structural(merged, defs=defs, classes=classes, path=path)
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if not _is_null(s)]
        if len(options) != 1:
            raise ValueError(f"spec.{path}: only 'X | None' unions are supported in a CRD")
        rest = {k: v for k, v in schema.items() if k not in {"anyOf", "default"}}
        if schema.get("default") is not None:
            rest["default"] = schema["default"]
        return _structural({**options[0], **rest}, defs=defs, classes=classes, path=path)

    class_name = schema.pop("x-cachedapi-class", None)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED_KEYS or key == "properties" or key == "items":
            continue
        if key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "default" and value is None:
            continue
        else:
            out[key] = copy.deepcopy(value)
    if "properties" in schema:
        cls = classes.get(class_name) if class_name else None
        props: dict[str, Any] = {}
        for name, sub in schema["properties"].items():
            sub_path = f"{path}.{name}" if path else name
            converted = _structural(dict(sub), defs=defs, classes=classes, path=sub_path)
            field_name = _field_name(cls, name) if cls else None
            if cls is not None and field_name is not None and "default" not in converted:
                default = _factory_default(cls, field_name)
                if default is not None:
                    converted = _ordered({**converted, "default": default})
            props[name] = converted
        if props:  # an object with no field (``database.none``) has none: the API server drops ``{}``
            out["properties"] = props
    if "items" in schema:
        out["items"] = _structural(dict(schema["items"]), defs=defs, classes=classes, path=path + "[]")
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" in schema:
        extra = schema["additionalProperties"]
        if isinstance(extra, dict):
            out["additionalProperties"] = _structural(dict(extra), defs=defs, classes=classes, path=path + ".*")
        elif extra is True and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["x-kubernetes-preserve-unknown-fields"] = True
    if path in _RULES:
        out["x-kubernetes-validations"] = copy.deepcopy(_RULES[path])
    return _ordered(out)


_KEY_ORDER = ["type", "description", "format", "enum", "default", "minimum", "exclusiveMinimum", "maximum"]
_KEY_ORDER += ["exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "required"]


def _ordered(schema: dict[str, Any]) -> dict[str, Any]:
    """Keys in the order a reader of the YAML expects: what it is first, what it holds last."""
    rank = {key: i for i, key in enumerate(_KEY_ORDER)}
    return dict(sorted(schema.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0].startswith("x-"))))


def _field_name(cls: type[pydantic.BaseModel], prop: str) -> str | None:
    for name, field in cls.model_fields.items():
        if (field.alias or name) == prop:
            return name
    return None


def spec_schema() -> dict[str, Any]:
    """The structural OpenAPI schema of ``spec``, from ``model.CachedApiSpec``."""
    raw = model.CachedApiSpec.model_json_schema(by_alias=True)
    defs = raw.get("$defs", {})
    classes = _model_classes(model.CachedApiSpec)
    top = {**raw, "x-cachedapi-class": "CachedApiSpec"}
    schema = _structural(top, defs=defs, classes=classes, path="")
    resources = schema["properties"]["resources"]
    resources["x-kubernetes-list-type"] = "map"
    resources["x-kubernetes-list-map-keys"] = ["name"]
    item_schema = resources["items"]["properties"]["schema"]
    item_schema.pop("additionalProperties", None)
    item_schema["x-kubernetes-preserve-unknown-fields"] = True
    # Lists keyed as a Pod's env is: one entry per name (per path), which the API server enforces.
    for parent, key in (("api", "env"), ("cache", "routes")):
        keyed = schema["properties"][parent]["properties"][key]
        keyed["x-kubernetes-list-type"] = "map"
        keyed["x-kubernetes-list-map-keys"] = [{"env": "name", "routes": "path"}[key]]
    return schema


def _replica_status() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "replicas": {"type": "integer", "description": "Desired replicas."},
            "readyReplicas": {"type": "integer", "description": "Replicas ready to serve."},
        },
    }


def status_schema() -> dict[str, Any]:
    """What the operator reports; ``conditions`` are in the metav1.Condition shape."""
    condition = {
        "type": "object",
        "required": ["type", "status", "lastTransitionTime", "reason", "message"],
        "properties": {
            "type": {"type": "string", "maxLength": 316},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "reason": {"type": "string", "maxLength": 1024},
            "message": {"type": "string", "maxLength": 32768},
        },
    }
    return {
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64"},
            "phase": {"type": "string", "enum": PHASES},
            "ready": {"type": "string", "description": "Gateway pods ready/desired, e.g. 2/2."},
            "endpoint": {"type": "string", "description": "The gateway's in-cluster URL."},
            "apiKeysSecret": {"type": "string", "description": "The Secret holding the API keys."},
            "adminKeySecret": {
                "type": "string",
                "description": "The Secret holding the gateway's admin key (cache purges), with api.image.",
            },
            "selector": {"type": "string", "description": "The gateway pods' label selector (scale subresource)."},
            "gateway": _replica_status(),
            "api": _replica_status(),
            "conditions": {
                "type": "array",
                "items": condition,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
        },
    }


def build() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "cachedapi", "app.kubernetes.io/part-of": "cachedapi"},
        },
        "spec": {
            "group": model.API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": model.KIND,
                "listKind": f"{model.KIND}List",
                "plural": model.PLURAL,
                "singular": model.KIND.lower(),
                "shortNames": ["capi"],
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": model.API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        # `kubectl scale cachedapi/x --replicas=N` scales the gateway, the tier clients see.
                        "scale": {
                            "specReplicasPath": ".spec.gateway.replicas",
                            "statusReplicasPath": ".status.gateway.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
                        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A cached HTTP API: gateway, api pods, Redis and PostgreSQL.",
                            "required": ["spec"],
                            # Every child's name is the CachedApi's plus a suffix (up to 15 characters:
                            # "-db-credentials"), and it is a label value too, which holds 63.
                            "x-kubernetes-validations": [
                                {
                                    "rule": f"size(self.metadata.name) <= {NAME_MAX}",
                                    "message": f"metadata.name: at most {NAME_MAX} characters, so that every "
                                    "child's name (the CachedApi's plus a suffix) is a valid name and label",
                                }
                            ],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = "# Generated by `python -m cachedapi.operator.crd --write` from cachedapi/model.py: do not edit by hand.\n"


def dump() -> str:
    return HEADER + yaml.safe_dump(build(), sort_keys=False, width=100)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cachedapi.operator.crd", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write every committed copy instead of printing")
    args = parser.parse_args(argv)
    text = dump()
    if not args.write:
        sys.stdout.write(text)
        return 0
    for path in CRD_PATHS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
