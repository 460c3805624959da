"""Anthropic's Messages API on the wire: the request fields fastproxy writes, and narrow views of what
Anthropic answers (the Message, each stream event, the error body). Codecs built once.

Views decode only what a translation uses; anything else in Anthropic's documents (citations, server
tool blocks, container details, new fields) is skipped by msgspec without building objects. Every view
field has a default, so a new or unknown event type decodes too and is simply ignored by the reader.

Anthropic stream order (https://docs.anthropic.com/en/api/messages-streaming):
    message_start -> (content_block_start, content_block_delta*, content_block_stop)* -> message_delta+
    -> message_stop; `ping` anywhere; `error` may arrive mid-stream.
"""

from __future__ import annotations

import msgspec

# msgspec.Raw can't be part of a union: an absent member is the empty Raw.
ABSENT = msgspec.Raw(b"")

# ----- the request (encoded by chat_to_messages; omit_defaults keeps unset fields out of the body) -----


class TextBlock(msgspec.Struct, tag_field="type", tag="text", omit_defaults=True, gc=False):
    text: str


class Base64Source(msgspec.Struct, tag_field="type", tag="base64", gc=False):
    media_type: str
    data: str


class UrlSource(msgspec.Struct, tag_field="type", tag="url", gc=False):
    url: str


class ImageBlock(msgspec.Struct, tag_field="type", tag="image", gc=False):
    source: Base64Source | UrlSource


class ToolUseBlock(msgspec.Struct, tag_field="type", tag="tool_use", gc=False):
    id: str
    name: str
    # The tool's input object, as the client's JSON text (the arguments string), spliced in unchanged.
    input: msgspec.Raw


class ToolResultBlock(msgspec.Struct, tag_field="type", tag="tool_result", omit_defaults=True, gc=False):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock] = ""


ContentBlock = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock


class MessageParam(msgspec.Struct, gc=False):
    role: str
    content: str | list[ContentBlock]


class ToolParam(msgspec.Struct, omit_defaults=True, gc=False):
    name: str
    input_schema: msgspec.Raw
    description: str | None = None


class ToolChoiceParam(msgspec.Struct, omit_defaults=True, gc=False):
    type: str
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingParam(msgspec.Struct, gc=False):
    type: str
    budget_tokens: int


class MetadataParam(msgspec.Struct, gc=False):
    user_id: str


class MessagesRequest(msgspec.Struct, omit_defaults=True, gc=False):
    model: str
    max_tokens: int
    messages: list[MessageParam]
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    thinking: ThinkingParam | None = None
    metadata: MetadataParam | None = None


# ----- what Anthropic answers (narrow views) -----


class Usage(msgspec.Struct, gc=False):
    """Anthropic's usage: `input_tokens` excludes the cached ones, which come in their own two fields.
    In `message_delta` the counts are cumulative; fields it leaves out are None."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class Block(msgspec.Struct, gc=False):
    """A content block of a Message, or the `content_block` of content_block_start."""

    type: str = ""
    text: str | None = None
    id: str | None = None
    name: str | None = None
    # tool_use: kept as the raw JSON text (it becomes the OpenAI `arguments` string as is).
    input: msgspec.Raw = ABSENT
    thinking: str | None = None


class Message(msgspec.Struct, gc=False):
    id: str = ""
    model: str = ""
    content: list[Block] = msgspec.field(default_factory=list)
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: Usage | None = None


class Delta(msgspec.Struct, gc=False):
    """A content_block_delta's `delta` (text_delta, input_json_delta, thinking_delta, signature_delta),
    or a message_delta's (stop_reason, stop_sequence)."""

    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    stop_reason: str | None = None
    stop_sequence: str | None = None


class ErrorInfo(msgspec.Struct, gc=False):
    type: str = "api_error"
    message: str = ""


class Event(msgspec.Struct, gc=False):
    """Any stream event: `type` says which members are present."""

    type: str = ""
    index: int | None = None
    message: Message | None = None
    content_block: Block | None = None
    delta: Delta | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None


class ErrorBody(msgspec.Struct, gc=False):
    """`{"type": "error", "error": {"type", "message"}}`."""

    error: ErrorInfo | None = None


decode_event = msgspec.json.Decoder(Event).decode
decode_message = msgspec.json.Decoder(Message).decode
decode_error = msgspec.json.Decoder(ErrorBody).decode
encode_request = msgspec.json.Encoder().encode
