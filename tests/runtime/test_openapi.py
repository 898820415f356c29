"""The OpenAPI document: valid OpenAPI 3.1, every resource with its schema, answers that match it."""

from __future__ import annotations

import re
from typing import Any

import httpx
import jsonschema
import openapi_spec_validator
import pytest

from cachedapi import contract, model
from cachedapi.runtime.api import openapi

from .conftest import runtime_config


def _matches(doc: dict[str, Any], component: str, *, instance: Any) -> None:
    """Validate ``instance`` against a component schema, resolving refs inside the document."""
    jsonschema.Draft202012Validator({**doc, "$ref": f"#/components/schemas/{component}"}).validate(instance)


async def test_the_document_is_valid_openapi_3_1_describing_every_resource(client: httpx.AsyncClient) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    openapi_spec_validator.validate(doc)
    assert doc["openapi"].startswith("3.1")
    for name in ("books", "authors", "orders"):
        assert {f"/v1/{name}", f"/v1/{name}/{{id}}"} <= set(doc["paths"])
    assert doc["components"]["schemas"]["books"]["required"] == ["title", "author"]
    put = doc["paths"]["/v1/books/{id}"]["put"]
    assert {"200", "201", "412", "422"} <= set(put["responses"])
    assert any(p.get("$ref", "").endswith("If-Match") for p in put["parameters"])
    problem = doc["components"]["responses"]["E422"]["content"]
    assert list(problem) == ["application/problem+json"]


async def test_answers_match_the_documented_schemas(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    created = await client.post("/v1/books", json={"title": "Dune", "author": "Frank Herbert", "year": 1965})
    _matches(doc, "books.item", instance=created.json())
    _matches(doc, "books.item", instance=(await client.get(created.headers["location"])).json())
    _matches(doc, "books.page", instance=(await client.get("/v1/books")).json())
    _matches(doc, "Problem", instance=(await client.post("/v1/books", json={})).json())


async def test_docs_page_is_served(client: httpx.AsyncClient) -> None:
    resp = await client.get("/docs")
    assert resp.status_code == 200
    assert "/openapi.json" in resp.text


def test_local_refs_of_a_resource_schema_resolve_inside_the_document(bookstore: model.CachedApi) -> None:
    schema = {
        "type": "object",
        "$defs": {"money": {"type": "number", "minimum": 0}},
        "properties": {"price": {"$ref": "#/$defs/money"}},
        "additionalProperties": False,
    }
    resources = [{"name": "items", "schema": schema}]
    api = model.parse({**bookstore.model_dump(by_alias=True), "spec": {"resources": resources}})
    doc = openapi.build(runtime_config(api))
    openapi_spec_validator.validate(doc)
    _matches(doc, "items.item", instance={"id": "x", "price": 3})
    with pytest.raises(jsonschema.ValidationError):  # the rebased $ref applies
        _matches(doc, "items.item", instance={"id": "x", "price": -1})
    assert doc["components"]["parameters"]["limit"]["schema"]["maximum"] == contract.MAX_PAGE_LIMIT


_SAMPLE = {"integer": "1", "number": "1.5", "string": "x", "boolean": "true"}


async def test_the_list_query_syntax_is_documented_per_resource_with_its_types(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    listing = doc["paths"]["/v1/books"]["get"]
    params = {p["name"]: p for p in listing["parameters"] if "name" in p}
    assert params["year"]["schema"] == {"type": ["integer"]}
    assert params["year[gt]"]["schema"] == {"type": ["integer"]}
    assert params["price[lte]"]["schema"] == {"type": ["number"]}
    assert params["author[in]"]["schema"] == {"type": "string"}
    assert "tags" not in params and "tags[in]" not in params  # an array: not filterable
    assert "?year[gt]=1960" in listing["description"] and "?sort=-year,title" in listing["description"]
    assert re.match(params["sort"]["schema"]["pattern"], "-year,title")
    assert not re.match(params["sort"]["schema"]["pattern"], "tags")
    for name in params:  # every documented filter is one the api role accepts
        if name in ("sort", "fields"):
            continue
        declared = params[name.partition("[")[0]]["schema"]["type"]  # [in] takes a list of the property's type
        value = _SAMPLE[declared[0]]
        resp = await client.get("/v1/books", params={name: value})
        assert resp.status_code == 200, (name, resp.text)
