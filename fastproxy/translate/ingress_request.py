"""An Anthropic Messages request (`POST /v1/messages`) as an OpenAI chat completions request.

Decoded once per client request, into Structs that hold only what the translation reads; tool inputs,
tool schemas and other JSON the translation carries over are `msgspec.Raw` (copied, never re-encoded).

What maps where (README, "Anthropic clients"):
    system (string or text blocks)      -> one system message (blocks joined by a blank line)
    user text / image blocks            -> user message parts (base64 -> data: URL, url -> image_url)
    user tool_result blocks             -> `tool` messages, first, in order (images in them follow in a user message)
    assistant text / tool_use blocks    -> assistant content / tool_calls (input JSON kept as the arguments)
    assistant thinking blocks           -> dropped (as Anthropic itself drops earlier turns' thinking)
    tools, tool_choice                  -> function tools; auto, any -> required, none, tool -> named function;
                                           disable_parallel_tool_use -> parallel_tool_calls: false
    max_tokens, stop_sequences, temperature, top_p, metadata.user_id, stream
                                        -> max_tokens, stop, temperature, top_p, user,
                                           stream + stream_options.include_usage
    thinking {type: enabled, budget_tokens} -> reasoning_effort (low < 4096 <= medium < 16384 <= high)

Anything else that would change the answer (top_k, server tools, documents, a final assistant message to
continue, unknown fields) is refused with UnsupportedField, naming the field: never silently dropped.
"""

from __future__ import annotations

from typing import Any

import msgspec

from fastproxy.translate.anthropic_wire import ToolChoiceParam
from fastproxy.translate.openai_wire import FunctionOut, ToolCallOut

_ABSENT = msgspec.Raw(b"")
_EMPTY_OBJECT = msgspec.Raw(b"{}")


class UnsupportedField(ValueError):
    """The request can't be served by an OpenAI-compatible provider as asked; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# --- the Anthropic request, as far as it is read -------------------------------------------------------


class _Source(msgspec.Struct, gc=False):
    type: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class Block(msgspec.Struct):
    type: str
    text: str | None = None
    source: _Source | None = None
    # tool_use
    id: str | None = None
    name: str | None = None
    input: msgspec.Raw = _ABSENT
    # tool_result
    tool_use_id: str | None = None
    content: str | list[Block] | None = None
    is_error: bool | None = None


class Message(msgspec.Struct):
    role: str
    content: str | list[Block]


class _Tool(msgspec.Struct, gc=False):
    name: str
    type: str | None = None
    description: str | None = None
    input_schema: msgspec.Raw = _ABSENT


class _Thinking(msgspec.Struct, gc=False):
    type: str
    budget_tokens: int | None = None


class _Metadata(msgspec.Struct, gc=False):
    user_id: str | None = None


class MessagesRequest(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    messages: list[Message]
    # Required by the Messages API, except by count_tokens: checked by to_chat.
    max_tokens: int | None = None
    system: str | list[Block] | None = None
    stream: bool | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[_Tool] | None = None
    tool_choice: ToolChoiceParam | None = None
    thinking: _Thinking | None = None
    metadata: _Metadata | None = None
    # Accepted and left out: it does not change the answer.
    service_tier: msgspec.Raw = _ABSENT
    # Known, but an OpenAI-compatible provider can't honour them: refused by name.
    top_k: msgspec.Raw = _ABSENT
    container: msgspec.Raw = _ABSENT
    mcp_servers: msgspec.Raw = _ABSENT
    context_management: msgspec.Raw = _ABSENT
    output_format: msgspec.Raw = _ABSENT


_REFUSED = ("top_k", "container", "mcp_servers", "context_management", "output_format")


# --- the OpenAI request ---------------------------------------------------------------------------------


class _ImageURL(msgspec.Struct, gc=False):
    url: str


class _Part(msgspec.Struct, omit_defaults=True, gc=False):
    type: str
    text: str | None = None
    image_url: _ImageURL | None = None


class _ChatMessage(msgspec.Struct, omit_defaults=True):
    role: str
    # UNSET: left out; None: `null` (an assistant turn with only tool calls).
    content: str | list[_Part] | msgspec.UnsetType | None = msgspec.UNSET
    tool_calls: list[ToolCallOut] | None = None
    tool_call_id: str | None = None


class _FunctionDef(msgspec.Struct, omit_defaults=True, gc=False):
    name: str
    description: str | None = None
    parameters: msgspec.Raw = _EMPTY_OBJECT


class _ChatTool(msgspec.Struct, gc=False):
    function: _FunctionDef
    type: str = "function"


class _StreamOptions(msgspec.Struct, gc=False):
    include_usage: bool = True


class ChatRequest(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list[_ChatMessage]
    max_tokens: int | None = None
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    stop: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[_ChatTool] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    user: str | None = None


_decode = msgspec.json.Decoder(MessagesRequest).decode
_encode = msgspec.json.Encoder().encode


def decode_request(body: bytes) -> MessagesRequest:
    """The Anthropic request; raises UnsupportedField (naming the field) for what can't be decoded or served."""
    try:
        req = _decode(body)
    except msgspec.ValidationError as exc:
        reason, _, where = str(exc).partition(" - at `$")
        path = where.rstrip("`").lstrip(".")
        if reason.startswith("Object contains unknown field"):
            field = reason.partition("`")[2].rstrip("`")
            param = f"{path}.{field}" if path else field
            raise UnsupportedField(
                f"'{param}' is not supported when this model is served by an OpenAI-compatible provider.", param
            ) from exc
        raise UnsupportedField(f"Invalid request body: {reason} at '{path or '$'}'.", path or "$") from exc
    except msgspec.DecodeError as exc:
        raise UnsupportedField("The request body is not valid JSON.", "$") from exc
    for name in _REFUSED:
        if getattr(req, name):
            raise UnsupportedField(
                f"'{name}' is not supported when this model is served by an OpenAI-compatible provider.", name
            )
    return req


