"""Access lines: JSON with every field the issue lists and the key masked; readable text for the demo."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path

from fastproxy.core.records import RequestRecord
from fastproxy.core.schemas import TokenUsage
from fastproxy.core.settings import Settings
from fastproxy.observability.logs import AccessLog, _chunk_limit, _JsonFormatter, _whole_lines, configure_logging
from fastproxy.server.lifespan import _open_access_log

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
    ts=1764577944.125,
    pid=4321,
)


def _lines(fmt: str, records: list[RequestRecord]) -> list[str]:
    out = io.StringIO()
    log = AccessLog(fmt, stream=out)
    log.start()
    for r in records:
        log.write(r)
    log.close()  # drains everything handed over
    text = out.getvalue()
    assert text.endswith("\n")
    return text.splitlines()


def test_json_access_line() -> None:
    (line,) = _lines("json", [RECORD])
    doc = json.loads(line)
    assert line.startswith('{"request_id":"req-1"')
    assert doc["key_hint"] == "wxyz"
    assert doc["method"] == "POST" and doc["path"] == "/v1/chat/completions" and doc["status"] == 200
    assert doc["model"] == "gpt-a" and doc["upstream_status"] == 200
    assert doc["latency_ms"] == 120.5 and doc["usage"]["prompt"] == 7 and doc["usage"]["completion"] == 5
    assert doc["pid"] == 4321 and doc["ts"] == 1764577944.125
    assert doc["level"] == "info" and doc["logger"] == "fastproxy.access"
    # The record's fields, then the line's own: nothing else, nothing missing.
    assert list(doc) == [*RequestRecord.__struct_fields__]


def test_text_access_line() -> None:
    (line,) = _lines("text", [RECORD])
    assert "access 200 POST /v1/chat/completions model=gpt-a stream 120.5ms" in line
    assert "tokens=7+5" in line and "key=...wxyz" in line and "id=req-1" in line
    assert not line.startswith("{")


def test_many_lines_in_order_and_whole() -> None:
    records = [
        RequestRecord(**{**{f: getattr(RECORD, f) for f in RECORD.__struct_fields__}, "request_id": f"r{i}"})
        for i in range(500)
    ]
    lines = _lines("json", records)
    assert [json.loads(line)["request_id"] for line in lines] == [f"r{i}" for i in range(500)]


def test_writes_are_whole_lines_within_pipe_buf() -> None:
    writes: list[str] = []

    class Recorder(io.StringIO):
        def write(self, s: str) -> int:
            writes.append(s)
            return super().write(s)

    out = Recorder()
    log = AccessLog("json", stream=out)
    for _ in range(100):
        log.write(RECORD)
    log.start()
    log.close()
    assert len(writes) > 1
    assert all(len(w.encode()) <= 4096 and w.endswith("\n") for w in writes)


async def test_access_log_follows_level_and_switch() -> None:
    listener = configure_logging("warning", "json")
    try:
        async with contextlib.AsyncExitStack() as stack:
            assert _open_access_log(Settings(access_log=True), stack) is None
    finally:
        listener.stop()
    listener = configure_logging("info", "text")
    try:
        async with contextlib.AsyncExitStack() as stack:
            assert _open_access_log(Settings(access_log=False), stack) is None
            assert _open_access_log(Settings(access_log=True), stack) is not None
    finally:
        listener.stop()
        logging.getLogger("fastproxy").handlers.clear()


def test_chunk_limit_by_kind_of_stderr(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "w") as pipe, os.fdopen(read_fd) as _reader, open(tmp_path / "log", "w") as file:
        assert _chunk_limit(pipe) == 4096
        assert _chunk_limit(file) > 4096
    assert _chunk_limit(io.StringIO()) == 4096


def test_a_line_longer_than_pipe_buf_goes_alone_and_whole() -> None:
    long = RequestRecord(**{**{f: getattr(RECORD, f) for f in RECORD.__struct_fields__}, "path": "/v1/" + "x" * 5000})
    chunks = _whole_lines(b"".join(AccessLog().format([RECORD, long, RECORD, RECORD])), 4096)
    assert [chunk.count(b"\n") for chunk in chunks] == [1, 1, 2]
    assert all(chunk.endswith(b"\n") for chunk in chunks) and len(chunks[1]) > 4096
    assert json.loads(chunks[1])["path"] == long.path


def test_json_log_lines_stamp_unix_seconds_like_access_lines() -> None:
    record = logging.LogRecord("fastproxy.x", logging.WARNING, __file__, 1, "key %s", ("...wxyz",), None)
    doc = json.loads(_JsonFormatter().format(record))
    assert doc == {"ts": record.created, "level": "warning", "logger": "fastproxy.x", "message": "key ...wxyz"}
