"""Anthropic's answers, rewritten as OpenAI chat completions: the Message, the stream, the errors.

text blocks                  -> message.content (joined) / `content` deltas
tool_use blocks              -> tool_calls (ids kept; input -> the arguments string); in a stream, one
                                stable `index` per call, `id`, `type` and `name` on its first delta,
                                then its input_json_delta fragments as `arguments`
thinking blocks              -> `reasoning_content` (signatures are not carried: see the README)
stop_reason                  -> finish_reason: end_turn, stop_sequence, pause_turn -> stop; max_tokens ->
                                length; tool_use -> tool_calls; refusal -> content_filter. A turn that
                                made tool calls always ends in `tool_calls`.
usage                        -> prompt_tokens = input + cache read + cache creation (each token once),
                                prompt_tokens_details.cached_tokens = cache read, completion = output
errors (HTTP and `error`)    -> OpenAI's error body; overloaded_error (529) -> 503, rate_limit_error -> 429,
                                invalid_request_error -> 400 (a too long prompt: context_length_exceeded)
"""

from __future__ import annotations

import msgspec

from fastproxy.core.schemas import TokenUsage
from fastproxy.translate import anthropic_wire as a
from fastproxy.translate import openai_wire as o

FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Anthropic error type -> (HTTP status, OpenAI type, OpenAI code); the status is used when upstream's is odd.
ERRORS = {
    "invalid_request_error": (400, "invalid_request_error", None),
    "authentication_error": (401, "invalid_request_error", "invalid_api_key"),
    "billing_error": (402, "insufficient_quota", "insufficient_quota"),
    "permission_error": (403, "invalid_request_error", "permission_denied"),
    "not_found_error": (404, "invalid_request_error", "not_found"),
    "request_too_large": (413, "invalid_request_error", "request_too_large"),
    "rate_limit_error": (429, "requests", "rate_limit_exceeded"),
    "api_error": (500, "server_error", None),
    "timeout_error": (504, "server_error", "timeout"),
    "overloaded_error": (503, "server_error", "overloaded"),
}


class MalformedAnswer(ValueError):
    """Anthropic's answer could not be read; the attempt failed (it may fall back)."""


def finish_reason(stop_reason: str | None, made_calls: bool) -> str:
    reason = FINISH.get(stop_reason or "", "stop")
    return "tool_calls" if made_calls and reason == "stop" else reason


def token_usage(u: a.Usage | None) -> TokenUsage:
    if u is None:
        return TokenUsage()
    read = u.cache_read_input_tokens or 0
    prompt = (u.input_tokens or 0) + read + (u.cache_creation_input_tokens or 0)
    completion = u.output_tokens or 0
    return TokenUsage(prompt=prompt, completion=completion, total=prompt + completion, cached=read)


def usage_out(u: TokenUsage) -> o.UsageOut:
    return o.UsageOut(
        prompt_tokens=u.prompt,
        completion_tokens=u.completion,
        total_tokens=u.total,
        prompt_tokens_details=o.PromptDetails(cached_tokens=u.cached),
        completion_tokens_details=o.CompletionDetails(reasoning_tokens=u.reasoning),
    )


def message_to_chat(data: bytes, created: int) -> tuple[bytes, TokenUsage]:
    """A non-streamed Message as a chat.completion, and its usage. Raises MalformedAnswer."""
    try:
        message = a.decode_message(data)
    except msgspec.MsgspecError as exc:
        raise MalformedAnswer(f"the upstream's Message could not be read ({exc})") from exc
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[o.ToolCallOut] = []
    for block in message.content:
        kind = block.type
        if kind == "text" and block.text:
            texts.append(block.text)
        elif kind == "tool_use":
            arguments = bytes(block.input).decode() if block.input else "{}"
            calls.append(
                o.ToolCallOut(id=block.id or "", function=o.FunctionOut(name=block.name or "", arguments=arguments))
            )
        elif kind == "thinking" and block.thinking:
            thinking.append(block.thinking)
    usage = token_usage(message.usage)
    doc = o.ChatCompletion(
        id=message.id,
        object="chat.completion",
        created=created,
        model=message.model,
        choices=[
            o.Choice(
                index=0,
                message=o.MessageOut(
                    role="assistant",
                    content="".join(texts) if texts or not calls else None,
                    tool_calls=calls or None,
                    reasoning_content="".join(thinking) if thinking else None,
                ),
                logprobs=None,
                finish_reason=finish_reason(message.stop_reason, bool(calls)),
            )
        ],
        usage=usage_out(usage),
    )
    return o.json_encode(doc), usage


def openai_error(status: int, data: bytes) -> tuple[int, bytes]:
    """An Anthropic error answer (status and body) as OpenAI's status and error body."""
    kind, message = "", ""
    try:
        info = a.decode_error(data).error
        if info is not None:
            kind, message = info.type, info.message
    except msgspec.MsgspecError:
        message = data[:500].decode("utf-8", "replace")
    return error_body(kind, message, status)


def error_body(kind: str, message: str, status: int, code: str | None = None) -> tuple[int, bytes]:
    """OpenAI's status and error body for an Anthropic error type (status 0: a stream's error event)."""
    mapped = ERRORS.get(kind)
    if mapped is None:
        out_type = "invalid_request_error" if 400 <= status < 500 else "server_error"
        out_status = status or 502
    else:
        out_status, out_type, code = mapped[0], mapped[1], code or mapped[2]
        if status >= 400:
            out_status = status  # upstream's own status...
    if out_status == 529:
        out_status = 503  # ...except Anthropic's overloaded, which OpenAI clients know as 503
    if kind == "invalid_request_error" and "prompt is too long" in message:
        code = "context_length_exceeded"
    detail = {"message": message or f"upstream error {status}", "type": out_type, "param": None, "code": code}
    return out_status, o.json_encode({"error": detail})
