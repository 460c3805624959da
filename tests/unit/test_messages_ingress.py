"""The Anthropic ingress's own pieces (proxy/messages.py): the key in x-api-key, errors in Anthropic's format,
and the proxy's count_tokens estimate."""

from __future__ import annotations

import json
from typing import Any

from fastproxy.core.errors import BodyTooLarge, ProxyError, QuotaExceeded, RateLimited, UpstreamUnavailable
from fastproxy.core.types import Message
from fastproxy.proxy import messages
from fastproxy.translate.ingress_request import decode_request


def test_x_api_key_is_read_as_a_bearer_key() -> None:
    assert messages.credential([(b"x-api-key", b" sk-fp-abc "), (b"accept", b"*/*")]) == b"Bearer sk-fp-abc"
    assert messages.credential([(b"authorization", b"Bearer x")]) is None


async def _sent(err: ProxyError) -> tuple[int, dict[str, Any], dict[bytes, bytes]]:
    out: list[Message] = []

    async def send(message: Message) -> None:
        out.append(message)

    await messages.send_error(send, err, b"req-1")
    return out[0]["status"], json.loads(out[1]["body"]), dict(out[0]["headers"])


async def test_proxy_errors_in_anthropic_format() -> None:
    cases = [
        (RateLimited("slow down", headers=[(b"retry-after", b"2")]), 429, "rate_limit_error"),
        (QuotaExceeded("budget spent"), 429, "rate_limit_error"),
        (BodyTooLarge("too big"), 413, "request_too_large"),
        (UpstreamUnavailable("resting"), 503, "overloaded_error"),
    ]
    for err, status, kind in cases:
        got_status, body, headers = await _sent(err)
        assert got_status == status
        assert body == {"type": "error", "error": {"type": kind, "message": err.message}}
        assert headers[b"x-request-id"] == b"req-1"
    assert (await _sent(cases[0][0]))[2][b"retry-after"] == b"2"


def test_count_estimate_reads_text_not_base64() -> None:
    text = "word " * 400  # 2,000 characters: about 500 tokens
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 100_000}}
    plain = decode_request(json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode())
    with_image = decode_request(
        json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": [image, {"type": "text", "text": text}]}]}
        ).encode()
    )
    assert messages.estimate_input_tokens(plain) == 500 + 4
    assert messages.estimate_input_tokens(with_image) == 500 + 1600 + 4
