"""An Anthropic Messages stream, rewritten event by event as an OpenAI chat.completion.chunk stream.

    message_start            -> the role chunk (`{"role": "assistant", "content": ""}`); input usage kept
    content_block_start      -> tool_use: the call's first delta (index, id, type, name, empty arguments)
    content_block_delta      -> text_delta: `content`; input_json_delta: that call's `arguments` fragment;
                                thinking_delta: `reasoning_content`; signature_delta and others: nothing
    content_block_stop       -> nothing (a call whose input never came gets `{}` as its arguments)
    message_delta            -> nothing yet: stop_reason and the cumulative usage are kept
    message_stop             -> the chunk with finish_reason, the usage chunk if the client asked for it,
                                `data: [DONE]`
    ping, unknown types      -> nothing
    error                    -> an OpenAI error event; nothing after it, and no [DONE]
    an event that can't be read -> the same, with code upstream_malformed_event

The translator plays the SSE watcher's part on the request path (proxy/failover.py): `feed` takes the
upstream's bytes and returns the client's, `ended` says the stream ended properly, `usage` is known from
message_start on (so even a broken stream leaves its input tokens), `failure` names an error event it
already wrote. Each chunk is a prebuilt prefix and suffix around one small encoded delta.
"""

from __future__ import annotations

import msgspec

from fastproxy.core.schemas import TokenUsage
from fastproxy.translate import anthropic_wire as a
from fastproxy.translate import openai_wire as o
from fastproxy.translate.messages_to_chat import error_body, finish_reason, token_usage, usage_out

_encode = o.json_encode
DONE = b"data: [DONE]\n\n"
ERROR_EVENT = "upstream_error_event"
MALFORMED_EVENT = "upstream_malformed_event"


def _payload(event: bytes) -> bytes:
    """The data of one SSE event (its blank line may follow); b"" for a comment or an event with no data."""
    start = event.find(b"data:")
    if start == -1:
        return b""
    end = event.find(b"\n", start)
    if end == -1 or event.find(b"data:", end) == -1:  # one data line: Anthropic's way
        line = event[start + 5 : end] if end != -1 else event[start + 5 :]
        return line[1:] if line.startswith(b" ") else line
    lines = [ln[5:].removeprefix(b" ") for ln in event.splitlines() if ln.startswith(b"data:")]
    return b"\n".join(lines)


