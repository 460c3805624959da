"""Access lines: JSON with every field the issue lists and the key masked; readable text for the demo."""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterator

import pytest

from fastproxy.logs import AccessLog, configure_logging
from fastproxy.records import RequestRecord
from fastproxy.schemas import TokenUsage

RECORD = RequestRecord(
    request_id="req-1",
    method="POST",
    path="/v1/chat/completions",
    endpoint="chat.completions",
    model="gpt-a",
    stream=True,
    status=200,
    upstream_status=200,
    usage=TokenUsage(prompt=7, completion=5, total=12),
    latency_ms=120.5,
    ttfb_ms=100.0,
    proxy_ms=0.25,
    key_id="key_123",
    key_hint="wxyz",
)


def _capture(fmt: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    listener = configure_logging("info", fmt)
    try:
        yield out
    finally:
        listener.stop()
        logging.getLogger("fastproxy").handlers.clear()


@pytest.fixture
def json_out(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    yield from _capture("json", monkeypatch)


@pytest.fixture
def text_out(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    yield from _capture("text", monkeypatch)


def test_json_access_line(json_out: io.StringIO) -> None:
    AccessLog().write(RECORD)
    logging.getLogger("fastproxy.test").info("after")
    lines = _wait_lines(json_out, 2)
    doc = json.loads(lines[0])
    assert lines[0].startswith('{"request_id":"req-1"')
    assert doc["key_hint"] == "...wxyz"
    assert doc["method"] == "POST" and doc["path"] == "/v1/chat/completions" and doc["status"] == 200
    assert doc["model"] == "gpt-a" and doc["upstream_status"] == 200
    assert doc["latency_ms"] == 120.5 and doc["usage"]["prompt"] == 7 and doc["usage"]["completion"] == 5
    assert doc["pid"] == os.getpid() and doc["logger"] == "fastproxy.access" and doc["ts"].endswith("Z")
    other = json.loads(lines[1])
    assert other["message"] == "after" and other["level"] == "info"


def test_text_access_line(text_out: io.StringIO) -> None:
    AccessLog().write(RECORD)
    line = _wait_lines(text_out, 1)[0]
    assert "access 200 POST /v1/chat/completions model=gpt-a stream 120.5ms" in line
    assert "tokens=7+5" in line and "key=...wxyz" in line and "id=req-1" in line
    assert not line.startswith("{")


def test_level_from_settings_silences_access(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    listener = configure_logging("warning", "json")
    try:
        AccessLog().write(RECORD)
        logging.getLogger("fastproxy").warning("kept")
    finally:
        listener.stop()
        logging.getLogger("fastproxy").handlers.clear()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["message"] == "kept"


def _wait_lines(out: io.StringIO, n: int) -> list[str]:
    """The listener thread writes asynchronously: wait for its lines."""
    for _ in range(200):
        lines = out.getvalue().splitlines()
        if len(lines) >= n:
            return lines
        time.sleep(0.01)
    raise AssertionError(f"expected {n} lines, got {out.getvalue()!r}")
