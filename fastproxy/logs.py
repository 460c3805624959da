"""Logging set-up (run in lifespan, never at import) and the access log, written off the request path.

Log records are handed to a QueueHandler; a QueueListener thread formats and writes them, so the
event loop never blocks on a slow stderr. The access log bypasses `logging` (a LogRecord costs
microseconds per request): AccessLog queues each RequestRecord, formats them in batches and has its
own thread write them, in the configured format, when the `fastproxy` level lets INFO through.

Access line fields (JSON): every RequestRecord field (request_id, method, path, endpoint, model, stream,
status, upstream_status, usage, latency_ms, ttfb_ms, proxy_ms, error, key_id, user_id, key_hint as
`...abcd`, client_ip, disconnected, events), then ts, level, logger and the worker's pid.
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
import time
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

    The request path only appends the time and the record to deques (`write`, the observer). Every
    `access_log_interval` seconds a task lifespan owns calls `drain()`, which formats what is there
    into chunks of whole lines (no larger than PIPE_BUF when stderr is a pipe, so the lines of several
    workers sharing it never interleave mid-line) and hands them to the writer thread, which only does
    the blocking writes.
    Formatting stays on the loop's thread on purpose: a second thread doing Python work competes for
    the GIL with the loop, and on a busy CPU that contention costs the loop far more than the work.
    Lines are bytes from msgspec to the file descriptor (no str round trip), one loop per batch with
    no call per line: the formatting is most of the access log's cost (bench/instructions.py).
    `close()` formats and writes everything handed over, then stops the thread.
    """

    def __init__(self, fmt: str = "json", stream: TextIO | None = None) -> None:
        self._json = fmt == "json"
        self._stream = stream
        # When each record was handed over, and the record: two deques, not one of (time, record)
        # tuples, because a tuple is tracked by the garbage collector (a float and a gc=False record
        # are not) and hundreds alive until the next drain would make its young-generation passes
        # more frequent and longer.
        self._times: deque[float] = deque()
        self._records: deque[RequestRecord] = deque()
        self._chunks: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._chunk_limit = _PIPE_BUF
        self._stamps = _Stamps(os.getpid())
        self._thread = threading.Thread(target=self._write_chunks, name="fastproxy-access-log", daemon=True)

    def write(self, record: RequestRecord) -> None:
        self._times.append(time.time())
        self._records.append(record)

    def start(self) -> None:
        self._stamps = _Stamps(os.getpid())
        self._chunk_limit = _chunk_limit(self._stream or sys.stderr)
        self._thread.start()

    def drain(self) -> None:
        """Format every pending record and hand the chunks to the writer thread (one hand-over per call)."""
        if not self._records:
            return
        times, records = list(self._times), list(self._records)
        self._times.clear()
        self._records.clear()
        if self._json:
            lines = self._json_lines(times, records)
        else:
            lines = [_text_line(ts, r).encode() for ts, r in zip(times, records, strict=True)]
        limit = self._chunk_limit
        chunks: list[bytes] = []
        if sum(map(len, lines)) <= limit:
            chunks.append(b"".join(lines))
        else:
            chunk: list[bytes] = []
            size = 0
            for line in lines:
                if size + len(line) > limit and chunk:
                    chunks.append(b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            chunks.append(b"".join(chunk))
        # One put per drain: every wake-up of the thread is a GIL hand-over with the loop.
        self._chunks.put(chunks)

    def _json_lines(self, times: list[float], records: list[RequestRecord]) -> list[bytes]:
        # The record's fields first (a line starts with {"request_id": tests and greps rely on it), then
        # ts, level, logger and pid. key_hint holds the last 4 characters only; the "..." makes that
        # plain to whoever reads the log (a quote inside a JSON string is escaped, so the first
        # `"key_hint":"` is the key itself).
        stamps = self._stamps
        tail, millis = stamps.tail, _MILLIS
        lines: list[bytes] = []
        second, prefix = -1, b""
        for ts, r in zip(times, records, strict=True):
            ms = int(ts * 1000)
            if ms // 1000 != second:
                second = ms // 1000
                prefix = stamps.prefix(second)
            body = _encode(r)
            if r.key_hint:
                body = body.replace(b'"key_hint":"', b'"key_hint":"...', 1)
            lines.append(b"".join((body[:-1], prefix, millis[ms % 1000], tail)))
        return lines

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


_MILLIS = tuple(b"%03d" % i for i in range(1000))


class _Stamps:
    """The constant parts of a JSON access line's end: `,"ts":"<second>.` per second, and the rest."""

    __slots__ = ("_prefix", "_second", "tail")

    def __init__(self, pid: int) -> None:
        self._second = -1
        self._prefix = b""
        self.tail = b'Z","level":"info","logger":"%s","pid":%d}\n' % (ACCESS_LOGGER.encode(), pid)

    def prefix(self, second: int) -> bytes:
        if second != self._second:
            self._second = second
            stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._prefix = b',"ts":"' + stamp.encode() + b"."
        return self._prefix


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


def _text_line(ts: float, r: RequestRecord) -> str:
    local = datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
    parts = [f"{local},{int(ts * 1000) % 1000:03d} access {r.status} {r.method} {r.path}"]
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
