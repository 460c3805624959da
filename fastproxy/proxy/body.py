"""The request body: read with a size limit, decoded into the narrow view, and the bytes sent upstream."""

from __future__ import annotations

import msgspec

from fastproxy.core.errors import BodyTooLarge, InvalidRequest
from fastproxy.core.schemas import RequestView, json_encoder, request_decoder
from fastproxy.core.types import Receive

_DRAIN_LIMIT = 64 * 1024 * 1024
_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'


class ClientDisconnected(Exception):
    """The client went away; nothing more can be sent."""


def parse_length(value: bytes) -> int:
    if not value.isdigit():
        raise InvalidRequest("Invalid Content-Length header.", param="content-length")
    return int(value)


async def read_body(receive: Receive, limit: int, content_length: int) -> bytes:
    """The whole body, refused as soon as it is known to exceed `limit` (never buffered past it)."""
    if content_length > limit:
        await _discard_rest(receive, content_length)
        raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            if message.get("more_body"):
                await _discard_rest(receive, size)
            raise _too_large(limit)
        more = message.get("more_body", False)
        if not parts and not more:
            return chunk  # the common case: one message, no copy
        parts.append(chunk)
        if not more:
            return b"".join(parts)


async def _discard_rest(receive: Receive, seen: int) -> None:
    """Read and drop what the client is still sending, up to a bound, so it can read our 413.

    Answering while the client still writes makes most HTTP/1.1 clients fail with a reset instead.
    Past _DRAIN_LIMIT the connection is simply dropped: a client can't make us read forever.
    """
    while seen <= _DRAIN_LIMIT:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        seen += len(message.get("body", b""))
        if not message.get("more_body"):
            return


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"Request body too large: the limit is {limit} bytes.")


def estimate_tokens(body_size: int, view: RequestView, default_max_tokens: int) -> int:
    """A cheap upper-leaning guess, reserved against token limits until the real usage is known."""
    completion = view.max_completion_tokens or view.max_tokens or view.max_output_tokens or default_max_tokens
    return estimate_prompt(body_size) + completion * (view.n or 1)


def estimate_prompt(body_size: int) -> int:
    # About four bytes of JSON per token: rough, but never needs the messages decoded.
    return body_size // 4


def decode_view(body: bytes) -> RequestView:
    try:
        return request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        reason, _, where = text.partition(" - at `$.")
        param = where.rstrip("`") or None
        if param is None:
            raise InvalidRequest(f"Invalid request body: {reason}.") from exc
        raise InvalidRequest(f"Invalid type for '{param}': {reason}.", param=param) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The API expects a JSON payload, "
            "but what was sent was not valid JSON."
        ) from exc


_top_level = msgspec.json.Decoder(dict[str, msgspec.Raw])


def with_model(body: bytes, model: str) -> bytes:
    """The body with only its top-level `model` changed: every other member's bytes are kept as sent."""
    doc = _top_level.decode(body)
    doc["model"] = msgspec.Raw(json_encoder.encode(model))
    return json_encoder.encode(doc)


def with_include_usage(body: bytes, view: RequestView) -> bytes:
    if view.stream_options is None:
        # Splice the option in after the opening brace: the messages are never decoded or re-encoded.
        i = body.index(b"{") + 1
        return body[:i] + _INCLUDE_USAGE + body[i:]
    # Rare: the client sent stream_options without include_usage; re-encode this one body.
    doc = msgspec.json.decode(body)
    doc["stream_options"]["include_usage"] = True
    return json_encoder.encode(doc)
