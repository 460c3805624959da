"""Watching an Anthropic Messages stream that passes through untouched (an `anthropic` provider serving
`POST /v1/messages`): its usage, whether it ended properly, and its commit point. Bytes are never changed.

    message_start  -> input usage (input_tokens, cache_read_input_tokens, cache_creation_input_tokens)
    message_delta  -> output usage (cumulative; input counts too when present)
    message_stop   -> the stream ended properly
    error          -> the upstream ended the stream with an error event itself

Only events whose bytes name one of those types are decoded, into narrow Structs.
Usage is normalised the OpenAI way for the usage row: prompt = input + cache reads + cache writes,
cached = cache reads, so each token is counted once.
"""

from __future__ import annotations

import re

import msgspec

from fastproxy.core.schemas import TokenUsage
from fastproxy.translate.anthropic_wire import Usage as AnthropicUsage
from fastproxy.translate.messages_to_chat import token_usage

_EVENT_SPLIT = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class _Message(msgspec.Struct, gc=False):
    usage: AnthropicUsage | None = None


class _Event(msgspec.Struct, gc=False):
    type: str = ""
    message: _Message | None = None
    usage: AnthropicUsage | None = None


decode_event = msgspec.json.Decoder(_Event).decode
_decode_body = msgspec.json.Decoder(_Message).decode


def usage_of_body(data: bytes) -> TokenUsage | None:
    """The usage of a non-streamed Anthropic message (None when the body has none or is not JSON)."""
    try:
        usage = _decode_body(data).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return token_usage(usage) if usage is not None else None


def payload(event: bytes) -> bytes:
    return b"\n".join(line[5:].removeprefix(b" ") for line in event.splitlines() if line.startswith(b"data:"))


class MessagesWatcher:
    """Feed it the upstream's chunks; each is returned unchanged. Same surface as proxy/sse.py's SSEWatcher."""

    __slots__ = ("_pending", "_usage", "ended", "events", "failure", "usage")

    def __init__(self) -> None:
        self._pending = b""
        self._usage = AnthropicUsage()
        self.usage: TokenUsage | None = None
        self.events = 0
        self.ended = False
        # The upstream's own `error` event went to the client as it came: the proxy adds none after it.
        self.failure: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        parts = _EVENT_SPLIT.split(data)
        self._pending = parts.pop()
        for event in parts:
            if event:
                self._event(event)
        return chunk

    def finish(self) -> bytes:
        rest, self._pending = self._pending, b""
        if rest.strip():
            self._event(rest)
        return b""

    def _event(self, event: bytes) -> None:
        self.events += 1
        if b'"message_' not in event and b"error" not in event:
            return  # content deltas, pings: nothing to read
        try:
            seen = decode_event(payload(event))
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # not ours to judge: it goes to the client as it came
        kind = seen.type
        usage = seen.message.usage if kind == "message_start" and seen.message is not None else seen.usage
        if kind == "message_stop":
            self.ended = True
        elif kind == "error":
            self.failure = "upstream_stream_error"
        elif usage is not None and kind in ("message_start", "message_delta"):
            mine = self._usage
            for name in AnthropicUsage.__struct_fields__:
                value = getattr(usage, name)
                if value is not None:
                    setattr(mine, name, value)
            self.usage = token_usage(mine)
