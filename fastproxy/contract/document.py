"""The OpenAPI 3.1 document, built from fastproxy.contract.spec and the msgspec Structs it names.

Built once per process on first use (GET /openapi.json, `fastproxy openapi`), never on the request path.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec

from fastproxy import __version__
from fastproxy.contract.spec import ADMIN, KEY, OPERATIONS, SESSION, Named, Op
from fastproxy.core.schemas import RequestView

REF = "#/components/schemas/{name}"
RESPONSE_REF = "#/components/responses/{name}"
_PATH_PARAM = re.compile(r"\{(\w+)\}")
# Each server-sent event as the provider sent it (its `data` is one JSON chunk, or `[DONE]`); tools such as
# Schemathesis check a stream event by event against this.
_EVENT = {
    "type": "object",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}},
    "required": ["data"],
}
_SSE = {"text/event-stream": {"schema": _EVENT}}
_DESCRIPTION = """An OpenAI-compatible LLM API gateway. This document covers what fastproxy answers itself:
the /v1 requests it reads (it reads only the fields of `RequestView` and forwards the body's bytes to the
route's provider, whose answer passes through byte for byte), the key's usage, the admin API, the
self-service API and the probes. Any other /v1 path is passed through to the provider as it is."""
_SECURITY = {
    KEY: {"type": "http", "scheme": "bearer", "description": "A fastproxy API key (sk-fp-...)"},
    ADMIN: {"type": "http", "scheme": "bearer", "description": "FASTPROXY_ADMIN_KEY"},
    SESSION: {"type": "http", "scheme": "bearer", "description": "An access token from /api/auth/login"},
}
_REASONS = {
    200: "OK", 201: "Created", 400: "Bad request", 401: "Unauthenticated", 403: "Forbidden", 404: "Not found",
    405: "Method not allowed", 408: "The request body took too long to arrive", 409: "Conflict",
    413: "Request body too large", 429: "Rate limited or quota exhausted", 502: "Upstream failed",
    503: "Unavailable (a dependency, overload, or every target resting)", 504: "Upstream timed out",
}  # fmt: skip


def _types(ops: tuple[Op, ...]) -> list[Any]:
    """Every type the document refers to, each once, in a stable order."""
    seen: dict[Any, None] = {}
    for op in ops:
        body = op.body.struct if isinstance(op.body, Named) else op.body
        for t in (body, op.ok, op.error, *op.extra.values()):
            if t is not None and t not in (str, dict):
                seen.setdefault(t, None)
    return list(seen)


def _request_schema(op: Op, refs: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    if op.body is RequestView:
        # The proxy refuses a body without a non-empty `model` (proxy/handler.py, _prepare_body); every other
        # member, read or not, goes to the provider as sent.
        return {
            "allOf": [refs[RequestView]],
            "properties": {"model": {"type": "string", "minLength": 1}},
            "required": ["model"],
        }
    if isinstance(op.body, Named):
        name = op.body.struct.__name__ + ("Entry" if op.method == "POST" else "Patch")
        return {"$ref": REF.format(name=name)}
    return refs[op.body]


def _named(ops: tuple[Op, ...], components: dict[str, Any]) -> None:
    """A config table with its `name` (POST: required, as the struct's own required fields; PATCH: nothing
    required, the body is merged over the stored entry and checked whole)."""
    for op in ops:
        if isinstance(op.body, Named):
            base = components[op.body.struct.__name__]
            props = {"name": {"type": "string", "minLength": 1}, **base["properties"]}
            post = op.method == "POST"
            schema = {**base, "title": base["title"] + (" entry" if post else " patch"), "properties": props}
            schema.pop("required", None)
            if post:
                schema["required"] = ["name", *base.get("required", [])]
            components[op.body.struct.__name__ + ("Entry" if post else "Patch")] = schema


def _content(t: Any, refs: dict[Any, dict[str, Any]], content_type: str) -> dict[str, Any]:
    if t is str:
        return {content_type: {"schema": {"type": "string"}}}
    if t is dict:
        return {content_type: {"schema": {"type": "object"}}}
    return {content_type: {"schema": refs[t]}}


def _error_response(error: type[Any], status: int) -> str:
    return f"{error.__name__}{status}"


def _error_responses(ops: tuple[Op, ...], refs: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    out = {
        _error_response(op.error, status): {
            "description": _REASONS[status],
            "content": _content(op.error, refs, "application/json"),
        }
        for op in ops
        for status in op.errors
    }
    return dict(sorted(out.items()))


def _operation(op: Op, refs: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    ok = _content(op.ok, refs, op.content_type)
    if op.streams:
        ok.update(_SSE)
    responses: dict[str, Any] = {str(op.status): {"description": _REASONS[op.status], "content": ok}}
    for extra, t in op.extra.items():
        responses[extra] = {"description": _REASONS[int(extra)], "content": _content(t, refs, "application/json")}
    for status in sorted(op.errors):
        # Shared: one component per (error format, status), so the document stays readable.
        responses.setdefault(str(status), {"$ref": RESPONSE_REF.format(name=_error_response(op.error, status))})
    out: dict[str, Any] = {
        "operationId": f"{op.method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', op.path).strip('_') or 'root'}",
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in _PATH_PARAM.findall(op.path)
    ]
    params += [
        {
            "name": p.name,
            "in": "query",
            "required": False,
            "schema": p.schema,
            **({"description": p.description} if p.description else {}),
        }
        for p in op.query
    ]
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": _request_schema(op, refs)}}}
    if op.security is not None:
        out["security"] = [{op.security: []}]
    return out


def build(ops: tuple[Op, ...] = OPERATIONS) -> dict[str, Any]:
    types = _types(ops)
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    refs = dict(zip(types, schemas, strict=True))
    _named(ops, components)
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "fastproxy", "version": __version__, "description": _DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "responses": _error_responses(ops, refs),
            "securitySchemes": _SECURITY,
        },
    }


@functools.cache
def document_bytes() -> bytes:
    """The document as served and as checked in (docs/openapi.json): indented, keys in a stable order."""
    return msgspec.json.format(msgspec.json.encode(build()), indent=2) + b"\n"
