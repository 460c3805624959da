"""/v1/models and /v1/models/{id} from the catalog, when providers or routes are configured (without
them the default provider's answer is passed through, as always)."""

from __future__ import annotations

from time import perf_counter

from fastproxy.core.errors import InvalidRequest, MethodNotAllowed
from fastproxy.core.responses import JSON_CONTENT
from fastproxy.core.types import RawHeaders, Send
from fastproxy.proxy.exchange import Outcome
from fastproxy.upstream.catalog import Catalog


class ModelNotFound(InvalidRequest):
    status = 404
    code = "model_not_found"


async def serve_models(
    catalog: Catalog, method: str, tail: str, send: Send, request_id: bytes, extra: RawHeaders, out: Outcome
) -> None:
    if method != "GET":
        raise MethodNotAllowed(f"Method {method} not allowed for /v1{tail}.", headers=[(b"allow", b"GET")])
    if tail == "/models":
        body = catalog.listing
    else:
        ident = tail.removeprefix("/models/")
        found = catalog.items.get(ident)
        if found is None:
            raise ModelNotFound(f"The model '{ident}' does not exist", param="model")
        body = found
    out.status = 200
    out.ttfb = perf_counter()
    headers = [JSON_CONTENT, (b"content-length", str(len(body)).encode()), (b"x-request-id", request_id), *extra]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
