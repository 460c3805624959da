"""What the mock's OpenAI chat completions answer, when the request asks for more than plain words: the
shapes an Anthropic-ingress translator must get right (fastproxy/translate), as OpenAI-compatible servers send them.

- `tools` (and tool_choice not "none") while the conversation does not end in tool results: the text
  `I'll use the tools.` then two parallel tool calls (tools[0] and tools[1], or tools[0] twice), ids
  `call_mock_0`, `call_mock_1`, arguments `{"city": "Paris", "call": N}` streamed in 7-character fragments;
  a named tool_choice: one call of that tool, no text. finish_reason `tool_calls`.
- a conversation ending in `tool` messages: `Got N tool results.` (N: the trailing tool messages).
- `stop`: the words are cut before the first stop string that occurs; finish_reason `stop` and, as vLLM
  reports it, the choice's `stop_reason` names that string.
- `max_tokens` below the word count: that many words, finish_reason `length`.
Plain requests get exactly what they always did (the byte-exact tests depend on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

FRAGMENT = 7


class _Function(msgspec.Struct):
    name: str = ""


class _Tool(msgspec.Struct):
    function: _Function = msgspec.field(default_factory=_Function)


class _Role(msgspec.Struct):
    role: str = ""


class ChatExtras(msgspec.Struct):
    tools: list[_Tool] | None = None
    tool_choice: Any = None
    stop: str | list[str] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    messages: list[_Role] = msgspec.field(default_factory=list)


_decode = msgspec.json.Decoder(ChatExtras).decode


@dataclass
class Answer:
    words: list[str]
    finish: str = "stop"
    # vLLM's choice.stop_reason: the stop string that matched.
    stop_reason: str | None = None
    # (id, name, arguments)
    calls: list[tuple[str, str, str]] = field(default_factory=list)


def answer(body: bytes, words: list[str]) -> Answer | None:
    """The special answer this chat request gets, or None for the plain words."""
    try:
        extras = _decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    trailing = 0
    for message in reversed(extras.messages):
        if message.role != "tool":
            break
        trailing += 1
    if trailing:
        return Answer(words=["Got", f" {trailing}", " tool", " results."])
    choice = extras.tool_choice
    if extras.tools and choice != "none":
        names = [t.function.name for t in extras.tools]
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            return Answer(words=[], finish="tool_calls", calls=[_call(0, str(choice["function"].get("name", "")))])
        second = names[1] if len(names) > 1 else names[0]
        text = [] if choice == "required" else ["I'll", " use", " the", " tools."]
        return Answer(words=text, finish="tool_calls", calls=[_call(0, names[0]), _call(1, second)])
    stops = [extras.stop] if isinstance(extras.stop, str) else extras.stop or []
    if stops:
        joined = "".join(words)
        hits = [(joined.find(s), s) for s in stops if s and s in joined]
        if hits:
            at, matched = min(hits)
            kept, size = [], 0
            for word in words:
                if size + len(word) > at:
                    if at > size:
                        kept.append(word[: at - size])
                    break
                kept.append(word)
                size += len(word)
            return Answer(words=kept, stop_reason=matched)
    limit = extras.max_completion_tokens or extras.max_tokens
    if limit is not None and limit < len(words):
        return Answer(words=words[:limit], finish="length")
    return None


def _call(n: int, name: str) -> tuple[str, str, str]:
    return f"call_mock_{n}", name, msgspec.json.encode({"city": "Paris", "call": n}).decode()


def fragments(arguments: str) -> list[str]:
    return [arguments[i : i + FRAGMENT] for i in range(0, len(arguments), FRAGMENT)]


def _usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt + cached,
        "completion_tokens": completion,
        "total_tokens": prompt + cached + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _completion_tokens(ans: Answer) -> int:
    return len(ans.words) + 8 * len(ans.calls)


def complete(model: str, ans: Answer, prompt: int, cached: int, created: int) -> dict[str, Any]:
    calls = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in ans.calls]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(ans.words) or None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None, "finish_reason": ans.finish}
    if ans.stop_reason is not None:
        choice["stop_reason"] = ans.stop_reason
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": _usage(prompt, _completion_tokens(ans), cached),
        "system_fingerprint": "fp_mock",
    }


def stream(model: str, ans: Answer, prompt: int, cached: int, include_usage: bool, created: int) -> list[bytes]:
    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        doc: dict[str, Any] = {
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": choices,
        }
        if include_usage:
            doc["usage"] = usage
        return b"data: " + msgspec.json.encode(doc) + b"\n\n"

    def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}

    events = []
    for i, word in enumerate(ans.words):
        events.append(chunk([delta({"role": "assistant", "content": word} if i == 0 else {"content": word})]))
    for n, (ident, name, arguments) in enumerate(ans.calls):
        call = {"index": n, "id": ident, "type": "function", "function": {"name": name, "arguments": ""}}
        first: dict[str, Any] = {"tool_calls": [call]}
        if n == 0 and not ans.words:
            first = {"role": "assistant", "content": None, **first}
        events.append(chunk([delta(first)]))
        for part in fragments(arguments):
            events.append(chunk([delta({"tool_calls": [{"index": n, "function": {"arguments": part}}]})]))
    last = delta({}, ans.finish)
    if ans.stop_reason is not None:
        last["stop_reason"] = ans.stop_reason
    events.append(chunk([last]))
    if include_usage:
        events.append(chunk([], _usage(prompt, _completion_tokens(ans), cached)))
    events.append(b"data: [DONE]\n\n")
    return events