def to_chat(req: MessagesRequest) -> ChatRequest:
    """The OpenAI chat request for an Anthropic one; raises UnsupportedField naming what can't be translated."""
    if req.max_tokens is None:
        raise UnsupportedField("max_tokens: Field required.", "max_tokens")
    messages: list[_ChatMessage] = []
    if req.system:
        system = req.system if isinstance(req.system, str) else _system_text(req.system)
        messages.append(_ChatMessage(role="system", content=system))
    last = len(req.messages) - 1
    for i, message in enumerate(req.messages):
        where = f"messages[{i}]"
        if message.role == "user":
            _user(message.content, where, messages)
        elif message.role == "assistant":
            if i == last:
                raise UnsupportedField(
                    f"'{where}': a final assistant message (a prefill to continue) is not supported when this model "
                    "is served by an OpenAI-compatible provider.",
                    where,
                )
            messages.append(_assistant(message.content, where))
        else:
            raise UnsupportedField(f"'{where}.role' must be 'user' or 'assistant'.", f"{where}.role")
    chat = ChatRequest(
        model=req.model,
        messages=messages,
        max_tokens=req.max_tokens,
        stop=req.stop_sequences or None,
        temperature=req.temperature,
        top_p=req.top_p,
        user=req.metadata.user_id if req.metadata else None,
    )
    if req.stream:
        chat.stream = True
        chat.stream_options = _StreamOptions()
    if req.tools:
        chat.tools = [_tool(t, i) for i, t in enumerate(req.tools)]
    if req.tool_choice is not None:
        _tool_choice(req.tool_choice, chat)
    if req.thinking is not None and req.thinking.type == "enabled":
        budget = req.thinking.budget_tokens or 0
        chat.reasoning_effort = "low" if budget < 4096 else "medium" if budget < 16384 else "high"
    return chat


def encode_chat(chat: ChatRequest) -> bytes:
    return _encode(chat)


def _system_text(blocks: list[Block]) -> str:
    texts = []
    for j, block in enumerate(blocks):
        if block.type != "text" or block.text is None:
            raise UnsupportedField(f"'system[{j}]' must be a text block.", f"system[{j}]")
        texts.append(block.text)
    return "\n\n".join(texts)


