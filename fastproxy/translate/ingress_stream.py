"""An OpenAI chat completion stream as Anthropic Messages stream events, translated as the chunks arrive.

    first chunk           -> message_start (usage: the upstream's if this chunk has it, else the proxy's
                             estimate of the input tokens: OpenAI-compatible servers report usage only at the
                             end, and a client must never read input_tokens = 0; the exact counts follow in
                             message_delta, whose usage the SDKs take over message_start's)
    delta.content         -> a text block: content_block_start, text_delta..., content_block_stop
    delta.reasoning(_content) -> a thinking block (thinking_delta)
    delta.tool_calls[i]   -> one tool_use block per call (a new `index` or `id` opens it), its argument
                             fragments as input_json_delta; the whole arguments must parse as a JSON object
    finish_reason         -> the open block stops; stop_reason kept for message_delta
    usage chunk           -> the usage of message_delta (input = prompt - cached, cache reads apart)
    [DONE]                -> message_delta, message_stop
    {"error": ...}        -> an Anthropic `error` event; nothing after it, no message_stop
    undecodable chunk, interleaved tool-call fragments, bad tool JSON -> MalformedUpstream (the proxy ends the
                             client's stream with an error event, or falls back before its commit point)

Only the fields read are decoded (msgspec Structs); output events are byte templates filled in place.
"""

from __future__ import annotations

import re

import msgspec

from fastproxy.core.schemas import TokenUsage, UsageView
from fastproxy.translate.ingress_response import (
    AnthropicError,
    CallView,
    MalformedUpstream,
    Usage,
    _ErrorDetail,
    encode,
    error_type,
    stop_reason,
    tool_input,
    usage_of,
)

_ABSENT = msgspec.Raw(b"")
_EVENT_SPLIT = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None
    tool_calls: list[CallView] | None = None


class _Choice(msgspec.Struct, gc=False):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class _ErrorView(msgspec.Struct, gc=False):
    message: str | None = None
    type: str | None = None


class _Chunk(msgspec.Struct, gc=False):
    id: str = ""
    model: str = ""
    choices: list[_Choice] | None = None
    usage: UsageView | None = None
    error: _ErrorView | str | None = None


class _StartMessage(msgspec.Struct, kw_only=True, gc=False):
    # Fields in the order Anthropic writes them.
    id: str
    type: str = "message"
    role: str = "assistant"
    model: str
    content: list[int] = msgspec.field(default_factory=list)
    stop_reason: None = None
    stop_sequence: None = None
    usage: Usage


class _MessageStart(msgspec.Struct, kw_only=True, gc=False):
    type: str = "message_start"
    message: _StartMessage


class _StopDelta(msgspec.Struct, gc=False):
    stop_reason: str
    stop_sequence: str | None


class _MessageDelta(msgspec.Struct, kw_only=True, gc=False):
    type: str = "message_delta"
    delta: _StopDelta
    usage: Usage


_decode_chunk = msgspec.json.Decoder(_Chunk).decode

_TEXT_START = (
    b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,'
    b'"content_block":{"type":"text","text":""}}\n\n'
)
_THINKING_START = (
    b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,'
    b'"content_block":{"type":"thinking","thinking":"","signature":""}}\n\n'
)
_TOOL_START = (
    b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,'
    b'"content_block":{"type":"tool_use","id":%b,"name":%b,"input":{}}}\n\n'
)
_TEXT_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"text_delta","text":%b}}\n\n'
)
_THINKING_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"thinking_delta","thinking":%b}}\n\n'
)
_JSON_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"input_json_delta","partial_json":%b}}\n\n'
)
_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'

_NONE, _TEXT, _THINKING, _TOOL = 0, 1, 2, 3


def error_event(status: int, message: str) -> bytes:
    """An Anthropic `error` stream event (the stream ends with it: no message_stop)."""
    body = encode(AnthropicError(error=_ErrorDetail(type=error_type(status), message=message)))
    return b"event: error\ndata: " + body + b"\n\n"


class _ToolCall:
    __slots__ = ("args", "block", "id")

    def __init__(self, ident: str, block: int) -> None:
        self.id = ident
        self.block = block
        self.args: list[str] = []


