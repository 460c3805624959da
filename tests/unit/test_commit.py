"""The stream commit point: which events are still "before the answer" and which commit it."""

from __future__ import annotations

import pytest

from fastproxy.proxy.commit import MAX_HELD_EVENTS, CommitPoint, Verdict, error_event


def _event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


@pytest.mark.parametrize(
    ("payload", "verdict"),
    [
        (b'{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}', Verdict.WAIT),
        (b'{"choices":[],"prompt_filter_results":[{"prompt_index":0}]}', Verdict.WAIT),
        (b'{"choices":[{"index":0,"delta":{"content":"Hi"}}]}', Verdict.COMMIT),
        (
            b'{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f"}}]}}]}',
            Verdict.COMMIT,
        ),
        (b'{"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}', Verdict.COMMIT),
        (b'{"choices":[{"index":0,"text":"Hi"}]}', Verdict.COMMIT),
        (b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}', Verdict.COMMIT),
        (b'{"choices":[],"usage":{"prompt_tokens":1}}', Verdict.COMMIT),
        (b'{"choices":[],"usage":null,"error":null}', Verdict.WAIT),
        (b"[DONE]", Verdict.COMMIT),
        (b'{"error": {"message": "overloaded", "type": "server_error"}}', Verdict.ERROR),
        (b'{"type":"response.created","response":{}}', Verdict.WAIT),
        (b'{"type":"response.output_text.delta","delta":"Hi"}', Verdict.COMMIT),
        (b'{"type":"response.failed","response":{}}', Verdict.ERROR),
        (b"not json", Verdict.COMMIT),
    ],
)
def test_verdicts(payload: bytes, verdict: Verdict) -> None:
    assert CommitPoint().feed(_event(payload)) is verdict


def test_an_event_split_across_chunks_is_judged_whole() -> None:
    commit = CommitPoint()
    whole = _event(b'{"choices":[{"index":0,"delta":{"content":"Hi"}}]}')
    for byte in whole[:-1]:
        assert commit.feed(bytes([byte])) is Verdict.WAIT
    assert commit.feed(whole[-1:]) is Verdict.COMMIT


def test_holding_is_bounded() -> None:
    commit = CommitPoint()
    empty = _event(b'{"choices":[]}')
    verdicts = [commit.feed(empty) for _ in range(MAX_HELD_EVENTS)]
    assert verdicts[:-1] == [Verdict.WAIT] * (MAX_HELD_EVENTS - 1) and verdicts[-1] is Verdict.COMMIT


def test_error_event_is_openai_shaped() -> None:
    assert error_event("broke", "upstream_stream_cut") == (
        b'data: {"error":{"message":"broke","type":"server_error","param":null,"code":"upstream_stream_cut"}}\n\n'
    )
