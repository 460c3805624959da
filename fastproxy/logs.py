"""Logging set-up (run in lifespan, never at import) and the access log, written off the request path.

Records are handed to a QueueHandler; a QueueListener thread formats and writes them, so the event
loop never blocks on a slow stderr. An access record carries the RequestRecord itself and is not
formatted on the event loop either: the listener thread encodes it.

Access line fields (JSON): every RequestRecord field (request_id, method, path, endpoint, model, stream,
status, upstream_status, usage, latency_ms, ttfb_ms, proxy_ms, error, key_id, user_id, key_hint as
`...abcd`, client_ip, disconnected, events), then ts, level, logger and the worker's pid.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import sys
from datetime import UTC, datetime

import msgspec

from fastproxy.records import RequestRecord

ACCESS_LOGGER = "fastproxy.access"
_encode = msgspec.json.encode


def _ts(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _masked(r: RequestRecord) -> RequestRecord:
    # key_hint holds the last 4 characters only; the ellipsis makes that plain to whoever reads the log.
    return msgspec.structs.replace(r, key_hint="..." + r.key_hint) if r.key_hint else r


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, RequestRecord):
            # The record's fields first: a line starts with {"request_id" (tests and greps rely on it).
            body = _encode(_masked(record.msg)).decode()
            return f'{body[:-1]},"ts":"{_ts(record)}","level":"info","logger":"{ACCESS_LOGGER}","pid":{os.getpid()}}}'
        doc = {"ts": _ts(record), "level": record.levelname.lower(), "logger": record.name}
        doc["message"] = record.getMessage()
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _encode(doc).decode()


class _TextFormatter(logging.Formatter):
    """Human-readable lines, for `fastproxy demo` and a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        r = record.msg
        if not isinstance(r, RequestRecord):
            return super().format(record)
        parts = [f"{self.formatTime(record)} access {r.status} {r.method} {r.path}"]
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
        return " ".join(parts)


class _QueueHandler(logging.handlers.QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # An access record holds an immutable-by-convention RequestRecord: hand it over as it is and
        # let the listener thread format it, instead of formatting on the event loop.
        if isinstance(record.msg, RequestRecord):
            return record
        prepared: logging.LogRecord = super().prepare(record)
        return prepared


def configure_logging(level: str, fmt: str) -> logging.handlers.QueueListener:
    """Route every fastproxy logger through one queue; returns the listener for lifespan to stop."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(q, handler, respect_handler_level=False)
    root = logging.getLogger("fastproxy")
    root.handlers[:] = [_QueueHandler(q)]
    root.setLevel(level.upper())
    root.propagate = False
    listener.start()
    return listener


class AccessLog:
    """One line per request, at INFO on the `fastproxy.access` logger."""

    def __init__(self) -> None:
        self._logger = logging.getLogger(ACCESS_LOGGER)

    def write(self, record: RequestRecord) -> None:
        logger = self._logger
        if logger.isEnabledFor(logging.INFO):
            # makeRecord + handle skips Logger._log's caller lookup (a stack walk) on every request.
            logger.handle(logger.makeRecord(ACCESS_LOGGER, logging.INFO, "", 0, record, (), None))
