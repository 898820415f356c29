"""Is a live child what we want, and if not, which merge patch puts it back? Pure.

"What we want" is a subset: every field the builders set must hold the
built value; fields the API server or another controller adds (defaults, a
clusterIP, ``kubectl rollout restart``'s annotation) are left alone. Lists
compare item by item and must have the same length, because a merge patch
replaces a list whole. Quantities compare by value (``0.5`` is ``500m``),
since the API server rewrites them. Fields a Kubernetes kind will not let
anyone change after creation are neither compared nor patched.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

#: Immutable after creation, per kind: paths under the object.
IMMUTABLE: dict[str, list[tuple[str, ...]]] = {
    "Deployment": [("spec", "selector")],
    "StatefulSet": [
        ("spec", "selector"),
        ("spec", "serviceName"),
        ("spec", "volumeClaimTemplates"),
        ("spec", "podManagementPolicy"),
    ],
    "Service": [("spec", "clusterIP")],
    "Secret": [("data",), ("stringData",), ("type",)],
}

_QUANTITY_KEYS = {"requests", "limits"}
_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[kKMGTPEmun]?)$")
_FACTORS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "": 1}
_FACTORS_DEC = {"k": 3, "K": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18, "m": -3, "u": -6, "n": -9}


def _quantity(value: str) -> Decimal | None:
    match = _QUANTITY.match(value)
    if match is None:
        return None
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:
        return None
    suffix = match.group(2)
    if suffix in _FACTORS:
        return number * _FACTORS[suffix]
    return number.scaleb(_FACTORS_DEC[suffix])


def contains(desired: Any, live: Any, *, quantities: bool = False) -> bool:
    """True when ``live`` holds everything ``desired`` says."""
    if live is None and isinstance(desired, (dict, list)) and not desired:
        return True  # the API server leaves out empty optional lists and objects
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        return all(
            contains(value, live.get(key), quantities=quantities or key in _QUANTITY_KEYS)
            for key, value in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(live, list) or len(desired) != len(live):
            return False
        return all(contains(d, v, quantities=quantities) for d, v in zip(desired, live, strict=True))
    if quantities and isinstance(desired, str) and isinstance(live, str) and desired != live:
        a, b = _quantity(desired), _quantity(live)
        return a is not None and a == b
    return bool(desired == live) and type(desired) is type(live)


def _without(obj: dict[str, Any], paths: Iterable[tuple[str, ...]]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    for path in paths:
        node: Any = out
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return out


def _owner_refs_hold(desired: dict[str, Any], live: dict[str, Any]) -> bool:
    live_uids = {(r.get("uid"), bool(r.get("controller"))) for r in live.get("ownerReferences") or []}
    return all((r["uid"], bool(r.get("controller"))) in live_uids for r in desired.get("ownerReferences") or [])


def _comparable(desired: dict[str, Any], ignore: Iterable[tuple[str, ...]]) -> dict[str, Any]:
    paths = [*IMMUTABLE.get(desired["kind"], []), *ignore]
    body = _without(desired, paths)
    for key in ("apiVersion", "kind", "metadata", "status"):
        body.pop(key, None)
    return body


def comparable(desired: dict[str, Any], *, ignore: Iterable[tuple[str, ...]] = ()) -> dict[str, Any]:
    """What ``differs`` compares of ``desired`` (a copy): worth keeping while the spec is unchanged."""
    return _comparable(desired, ignore)


def differs(
    desired: dict[str, Any],
    live: dict[str, Any],
    *,
    ignore: Iterable[tuple[str, ...]] = (),
    compared: dict[str, Any] | None = None,
) -> bool:
    """``compared``, when given, is ``comparable(desired, ignore=ignore)`` computed earlier."""
    meta, live_meta = desired["metadata"], live.get("metadata") or {}
    if not contains(meta.get("labels") or {}, live_meta.get("labels") or {}):
        return True
    if not contains(meta.get("annotations") or {}, live_meta.get("annotations") or {}):
        return True
    if not _owner_refs_hold(meta, live_meta):
        return True
    return not contains(compared if compared is not None else _comparable(desired, ignore), live)


def patch_body(
    desired: dict[str, Any], live: dict[str, Any], *, ignore: Iterable[tuple[str, ...]] = ()
) -> dict[str, Any]:
    """The merge patch that makes ``live`` hold ``desired`` again (other owners' refs kept)."""
    meta, live_meta = desired["metadata"], live.get("metadata") or {}
    ours = {r["uid"] for r in meta.get("ownerReferences") or []}
    # A controller reference to a CachedApi of the same name that was deleted and created again
    # is stale: an object may have only one controller, so ours replaces it.
    kinds = {r.get("kind") for r in meta.get("ownerReferences") or [] if r.get("controller")}
    others = [
        r
        for r in live_meta.get("ownerReferences") or []
        if r.get("uid") not in ours and not (r.get("controller") and r.get("kind") in kinds)
    ]
    patch_meta: dict[str, Any] = {"labels": meta.get("labels") or {}}
    if meta.get("annotations"):
        patch_meta["annotations"] = meta["annotations"]
    if meta.get("ownerReferences"):
        patch_meta["ownerReferences"] = [*others, *meta["ownerReferences"]]
    return {"metadata": patch_meta, **_comparable(desired, ignore)}