class ChatToMessagesStream:
    """Feed it the upstream's raw SSE chunks; it returns the Anthropic events to send (bytes, maybe empty).

    The same surface as proxy/sse.py's SSEWatcher: `usage` (the upstream's, once reported), `events`
    (upstream events seen), `ended` (message_stop was sent), `failure` (set once an error event was sent).
    """

    __slots__ = (
        "_block",
        "_calls",
        "_current_call",
        "_finish",
        "_had_tools",
        "_input_estimate",
        "_kind",
        "_matched",
        "_next",
        "_pending",
        "_started",
        "_stop_sequences",
        "_usage",
        "ended",
        "events",
        "failure",
        "usage",
    )

    def __init__(self, stop_sequences: list[str] | None, input_estimate: int) -> None:
        self._stop_sequences = stop_sequences
        self._input_estimate = max(1, input_estimate)
        self._pending = b""
        self._started = False
        self._block = -1
        self._kind = _NONE
        self._next = 0
        self._calls: dict[int, _ToolCall] = {}
        self._current_call: int | None = None
        self._finish: str | None = None
        self._matched: str | int | None = None
        self._had_tools = False
        self._usage: UsageView | None = None
        self.usage: TokenUsage | None = None
        self.events = 0
        self.ended = False
        # Set (the usage row's error) once this translator wrote the client's error event: nothing follows it.
        self.failure: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        if data.endswith(b"\n\n") and b"\r" not in data:
            parts = data.split(b"\n\n")
            self._pending = parts.pop()
        else:
            parts = _EVENT_SPLIT.split(data)
            self._pending = parts.pop()
        out = [self._event(part) for part in parts if part and not (self.ended or self.failure)]
        return b"".join(out)

    def finish(self) -> bytes:
        """The upstream ended: an event left without its blank line is still read."""
        rest, self._pending = self._pending, b""
        if not rest.strip() or self.ended or self.failure:
            return b""
        return self._event(rest)

    def _event(self, event: bytes) -> bytes:
        if event.startswith(b"data: ") and b"\n" not in event:
            payload = event[6:]
        else:
            payload = b"\n".join(
                line[5:].removeprefix(b" ") for line in event.splitlines() if line.startswith(b"data:")
            )
            if not payload:
                return b""  # a comment (keep-alive) or an `event:` line alone
        self.events += 1
        if payload == b"[DONE]":
            return self._done()
        try:
            chunk = _decode_chunk(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise MalformedUpstream(
                "The upstream provider sent a stream event that is not a chat completion chunk."
            ) from exc
        if chunk.error is not None:
            self.failure = "upstream_stream_error"
            err = chunk.error
            message = err if isinstance(err, str) else err.message or "The upstream provider reported an error."
            status = 429 if not isinstance(err, str) and err.type in ("requests", "tokens") else 500
            return error_event(status, message)
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out.append(self._message_start(chunk))
        if chunk.usage is not None:
            self._usage = chunk.usage
            self.usage = TokenUsage.from_view(chunk.usage)
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta is not None:
                reasoning = delta.reasoning_content or delta.reasoning
                if reasoning:
                    out.append(self._open(_THINKING) + _THINKING_DELTA % (self._block, encode(reasoning)))
                text = delta.content or delta.refusal
                if text:
                    if delta.refusal and not delta.content:
                        self._finish = "content_filter"
                    out.append(self._open(_TEXT) + _TEXT_DELTA % (self._block, encode(text)))
                if delta.tool_calls:
                    for call in delta.tool_calls:
                        out.append(self._tool_delta(call))
            if choice.finish_reason:
                if self._finish != "content_filter":
                    self._finish = choice.finish_reason
                self._matched = choice.stop_reason
                out.append(self._close())
        return b"".join(out)

    def _message_start(self, chunk: _Chunk) -> bytes:
        usage = usage_of(chunk.usage) if chunk.usage is not None else None
        if usage is None or not (usage.input_tokens or usage.cache_read_input_tokens):
            usage = Usage(input_tokens=self._input_estimate, output_tokens=0)
        start = _MessageStart(message=_StartMessage(id=chunk.id, model=chunk.model, usage=usage))
        return b"event: message_start\ndata: " + encode(start) + b"\n\n"

    def _open(self, kind: int) -> bytes:
        """Open a block of this kind unless one is open already (closing another kind first)."""
        if self._kind == kind:
            return b""
        closed = self._close()
        self._block = self._next
        self._next += 1
        self._kind = kind
        return closed + ((_TEXT_START if kind == _TEXT else _THINKING_START) % self._block)

    def _close(self) -> bytes:
        if self._kind == _NONE:
            return b""
        if self._kind == _TOOL and self._current_call is not None:
            tool_input("".join(self._calls[self._current_call].args))  # raises MalformedUpstream if not JSON
            self._current_call = None
        self._kind = _NONE
        return _BLOCK_STOP % self._block

    def _tool_delta(self, call: CallView) -> bytes:
        index = call.index
        if index is None:  # servers that leave `index` out: a new id is a new call, else the current one
            index = len(self._calls) if call.id is not None or self._current_call is None else self._current_call
        state = self._calls.get(index)
        out = b""
        if state is None or (call.id is not None and call.id != state.id):
            out = self._close()
            self._block = self._next
            self._next += 1
            self._kind = _TOOL
            self._had_tools = True
            fn = call.function
            ident = call.id or f"toolu_{index}"
            state = self._calls[index] = _ToolCall(ident, self._block)
            self._current_call = index
            out += _TOOL_START % (self._block, encode(ident), encode((fn.name if fn else None) or ""))
        elif index != self._current_call:
            raise MalformedUpstream("The upstream provider interleaved the argument fragments of two tool calls.")
        arguments = call.function.arguments if call.function else None
        if arguments:
            state.args.append(arguments)
            out += _JSON_DELTA % (state.block, encode(arguments))
        return out

    def _done(self) -> bytes:
        closed = self._close()
        reason, sequence = stop_reason(self._finish, self._had_tools, self._matched, self._stop_sequences)
        if self._usage is not None:
            usage = usage_of(self._usage)
        else:  # the upstream never said: the estimate stands, nothing is counted as output
            usage = Usage(input_tokens=self._input_estimate, output_tokens=0)
        delta = _MessageDelta(delta=_StopDelta(stop_reason=reason, stop_sequence=sequence), usage=usage)
        self.ended = True
        start = b"" if self._started else self._message_start(_Chunk())
        self._started = True
        return start + closed + b"event: message_delta\ndata: " + encode(delta) + b"\n\n" + _MESSAGE_STOP
