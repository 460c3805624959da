"""Logging set-up (run in lifespan, never at import) and the access log, written off the request path.

Records are handed to a QueueHandler; a QueueListener thread formats and writes them, so the event
loop never blocks on a slow stderr.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys

import msgspec

from fastproxy.records import RequestRecord

ACCESS_LOGGER = "fastproxy.access"
_encode = msgspec.json.encode


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name == ACCESS_LOGGER:
            return record.getMessage()
        doc = {"level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _encode(doc).decode()


def configure_logging(level: str, fmt: str) -> logging.handlers.QueueListener:
    """Route every fastproxy logger through one queue; returns the listener for lifespan to stop."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(q, handler, respect_handler_level=False)
    root = logging.getLogger("fastproxy")
    root.handlers[:] = [logging.handlers.QueueHandler(q)]
    root.setLevel(level.upper())
    root.propagate = False
    listener.start()
    return listener


class AccessLog:
    """One JSON line per request."""

    def __init__(self) -> None:
        self._logger = logging.getLogger(ACCESS_LOGGER)

    def write(self, record: RequestRecord) -> None:
        if self._logger.isEnabledFor(logging.INFO):
            self._logger.info(_encode(record).decode())
