"""The x-config ConfigMap: the runtime configuration, rendered by ``contract``.

A ConfigMap holds at most 1 MiB, and the configuration carries every resource's
JSON Schema: a CachedApi the API server stores (up to about 1.5 MB) can render a
configuration it would refuse. ``too_large`` says so before anything is built.
"""

from __future__ import annotations

from typing import Any

from cachedapi import contract, model
from cachedapi.operator.children import inputs, names


def text(api: model.CachedApi) -> str:
    return contract.dump_config(contract.render_config(api))


#: The most data a ConfigMap may hold (the API server refuses more).
MAX_BYTES = 1024 * 1024


def too_large(api: model.CachedApi) -> str | None:
    """Why this CachedApi's configuration cannot be a ConfigMap, naming the field; None when it fits."""
    size = len(text(api).encode()) + len(contract.CONFIG_FILE)
    if size <= MAX_BYTES:
        return None
    return (
        f"spec.resources: the runtime configuration rendered from the resources and their schemas is "
        f"{size} bytes, over the {MAX_BYTES} a ConfigMap holds; make the schemas smaller or split the API"
    )


def config_map(api: model.CachedApi, inp: inputs.Inputs) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": names.metadata(api, name=names.config_map(api), component="config", uid=inp.owner_uid),
        "data": {contract.CONFIG_FILE: text(api)},
    }
