"""The x-config ConfigMap: the runtime configuration, rendered by ``contract``."""

from __future__ import annotations

from typing import Any

from cachedapi import contract, model
from cachedapi.operator.children import inputs, names


def text(api: model.CachedApi) -> str:
    return contract.dump_config(contract.render_config(api))


def config_map(api: model.CachedApi, inp: inputs.Inputs) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": names.metadata(api, name=names.config_map(api), component="config", uid=inp.owner_uid),
        "data": {contract.CONFIG_FILE: text(api)},
    }
