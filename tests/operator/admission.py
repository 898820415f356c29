"""What the API server does with a CachedApi before storing it, as far as a test can do it here:
structural defaulting, then the OpenAPI schema and list-map key uniqueness, then the CEL rules
(``x-kubernetes-validations``, with ``oldSelf`` on an update), evaluated by cel-python since no API
server can run on this machine."""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema

from cachedapi.operator import crd


def schema() -> dict[str, Any]:
    found: dict[str, Any] = crd.build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return found


def apply_defaults(node: dict[str, Any], obj: Any) -> Any:
    """Fill in defaults where a field is absent, recursing into objects that exist (as the API server does)."""
    if not isinstance(obj, dict) or "properties" not in node:
        if isinstance(obj, list) and "items" in node:
            return [apply_defaults(node["items"], item) for item in obj]
        return obj
    out = dict(obj)
    for name, sub in node["properties"].items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        if name in out:
            out[name] = apply_defaults(sub, out[name])
    return out


def _cel_errors(node: dict[str, Any], new: Any, old: Any, path: str) -> list[str]:
    errors = []
    env = celpy.Environment()
    for rule in node.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue  # transition rules run on updates only, when the old value exists
        activation = {"self": celpy.json_to_cel(new)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(old)
        if not env.program(env.compile(rule["rule"])).evaluate(activation):
            errors.append(f"{path}: {rule['message']}")
    if isinstance(new, dict) and "properties" in node:
        for name, sub in node["properties"].items():
            if name in new:
                old_sub = old.get(name) if isinstance(old, dict) else None
                errors += _cel_errors(sub, new[name], old_sub, f"{path}.{name}" if path else name)
    return errors


def _list_map_errors(node: dict[str, Any], obj: Any, path: str) -> list[str]:
    """``x-kubernetes-list-type: map``: no two items with the same keys (the API server's "Duplicate value")."""
    errors = []
    if isinstance(obj, list) and node.get("x-kubernetes-list-type") == "map":
        names = node["x-kubernetes-list-map-keys"]
        keys = [tuple(item.get(k) for k in names) for item in obj if isinstance(item, dict)]
        errors += [f"{path}: Duplicate value: {key}" for key in {k for k in keys if keys.count(k) > 1}]
    if isinstance(obj, dict):
        for name, sub in (node.get("properties") or {}).items():
            if name in obj:
                errors += _list_map_errors(sub, obj[name], f"{path}.{name}" if path else name)
    if isinstance(obj, list) and "items" in node:
        for index, item in enumerate(obj):
            errors += _list_map_errors(node["items"], item, f"{path}[{index}]")
    return errors


def admit(body: dict[str, Any], *, old: dict[str, Any] | None = None) -> list[str]:
    """The reasons the API server would refuse ``body`` (empty: stored); ``old`` makes it an update."""
    root = schema()
    new = apply_defaults(root, body)
    errors = [e.message for e in jsonschema.Draft4Validator(root).iter_errors(new)]
    if errors:
        return errors
    old_defaulted = apply_defaults(root, old) if old is not None else None
    errors = _list_map_errors(root, new, "")
    return errors + _cel_errors(root, new, old_defaulted, "")
