"""The official openai SDK, pointed at fastproxy under Granian, works for every proxied endpoint."""

from __future__ import annotations

from typing import Any

import openai
import pytest

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]


async def test_chat_completion(sdk: openai.AsyncOpenAI) -> None:
    resp = await sdk.chat.completions.create(model="mock-model", messages=MESSAGES)
    assert resp.choices[0].message.content == "The quick brown fox jumps over the lazy dog."
    assert resp.usage is not None and resp.usage.completion_tokens == 10


@pytest.mark.parametrize("include_usage", [False, True])
async def test_chat_stream(sdk: openai.AsyncOpenAI, include_usage: bool) -> None:
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await sdk.chat.completions.create(model="mock-model", messages=MESSAGES, stream=True, **extra)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The quick brown fox jumps over the lazy dog."
    usage_chunks = [c for c in chunks if c.usage is not None]
    # The proxy asked upstream for usage either way; the client sees it only if it asked.
    assert len(usage_chunks) == (1 if include_usage else 0)


async def test_completions(sdk: openai.AsyncOpenAI) -> None:
    resp = await sdk.completions.create(model="mock-model", prompt="Say hi")
    assert resp.choices[0].text.startswith("The quick")
    stream = await sdk.completions.create(model="mock-model", prompt="Say hi", stream=True)
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == "The quick brown fox jumps over the lazy dog."


async def test_embeddings(sdk: openai.AsyncOpenAI) -> None:
    resp = await sdk.embeddings.create(model="text-embedding-3-small", input="hello")
    assert len(resp.data[0].embedding) == 256
    assert resp.usage.prompt_tokens >= 1


async def test_models(sdk: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in sdk.models.list()]
    assert "mock-model" in models
    one = await sdk.models.retrieve("gpt-4o-mini")
    assert one.id == "gpt-4o-mini"


async def test_responses(sdk: openai.AsyncOpenAI) -> None:
    resp = await sdk.responses.create(model="mock-model", input="Hello")
    assert resp.output_text == "The quick brown fox jumps over the lazy dog."
    stream = await sdk.responses.create(model="mock-model", input="Hello", stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"


async def test_sdk_maps_upstream_errors(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        await sdk.chat.completions.create(model="mock-model", messages=MESSAGES, extra_headers={"x-mock-status": "429"})
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(model="mock-model", messages=MESSAGES, stream="yes")  # type: ignore[call-overload]
    assert info.value.body is not None
