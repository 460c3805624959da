"""Anthropic ingress: `POST /v1/messages` and `POST /v1/messages/count_tokens` for Anthropic SDK clients
(Claude Code, the `anthropic` SDK), routed by `model` like chat completions.

Per attempt (proxy/failover.py asks `Ingress.leg(provider)`), the target's provider decides the leg:
- an `anthropic` provider: the request and the answer pass through byte for byte (only `model` rewritten for
  a target that names another); usage is read from message_start / message_delta (translate/messages_watch.py);
- any OpenAI-compatible provider: the request is translated to chat completions once per client request
  (translate/ingress_request.py), the answer and its stream back to Anthropic's (translate/ingress_response.py,
  translate/ingress_stream.py).

Everything else is the chat path's: auth (a fastproxy key in `x-api-key` or `Authorization: Bearer`), limits
with the token estimate and its reconciliation, budgets, fallback and the stream commit point, usage rows and
metrics. Errors on these routes, the proxy's own included, are Anthropic's `{"type": "error", "error": {...}}`.
"""

from __future__ import annotations

from time import perf_counter
from typing import Protocol

from fastproxy.core.errors import InvalidRequest, ProxyError
from fastproxy.core.responses import send_json
from fastproxy.core.schemas import RequestView, TokenUsage
from fastproxy.core.types import RawHeaders, Send
from fastproxy.proxy.body import with_model
from fastproxy.proxy.commit import CommitPoint, MessagesCommitPoint
from fastproxy.proxy.exchange import Outcome
from fastproxy.proxy.headers import proxy_timing
from fastproxy.proxy.sse import StreamWatcher
from fastproxy.translate.ingress_request import (
    MessagesRequest,
    UnsupportedField,
    decode_request,
    encode_chat,
    to_chat,
)
from fastproxy.translate.ingress_response import error_body, error_from_openai, to_message
from fastproxy.translate.ingress_stream import ChatToMessagesStream, error_event
from fastproxy.translate.messages_watch import MessagesWatcher, usage_of_body
from fastproxy.upstream import HeaderList
from fastproxy.upstream.providers import LiveProvider
from fastproxy.upstream.router import LiveRoute

_CHAT_TAIL = "/chat/completions"
COUNT_TAIL = "/messages/count_tokens"
COUNT_ENDPOINT = "messages.count_tokens"
# Rough figures for count_tokens answered by the proxy itself (no provider can count): characters per token
# of text, and a flat count per image (Anthropic's own estimate for a ~1100 x 1100 px image).
_CHARS_PER_TOKEN = 4
_IMAGE_TOKENS = 1600


def credential(headers: RawHeaders) -> bytes | None:
    """An Anthropic client's key (`x-api-key`), as the Authorization value the authenticator reads."""
    for name, value in headers:
        if name == b"x-api-key":
            return b"Bearer " + value.strip()
    return None


async def send_error(send: Send, err: ProxyError, request_id: bytes | None = None) -> None:
    """Any error of these routes, in Anthropic's format with the same status and headers."""
    headers = list(err.headers)
    if request_id is not None:
        headers.append((b"x-request-id", request_id))
    await send_json(send, err.status, error_body(err.status, err.message), headers)


class Leg(Protocol):
    """How one attempt talks to its provider and what the client gets back."""

    def url(self, provider: LiveProvider, model: str, query: str) -> str: ...
    def payload(self, model: str) -> bytes: ...
    def headers(self, client: HeaderList, provider: tuple[tuple[str, str], ...]) -> HeaderList: ...
    def watcher(self) -> StreamWatcher: ...
    def commit_point(self) -> CommitPoint | MessagesCommitPoint: ...
    def response(self, data: bytes, out: Outcome) -> bytes:
        """The client's body for a 2xx non-streamed answer; sets out.usage. May raise MalformedUpstream."""
        ...

    def error_body(self, status: int, data: bytes) -> bytes: ...
    def error_event(self, message: str) -> bytes: ...


class _Passthrough:
    """An `anthropic` provider: bytes both ways."""

    __slots__ = ("_body", "_client_model", "_tail", "_versioned")

    def __init__(self, body: bytes, model: str, tail: str, versioned: frozenset[str]) -> None:
        self._body = body
        self._client_model = model
        self._tail = tail
        # The client's own anthropic-* headers, which win over the provider's defaults.
        self._versioned = versioned

    def url(self, provider: LiveProvider, model: str, query: str) -> str:
        return provider.url(self._tail, model, query)

    def payload(self, model: str) -> bytes:
        return self._body if model == self._client_model else with_model(self._body, model)

    def headers(self, client: HeaderList, provider: tuple[tuple[str, str], ...]) -> HeaderList:
        if not self._versioned:
            return [*client, *provider]
        return [*client, *(h for h in provider if h[0] not in self._versioned)]

    def watcher(self) -> StreamWatcher:
        return MessagesWatcher()

    def commit_point(self) -> MessagesCommitPoint:
        return MessagesCommitPoint()

    def response(self, data: bytes, out: Outcome) -> bytes:
        out.usage = usage_of_body(data) if self._tail != COUNT_TAIL else None
        return data

    def error_body(self, status: int, data: bytes) -> bytes:
        return data

    def error_event(self, message: str) -> bytes:
        return error_event(500, message)


