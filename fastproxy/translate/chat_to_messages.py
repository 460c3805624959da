"""An OpenAI chat completions request, rewritten as an Anthropic Messages request.

    system / developer messages      -> `system` (a string, or text blocks when there are several)
    user content: text, image_url    -> text blocks; image blocks (data: URL -> base64 source, http(s) -> url)
    assistant content + tool_calls   -> text block, then tool_use blocks (ids kept; arguments spliced as input)
    tool messages                    -> tool_result blocks; consecutive ones (and a user turn after them)
                                        merged into one user turn, as Anthropic requires
    tools / tool_choice              -> tools (parameters -> input_schema); auto, none, required -> any,
                                        a named function -> tool; parallel_tool_calls false -> disable_parallel_tool_use
    max_completion_tokens/max_tokens -> max_tokens (required by Anthropic: the provider's or the setting's default)
    stop                             -> stop_sequences (always a list)
    user                             -> metadata.user_id
    reasoning_effort                 -> thinking with a budget (low 1024, medium 4096, high 16384 tokens)

Fields Anthropic can't honour and that would change the answer (n > 1, logprobs, logit_bias, penalties,
response_format other than text, audio, prediction, legacy functions) are refused with a 400 naming the
field: never silently dropped. `seed`, `store`, `metadata`, `service_tier` and `stream_options` change
nothing in the answer and are left out.
"""

from __future__ import annotations

import msgspec

from fastproxy.core.errors import InvalidRequest
from fastproxy.translate import anthropic_wire as a
from fastproxy.translate import openai_wire as o

# Thinking budgets per reasoning_effort (Anthropic's minimum budget is 1024).
EFFORT_BUDGET = {"low": 1024, "medium": 4096, "high": 16384}
MIN_BUDGET = 1024
_SCHEMA_ANY_OBJECT = msgspec.Raw(b'{"type":"object","properties":{}}')
_object = msgspec.json.Decoder(dict[str, msgspec.Raw])


def chat_to_messages(body: bytes, model: str, default_max_tokens: int) -> bytes:
    """The Anthropic request body for this chat request, sent to `model`. Raises InvalidRequest naming the
    field when the request can't be expressed (or would be answered differently) on Anthropic."""
    try:
        chat = o.decode_chat(body)
    except msgspec.ValidationError as exc:
        reason, _, where = str(exc).partition(" - at `$.")
        param = where.rstrip("`") or None
        raise InvalidRequest(f"Invalid type for '{param}': {reason}." if param else str(exc), param=param) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest("We could not parse the JSON body of your request.") from exc
    _refuse_unsupported(chat)
    if not chat.messages:
        raise InvalidRequest("messages: at least one message is required.", param="messages")
    system, messages = _messages(chat.messages)
    if not messages:
        raise InvalidRequest("messages: at least one user or assistant message is required.", param="messages")
    asked = chat.max_completion_tokens if chat.max_completion_tokens is not None else chat.max_tokens
    max_tokens = asked if asked is not None else default_max_tokens
    thinking = None
    if chat.reasoning_effort is not None and chat.reasoning_effort not in ("none", "minimal"):
        budget = EFFORT_BUDGET.get(chat.reasoning_effort)
        if budget is None:
            raise InvalidRequest(
                f"reasoning_effort: unsupported value {chat.reasoning_effort!r} (low, medium, high, minimal, none).",
                param="reasoning_effort",
            )
        if asked is None:
            max_tokens += budget  # OpenAI's limit includes reasoning; keep the answer's own share
        else:
            budget = min(budget, max_tokens - 1)
            if budget < MIN_BUDGET:
                raise InvalidRequest(
                    f"reasoning_effort needs max_completion_tokens above {MIN_BUDGET} on this model's provider.",
                    param="max_completion_tokens",
                )
        thinking = a.ThinkingParam(type="enabled", budget_tokens=budget)
    tools, tool_choice = _tools(chat)
    stop = chat.stop
    request = a.MessagesRequest(
        model=model,
        max_tokens=max_tokens,
        messages=messages,
        system=system,
        stop_sequences=[stop] if isinstance(stop, str) else (stop or None),
        stream=True if chat.stream else None,
        temperature=chat.temperature,
        top_p=chat.top_p,
        tools=tools,
        tool_choice=tool_choice,
        thinking=thinking,
        metadata=a.MetadataParam(user_id=chat.user) if chat.user else None,
    )
    return a.encode_request(request)


