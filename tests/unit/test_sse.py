"""The SSE watcher: bytes out equal bytes in (or exactly what include_usage would not have added)."""

from __future__ import annotations

import pytest

from fastproxy.proxy.sse import SSEWatcher

USAGE = (
    b'"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14,'
    b'"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}'
)


def chat_events(with_usage: bool, sep: bytes = b"\n\n") -> list[bytes]:
    null = b',"usage":null' if with_usage else b""
    events = [
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"say \\",\\"usage\\":null"}}]' + null + b"}" + sep,
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"!"}}]' + null + b"}" + sep,
        b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]' + null + b"}" + sep,
    ]
    if with_usage:
        events.append(b'data: {"id":"c","choices":[],' + USAGE + b"}" + sep)
    events.append(b"data: [DONE]" + sep)
    return events


def run(watcher: SSEWatcher, data: bytes, step: int) -> bytes:
    out = b"".join(watcher.feed(data[i : i + step]) for i in range(0, len(data), step))
    return out + watcher.finish()


@pytest.mark.parametrize("step", [1, 2, 5, 17, 64, 10_000])
@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n"])
def test_strip_gives_back_what_the_client_would_have_had(step: int, sep: bytes) -> None:
    upstream = b"".join(chat_events(with_usage=True, sep=sep))
    expected = b"".join(chat_events(with_usage=False, sep=sep))
    watcher = SSEWatcher(strip=True)
    assert run(watcher, upstream, step) == expected
    assert watcher.usage is not None
    assert (watcher.usage.prompt, watcher.usage.completion, watcher.usage.total) == (11, 3, 14)
    assert (watcher.usage.cached, watcher.usage.reasoning) == (4, 2)


@pytest.mark.parametrize("step", [1, 3, 50, 10_000])
def test_passthrough_forwards_every_chunk_unchanged(step: int) -> None:
    upstream = b"".join(chat_events(with_usage=True))
    watcher = SSEWatcher(strip=False)
    chunks = [upstream[i : i + step] for i in range(0, len(upstream), step)]
    assert [watcher.feed(c) for c in chunks] == chunks
    assert watcher.finish() == b""
    assert watcher.usage is not None
    assert watcher.usage.total == 14
    assert watcher.events == 5


def test_spaced_json_usage_null_is_stripped() -> None:
    event = b'data: {"id": "c", "choices": [{"delta": {"content": "x"}}], "usage": null}\n\n'
    assert SSEWatcher(strip=True).feed(event) == b'data: {"id": "c", "choices": [{"delta": {"content": "x"}}]}\n\n'


def test_responses_api_usage_from_completed_event() -> None:
    events = (
        b'event: response.created\ndata: {"type":"response.created","response":{"usage":null}}\n\n'
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"hi"}\n\n'
        b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"r",'
        b'"usage":{"input_tokens":7,"output_tokens":5,"total_tokens":12,'
        b'"output_tokens_details":{"reasoning_tokens":1}}}}\n\n'
    )
    watcher = SSEWatcher(strip=False)
    assert watcher.feed(events) == events
    assert watcher.usage is not None
    assert (watcher.usage.prompt, watcher.usage.completion, watcher.usage.reasoning) == (7, 5, 1)


def test_stream_cut_before_usage_has_none() -> None:
    watcher = SSEWatcher(strip=True)
    partial = b"".join(chat_events(with_usage=True)[:2])
    run(watcher, partial, 7)
    assert watcher.usage is None


def test_last_event_without_blank_line_is_still_read() -> None:
    watcher = SSEWatcher(strip=True)
    out = watcher.feed(b'data: {"choices":[],' + USAGE + b"}")
    assert out == b""
    assert watcher.finish() == b""
    assert watcher.usage is not None
    assert watcher.usage.total == 14


@pytest.mark.parametrize("strip", [True, False])
def test_one_whole_event_per_chunk_as_providers_send_them(strip: bool) -> None:
    events = chat_events(with_usage=True)
    watcher = SSEWatcher(strip=strip)
    out = [watcher.feed(e) for e in events] + [watcher.finish()]
    expected = chat_events(with_usage=False) if strip else events
    assert b"".join(out) == b"".join(expected)
    assert watcher.events == 5
    assert watcher.usage is not None
    assert watcher.usage.total == 14