class MessagesToChatStream:
    __slots__ = (
        "_calls",
        "_created",
        "_include_usage",
        "_made_calls",
        "_pending",
        "_prefix",
        "_stop_reason",
        "_suffix",
        "_usage",
        "_with_args",
        "done",
        "events",
        "failure",
        "id",
        "model",
    )

    def __init__(self, include_usage: bool, created: int, model: str = "") -> None:
        self._include_usage = include_usage
        self._created = created
        self._pending = b""
        # Anthropic block index -> OpenAI tool call index, and the calls that received arguments.
        self._calls: dict[int, int] = {}
        self._with_args: set[int] = set()
        # Tool calls made so far (the next one's OpenAI index).
        self._made_calls = 0
        self._stop_reason: str | None = None
        self._usage: a.Usage | None = None
        self.id = ""
        self.model = model
        self.done = False
        self.events = 0
        # Set once the stream failed and the client's error event was written (the code of that error).
        self.failure: str | None = None
        self._suffix = (
            b',"logprobs":null,"finish_reason":null}]' + (b',"usage":null' if include_usage else b"") + b"}\n\n"
        )
        self._build_prefix()

    def _build_prefix(self) -> None:
        self._prefix = (
            b'data: {"id":'
            + _encode(self.id)
            + b',"object":"chat.completion.chunk","created":'
            + str(self._created).encode()
            + b',"model":'
            + _encode(self.model)
            + b',"choices":[{"index":0,"delta":'
        )

    @property
    def ended(self) -> bool:
        return self.done and self.failure is None

    @property
    def usage(self) -> TokenUsage | None:
        return token_usage(self._usage) if self._usage is not None else None

    def feed(self, chunk: bytes) -> bytes:
        if self.failure is not None or self.done:
            return b""  # nothing goes to the client after its error event or [DONE]
        if not self._pending and chunk.endswith(b"\n\n") and b"\r" not in chunk:
            if chunk.find(b"\n\n") == len(chunk) - 2:
                return self._event(chunk)  # the usual case: one whole event per chunk
            events = chunk.split(b"\n\n")  # whole events, several in one chunk
            events.pop()
        else:
            data = (self._pending + chunk).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            events = data.split(b"\n\n")
            self._pending = events.pop()
        out = [self._event(e) for e in events]
        return out[0] if len(out) == 1 else b"".join(out)

    def finish(self) -> bytes:
        """The upstream ended: an event left without its blank line is still read."""
        rest, self._pending = self._pending, b""
        if not rest.strip() or self.failure is not None or self.done:
            return b""
        return self._event(rest)

    def _event(self, event: bytes) -> bytes:
        if self.failure is not None or self.done:
            return b""
        payload = _payload(event)
        if not payload:
            return b""
        self.events += 1
        try:
            ev = a.decode_event(payload)
        except msgspec.MsgspecError:
            return self._fail(MALFORMED_EVENT, "The upstream provider sent a stream event that could not be read.")
        kind = ev.type
        if kind == "content_block_delta":
            delta = ev.delta
            if delta is None:
                return b""
            if delta.text is not None:
                return self._chunk(b'{"content":' + _encode(delta.text) + b"}")
            if delta.partial_json:
                index = self._calls.get(ev.index if ev.index is not None else -1)
                if index is None:
                    return self._fail(MALFORMED_EVENT, "The upstream provider sent tool input for an unknown block.")
                if index < 0:
                    return b""  # a server tool's input (server_tool_use): Anthropic's own business
                self._with_args.add(index)
                fragment = _encode(delta.partial_json)
                return self._chunk(b'{"tool_calls":[{"index":%d,"function":{"arguments":%s}}]}' % (index, fragment))
            if delta.thinking:
                return self._chunk(b'{"reasoning_content":' + _encode(delta.thinking) + b"}")
            return b""  # an empty input_json_delta, signature_delta, citations: nothing for the client
        if kind == "content_block_start":
            return self._block_start(ev)
        if kind == "content_block_stop":
            index = self._calls.get(ev.index if ev.index is not None else -1)
            if index is None or index < 0 or index in self._with_args:
                return b""
            return self._chunk(b'{"tool_calls":[{"index":%d,"function":{"arguments":"{}"}}]}' % index)
        if kind == "message_delta":
            if ev.delta is not None and ev.delta.stop_reason is not None:
                self._stop_reason = ev.delta.stop_reason
            if ev.usage is not None:
                self._merge_usage(ev.usage)
            return b""
        if kind == "message_start":
            message = ev.message
            if message is not None:
                self.id, self.model = message.id, message.model or self.model
                self._build_prefix()
                self._usage = message.usage or a.Usage()
            return self._chunk(b'{"role":"assistant","content":""}')
        if kind == "message_stop":
            return self._end()
        if kind == "error":
            info = ev.error or a.ErrorInfo()
            return self._fail(ERROR_EVENT, info.message or "The upstream provider reported an error.", info.type)
        return b""  # ping, and event types added after this was written

    def _chunk(self, delta: bytes) -> bytes:
        return self._prefix + delta + self._suffix

    def _block_start(self, ev: a.Event) -> bytes:
        block = ev.content_block
        if block is None:
            return b""
        if block.type == "tool_use":
            index = self._made_calls
            self._made_calls += 1
            self._calls[ev.index if ev.index is not None else -1] = index
            first = b'{"tool_calls":[{"index":%d,"id":%s,"type":"function","function":{"name":%s,"arguments":""}}]}' % (
                index,
                _encode(block.id or ""),
                _encode(block.name or ""),
            )
            return self._chunk(first)
        if block.type == "server_tool_use":
            self._calls[ev.index if ev.index is not None else -1] = -1
            return b""
        if block.type == "text" and block.text:
            return self._chunk(b'{"content":' + _encode(block.text) + b"}")
        if block.type == "thinking" and block.thinking:
            return self._chunk(b'{"reasoning_content":' + _encode(block.thinking) + b"}")
        return b""

    def _merge_usage(self, u: a.Usage) -> None:
        # message_delta's counts are cumulative; the fields it leaves out keep message_start's values.
        current = self._usage or a.Usage()
        self._usage = a.Usage(
            input_tokens=u.input_tokens if u.input_tokens is not None else current.input_tokens,
            output_tokens=u.output_tokens if u.output_tokens is not None else current.output_tokens,
            cache_creation_input_tokens=(
                u.cache_creation_input_tokens
                if u.cache_creation_input_tokens is not None
                else current.cache_creation_input_tokens
            ),
            cache_read_input_tokens=(
                u.cache_read_input_tokens if u.cache_read_input_tokens is not None else current.cache_read_input_tokens
            ),
        )

    def _end(self) -> bytes:
        self.done = True
        reason = finish_reason(self._stop_reason, self._made_calls > 0).encode()
        suffix_usage = b',"usage":null' if self._include_usage else b""
        out = self._prefix + b'{},"logprobs":null,"finish_reason":"' + reason + b'"}]' + suffix_usage + b"}\n\n"
        if self._include_usage:
            chunk = o.UsageChunk(
                id=self.id,
                object="chat.completion.chunk",
                created=self._created,
                model=self.model,
                choices=[],
                usage=usage_out(self.usage or TokenUsage()),
            )
            out += b"data: " + _encode(chunk) + b"\n\n"
        return out + DONE

    def _fail(self, code: str, message: str, kind: str = "") -> bytes:
        self.failure = code
        _, body = error_body(kind, message, 0, code=None if kind else code)
        return b"data: " + body + b"\n\n"
