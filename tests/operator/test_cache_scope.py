"""``spec.resources[].public`` from the model to the runtime configuration, and who may keep an answer."""

from __future__ import annotations

from typing import Any

import pytest

from cachedapi import contract, model
from cachedapi.operator.children import config as x_config


def _api(bookstore: model.CachedApi, *, mode: str, public: bool | None) -> model.CachedApi:
    data: dict[str, Any] = bookstore.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["spec"]["gateway"]["auth"] = {"mode": mode}
    if mode == "jwt":
        data["spec"]["gateway"]["auth"]["jwt"] = {"secretRef": {"name": "jwt", "key": "secret"}}
    if public is not None:
        data["spec"]["resources"][0]["public"] = public
    return model.CachedApi.model_validate(data)


def test_public_is_rendered_only_when_declared(bookstore: model.CachedApi) -> None:
    rendered = x_config.render_config(_api(bookstore, mode="apiKey", public=True))["resources"]
    assert [r.get("public") for r in rendered] == [True, None, None]
    # Not declared (or false): the configuration is as before the field existed, so no pod rolls.
    assert x_config.render_config(_api(bookstore, mode="apiKey", public=False)) == x_config.render_config(bookstore)


@pytest.mark.parametrize(
    ("mode", "public", "books", "authors"),
    [
        ("apiKey", None, "private", "private"),
        ("jwt", None, "private", "private"),
        ("apiKey", True, "public", "private"),
        ("none", None, "", ""),
        ("none", True, "public", ""),
    ],
)
def test_cache_scope(bookstore: model.CachedApi, mode: str, public: bool | None, books: str, authors: str) -> None:
    api = _api(bookstore, mode=mode, public=public)
    config = x_config.runtime_config(api)
    assert config.resources["books"].public is bool(public)
    assert (contract.cache_scope(config, "books"), contract.cache_scope(config, "authors")) == (books, authors)


def test_a_configuration_without_the_field_reads_as_not_public(bookstore: model.CachedApi) -> None:
    """A configuration rendered by an older operator has no ``public`` key."""
    data = x_config.render_config(bookstore)
    assert all("public" not in r for r in data["resources"])
    assert not any(r.public for r in contract.parse_config(data).resources.values())
