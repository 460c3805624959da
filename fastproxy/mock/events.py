"""Deterministic response bodies and SSE events of the mock provider (fixed ids and timestamps)."""

from __future__ import annotations

from typing import Any

import msgspec

CREATED = 1_700_000_000
WORDS = [b"The", b" quick", b" brown", b" fox", b" jumps", b" over", b" the", b" lazy", b" dog", b"."]
STREAM_ERROR = (
    b'data: {"error": {"message": "mock stream error", "type": "server_error", "param": null, "code": null}}\n\n'
)

MALFORMED_EVENT = b'data: {"id": "chatcmpl-mock", "choices": [{"delta":\n\n'


class Opts(msgspec.Struct):
    include_usage: bool | None = None


class Req(msgspec.Struct):
    # None when the body names no model: the server fills in the Azure deployment or "mock-model".
    model: str | None = None
    stream: bool = False
    stream_options: Opts | None = None
    # Raw fragments: only their size is used, to make up a plausible prompt token count.
    messages: msgspec.Raw = msgspec.Raw(b"")
    prompt: msgspec.Raw = msgspec.Raw(b"")
    input: msgspec.Raw = msgspec.Raw(b"")


decode = msgspec.json.Decoder(Req).decode
encode = msgspec.json.encode


def prompt_tokens(req: Req) -> int:
    raw = req.messages or req.prompt or req.input
    return max(1, len(raw) // 4) if raw else 1


def first_content(kind: str) -> int:
    """Index of the first content event in stream_events(kind, ...): responses open with response.created."""
    return 1 if kind == "responses" else 0


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def complete(kind: str, req: Req, chunks: int) -> dict[str, Any]:
    text = b"".join(WORDS[i % len(WORDS)] for i in range(chunks)).decode()
    usage = _usage(prompt_tokens(req), chunks)
    if kind == "chat":
        return {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": CREATED,
            "model": req.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
            "system_fingerprint": "fp_mock",
        }
    if kind == "completions":
        return {
            "id": "cmpl-mock",
            "object": "text_completion",
            "created": CREATED,
            "model": req.model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
            "usage": usage,
        }
    return _response_object(req, text, "completed", usage)


def _response_object(req: Req, text: str, status: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    resp_usage = None
    if usage is not None:
        resp_usage = {
            "input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["total_tokens"],
        }
    output = []
    if text:
        output = [
            {
                "type": "message",
                "id": "msg_mock",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
    return {
        "id": "resp_mock",
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "model": req.model,
        "output": output,
        "usage": resp_usage,
    }


def stream_events(kind: str, req: Req, chunks: int) -> list[bytes]:
    if kind == "responses":
        return _responses_events(req, chunks)
    is_chat = kind == "chat"
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    obj = "chat.completion.chunk" if is_chat else "text_completion"
    ident = "chatcmpl-mock" if is_chat else "cmpl-mock"
    events: list[bytes] = []

    def chunk(choices: list[dict[str, Any]], usage: Any = ...) -> bytes:
        doc: dict[str, Any] = {"id": ident, "object": obj, "created": CREATED, "model": req.model}
        if is_chat:
            doc["system_fingerprint"] = "fp_mock"
        doc["choices"] = choices
        if usage is not ...:
            doc["usage"] = usage
        elif include_usage:
            doc["usage"] = None
        return b"data: " + encode(doc) + b"\n\n"

    for i in range(chunks):
        word = WORDS[i % len(WORDS)].decode()
        if is_chat:
            delta: dict[str, Any] = {"content": word}
            if i == 0:
                delta = {"role": "assistant", "content": word}
            events.append(chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]))
        else:
            events.append(chunk([{"index": 0, "text": word, "logprobs": None, "finish_reason": None}]))
    if is_chat:
        events.append(chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]))
    else:
        events.append(chunk([{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]))
    if include_usage:
        events.append(chunk([], _usage(prompt_tokens(req), chunks)))
    events.append(b"data: [DONE]\n\n")
    return events


def _responses_events(req: Req, chunks: int) -> list[bytes]:
    seq = 0

    def event(name: str, doc: dict[str, Any]) -> bytes:
        nonlocal seq
        doc = {"type": name, "sequence_number": seq, **doc}
        seq += 1
        return b"event: " + name.encode() + b"\ndata: " + encode(doc) + b"\n\n"

    text = ""
    events = [event("response.created", {"response": _response_object(req, "", "in_progress", None)})]
    for i in range(chunks):
        word = WORDS[i % len(WORDS)].decode()
        text += word
        events.append(
            event(
                "response.output_text.delta",
                {"item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": word},
            )
        )
    final = _response_object(req, text, "completed", _usage(prompt_tokens(req), chunks))
    events.append(event("response.completed", {"response": final}))
    return events
