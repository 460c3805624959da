"""Small helpers that send whole responses; every error a client sees is rendered here."""

from __future__ import annotations

from fastproxy.core.errors import ProxyError
from fastproxy.core.types import RawHeaders, Send

JSON_CONTENT = (b"content-type", b"application/json")


async def send_json(send: Send, status: int, body: bytes, headers: RawHeaders | None = None) -> None:
    out = [JSON_CONTENT, (b"content-length", str(len(body)).encode())]
    if headers:
        out.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, err: ProxyError, request_id: bytes | None = None) -> None:
    headers = list(err.headers)
    if request_id is not None:
        headers.append((b"x-request-id", request_id))
    await send_json(send, err.status, err.body(), headers)
