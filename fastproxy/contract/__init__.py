"""The API contract: every endpoint fastproxy answers itself (spec.py), the OpenAPI 3.1 document built from
it and the msgspec Structs the handlers use (document.py), served at GET /openapi.json."""

from __future__ import annotations

from fastproxy.contract.document import document_bytes
from fastproxy.core.types import Receive, Scope, Send
from fastproxy.server.state import State


async def openapi(state: State, scope: Scope, receive: Receive, send: Send) -> None:
    body = document_bytes()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