def _image(block: Block, where: str) -> _Part:
    source = block.source
    if source is not None and source.type == "base64" and source.data is not None:
        return _Part(type="image_url", image_url=_ImageURL(f"data:{source.media_type};base64,{source.data}"))
    if source is not None and source.type == "url" and source.url is not None:
        return _Part(type="image_url", image_url=_ImageURL(source.url))
    raise UnsupportedField(
        f"'{where}.source' must be a base64 or url image source for an OpenAI-compatible provider.", f"{where}.source"
    )


def _user(content: str | list[Block], where: str, out: list[_ChatMessage]) -> None:
    if isinstance(content, str):
        out.append(_ChatMessage(role="user", content=content))
        return
    parts: list[_Part] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.type
        if kind == "text":
            parts.append(_Part(type="text", text=block.text or ""))
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_result":
            # OpenAI wants tool answers right after the assistant's calls: they go first, in order.
            text, images = _tool_result(block, at)
            out.append(_ChatMessage(role="tool", content=text, tool_call_id=block.tool_use_id or ""))
            parts.extend(images)
        else:
            raise _unsupported_block(kind, at)
    if len(parts) == 1 and parts[0].type == "text":
        out.append(_ChatMessage(role="user", content=parts[0].text))
    elif parts:
        out.append(_ChatMessage(role="user", content=parts))


def _tool_result(block: Block, where: str) -> tuple[str, list[_Part]]:
    content = block.content
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[_Part] = []
    for k, inner in enumerate(content):
        if inner.type == "text":
            texts.append(inner.text or "")
        elif inner.type == "image":
            images.append(_image(inner, f"{where}.content[{k}]"))
        else:
            raise _unsupported_block(inner.type, f"{where}.content[{k}]")
    return "\n".join(texts), images


def _assistant(content: str | list[Block], where: str) -> _ChatMessage:
    if isinstance(content, str):
        return _ChatMessage(role="assistant", content=content)
    texts: list[str] = []
    calls: list[ToolCallOut] = []
    for j, block in enumerate(content):
        kind = block.type
        if kind == "text":
            texts.append(block.text or "")
        elif kind == "tool_use":
            arguments = bytes(block.input).decode() if block.input else "{}"
            function = FunctionOut(name=block.name or "", arguments=arguments)
            calls.append(ToolCallOut(id=block.id or "", function=function))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # earlier turns' reasoning: Anthropic itself leaves it out of the context
        else:
            raise _unsupported_block(kind, f"{where}.content[{j}]")
    if calls:
        return _ChatMessage(role="assistant", content="".join(texts) or None, tool_calls=calls)
    return _ChatMessage(role="assistant", content="".join(texts))


def _tool(tool: _Tool, i: int) -> _ChatTool:
    if tool.type not in (None, "custom"):
        raise UnsupportedField(
            f"'tools[{i}].type': server tool '{tool.type}' is not supported when this model is served by an "
            "OpenAI-compatible provider.",
            f"tools[{i}].type",
        )
    schema = tool.input_schema or _EMPTY_OBJECT
    return _ChatTool(function=_FunctionDef(name=tool.name, description=tool.description, parameters=schema))


def _tool_choice(choice: ToolChoiceParam, chat: ChatRequest) -> None:
    kind = choice.type
    if kind == "auto":
        chat.tool_choice = "auto"
    elif kind == "any":
        chat.tool_choice = "required"
    elif kind == "none":
        chat.tool_choice = "none"
    elif kind == "tool" and choice.name:
        chat.tool_choice = {"type": "function", "function": {"name": choice.name}}
    else:
        raise UnsupportedField(
            f"'tool_choice.type' must be auto, any, none or tool (with a name), not '{kind}'.", "tool_choice.type"
        )
    if choice.disable_parallel_tool_use and chat.tools:
        chat.parallel_tool_calls = False


def _unsupported_block(kind: str, where: str) -> UnsupportedField:
    return UnsupportedField(
        f"'{where}.type': content blocks of type '{kind}' are not supported when this model is served by an "
        "OpenAI-compatible provider.",
        f"{where}.type",
    )
