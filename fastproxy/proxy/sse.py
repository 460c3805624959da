"""An incremental SSE framer that watches a stream for its usage without re-encoding it.

Bytes are forwarded as they arrive. Only when the proxy itself added `stream_options.include_usage`
does it touch them, to undo exactly what that option changes (see shared/CONVENTIONS.md): the extra
final chunk with empty `choices` and the `"usage":null` member of every other chunk. Inside a JSON
string a quote is always escaped, so `,"usage":null` can only ever be a real member, never content.
"""

from __future__ import annotations

import re
from typing import Protocol

from fastproxy.core.schemas import TokenUsage, usage_from_json

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_EVENT = re.compile(rb"(.*?)(?:\r\n\r\n|\n\n|\r\r)", re.DOTALL)
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
# How a complete stream ends: `data: [DONE]` (chat, completions), or the Responses API's final event.
# A line starts after LF, CRLF or a lone CR: all three end SSE lines.
_END = re.compile(rb'(?:^|[\r\n])data: ?\[DONE\]|"type"\s*:\s*"response\.(?:completed|incomplete|failed)"')
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,')


def _last_boundary_end(data: bytes) -> int:
    """Index just past the last event boundary in data, or -1."""
    if data.endswith(b"\n\n"):
        return len(data)  # the usual case: providers send one whole event per chunk
    end = -1
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        i = data.rfind(sep)
        if i != -1 and i + len(sep) > end:
            end = i + len(sep)
    return end


def _count_events(data: bytes) -> int:
    if b"\r" not in data:
        return data.count(b"\n\n")
    return len(_BOUNDARY.findall(data))


def _event_payload(event: bytes) -> bytes:
    lines = [line[5:].removeprefix(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    return b"\n".join(lines)


class StreamWatcher(Protocol):
    """What the request path needs of a stream's watcher: this SSEWatcher, or a translator that rewrites
    another provider's stream (fastproxy/translate) as it goes."""

    @property
    def usage(self) -> TokenUsage | None: ...
    @property
    def events(self) -> int: ...
    @property
    def ended(self) -> bool: ...
    @property
    def failure(self) -> str | None:
        """Set when the watcher itself wrote the client's error event (its code): nothing is added after it."""
        ...

    def feed(self, chunk: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


class SSEWatcher:
    """Feed it upstream chunks; it returns what to forward and remembers the last usage it saw.

    With strip=False every chunk is returned unchanged the moment it arrives. With strip=True
    (include_usage was added by the proxy) only whole events are returned, so a partial event waits
    for its end: real providers send one event per chunk, so in practice nothing waits.
    """

    __slots__ = ("_last", "_pending", "events", "failure", "strip", "usage")

    def __init__(self, strip: bool) -> None:
        self.strip = strip
        # Bytes pass through: an upstream's own error event is forwarded, never written by this watcher.
        self.failure: str | None = None
        self.usage: TokenUsage | None = None
        self.events = 0
        self._pending = b""
        # The last whole events seen: the stream ended properly if its final event is in them.
        self._last = b""

    @property
    def ended(self) -> bool:
        """Whether the last event seen is the stream's proper end (read once, after the stream)."""
        return _END.search(self._last) is not None

    def feed(self, chunk: bytes) -> bytes:
        if not self._pending and chunk.endswith(b"\n\n"):
            # The usual case, once per SSE event: whole events and nothing held back, so no slicing.
            out = self._process(chunk)
            return out if self.strip else chunk
        data = self._pending + chunk if self._pending else chunk
        end = _last_boundary_end(data)
        if end == -1:
            self._pending = data
            return b"" if self.strip else chunk
        complete, self._pending = data[:end], data[end:]
        out = self._process(complete)
        return out if self.strip else chunk

    def finish(self) -> bytes:
        """The stream ended: an event left without its blank line is still read, and goes out as it is."""
        rest, self._pending = self._pending, b""
        if not rest:
            return b""
        out = self._process(rest + b"\n\n")
        if not self.strip:
            return rest
        return out.removesuffix(b"\n\n")

    def _process(self, complete: bytes) -> bytes:
        self._last = complete
        self.events += _count_events(complete)
        if b'"usage"' not in complete:
            return complete
        if self.strip:
            complete = _NULL_USAGE.sub(b"", complete)
        if not _USAGE_OBJECT.search(complete):
            return complete
        kept: list[bytes] = []
        pos = 0
        for m in _EVENT.finditer(complete):
            pos = m.end()
            event = m.group(1)
            if _USAGE_OBJECT.search(event):
                usage, empty_choices = usage_from_json(_event_payload(event))
                if usage is not None:
                    self.usage = usage
                    if self.strip and empty_choices:
                        continue
            kept.append(m.group(0))
        kept.append(complete[pos:])
        return b"".join(kept)
