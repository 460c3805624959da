"""An OpenAI chat completion (non-streamed) as an Anthropic message, and what both directions of the
stream share: stop reasons, usage, error bodies.

    finish_reason stop -> end_turn (stop_sequence when the upstream says which one matched: vLLM's
                          `stop_reason`), length -> max_tokens, tool_calls -> tool_use, content_filter -> refusal;
                          an answer that carries tool calls is always tool_use (some servers say "stop")
    usage              -> input_tokens = prompt_tokens - cached_tokens, cache_read_input_tokens = cached_tokens,
                          output_tokens = completion_tokens: each token counted once
"""

from __future__ import annotations

import msgspec

from fastproxy.core.errors import UpstreamError
from fastproxy.core.schemas import UsageView

_ABSENT = msgspec.Raw(b"")
_EMPTY_INPUT = msgspec.Raw(b"{}")


class MalformedUpstream(UpstreamError):
    """The upstream's answer can't be read as an OpenAI chat completion, or a tool call's arguments as JSON
    (502 upstream_malformed: before a stream's commit the next target is tried, after it the stream ends with
    an error event)."""

    code = "upstream_malformed"


# --- reading the OpenAI answer --------------------------------------------------------------------------


class FunctionView(msgspec.Struct, gc=False):
    """A tool call's function, whole (a message) or a fragment (a stream delta): every member optional."""

    name: str | None = None
    arguments: str | None = None


class CallView(msgspec.Struct, gc=False):
    index: int | None = None
    id: str | None = None
    function: FunctionView | None = None


class _Message(msgspec.Struct, gc=False):
    content: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[CallView] | None = None


class _Choice(msgspec.Struct, gc=False):
    message: _Message | None = None
    finish_reason: str | None = None
    # vLLM: the stop string that ended the answer (an int is an EOS token id).
    stop_reason: str | int | None = None


class _Completion(msgspec.Struct, gc=False):
    id: str = ""
    model: str = ""
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: UsageView | None = None


# --- writing the Anthropic answer -----------------------------------------------------------------------


class Usage(msgspec.Struct, gc=False):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class TextBlock(msgspec.Struct, tag="text", tag_field="type", gc=False):
    text: str


class ThinkingBlock(msgspec.Struct, tag="thinking", tag_field="type", gc=False):
    thinking: str
    signature: str = ""


class ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type", gc=False):
    id: str
    name: str
    input: msgspec.Raw


class AnthropicMessage(msgspec.Struct, kw_only=True):
    # Fields in the order Anthropic writes them.
    id: str
    type: str = "message"
    role: str = "assistant"
    model: str
    content: list[TextBlock | ThinkingBlock | ToolUseBlock]
    stop_reason: str
    stop_sequence: str | None
    usage: Usage


class _ErrorDetail(msgspec.Struct, gc=False):
    type: str
    message: str


class AnthropicError(msgspec.Struct, kw_only=True, gc=False):
    type: str = "error"
    error: _ErrorDetail


class _OpenAIErrorDetail(msgspec.Struct, gc=False):
    message: str | None = None


class _OpenAIError(msgspec.Struct, gc=False):
    error: _OpenAIErrorDetail | str | None = None


_decode_completion = msgspec.json.Decoder(_Completion).decode
_decode_error = msgspec.json.Decoder(_OpenAIError).decode
_decode_raw = msgspec.json.Decoder(msgspec.Raw).decode
encode = msgspec.json.Encoder().encode

_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(
    finish: str | None, had_tools: bool, matched: str | int | None, stop_sequences: list[str] | None
) -> tuple[str, str | None]:
    """Anthropic's (stop_reason, stop_sequence) for an OpenAI finish_reason."""
    if finish == "length":
        return "max_tokens", None
    if had_tools:
        return "tool_use", None
    if finish == "stop" and isinstance(matched, str) and stop_sequences and matched in stop_sequences:
        return "stop_sequence", matched
    return _STOP.get(finish or "stop", "end_turn"), None


def usage_of(view: UsageView | None) -> Usage:
    """Anthropic usage for OpenAI's: cached prompt tokens are counted once, as cache reads."""
    if view is None:
        return Usage(input_tokens=0, output_tokens=0)
    prompt = view.prompt_tokens or 0
    details = view.prompt_tokens_details
    cached = (details.cached_tokens or 0) if details is not None else 0
    return Usage(
        input_tokens=max(0, prompt - cached), output_tokens=view.completion_tokens or 0, cache_read_input_tokens=cached
    )


def tool_input(arguments: str | None) -> msgspec.Raw:
    """A tool call's arguments as the tool_use block's `input` (the JSON text kept as it came); raises
    MalformedUpstream when it is not a JSON object."""
    if not arguments or not arguments.strip():
        return _EMPTY_INPUT
    try:
        raw = _decode_raw(arguments)
    except msgspec.DecodeError as exc:
        raise MalformedUpstream("The upstream provider sent a tool call whose arguments are not valid JSON.") from exc
    if not bytes(raw).lstrip().startswith(b"{"):
        raise MalformedUpstream("The upstream provider sent a tool call whose arguments are not a JSON object.")
    return raw


def to_message(data: bytes, stop_sequences: list[str] | None) -> tuple[bytes, UsageView | None]:
    """The Anthropic message for an OpenAI chat completion body, and the upstream's usage; raises MalformedUpstream."""
    try:
        completion = _decode_completion(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedUpstream("The upstream provider's answer is not a chat completion.") from exc
    if not completion.choices or completion.choices[0].message is None:
        raise MalformedUpstream("The upstream provider's answer has no message.")
    choice = completion.choices[0]
    message = choice.message
    assert message is not None
    content: list[TextBlock | ThinkingBlock | ToolUseBlock] = []
    reasoning = message.reasoning_content or message.reasoning
    if reasoning:
        content.append(ThinkingBlock(thinking=reasoning))
    text = message.content or message.refusal
    if text:
        content.append(TextBlock(text=text))
    for call in message.tool_calls or ():
        fn = call.function or FunctionView()
        content.append(ToolUseBlock(id=call.id or "", name=fn.name or "", input=tool_input(fn.arguments)))
    finish = "content_filter" if message.refusal and not message.content else choice.finish_reason
    reason, sequence = stop_reason(finish, bool(message.tool_calls), choice.stop_reason, stop_sequences)
    body = AnthropicMessage(
        id=completion.id,
        model=completion.model,
        content=content,
        stop_reason=reason,
        stop_sequence=sequence,
        usage=usage_of(completion.usage),
    )
    return encode(body), completion.usage


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    if status in (503, 529):
        return "overloaded_error"
    if status >= 500:
        return "api_error"
    return _ERROR_TYPES.get(status, "invalid_request_error")


_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}


def error_body(status: int, message: str) -> bytes:
    return encode(AnthropicError(error=_ErrorDetail(type=error_type(status), message=message)))


def error_from_openai(status: int, data: bytes) -> bytes:
    """An upstream's OpenAI-format error body (any body, really) in Anthropic's format, same meaning."""
    message = None
    try:
        err = _decode_error(data).error
        message = err if isinstance(err, str) else err.message if err is not None else None
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    return error_body(status, message or f"The upstream provider answered with status {status}.")
