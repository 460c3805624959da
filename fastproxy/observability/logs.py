"""Logging set-up (run in lifespan, never at import) and the access log, written off the request path.

Log records are handed to a QueueHandler; a QueueListener thread formats and writes them, so the
event loop never blocks on a slow stderr. The access log bypasses `logging` (a LogRecord costs
microseconds per request): AccessLog queues each RequestRecord, formats them in batches and has its
own thread write them, in the configured format, when the `fastproxy` level lets INFO through.

Access line fields (JSON): every RequestRecord field, in its order: request_id, method, path, endpoint,
model, stream, status, upstream_status, usage, latency_ms, ttfb_ms, proxy_ms, error, key_id, user_id,
key_hint (the key's last 4 characters), client_ip, disconnected, events, prompt_estimate,
request_id_from_client, then ts (Unix seconds, as in every JSON log line), level, logger and the
worker's pid.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import queue
import stat
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TextIO

import msgspec

from fastproxy.core.records import RequestRecord

_encode = msgspec.json.encode


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {"ts": record.created, "level": record.levelname.lower(), "logger": record.name}
        doc["message"] = record.getMessage()
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _encode(doc).decode()


def configure_logging(level: str, fmt: str) -> logging.handlers.QueueListener:
    """Route every fastproxy logger through one queue; returns the listener for lifespan to stop."""
    handler = logging.StreamHandler(sys.stderr)
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(_JsonFormatter() if fmt == "json" else text)
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(q, handler, respect_handler_level=False)
    root = logging.getLogger("fastproxy")
    root.handlers[:] = [logging.handlers.QueueHandler(q)]
    root.setLevel(level.upper())
    root.propagate = False
    listener.start()
    return listener


class AccessLog:
    """One line per request, formatted in batches on the event loop and written by a thread of its own.

    The request path only appends the record to a deque (`write` is the deque's own append: a C
    call, no Python frame). Every `access_log_interval` seconds a task lifespan owns calls `drain()`,
    which formats what is there into chunks of whole lines (no larger than PIPE_BUF when stderr is a
    pipe, so the lines of several workers sharing it never interleave mid-line) and hands them to the
    writer thread, which only does the blocking writes.
    Formatting stays on the loop's thread on purpose: a second thread doing Python work competes for
    the GIL with the loop, and on a busy CPU that contention costs the loop far more than the work.
    A JSON batch is one msgspec `encode_lines` call over the records (a line is its record's encoding,
    nothing added or replaced): about a third of the cost of encoding each record and completing its
    line in Python (bench/RESULTS.md, "History": observability overhead).
    `close()` formats and writes everything handed over, then stops the thread.
    """

    def __init__(self, fmt: str = "json", stream: TextIO | None = None) -> None:
        self._json = fmt == "json"
        self._stream = stream
        self._records: deque[RequestRecord] = deque()
        self.write: Callable[[RequestRecord], None] = self._records.append
        self._encoder = msgspec.json.Encoder()
        self._chunks: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._chunk_limit = _PIPE_BUF
        self._thread = threading.Thread(target=self._write_chunks, name="fastproxy-access-log", daemon=True)

    def start(self) -> None:
        self._chunk_limit = _chunk_limit(self._stream or sys.stderr)
        self._thread.start()

    def drain(self) -> None:
        """Format every pending record and hand the chunks to the writer thread (one hand-over per call)."""
        if not self._records:
            return
        chunks = self.format(self._records)
        self._records.clear()  # the same deque: `write` is bound to it
        # One put per drain: every wake-up of the thread is a GIL hand-over with the loop.
        self._chunks.put(chunks)

    def format(self, records: Iterable[RequestRecord]) -> list[bytes]:
        """The access lines of `records`, in chunks the writer thread writes one by one."""
        lines = self._encoder.encode_lines(records) if self._json else "".join(map(_text_line, records)).encode()
        return _whole_lines(lines, self._chunk_limit)

    def close(self) -> None:
        """Write every line handed over so far, then stop the writer thread."""
        self.drain()
        self._chunks.put(None)
        if self._thread.is_alive():
            self._thread.join(10)

    def _write_chunks(self) -> None:
        while (chunks := self._chunks.get()) is not None:
            stream = self._stream or sys.stderr
            raw = getattr(stream, "buffer", None)
            try:
                if raw is not None:
                    stream.flush()  # whatever was written as text first
                # One write per chunk, each flushed: a pipe keeps writes up to PIPE_BUF whole.
                for chunk in chunks:
                    if raw is not None:
                        raw.write(chunk)
                        raw.flush()
                    else:
                        stream.write(chunk.decode())
                        stream.flush()
            except (OSError, ValueError):
                # stderr closed or broken: losing access lines must never take the worker down.
                continue


def _whole_lines(data: bytes, limit: int) -> list[bytes]:
    """`data` (whole lines) cut at line ends into chunks of at most `limit` bytes; a line longer than
    `limit` goes alone, whole."""
    if len(data) <= limit:
        return [data]
    chunks: list[bytes] = []
    start, size = 0, len(data)
    while start < size:
        if size - start <= limit:
            chunks.append(data[start:])
            break
        end = data.rfind(b"\n", start, start + limit)
        if end == -1:
            end = data.find(b"\n", start + limit)
            end = size - 1 if end == -1 else end
        chunks.append(data[start : end + 1])
        start = end + 1
    return chunks


def _chunk_limit(stream: TextIO) -> int:
    """The largest write that keeps lines whole when several processes share `stream`.

    A pipe or socket (a container runtime, journald) keeps only writes up to PIPE_BUF in one piece;
    a regular file, a terminal or /dev/null takes any write whole, so one write per drain will do.
    """
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError, io.UnsupportedOperation):
        return _PIPE_BUF
    return _PIPE_BUF if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else 1 << 20


# A write to a pipe up to this size is atomic (POSIX), so lines from several processes stay whole.
_PIPE_BUF = 4096


def _text_line(r: RequestRecord) -> str:
    local = datetime.fromtimestamp(r.ts).strftime("%Y-%m-%d %H:%M:%S")
    parts = [f"{local},{int(r.ts * 1000) % 1000:03d} access {r.status} {r.method} {r.path}"]
    if r.model:
        parts.append(f"model={r.model}" + (" stream" if r.stream else ""))
    parts.append(f"{r.latency_ms:.1f}ms")
    if r.proxy_ms is not None:
        parts.append(f"(proxy {r.proxy_ms:.2f}ms)")
    if r.usage is not None:
        parts.append(f"tokens={r.usage.prompt}+{r.usage.completion}")
    if r.upstream_status is not None and r.upstream_status != r.status:
        parts.append(f"upstream={r.upstream_status}")
    if r.error:
        parts.append(f"error={r.error}")
    if r.key_hint:
        parts.append(f"key=...{r.key_hint}")
    parts.append(f"id={r.request_id}")
    return " ".join(parts) + "\n"
