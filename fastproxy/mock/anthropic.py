"""The mock provider's Anthropic dialect: `POST /v1/messages` (streamed and not) and `/v1/messages/count_tokens`.

Deterministic answers, following the Messages API's documented shapes and event order:

    message_start (empty content, input usage with the cache fields, output_tokens 1)
    ping
    per content block: content_block_start, content_block_delta..., content_block_stop (a ping after the first)
    message_delta (stop_reason, stop_sequence, cumulative output usage)
    message_stop

What it answers depends on the request, as the real API's would:
- `thinking: {"type": "enabled"}`: a thinking block first (thinking_delta fragments, then one signature_delta).
- `tools` (and tool_choice not `none`) while the conversation does not end in tool results: for `auto`, a short
  text block and then two parallel tool_use blocks (tools[0] and tools[1], or tools[0] twice), each input JSON
  streamed as several input_json_delta fragments (the first one empty, as Anthropic sends it); `any` the two
  tool_use blocks without text; `{"type": "tool", "name"}` one call of that tool. stop_reason `tool_use`.
- a conversation ending in tool results: the text `Got N tool results.` (N counted in its last user turn).
- otherwise the mock's words, one per delta and per output token: cut at `max_tokens` (stop_reason
  `max_tokens`) or before the first of `stop_sequences` that occurs (stop_reason `stop_sequence`).

Checks the real API makes and a translator could get wrong: the `anthropic-version` header, `max_tokens`,
`messages`, and that each assistant tool_use is answered by a tool_result in the very next user turn.
Failure modes (fastproxy/mock/modes.py) apply as on the OpenAI paths; errors use Anthropic's body
(`{"type": "error", "error": {"type", "message"}}`), an `error_event_after=K` stream gets Anthropic's
`event: error` (overloaded_error), and `cache_read=N` / `cache_creation=N` report prompt-cache tokens.
"""

from __future__ import annotations

from typing import Any

import msgspec

from fastproxy.mock.events import WORDS

MESSAGE_ID = "msg_mock"
SIGNATURE = "EqMmockSignature0123456789"
THINKING = ["Let me", " think", " about", " this."]
TOOL_PREAMBLE = ["I'll", " use", " the", " tools."]
# Size of the input_json_delta fragments: small, so one JSON document spans several deltas.
FRAGMENT = 7
MID_STREAM_ERROR = (
    b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
)
MALFORMED_EVENT = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":\n\n'
PING = b'event: ping\ndata: {"type":"ping"}\n\n'

# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_encode = msgspec.json.encode


class BadRequest(ValueError):
    """The request is one the Messages API refuses (400 invalid_request_error); the message says why."""


class Thinking(msgspec.Struct):
    type: str = "disabled"
    budget_tokens: int | None = None


class ToolChoice(msgspec.Struct):
    type: str = "auto"
    name: str | None = None


class Tool(msgspec.Struct):
    name: str
    input_schema: dict[str, Any] = msgspec.field(default_factory=dict)


class MessagesReq(msgspec.Struct):
    model: str | None = None
    max_tokens: int | None = None
    stream: bool = False
    # Decoded loosely: the mock looks at roles and block types, and counts bytes for the input tokens.
    messages: list[dict[str, Any]] | None = None
    system: msgspec.Raw = msgspec.Raw(b"")
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    stop_sequences: list[str] | None = None


decode = msgspec.json.Decoder(MessagesReq).decode


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    default = "Overloaded" if status == 529 else f"mock error {status}"
    return {"type": "error", "error": {"type": kind, "message": message or default}}