def _refuse_unsupported(chat: o.ChatRequest) -> None:
    def refuse(param: str, why: str) -> None:
        raise InvalidRequest(f"'{param}' is not supported by this model's provider (Anthropic): {why}.", param=param)

    if chat.n is not None and chat.n != 1:
        refuse("n", "it returns one choice per request")
    if chat.logprobs:
        refuse("logprobs", "it returns no log probabilities")
    if chat.top_logprobs:
        refuse("top_logprobs", "it returns no log probabilities")
    if chat.logit_bias:
        refuse("logit_bias", "it has no token biases")
    if chat.presence_penalty:
        refuse("presence_penalty", "it has no penalties")
    if chat.frequency_penalty:
        refuse("frequency_penalty", "it has no penalties")
    if chat.response_format and bytes(chat.response_format) != b"null":
        try:
            kind = o.decode_response_format(chat.response_format).type
        except msgspec.MsgspecError:
            kind = "?"
        if kind != "text":
            refuse("response_format", "JSON modes are not translated; describe the format in the prompt")
    for name in ("functions", "function_call", "audio", "prediction", "web_search_options"):
        raw: msgspec.Raw = getattr(chat, name)
        if raw and bytes(raw) != b"null":
            refuse(name, "no equivalent" if name != "functions" else "use tools")
    if chat.modalities and any(m != "text" for m in chat.modalities):
        refuse("modalities", "it answers in text only")
    if chat.temperature is not None and not 0 <= chat.temperature <= 1:
        refuse("temperature", "it accepts 0 to 1")


