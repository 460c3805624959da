"""OpenAI chat completions on the wire, as the translation needs them: the whole chat request (decoded only
when it goes to a provider that speaks another format), and the response documents written back.

The OpenAI-compatible path never decodes a request this way: it forwards the client's bytes.
"""

from __future__ import annotations

import msgspec

ABSENT = msgspec.Raw(b"")

# ----- the chat request, decoded for translation -----


class ImageURL(msgspec.Struct, gc=False):
    url: str
    detail: str | None = None


class Part(msgspec.Struct, gc=False):
    type: str
    text: str | None = None
    image_url: ImageURL | None = None
    refusal: str | None = None


class FunctionCall(msgspec.Struct, gc=False):
    name: str = ""
    arguments: str = ""


class ToolCall(msgspec.Struct, gc=False):
    id: str = ""
    type: str = "function"
    function: FunctionCall | None = None


class ChatMessage(msgspec.Struct, gc=False):
    role: str
    content: str | list[Part] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(msgspec.Struct, gc=False):
    name: str
    description: str | None = None
    # A JSON Schema object: spliced into Anthropic's input_schema as is.
    parameters: msgspec.Raw = ABSENT


class Tool(msgspec.Struct, gc=False):
    type: str = "function"
    function: FunctionDef | None = None


class NamedFunction(msgspec.Struct, gc=False):
    name: str


class NamedChoice(msgspec.Struct, gc=False):
    type: str = "function"
    function: NamedFunction | None = None


class ChatRequest(msgspec.Struct, gc=False):
    """Every chat field the translation maps, and every field it must refuse rather than drop."""

    model: str = ""
    messages: list[ChatMessage] | None = None
    tools: list[Tool] | None = None
    tool_choice: str | NamedChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    user: str | None = None
    reasoning_effort: str | None = None
    # Refused (400 naming the field) when they would change the answer: Anthropic can't honour them.
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: msgspec.Raw = ABSENT
    functions: msgspec.Raw = ABSENT
    function_call: msgspec.Raw = ABSENT
    audio: msgspec.Raw = ABSENT
    modalities: list[str] | None = None
    prediction: msgspec.Raw = ABSENT
    web_search_options: msgspec.Raw = ABSENT


class ResponseFormat(msgspec.Struct, gc=False):
    type: str = "text"


decode_chat = msgspec.json.Decoder(ChatRequest).decode
decode_response_format = msgspec.json.Decoder(ResponseFormat).decode

# ----- the response documents -----


class FunctionOut(msgspec.Struct, gc=False):
    name: str
    arguments: str


class ToolCallOut(msgspec.Struct, gc=False):
    id: str
    function: FunctionOut
    type: str = "function"


class MessageOut(msgspec.Struct, omit_defaults=True, gc=False):
    role: str
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = None
    # Anthropic's thinking text, under the name OpenAI-compatible reasoning servers use (vLLM, DeepSeek).
    reasoning_content: str | None = None


class Choice(msgspec.Struct, gc=False):
    index: int
    message: MessageOut
    logprobs: None
    finish_reason: str


class PromptDetails(msgspec.Struct, gc=False):
    cached_tokens: int


class CompletionDetails(msgspec.Struct, gc=False):
    reasoning_tokens: int


class UsageOut(msgspec.Struct, gc=False):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptDetails
    completion_tokens_details: CompletionDetails


class ChatCompletion(msgspec.Struct, gc=False):
    id: str
    object: str
    created: int
    model: str
    choices: list[Choice]
    usage: UsageOut | None


class UsageChunk(msgspec.Struct, gc=False):
    """The include_usage chunk: empty choices, the totals."""

    id: str
    object: str
    created: int
    model: str
    choices: list[Choice]
    usage: UsageOut


json_encode = msgspec.json.Encoder().encode
