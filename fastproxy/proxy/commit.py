"""The stream commit point: a stream's bytes are held until its first content (or tool-call) delta.

Before it, a failure (a cut, an error event, a stall past the first-token timeout) can still fall back
invisibly: the client has seen nothing. After it the proxy never switches, and a failure ends the
client's stream with an explicit error event instead of a clean end.

Only the events before the commit are decoded, through a narrow view (no message text is kept); after
it, bytes pass through untouched.
"""

from __future__ import annotations

import enum
import re

import msgspec

from fastproxy.core.schemas import ErrorBody, ErrorDetail, json_encoder
from fastproxy.translate.messages_watch import decode_event, payload

_EVENT = re.compile(rb"(.*?)(?:\r\n\r\n|\n\n|\r\r)", re.DOTALL)
# Responses API events that come before any output.
_PREAMBLE_TYPES = frozenset(
    {"response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"}
)
_ERROR_TYPES = frozenset({"error", "response.failed"})
# A stream that sends this many events or bytes without content is committed anyway: holding is for
# the first delta, not a buffer a strange upstream can fill (real ones send one or two events first:
# the role, Azure's prompt filter results).
MAX_HELD_EVENTS = 16
MAX_HELD_BYTES = 64 * 1024


class Verdict(enum.Enum):
    WAIT = 0
    COMMIT = 1
    ERROR = 2


# msgspec.Raw can't be part of a union: an absent member is the empty Raw.
_ABSENT = msgspec.Raw(b"")


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    tool_calls: msgspec.Raw = _ABSENT
    function_call: msgspec.Raw = _ABSENT
    refusal: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class _Choice(msgspec.Struct, gc=False):
    delta: _Delta | None = None
    text: str | None = None
    finish_reason: str | None = None


class _Event(msgspec.Struct, gc=False):
    choices: list[_Choice] | None = None
    error: msgspec.Raw = _ABSENT
    type: str | None = None
    usage: msgspec.Raw = _ABSENT


_decode_event = msgspec.json.Decoder(_Event).decode


def _present(raw: msgspec.Raw) -> bool:
    return bool(raw) and bytes(raw) != b"null"


def _verdict(payload: bytes) -> Verdict:
    if payload.strip() == b"[DONE]":
        return Verdict.COMMIT  # a whole (if empty) answer
    try:
        event = _decode_event(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return Verdict.COMMIT  # not ours to judge: forward what upstream said
    if _present(event.error) or (event.type is not None and event.type in _ERROR_TYPES):
        return Verdict.ERROR
    if event.type is not None:
        return Verdict.WAIT if event.type in _PREAMBLE_TYPES else Verdict.COMMIT
    for choice in event.choices or ():
        if choice.finish_reason or choice.text:
            return Verdict.COMMIT
        delta = choice.delta
        if delta is not None and (
            delta.content
            or delta.tool_calls
            or delta.function_call
            or delta.refusal
            or delta.reasoning_content
            or delta.reasoning
        ):
            return Verdict.COMMIT
    if _present(event.usage) and not event.choices:
        return Verdict.COMMIT  # the usage chunk: the answer is over
    return Verdict.WAIT


class CommitPoint:
    """Feed it the upstream's raw chunks until it says COMMIT (or ERROR)."""

    __slots__ = ("_events", "_pending", "_size")

    def __init__(self) -> None:
        self._pending = b""
        self._events = 0
        self._size = 0

    def feed(self, chunk: bytes) -> Verdict:
        self._size += len(chunk)
        data = self._pending + chunk if self._pending else chunk
        pos = 0
        for m in _EVENT.finditer(data):
            pos = m.end()
            self._events += 1
            payload = b"\n".join(
                line[5:].removeprefix(b" ") for line in m.group(1).splitlines() if line.startswith(b"data:")
            )
            if not payload:
                continue  # a comment or an `event:` line alone
            verdict = _verdict(payload)
            if verdict is not Verdict.WAIT:
                self._pending = b""
                return verdict
        self._pending = data[pos:]
        if self._events >= MAX_HELD_EVENTS or self._size >= MAX_HELD_BYTES:
            return Verdict.COMMIT
        return Verdict.WAIT


def error_event(message: str, code: str) -> bytes:
    """The OpenAI-format error event that ends a stream which failed after its commit (no [DONE] after it)."""
    detail = ErrorDetail(message=message, type="server_error", param=None, code=code)
    return b"data: " + json_encoder.encode(ErrorBody(error=detail)) + b"\n\n"


_WAITING = frozenset({"message_start", "ping", "content_block_start"})
_EVENT_SPLIT = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class MessagesCommitPoint:
    """The commit point of an Anthropic Messages stream (an `anthropic` provider serving /v1/messages): its
    first content_block_delta (or anything past the preamble); an `error` event before it can fall back."""

    __slots__ = ("_events", "_pending")

    def __init__(self) -> None:
        self._pending = b""
        self._events = 0

    def feed(self, chunk: bytes) -> Verdict:
        data = self._pending + chunk if self._pending else chunk
        parts = _EVENT_SPLIT.split(data)
        self._pending = parts.pop()
        for event in parts:
            data = payload(event)
            if not data:
                continue
            self._events += 1
            try:
                kind = decode_event(data).type
            except (msgspec.DecodeError, msgspec.ValidationError):
                return Verdict.COMMIT  # not ours to judge: forward what upstream said
            if kind == "error":
                return Verdict.ERROR
            if kind not in _WAITING:
                return Verdict.COMMIT
        return Verdict.COMMIT if self._events >= MAX_HELD_EVENTS else Verdict.WAIT
