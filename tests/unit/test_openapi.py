"""The OpenAPI document: served, checked in and built from the code, all three the same; and every endpoint
the code answers is in it, and nothing else."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from fastproxy.accounts import admin, admin_providers
from fastproxy.app import FastProxy
from fastproxy.cache import admin as cache_admin
from fastproxy.contract.document import build, document_bytes
from fastproxy.contract.spec import OPERATIONS, Named, Op
from fastproxy.core.errors import ProxyError
from fastproxy.core.schemas import RequestView
from fastproxy.core.settings import load_settings
from fastproxy.proxy import routes
from fastproxy.selfservice import api as selfservice_api
from tests.asgi import lifespan, request
from tests.fakes import FakeUpstream

CHECKED_IN = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
# Paths the proxy passes through to the provider without reading them (not fastproxy's contract).
PASSED_THROUGH = {("GET", "/v1/chat/completions"), ("DELETE", "/v1/models/{model}")}


@pytest.fixture
async def app() -> AsyncIterator[FastProxy]:
    env = {"FASTPROXY_AUTH": "none", "FASTPROXY_DATABASE_URL": "", "FASTPROXY_ACCESS_LOG": "false"}
    proxy = FastProxy(load_settings(environ=env), upstream_factory=FakeUpstream().factory)
    async with lifespan(proxy):
        yield proxy


async def test_served_checked_in_and_built_documents_are_the_same(app: FastProxy) -> None:
    res = await request(app, "GET", "/openapi.json")
    assert res.status == 200
    assert res.headers[b"content-type"] == b"application/json"
    assert res.body == document_bytes(), "the served document is not the one built from the code"
    assert json.loads(res.body) == build()
    assert CHECKED_IN.read_bytes() == res.body, (
        "docs/openapi.json is out of date: run `fastproxy openapi -o docs/openapi.json`"
    )


def test_document_is_openapi_31_with_valid_schemas() -> None:
    doc = build()
    assert doc["openapi"] == "3.1.0"
    validator = jsonschema.Draft202012Validator
    for name, schema in doc["components"]["schemas"].items():
        validator.check_schema(schema)
        assert "title" in schema, name
    refs = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.add(node["$ref"].removeprefix("#/components/schemas/"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    known = {*doc["components"]["schemas"], *(f"#/components/responses/{r}" for r in doc["components"]["responses"])}
    assert refs <= known, refs - known
    ids = [op["operationId"] for path in doc["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))


def _concrete(path: str) -> str:
    return path.replace("{model}", "gpt-4o").replace("{id}", "user_abc").replace("{name}", "openai")


def _answered(method: str, path: str) -> bool:
    """Whether the code has a handler of its own for (method, path): the route table, then each side API's."""
    target = routes.resolve(path)
    if isinstance(target, dict):
        handler = target.get(method)
        if handler is None:
            return False
        endpoint = handler.keywords.get("endpoint") if isinstance(handler, partial) else None
        return endpoint is None or endpoint.name != "passthrough"
    if path.startswith("/admin/"):
        resource = path.split("/")[2]
        if resource == "cache":
            try:
                cache_admin._target(path)
            except ProxyError:
                return False
            return method == "DELETE"
        if resource in admin_providers.RESOURCES:
            return method in (("GET", "POST") if path.count("/") == 2 else ("GET", "PATCH", "DELETE"))
        try:
            admin._route(method, path)
        except ProxyError:
            return False
        return not (path.startswith("/admin/usage/") and not path.endswith("/summary"))
    if path.startswith("/api/"):
        try:
            selfservice_api._route(method, path)
        except ProxyError:
            return False
        return True
    return False