def _text_of(content: str | list[o.Part] | None, where: str) -> list[a.TextBlock]:
    """Text-only content (system, developer, tool): its text parts as blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [a.TextBlock(text=content)] if content else []
    blocks = []
    for j, part in enumerate(content):
        if part.type != "text":
            raise InvalidRequest(f"{where}.content[{j}]: only text parts are accepted here.", param=f"{where}.content")
        if part.text:
            blocks.append(a.TextBlock(text=part.text))
    return blocks


def _user_blocks(content: str | list[o.Part] | None, where: str) -> list[a.ContentBlock]:
    if content is None:
        return []
    if isinstance(content, str):
        return [a.TextBlock(text=content)] if content else []
    blocks: list[a.ContentBlock] = []
    for j, part in enumerate(content):
        if part.type == "text":
            if part.text:
                blocks.append(a.TextBlock(text=part.text))
        elif part.type == "image_url" and part.image_url is not None:
            blocks.append(_image(part.image_url.url, f"{where}.content[{j}].image_url.url"))
        else:
            param = f"{where}.content[{j}].type"
            raise InvalidRequest(
                f"'{param}': {part.type!r} parts are not supported by this model's provider.", param=param
            )
    return blocks


def _image(url: str, param: str) -> a.ImageBlock:
    if url.startswith("data:"):
        head, comma, data = url.partition(",")
        media_type, _, encoding = head[5:].partition(";")
        if not comma or encoding != "base64" or not media_type.startswith("image/"):
            raise InvalidRequest(f"'{param}': expected a base64 data URL of an image.", param=param)
        return a.ImageBlock(source=a.Base64Source(media_type=media_type, data=data))
    if url.startswith(("https://", "http://")):
        return a.ImageBlock(source=a.UrlSource(url=url))
    raise InvalidRequest(f"'{param}': expected an http(s) URL or a data URL.", param=param)


def _tool_uses(calls: list[o.ToolCall], where: str) -> list[a.ContentBlock]:
    blocks: list[a.ContentBlock] = []
    for j, call in enumerate(calls):
        fn = call.function
        if call.type != "function" or fn is None:
            raise InvalidRequest(f"'{where}.tool_calls[{j}]': only function calls.", param=f"{where}.tool_calls")
        arguments = fn.arguments.strip() or "{}"
        try:
            _object.decode(arguments)  # Anthropic's input must be a JSON object
        except msgspec.MsgspecError:
            param = f"{where}.tool_calls[{j}].function.arguments"
            raise InvalidRequest(f"'{param}': not a JSON object.", param=param) from None
        blocks.append(a.ToolUseBlock(id=call.id, name=fn.name, input=msgspec.Raw(arguments.encode())))
    return blocks


def _messages(chat: list[o.ChatMessage]) -> tuple[str | list[a.TextBlock] | None, list[a.MessageParam]]:
    system: list[a.TextBlock] = []
    turns: list[a.MessageParam] = []

    def add(role: str, blocks: list[a.ContentBlock]) -> None:
        if not blocks:
            return  # Anthropic refuses empty content
        last = turns[-1] if turns else None
        if last is not None and last.role == role:
            # Consecutive turns of one role are one turn (tool results and the user text after them).
            content = last.content
            last.content = [*([a.TextBlock(text=content)] if isinstance(content, str) else content), *blocks]
        elif role == "user" and len(blocks) == 1 and isinstance(blocks[0], a.TextBlock):
            turns.append(a.MessageParam(role=role, content=blocks[0].text))  # the common case, as a plain string
        else:
            turns.append(a.MessageParam(role=role, content=blocks))

    for i, message in enumerate(chat):
        where = f"messages[{i}]"
        role = message.role
        if role in ("system", "developer"):
            system.extend(_text_of(message.content, where))
        elif role == "user":
            add("user", _user_blocks(message.content, where))
        elif role == "assistant":
            content = message.content
            blocks: list[a.ContentBlock] = []
            if isinstance(content, str):
                if content:
                    blocks.append(a.TextBlock(text=content))
            elif content:
                blocks.extend(a.TextBlock(text=p.text or p.refusal or "") for p in content if p.text or p.refusal)
            if message.tool_calls:
                blocks.extend(_tool_uses(message.tool_calls, where))
            add("assistant", blocks)
        elif role == "tool":
            if not message.tool_call_id:
                raise InvalidRequest(f"'{where}.tool_call_id' is required.", param=f"{where}.tool_call_id")
            text = _text_of(message.content, where)
            parts: list[a.TextBlock | a.ImageBlock] = [*text]
            result = a.ToolResultBlock(
                tool_use_id=message.tool_call_id, content=text[0].text if len(text) == 1 else parts
            )
            add("user", [result])
        else:
            param = f"{where}.role"
            raise InvalidRequest(f"'{param}': {role!r} is not supported by this model's provider.", param=param)
    if not system:
        return None, turns
    return (system[0].text if len(system) == 1 else system), turns


def _tools(chat: o.ChatRequest) -> tuple[list[a.ToolParam] | None, a.ToolChoiceParam | None]:
    if not chat.tools:
        return None, None  # a tool_choice without tools means nothing to Anthropic (it refuses it)
    tools = []
    for i, tool in enumerate(chat.tools):
        fn = tool.function
        if tool.type != "function" or fn is None:
            param = f"tools[{i}].type"
            raise InvalidRequest(f"'{param}': only function tools are supported by this model's provider.", param=param)
        schema = fn.parameters if fn.parameters and bytes(fn.parameters) != b"null" else _SCHEMA_ANY_OBJECT
        tools.append(a.ToolParam(name=fn.name, input_schema=schema, description=fn.description))
    choice = chat.tool_choice
    if choice is None or choice == "auto":
        kind, name = "auto", None
    elif choice == "none":
        kind, name = "none", None
    elif choice == "required":
        kind, name = "any", None
    elif isinstance(choice, o.NamedChoice) and choice.function is not None:
        kind, name = "tool", choice.function.name
    else:
        raise InvalidRequest(f"tool_choice: unsupported value {choice!r}.", param="tool_choice")
    no_parallel = True if chat.parallel_tool_calls is False and kind != "none" else None
    if kind == "auto" and no_parallel is None and choice is None:
        return tools, None  # Anthropic's default is auto
    return tools, a.ToolChoiceParam(type=kind, name=name, disable_parallel_tool_use=no_parallel)
