"""What an item is on the wire: validation, the id rule, merge patch and encoding.

An item is stored as its JSON object *without* ``id`` and answered as
``{"id": <id>, ...stored fields}``. So ``id`` is reserved: a body may carry it
only if it equals the id in the path (PUT, PATCH), POST bodies may not carry it
(the server chooses ids), and it is removed before the body is validated
against the resource's schema, which therefore never needs to declare it.

Validators (JSON Schema Draft 2020-12, formats asserted) are compiled once at
start. A 422's ``detail`` names each failing field by JSON Pointer, e.g.
``/year: 5000 is greater than the maximum of 3000`` or
``/title: 'title' is a required property``; ``errors`` lists them one by one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jsonschema
import orjson

from cachedapi import contract

#: Ids a client may choose with PUT: URL-safe, and safe inside a Redis key.
ID_PATTERN = r"^[A-Za-z0-9._~-]{1,128}$"
_ID_RE = re.compile(ID_PATTERN)
_MAX_ERRORS = 20


class Invalid(Exception):
    """A body that breaks the schema or the id rule: ``errors`` is [{pointer, detail}]."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['pointer'] or '/'}: {e['detail']}" for e in errors))
        self.errors = errors


def valid_id(item_id: str) -> bool:
    return _ID_RE.match(item_id) is not None


def _pointer(path: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _missing_property(error: jsonschema.ValidationError) -> str | None:
    if error.validator != "required" or not isinstance(error.instance, dict):
        return None
    names: Any = error.validator_value
    for name in names:
        if name not in error.instance and error.message == f"{name!r} is a required property":
            return str(name)
    return None


class Validators:
    """One compiled validator per resource."""

    def __init__(self, resources: Mapping[str, contract.ResourceConfig]) -> None:
        self._validators = {
            name: jsonschema.Draft202012Validator(
                res.schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
            )
            for name, res in resources.items()
        }

    def check(self, resource: str, data: Any) -> None:
        """Raise Invalid naming every failing field of ``data``."""
        validator = self._validators[resource]
        found = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
        if not found:
            return
        errors = []
        for error in found[:_MAX_ERRORS]:
            pointer = _pointer(error.absolute_path)
            missing = _missing_property(error)
            if missing is not None:
                pointer += "/" + missing.replace("~", "~0").replace("/", "~1")
            errors.append({"pointer": pointer, "detail": error.message})
        raise Invalid(errors)


def body_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Invalid([{"pointer": "", "detail": f"the body must be a JSON object, not {type(body).__name__}"}])
    return body


def strip_id(body: dict[str, Any], *, path_id: str | None) -> dict[str, Any]:
    """The body without ``id``; ``path_id`` None means the server assigns the id (POST)."""
    if "id" not in body:
        return body
    if path_id is None:
        raise Invalid([{"pointer": "/id", "detail": "the server assigns ids: omit 'id' (or PUT to /{resource}/{id})"}])
    if body["id"] != path_id:
        raise Invalid([{"pointer": "/id", "detail": f"{body['id']!r} does not match the id in the path {path_id!r}"}])
    return {k: v for k, v in body.items() if k != "id"}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: objects merge recursively, null removes a member, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def etag(version: int) -> str:
    return f'"v{version}"'


def encode_item(item_id: str, data: Mapping[str, Any]) -> bytes:
    return orjson.dumps({"id": item_id, **data})