def _code_endpoints() -> set[tuple[str, str]]:
    """Every (method, path template) the code answers, read from the tables the dispatchers use."""
    found: set[tuple[str, str]] = set()
    for path, methods in routes.ROUTES.items():
        found |= {(m, path) for m in methods if m != "OPTIONS"}
    found |= {(m, "/v1/models/{model}") for m in routes.MODEL_ITEM if m != "OPTIONS"}
    for resource, (collection, item) in admin._TABLE.items():
        found |= {(m, f"/admin/{resource}") for m in collection}
        found |= {(m, f"/admin/{resource}/{{id}}") for m in item}
    found -= {("GET", "/admin/usage/{id}")}
    found |= {("GET", "/admin/usage/summary"), ("GET", "/admin/keys/{id}/limits"), ("GET", "/admin/users/{id}/usage")}
    for resource in admin_providers.RESOURCES:
        found |= {(m, f"/admin/{resource}") for m in ("GET", "POST")}
        found |= {(m, f"/admin/{resource}/{{name}}") for m in ("GET", "PATCH", "DELETE")}
    found |= {
        ("DELETE", "/admin/cache" + tail) for tail in ("", "/global", "/users/{id}", "/keys/{id}", "/models/{model}")
    }
    for path, table in selfservice_api._ROUTES.items():
        found |= {(m, path) for m in table}
    found |= {(m, "/api/api-keys/{id}") for m in selfservice_api._KEY_ITEM}
    return found - PASSED_THROUGH


def test_every_endpoint_of_the_code_is_documented_and_nothing_else() -> None:
    documented = {(op.method, op.path) for op in OPERATIONS}
    code = _code_endpoints()
    assert code - documented == set(), "answered by the code but missing from fastproxy/contract/spec.py"
    assert documented - code == set(), "documented but not answered by the code"
    for method, path in documented:
        assert _answered(method, _concrete(path)), (method, path)


def test_proxied_bodies_are_the_view_the_handler_decodes() -> None:
    """Each /v1 endpoint whose body the proxy reads documents a body; OpenAI-shaped ones (the RequestView the
    handler decodes) with `model` required, as the handler refuses a body without one."""
    doc = build()
    bodies = {(op.method, op.path): op.body for op in OPERATIONS}
    accounted = {
        path
        for path, methods in routes.ROUTES.items()
        if isinstance(h := methods.get("POST"), partial) and h.keywords["endpoint"].accounted
    }
    assert accounted
    for path in accounted:
        assert bodies[("POST", path)] is not None, path
        if bodies[("POST", path)] is RequestView:
            schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
            assert schema["allOf"] == [{"$ref": "#/components/schemas/RequestView"}]
            assert schema["required"] == ["model"]
    view = doc["components"]["schemas"]["RequestView"]
    assert set(view["properties"]) == set(RequestView.__struct_fields__)


def test_admin_config_bodies_are_the_config_structs_plus_name() -> None:
    doc = build()["components"]["schemas"]
    for op in OPERATIONS:
        if isinstance(op.body, Named):
            fields = set(op.body.struct.__struct_fields__)
            kind = op.body.struct.__name__
            entry, patch = doc[kind + "Entry"], doc[kind + "Patch"]
            assert set(entry["properties"]) == fields | {"name"} == set(patch["properties"])
            assert "name" in entry["required"] and "required" not in patch


@pytest.mark.parametrize("op", [o for o in OPERATIONS if o.errors], ids=lambda o: f"{o.method} {o.path}")
def test_error_statuses_render_the_error_body(op: Op) -> None:
    doc = build()
    responses = doc["paths"][op.path][op.method.lower()]["responses"]
    for status in op.errors:
        ref = responses[str(status)]["$ref"]
        shared = doc["components"]["responses"][ref.removeprefix("#/components/responses/")]
        schema = shared["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{op.error.__name__}"}
    # What the handlers send is that shape.
    body = msgspec.json.decode(ProxyError("x").body())
    detail = doc["components"]["schemas"]["ErrorDetail"]
    assert set(body["error"]) == set(detail["properties"]) == {"message", "type", "param", "code"}
