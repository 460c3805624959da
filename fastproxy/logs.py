"""Logging set-up (run in lifespan, never at import) and the access log, written off the request path.

Log records are handed to a QueueHandler; a QueueListener thread formats and writes them, so the
event loop never blocks on a slow stderr. The access log bypasses `logging` (a LogRecord costs
microseconds per request): AccessLog queues each RequestRecord, formats them in batches and has its
own thread write them, in the configured format, when the `fastproxy` level lets INFO through.

Access line fields (JSON): every RequestRecord field (request_id, method, path, endpoint, model, stream,
status, upstream_status, usage, latency_ms, ttfb_ms, proxy_ms, error, key_id, user_id, key_hint as
`...abcd`, client_ip, disconnected, events, prompt_estimate, request_id_from_client, ts as RFC 3339
UTC), then level, logger and the worker's pid.
"""

from __future__ import annotations

import asyncio
import io
import logging
import logging.handlers
import os
import queue
import stat
import sys
import threading
from collections import deque
from datetime import UTC, datetime
from typing import TextIO

import msgspec

from fastproxy.records import RequestRecord

ACCESS_LOGGER = "fastproxy.access"
_encode = msgspec.json.encode


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": _clock(record.created), "level": record.levelname.lower(), "logger": record.name}
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

    The request path only appends the record to a deque (`write`, the observer). Every `interval`
    seconds `run()` (a task lifespan owns) encodes what is there in one msgspec call (`encode_lines`),
    adds the constant end of every line and the key hint's "..." with two bytes replaces over the
    whole batch (no Python work per line), cuts it into chunks of whole lines (no larger than
    PIPE_BUF when stderr is a pipe, so the lines of several workers sharing it never interleave
    mid-line) and hands them to the writer thread, which only does the blocking writes.
    Formatting stays on the loop's thread on purpose: a second thread doing Python work competes for
    the GIL with the loop, and on a busy CPU that contention costs the loop far more than the work.
    `close()` formats and writes everything handed over, then stops the thread.
    """

    def __init__(self, fmt: str = "json", stream: TextIO | None = None, interval: float = 0.05) -> None:
        self._json = fmt == "json"
        self._stream = stream
        self._interval = interval
        self._pending: deque[RequestRecord] = deque()
        self._chunks: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._chunk_limit = _PIPE_BUF
        self._tail = _tail(os.getpid())
        self._thread = threading.Thread(target=self._write_chunks, name="fastproxy-access-log", daemon=True)
        # The observer: one deque append per request.
        self.write = self._pending.append

    def start(self) -> None:
        self._tail = _tail(os.getpid())
        self._chunk_limit = _chunk_limit(self._stream or sys.stderr)
        self._thread.start()

    async def run(self) -> None:
        """Format pending lines every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.drain()
            except Exception:
                logging.getLogger("fastproxy").exception("access log formatting failed")

    def drain(self) -> None:
        """Format every pending record and hand the chunks to the writer thread (one hand-over per call)."""
        pending = self._pending
        if not pending:
            return
        batch = list(pending)
        pending.clear()
        if self._json:
            # A line ends with the record's `}` and a newline (msgspec escapes newlines inside strings),
            # and `"key_hint":"` cannot occur inside a string (its quotes would be escaped): both
            # replaces touch exactly one place per line.
            blob = _encode_lines(batch).replace(b"}\n", self._tail).replace(b'"key_hint":"', _HINT)
        else:
            blob = "".join(map(_text_line, batch)).encode()
        # One put per drain: every wake-up of the thread is a GIL hand-over with the loop.
        self._chunks.put(_whole_lines(blob, self._chunk_limit))

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


_encode_lines = msgspec.json.Encoder().encode_lines
_HINT = b'"key_hint":"...'


def _tail(pid: int) -> bytes:
    """What ends every JSON access line of this worker, after the record's fields."""
    return b',"level":"info","logger":"%s","pid":%d}\n' % (ACCESS_LOGGER.encode(), pid)


def _whole_lines(blob: bytes, limit: int) -> list[bytes]:
    """`blob` cut into chunks of whole lines, each at most `limit` bytes (a longer line goes alone)."""
    if len(blob) <= limit:
        return [blob]
    chunks: list[bytes] = []
    start = 0
    while start < len(blob):
        end = blob.rfind(b"\n", start, start + limit) + 1
        if end <= start:  # one line longer than the limit
            end = blob.find(b"\n", start) + 1 or len(blob)
        chunks.append(blob[start:end])
        start = end
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


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text_line(r: RequestRecord) -> str:
    local = r.ts.astimezone()
    parts = [f"{local:%Y-%m-%d %H:%M:%S},{local.microsecond // 1000:03d} access {r.status} {r.method} {r.path}"]
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