class _Translated:
    """An OpenAI-compatible provider: the request as chat completions, the answer back as Anthropic's."""

    __slots__ = ("_body", "_client_model", "_estimate", "_stop")

    def __init__(self, body: bytes, estimate: int) -> None:
        """Decode and translate the request once; InvalidRequest names what can't be (before anything is taken
        from the limits or sent upstream)."""
        try:
            request = decode_request(body)
            self._body = encode_chat(to_chat(request))
        except UnsupportedField as exc:
            raise InvalidRequest(exc.message, param=exc.param) from exc
        self._client_model = request.model
        self._stop = request.stop_sequences
        self._estimate = estimate

    def url(self, provider: LiveProvider, model: str, query: str) -> str:
        return provider.url(_CHAT_TAIL, model, "")  # the client's query (Claude Code's ?beta=true) is Anthropic's

    def payload(self, model: str) -> bytes:
        return self._body if model == self._client_model else with_model(self._body, model)

    def headers(self, client: HeaderList, provider: tuple[tuple[str, str], ...]) -> HeaderList:
        return [*(h for h in client if not h[0].startswith("anthropic-")), *provider]

    def watcher(self) -> StreamWatcher:
        return ChatToMessagesStream(self._stop, self._estimate)

    def commit_point(self) -> CommitPoint:
        return CommitPoint()

    def response(self, data: bytes, out: Outcome) -> bytes:
        body, usage = to_message(data, self._stop)
        out.usage = TokenUsage.from_view(usage) if usage is not None else None
        return body

    def error_body(self, status: int, data: bytes) -> bytes:
        return error_from_openai(status, data)

    def error_event(self, message: str) -> bytes:
        return error_event(500, message)


class Ingress:
    """One client request's legs: built once, chosen per attempt by the provider's type."""

    __slots__ = ("_passthrough", "_translated")

    def __init__(self, passthrough: _Passthrough, translated: _Translated | None) -> None:
        self._passthrough = passthrough
        self._translated = translated

    def leg(self, provider: LiveProvider) -> Leg:
        if provider.type == "anthropic":
            return self._passthrough
        if self._translated is None:
            # prepare() translates whenever the route has a target of another type: this one can't be reached.
            raise InvalidRequest("This model is not served by an Anthropic provider.")
        return self._translated


def _speaks_anthropic(route: LiveRoute) -> tuple[bool, bool]:
    """(some target is an anthropic provider, some target is not)."""
    types = {t.provider.type == "anthropic" for group in route.groups for t in group}
    return True in types, False in types


def prepare(
    body: bytes, view: RequestView, route: LiveRoute, tail: str, forward: HeaderList, out: Outcome
) -> LiveRoute | None:
    """Set out.ingress for this request and return the route to plan over: for count_tokens only its anthropic
    targets, and None when it has none (the proxy answers: count_locally). A request that some target needs
    translated is translated here, before anything is taken or sent: InvalidRequest names an unsupported field."""
    anthropic, other = _speaks_anthropic(route)
    versioned = frozenset(name for name, _ in forward if name.startswith("anthropic-"))
    translated = None
    if tail == COUNT_TAIL:
        if not anthropic:
            return None
        anthropic_only = [t for group in route.groups for t in group if t.provider.type == "anthropic"]
        route = LiveRoute(route.name, anthropic_only, route.max_attempts, direct=route.direct, config=route.config)
    elif other:
        translated = _Translated(body, out.prompt_estimate)
    out.ingress = Ingress(_Passthrough(body, view.model or "", tail, versioned), translated)
    return route


async def count_locally(body: bytes, send: Send, request_id: bytes, extra: RawHeaders, out: Outcome) -> None:
    """count_tokens for a model no Anthropic provider serves: the proxy's own estimate (never 0)."""
    request = _decode_count(body)
    tokens = max(1, estimate_input_tokens(request))
    now = perf_counter()
    out.status, out.ttfb = 200, now
    headers: RawHeaders = [(b"x-request-id", request_id), proxy_timing(out.started, now), *extra]
    await send_json(send, 200, b'{"input_tokens":%d}' % tokens, headers)


def _decode_count(body: bytes) -> MessagesRequest:
    try:
        return decode_request(body)
    except UnsupportedField as exc:
        raise InvalidRequest(exc.message, param=exc.param) from exc


def estimate_input_tokens(request: MessagesRequest) -> int:
    """About four characters a token over the text the model reads (system, messages, tool definitions and
    calls, tool results); a flat figure per image."""
    chars = 0
    images = 0
    system = request.system
    if isinstance(system, str):
        chars += len(system)
    elif system:
        chars += sum(len(b.text or "") for b in system)
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            chars += len(content)
            continue
        for block in content:
            if block.type == "image":
                images += 1
                continue
            chars += len(block.text or "") + len(block.input) + len(block.name or "")
            inner = block.content
            if isinstance(inner, str):
                chars += len(inner)
            elif inner:
                for part in inner:
                    if part.type == "image":
                        images += 1
                    else:
                        chars += len(part.text or "")
    for tool in request.tools or ():
        chars += len(tool.name) + len(tool.description or "") + len(tool.input_schema)
    return chars // _CHARS_PER_TOKEN + images * _IMAGE_TOKENS + 4 * len(request.messages)
