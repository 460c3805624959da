"""Failure modes of the mock provider: the directive grammar, its validation, and OpenAI-shaped errors.

A request selects its failure mode with directives, from three places merged per directive (a later
source overrides an earlier one for the directives it names):
    MOCK_MODE env var (every request of that mock instance)  <  `x-mock-mode` header  <  the model name
Grammar: `model = NAME "~" DIRECTIVE ("," DIRECTIVE)*`; the header and env carry only the directives.
A directive is `name=value`, or the bare flag `hang`. See `Mode` for the names and their meaning.
An unknown name, a bad value or a duplicate raises `ModeError`, which the server answers as a 400.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgspec


class ModeError(ValueError):
    """A directive the mock does not understand; the message names it."""


class Mode(msgspec.Struct, frozen=True, kw_only=True):
    """The merged directives of one request. None / False means "not asked for"."""

    status: int | None = None  # answer with this status and an OpenAI error body
    code: str | None = None  # the error's code; alone it implies status 400
    retry_after: float | None = None  # seconds, sent as retry-after(-ms) with a 429 or 503
    hang: bool = False  # never answer; return when the client leaves
    first_token_ms: float = 0.0  # wait before sending anything, headers included
    cut_after: int | None = None  # streams: K content events, then abort the connection
    stall_after: int | None = None  # streams: K content events, then silence until the client leaves
    error_event_after: int | None = None  # streams: K content events, an error event, a clean end
    malformed_after: int | None = None  # streams: K content events, an event that is not JSON, a clean end
    fail_first: int | None = None  # the first K requests with this model string fail, later ones succeed
    ratelimit_remaining: int | None = None  # OpenAI's x-ratelimit-* headers on a success
    # Anthropic's Messages: prompt tokens reported as read from / written to the prompt cache.
    cache_read: int = 0
    cache_creation: int = 0

    @property
    def error_status(self) -> int | None:
        if self.status is not None:
            return self.status
        if self.code is not None:
            return 400
        return 500 if self.fail_first is not None else None

    @property
    def stream_end(self) -> tuple[str, int] | None:
        """How a stream ends early, if it does: ("cut" | "stall" | "error_event" | "malformed", K)."""
        for name in _STREAM_ENDS:
            value = getattr(self, name)
            if value is not None:
                return name.removesuffix("_after"), value
        return None


def _int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _status(text: str) -> int:
    value = int(text)
    if not 400 <= value <= 599:
        raise ValueError(text)
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


def _code(text: str) -> str:
    if not text or not text.replace("_", "").isalnum():
        raise ValueError(text)
    return text


_PARSERS: dict[str, Callable[[str], Any]] = {
    "status": _status,
    "code": _code,
    "retry_after": _seconds,
    "first_token_ms": _seconds,
    "cut_after": _int,
    "stall_after": _int,
    "error_event_after": _int,
    "fail_first": _int,
    "ratelimit_remaining": _int,
    "malformed_after": _int,
    "cache_read": _int,
    "cache_creation": _int,
}
_STREAM_ENDS = ("cut_after", "stall_after", "error_event_after", "malformed_after")


def parse(text: str) -> dict[str, Any]:
    """Directives (`a=1,b=2,hang`) to typed values; raises ModeError naming the first bad one."""
    found: dict[str, Any] = {}
    for item in text.split(","):
        name, eq, raw = item.strip().partition("=")
        if name == "hang" and not eq:
            value: Any = True
        elif name in _PARSERS and eq:
            try:
                value = _PARSERS[name](raw)
            except ValueError:
                raise ModeError(f"bad value for mock directive {name!r}: {raw!r}") from None
        elif name in _PARSERS or name == "hang":
            raise ModeError(f"bad mock directive {item.strip()!r}")
        else:
            raise ModeError(f"unknown mock directive {item.strip()!r}")
        if name in found:
            raise ModeError(f"mock directive {name!r} given twice")
        found[name] = value
    return found


def split_model(model: str) -> tuple[str, str | None]:
    """`NAME~DIRECTIVES` to (NAME, DIRECTIVES); a model without `~` has no directives."""
    name, tilde, directives = model.partition("~")
    return name, directives if tilde else None


def merge(env: dict[str, Any], header: str | None, model: str | None) -> Mode:
    """One request's Mode: env, then the header, then the model's directives, each overriding the last."""
    merged = dict(env)
    for source in (header, model):
        if source is not None:
            merged.update(parse(source))
    ends = [name for name in _STREAM_ENDS if name in merged]
    if len(ends) > 1:
        raise ModeError(f"mock directives {' and '.join(ends)} exclude each other")
    return Mode(**merged)


_CONTEXT_MESSAGE = (
    "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 "
    "tokens. Please reduce the length of the messages."
)


def error_body(status: int, code: str | None = None, message: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape for a status: 429 `requests`, 5xx `server_error`, other 4xx invalid_request_error."""
    param = None
    if status == 429:
        kind, code = "requests", code or "rate_limit_exceeded"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
        if status == 401:
            code = code or "invalid_api_key"
    if code == "context_length_exceeded":
        message, param = message or _CONTEXT_MESSAGE, "messages"
    return {"error": {"message": message or f"mock error {status}", "type": kind, "param": param, "code": code}}


def error_headers(mode: Mode, status: int) -> list[tuple[bytes, bytes]]:
    if mode.retry_after is None or status not in (429, 503):
        return []
    return [
        (b"retry-after", str(math.ceil(mode.retry_after)).encode()),
        (b"retry-after-ms", str(int(mode.retry_after * 1000)).encode()),
    ]


def ratelimit_headers(remaining: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-ratelimit-limit-requests", b"1000"),
        (b"x-ratelimit-remaining-requests", str(remaining).encode()),
        (b"x-ratelimit-reset-requests", b"1s"),
        (b"x-ratelimit-limit-tokens", b"100000"),
        (b"x-ratelimit-remaining-tokens", str(remaining * 100).encode()),
        (b"x-ratelimit-reset-tokens", b"1s"),
    ]
