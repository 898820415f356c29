"""``spec.gateway.timeouts`` and ``.capacity``: from the one model to what the gateway reads."""

from __future__ import annotations

import pytest

from cachedapi import contract, model
from cachedapi.operator import crd
from cachedapi.operator.children import config as x_config


def _api(gateway: dict[str, object]) -> model.CachedApi:
    return model.parse({"metadata": {"name": "shop"}, "spec": {"resources": [{"name": "books"}], "gateway": gateway}})


def test_the_defaults_are_the_contracts_and_render_nothing() -> None:
    api = _api({})
    assert api.spec.gateway.timeouts.requestHeaderSeconds == contract.DEFAULT_REQUEST_HEADER_SECONDS == 10
    assert api.spec.gateway.timeouts.requestBodySeconds == contract.DEFAULT_REQUEST_BODY_SECONDS == 10
    assert api.spec.gateway.capacity.maxConnections == contract.DEFAULT_MAX_CONNECTIONS
    assert api.spec.gateway.capacity.maxForwardsPerClient == contract.DEFAULT_MAX_FORWARDS_PER_CLIENT
    rendered = x_config.render_config(api)
    assert "clients" not in rendered, "left at the defaults, an existing deployment's configuration is unchanged"
    config = contract.parse_config(rendered)
    assert (config.request_header_seconds, config.request_body_seconds) == (10, 10)
    assert (config.max_connections, config.max_forwards_per_client) == (4096, 128)


def test_values_set_flow_into_the_runtime_configuration() -> None:
    api = _api(
        {
            "timeouts": {"requestHeaderSeconds": 5, "requestBodySeconds": 30},
            "capacity": {"maxConnections": 10_000, "maxForwardsPerClient": 0},
        }
    )
    rendered = x_config.render_config(api)
    assert rendered["clients"] == {
        "requestHeaderSeconds": 5,
        "requestBodySeconds": 30,
        "maxConnections": 10_000,
        "maxForwardsPerClient": 0,
    }
    config = contract.parse_config(rendered)
    assert (config.request_header_seconds, config.request_body_seconds) == (5, 30)
    assert (config.max_connections, config.max_forwards_per_client) == (10_000, 0)


@pytest.mark.parametrize(
    ("gateway", "field"),
    [
        ({"timeouts": {"requestHeaderSeconds": 0}}, "spec.gateway.timeouts.requestHeaderSeconds"),
        ({"timeouts": {"requestBodySeconds": 3601}}, "spec.gateway.timeouts.requestBodySeconds"),
        ({"timeouts": {"idleSeconds": 60}}, "spec.gateway.timeouts.idleSeconds"),
        ({"capacity": {"maxConnections": 1}}, "spec.gateway.capacity.maxConnections"),
        ({"capacity": {"maxForwardsPerClient": -1}}, "spec.gateway.capacity.maxForwardsPerClient"),
    ],
)
def test_bad_values_name_the_field(gateway: dict[str, object], field: str) -> None:
    with pytest.raises(model.ManifestError, match=field.replace(".", r"\.")):
        _api(gateway)


def test_the_crd_carries_the_fields_with_their_defaults_and_bounds() -> None:
    gateway = crd.spec_schema()["properties"]["gateway"]["properties"]
    header = gateway["timeouts"]["properties"]["requestHeaderSeconds"]
    assert (header["default"], header["minimum"], header["maximum"]) == (10, 1, 3600)
    assert "idle keep-alive" in header["description"]
    assert gateway["capacity"]["properties"]["maxConnections"]["default"] == 4096
    assert gateway["capacity"]["properties"]["maxForwardsPerClient"]["minimum"] == 0