def check(req: MessagesReq, headers: dict[str, str]) -> None:
    """Raise BadRequest as the Messages API would for what a translator could get wrong."""
    if not headers.get("anthropic-version"):
        raise BadRequest("anthropic-version: header is required")
    if req.max_tokens is None:
        raise BadRequest("max_tokens: Field required")
    if not req.messages:
        raise BadRequest("messages: Field required")
    for i, message in enumerate(req.messages):
        if message.get("role") not in ("user", "assistant"):
            raise BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        ids = [b.get("id") for b in _blocks(message) if b.get("type") == "tool_use"]
        if message["role"] != "assistant" or not ids:
            continue
        answered = (
            {b.get("tool_use_id") for b in _blocks(req.messages[i + 1]) if b.get("type") == "tool_result"}
            if i + 1 < len(req.messages)
            else set()
        )
        if i + 1 < len(req.messages) and not set(ids) <= answered:
            raise BadRequest(
                f"messages.{i + 1}: `tool_use` ids were found without `tool_result` blocks immediately after"
            )


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def input_tokens(body: bytes) -> int:
    return max(1, len(body) // 4)


def _tool_input(tool: Tool, call: int) -> dict[str, Any]:
    """A deterministic input that fits the tool's schema's top-level properties."""
    props = tool.input_schema.get("properties") or {}
    made: dict[str, Any] = {}
    for name, schema in props.items():
        kind = schema.get("type") if isinstance(schema, dict) else None
        if kind in ("integer", "number"):
            made[name] = call + 1
        elif kind == "boolean":
            made[name] = call % 2 == 0
        elif kind == "array":
            made[name] = [f"{name}-{call}"]
        elif kind == "object":
            made[name] = {}
        else:
            made[name] = f'{name}-{call} "quoted" é'
    return made


class _Plan(msgspec.Struct):
    """What the answer holds, in Anthropic's content-block terms, before it is rendered."""

    thinking: list[str]
    text: list[str]
    calls: list[tuple[str, str, str]]  # (id, name, input JSON)
    stop_reason: str
    stop_sequence: str | None


def _plan(req: MessagesReq, chunks: int) -> _Plan:
    messages = req.messages or []
    thinking = THINKING if req.thinking is not None and req.thinking.type == "enabled" else []
    last = _blocks(messages[-1]) if messages else []
    results = sum(1 for b in last if b.get("type") == "tool_result")
    choice = req.tool_choice.type if req.tool_choice else "auto"
    if req.tools and choice != "none" and not results:
        if choice == "tool":
            named = [t for t in req.tools if t.name == (req.tool_choice.name if req.tool_choice else None)]
            chosen = named[:1] or req.tools[:1]
        else:
            chosen = [req.tools[0], req.tools[1 % len(req.tools)]]
        calls = [(f"toolu_mock_{i}", t.name, _encode(_tool_input(t, i)).decode()) for i, t in enumerate(chosen)]
        text = TOOL_PREAMBLE if choice == "auto" else []
        return _Plan(thinking, text, calls, "tool_use", None)
    if results:
        words = [f"Got {results}", " tool", " results."]
    else:
        words = [WORDS[i % len(WORDS)].decode() for i in range(chunks)]
    stop_reason, stop_sequence = "end_turn", None
    found = _first_stop(words, req.stop_sequences or [])
    if found is not None:
        words, stop_sequence = found
        stop_reason = "stop_sequence"
    limit = req.max_tokens if req.max_tokens is not None else len(words)
    if len(words) > limit:
        words, stop_reason, stop_sequence = words[:limit], "max_tokens", None
    return _Plan(thinking, words, [], stop_reason, stop_sequence)


def _first_stop(words: list[str], stops: list[str]) -> tuple[list[str], str] | None:
    """The words before the earliest stop sequence in their text, and that sequence; None if none occurs."""
    text = "".join(words)
    hits = [(text.find(s), s) for s in stops if s and s in text]
    if not hits:
        return None
    at, stop = min(hits)
    kept: list[str] = []
    pos = 0
    for word in words:
        if pos + len(word) > at:
            if at > pos:
                kept.append(word[: at - pos])
            break
        kept.append(word)
        pos += len(word)
    return kept, stop


def _usage(plan: _Plan, prompt: int, cache_read: int, cache_creation: int) -> dict[str, Any]:
    fragments = sum(len(_fragments(c[2])) for c in plan.calls)
    return {
        "input_tokens": prompt,
        "cache_creation_input_tokens": cache_creation,
        "cache_read_input_tokens": cache_read,
        "output_tokens": len(plan.thinking) + len(plan.text) + fragments + 1,
    }


def _fragments(text: str) -> list[str]:
    return [text[i : i + FRAGMENT] for i in range(0, len(text), FRAGMENT)]


def complete(
    req: MessagesReq, prompt: int, chunks: int, cache_read: int = 0, cache_creation: int = 0
) -> dict[str, Any]:
    """The non-streamed Message."""
    plan = _plan(req, chunks)
    content: list[dict[str, Any]] = []
    if plan.thinking:
        content.append({"type": "thinking", "thinking": "".join(plan.thinking), "signature": SIGNATURE})
    if plan.text:
        content.append({"type": "text", "text": "".join(plan.text)})
    for ident, name, args in plan.calls:
        content.append({"type": "tool_use", "id": ident, "name": name, "input": msgspec.json.decode(args)})
    return {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": content,
        "stop_reason": plan.stop_reason,
        "stop_sequence": plan.stop_sequence,
        "usage": _usage(plan, prompt, cache_read, cache_creation),
    }


def _event(doc: dict[str, Any]) -> bytes:
    name: str = doc["type"]
    return b"event: " + name.encode() + b"\ndata: " + _encode(doc) + b"\n\n"


def stream_events(
    req: MessagesReq, prompt: int, chunks: int, cache_read: int = 0, cache_creation: int = 0
) -> tuple[list[bytes], list[int]]:
    """The stream's events, and the positions just after each content_block_delta (where a stream cut,
    stall or error of the failure modes goes)."""
    plan = _plan(req, chunks)
    usage = _usage(plan, prompt, cache_read, cache_creation)
    start_usage = {**usage, "output_tokens": 1}
    message: dict[str, Any] = {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    events = [_event({"type": "message_start", "message": message}), PING]
    after_delta: list[int] = []
    index = 0

    def block(start: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        nonlocal index
        events.append(_event({"type": "content_block_start", "index": index, "content_block": start}))
        for delta in deltas:
            events.append(_event({"type": "content_block_delta", "index": index, "delta": delta}))
            after_delta.append(len(events))
        events.append(_event({"type": "content_block_stop", "index": index}))
        if index == 0:
            events.append(PING)  # pings may come anywhere: one between blocks too
        index += 1

    if plan.thinking:
        deltas = [{"type": "thinking_delta", "thinking": t} for t in plan.thinking]
        block(
            {"type": "thinking", "thinking": "", "signature": ""},
            [*deltas, {"type": "signature_delta", "signature": SIGNATURE}],
        )
    if plan.text:
        block({"type": "text", "text": ""}, [{"type": "text_delta", "text": t} for t in plan.text])
    for ident, name, args in plan.calls:
        parts = ["", *_fragments(args)]
        block(
            {"type": "tool_use", "id": ident, "name": name, "input": {}},
            [{"type": "input_json_delta", "partial_json": p} for p in parts],
        )
    delta = {"stop_reason": plan.stop_reason, "stop_sequence": plan.stop_sequence}
    events.append(_event({"type": "message_delta", "delta": delta, "usage": {"output_tokens": usage["output_tokens"]}}))
    events.append(_event({"type": "message_stop"}))
    return events, after_delta


def count_tokens(body: bytes) -> dict[str, Any]:
    return {"input_tokens": input_tokens(body)}
