"""A built-in OpenAI-compatible mock provider, for the demo, the tests and the benchmarks.

Deterministic output (fixed ids and timestamps) so a test can compare bytes through the proxy with
bytes straight from here. Routes: `/v1/chat/completions`, `/v1/completions`, `/v1/responses`,
`/v1/embeddings`, `/v1/models[/ID]`, `/v1/audio/speech`, Anthropic's `/v1/messages` and
`/v1/messages/count_tokens` (fastproxy/mock/anthropic.py: its errors in Anthropic's format), and Azure's
`/openai/deployments/{deployment}/{chat/completions,completions,embeddings}?api-version=...` (the
deployment is the model when the body names none); any other path echoes the request.

Per-request knobs, as headers:
    x-mock-chunks: content chunks in a stream (default from the CLI)
    x-mock-delay-ms: pause between stream chunks
    x-mock-sleep-ms: pause before the response starts (for timeout tests)
    x-mock-status: answer with this HTTP status and an error body of type `mock_error`
    x-mock-mode: failure-mode directives (below)

Failure modes (fastproxy/mock/modes.py has the grammar): directives come from the model name
(`gpt-4o~status=503,retry_after=2`), the `x-mock-mode` header (`status=503,retry_after=2`) and the
`MOCK_MODE` env var (every request of this instance); per directive, the model beats the header,
which beats the env. The response's `model` echoes the full model string. Directives:
    status=N             answer N with an OpenAI error body (429 `requests`/rate_limit_exceeded,
                         401 invalid_request_error/invalid_api_key, 5xx server_error, other 4xx
                         invalid_request_error)
    code=CODE            the error's code (alone: status 400); context_length_exceeded gets OpenAI's message
    retry_after=S        with a 429 or 503: `retry-after: ceil(S)`, `retry-after-ms: S*1000`
    hang                 read the request, never answer; return when the client disconnects
    first_token_ms=N     wait N ms before sending anything (headers included)
    cut_after=K          streams: headers and K content events, then the app raises, which Granian
                         turns into an aborted chunked body (the client sees a transfer error)
    stall_after=K        streams: K content events, then silence until the client disconnects
    error_event_after=K  streams: K content events, an OpenAI error event, a clean end, no [DONE]
    fail_first=K         the first K requests with this exact model string fail with `status`
                         (default 500; 400 if only `code` is given); later ones drop status and code
    ratelimit_remaining=N  OpenAI's x-ratelimit-* headers (remaining N requests, N*100 tokens) on a success
    malformed_after=K    streams: K content events, an event whose JSON is cut short, a clean end
    cache_read=N, cache_creation=N  Anthropic's usage: prompt tokens read from / written to the prompt cache
An unknown directive or a bad value is a 400 naming it. Stream directives do nothing to non-streamed
requests. `MOCK_REJECT_KEYS` (comma-separated) answers 401 invalid_api_key to a request whose
`Authorization: Bearer`, `api-key` or `x-api-key` header carries one of them, before any directive.

`GET /_mock/stats` counts requests, streams started, completed and cut off by the client, requests by
credential (`auth`: the Authorization or api-key header value, `none` when absent) and by model string
(`models`); `POST /_mock/reset` zeroes them (the fail_first counts too). `GET /_mock/last` returns the
last request's method, path, query, api-version, headers and body as seen here. Counters are per
process: `fastproxy mock-upstream --ports A,B` runs one instance per port.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
from typing import Any

import msgspec

from fastproxy.core.types import Message, Receive, Scope, Send
from fastproxy.mock import anthropic, chat_answer, events
from fastproxy.mock.modes import (
    Mode,
    ModeError,
    error_body,
    error_headers,
    merge,
    parse,
    ratelimit_headers,
    split_model,
)

JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_KINDS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/responses": "responses"}
_ANTHROPIC = ("/v1/messages", "/v1/messages/count_tokens")
_MODEL_PATHS = (*_KINDS, "/v1/embeddings", *_ANTHROPIC)
_AZURE = re.compile(r"/openai/deployments/([^/]+)/(chat/completions|completions|embeddings)")
_encode = events.encode


class StreamCut(Exception):
    """Raised by `cut_after` once its events are sent: Granian then aborts the chunked body."""


class MockUpstream:
    def __init__(
        self,
        chunks: int = 10,
        delay_ms: float = 0.0,
        mode: str = "",
        reject_keys: frozenset[str] = frozenset(),
    ) -> None:
        self.chunks = chunks
        self.delay_ms = delay_ms
        # Parsed and checked once, so a bad MOCK_MODE stops the instance at startup.
        self.env_mode = parse(mode) if mode else {}
        merge(self.env_mode, None, None)
        self.reject_keys = reject_keys
        self.stats = {"requests": 0, "streams_started": 0, "streams_completed": 0, "streams_disconnected": 0}
        self.auth: dict[str, int] = {}
        self.models: dict[str, int] = {}
        self.failed: dict[str, int] = {}  # fail_first: requests seen per model string
        self.last: dict[str, Any] = {}
        self._models = _encode(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": events.CREATED, "owned_by": "fastproxy-mock"}
                    for m in ("mock-model", "gpt-4o-mini", "text-embedding-3-small")
                ],
            }
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path, method = scope["path"], scope["method"]
        if path.startswith("/_mock/"):
            await self._control(path, method, send)
            return
        self.stats["requests"] += 1
        query = scope["query_string"].decode("latin-1")
        self.last = {
            "method": method,
            "path": path,
            "query": query,
            "headers": headers,
            "body": base64.b64encode(body).decode(),
            "api_version": _api_version(query),
        }
        deployment = None
        if azure := _AZURE.fullmatch(path):
            deployment, path = azure[1], "/v1/" + azure[2]
        req: events.Req | None = None
        bad_body: str | None = None
        if method == "POST" and path in _MODEL_PATHS:
            try:
                req = events.decode(body)
                req.model = req.model or deployment or "mock-model"
            except msgspec.DecodeError as exc:
                bad_body = str(exc)
        model = req.model if req else None
        credential = headers.get("authorization") or headers.get("api-key") or headers.get("x-api-key") or "none"
        dialect = anthropic if path in _ANTHROPIC else None
        self.auth[credential] = self.auth.get(credential, 0) + 1
        if model is not None:
            self.models[model] = self.models.get(model, 0) + 1
        if rejected := self._rejected(headers):
            message = f"Incorrect API key provided: ...{rejected[-4:]}."
            await _respond(send, 401, _encode(_error_body(dialect, 401, message=message)))
            return
        try:
            mode = merge(self.env_mode, headers.get("x-mock-mode"), split_model(model)[1] if model else None)
        except ModeError as exc:
            await _respond(send, 400, _encode(_error_body(dialect, 400, message=str(exc))))
            return
        if mode.first_token_ms and await _disconnected(receive, mode.first_token_ms / 1000):
            return
        if mode.hang:
            await _disconnected(receive, None)
            return
        if "x-mock-sleep-ms" in headers:
            await asyncio.sleep(float(headers["x-mock-sleep-ms"]) / 1000)
        if "x-mock-status" in headers:
            status = int(headers["x-mock-status"])
            err = {"error": {"message": f"mock error {status}", "type": "mock_error", "param": None, "code": None}}
            await _respond(send, status, _encode(err if dialect is None else anthropic.error_body(status)))
            return
        if failing := self._failing(mode, model or ""):
            headers_out = JSON + error_headers(mode, failing)
            await _respond(send, failing, _encode(_error_body(dialect, failing, mode.code)), headers_out)
            return
        if bad_body is not None:
            await _respond(send, 400, _encode(_error_body(dialect, 400, message=bad_body)))
            return
        if dialect is not None:
            await self._anthropic(path, body, headers, mode, receive, send)
            return
        if mode.ratelimit_remaining is not None:
            send = _adding_headers(send, ratelimit_headers(mode.ratelimit_remaining))
        await self._route(method, path, req, headers, mode, receive, send, body)

    async def _control(self, path: str, method: str, send: Send) -> None:
        if path == "/_mock/reset" and method == "POST":
            self.stats = dict.fromkeys(self.stats, 0)
            self.auth, self.models, self.failed = {}, {}, {}
            await _respond(send, 200, b"{}")
        elif path == "/_mock/stats":
            await _respond(send, 200, _encode({**self.stats, "auth": self.auth, "models": self.models}))
        else:
            await _respond(send, 200, _encode(self.last))

    def _rejected(self, headers: dict[str, str]) -> str | None:
        if not self.reject_keys:
            return None
        bearer = headers.get("authorization", "")
        for key in (
            bearer[7:] if bearer[:7].lower() == "bearer " else None,
            headers.get("api-key"),
            headers.get("x-api-key"),
        ):
            if key is not None and key in self.reject_keys:
                return key
        return None

    def _failing(self, mode: Mode, model: str) -> int | None:
        """The error status this request gets, if any, counting fail_first's requests per model string."""
        status = mode.error_status
        if status is None or mode.fail_first is None:
            return status
        seen = self.failed.get(model, 0)
        self.failed[model] = seen + 1
        return status if seen < mode.fail_first else None

    async def _route(
        self,
        method: str,
        path: str,
        req: events.Req | None,
        headers: dict[str, str],
        mode: Mode,
        receive: Receive,
        send: Send,
        body: bytes = b"",
    ) -> None:
        if path == "/v1/models":
            await _respond(send, 200, self._models)
        elif path.startswith("/v1/models/"):
            model = path.removeprefix("/v1/models/")
            doc = {"id": model, "object": "model", "created": events.CREATED, "owned_by": "x"}
            await _respond(send, 200, _encode(doc))
        elif path in _KINDS and req is not None:
            chunks = int(headers.get("x-mock-chunks", self.chunks))
            delay = float(headers.get("x-mock-delay-ms", self.delay_ms)) / 1000
            kind = _KINDS[path]
            special = chat_answer.answer(body, _words(chunks)) if kind == "chat" else None
            if special is not None or (kind == "chat" and mode.cache_read):
                await self._chat(req, special or chat_answer.Answer(_words(chunks)), mode, delay, receive, send)
            elif req.stream:
                await self._stream(kind, req, chunks, delay, mode, receive, send)
            else:
                await _respond(send, 200, _encode(events.complete(kind, req, chunks)))
        elif path == "/v1/embeddings" and req is not None:
            vec = [round(0.001 * i, 3) for i in range(256)]
            tokens = events.prompt_tokens(req)
            doc = {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": vec}],
                "model": req.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
            await _respond(send, 200, _encode(doc))
        elif path == "/v1/audio/speech" and method == "POST":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"audio/mpeg")]})
            for i in range(4):
                await send({"type": "http.response.body", "body": bytes([i]) * 1024, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            echo = {k: v for k, v in self.last.items() if k not in ("headers", "api_version")}
            await _respond(send, 200, _encode({"object": "echo", **echo}))

    async def _chat(
        self, req: events.Req, ans: chat_answer.Answer, mode: Mode, delay: float, receive: Receive, send: Send
    ) -> None:
        """Chat answers with tool calls, a matched stop string, a length cut or cached tokens (mock/chat_answer.py)."""
        prompt, model = events.prompt_tokens(req), req.model or "mock-model"
        if not req.stream:
            await _respond(
                send, 200, _encode(chat_answer.complete(model, ans, prompt, mode.cache_read, events.CREATED))
            )
            return
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        stream = chat_answer.stream(model, ans, prompt, mode.cache_read, include_usage, events.CREATED)
        end = mode.stream_end
        if end is not None:
            stream = stream[: end[1]]
        failure = events.STREAM_ERROR if end is None or end[0] != "malformed" else events.MALFORMED_EVENT
        await self._send_stream(stream, end, failure, delay, receive, send)

    async def _stream(
        self, kind: str, req: events.Req, chunks: int, delay: float, mode: Mode, receive: Receive, send: Send
    ) -> None:
        stream = events.stream_events(kind, req, chunks)
        end = mode.stream_end
        if end is not None:
            stream = stream[: events.first_content(kind) + min(end[1], chunks)]
        failure = events.STREAM_ERROR if end is None or end[0] != "malformed" else events.MALFORMED_EVENT
        await self._send_stream(stream, end, failure, delay, receive, send)

    async def _anthropic(
        self, path: str, body: bytes, headers: dict[str, str], mode: Mode, receive: Receive, send: Send
    ) -> None:
        """Anthropic's Messages API (fastproxy/mock/anthropic.py); errors in its format."""
        try:
            req = anthropic.decode(body)
            if path.endswith("/count_tokens"):
                req.max_tokens = req.max_tokens or 1  # count_tokens takes no max_tokens
            anthropic.check(req, headers)
        except (msgspec.DecodeError, anthropic.BadRequest) as exc:
            await _respond(send, 400, _encode(anthropic.error_body(400, str(exc))))
            return
        prompt = anthropic.input_tokens(body)
        if path.endswith("/count_tokens"):
            await _respond(send, 200, _encode(anthropic.count_tokens(body)))
            return
        chunks = int(headers.get("x-mock-chunks", self.chunks))
        delay = float(headers.get("x-mock-delay-ms", self.delay_ms)) / 1000
        ids = [(b"request-id", b"req_mock")]
        if not req.stream:
            answer = anthropic.complete(req, prompt, chunks, mode.cache_read, mode.cache_creation)
            await _respond(send, 200, _encode(answer), JSON + ids)
            return
        stream, cuts = anthropic.stream_events(req, prompt, chunks, mode.cache_read, mode.cache_creation)
        end = mode.stream_end
        if end is not None:
            kept = min(end[1], len(cuts))
            stream = stream[: cuts[kept - 1] if kept else cuts[0] - 1]  # up to just after the K-th delta
        failure = anthropic.MID_STREAM_ERROR if end is None or end[0] != "malformed" else anthropic.MALFORMED_EVENT
        await self._send_stream(stream, end, failure, delay, receive, send, ids)

    async def _send_stream(
        self,
        stream: list[bytes],
        end: tuple[str, int] | None,
        failure: bytes,
        delay: float,
        receive: Receive,
        send: Send,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Send the events; then, by the failure mode, a clean end, an abort, a stall, or `failure` and an end."""
        self.stats["streams_started"] += 1
        disconnected = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE + (extra or [])})
            for event in stream:
                if delay:
                    await asyncio.sleep(delay)
                if disconnected.is_set():
                    raise ConnectionError
                await send({"type": "http.response.body", "body": event, "more_body": True})
            if end is None:
                await send({"type": "http.response.body", "body": b""})
                self.stats["streams_completed"] += 1
            elif end[0] == "cut":
                raise StreamCut(f"cut_after={end[1]}: aborting the response on purpose")
            elif end[0] == "stall":
                await disconnected.wait()
                raise ConnectionError
            else:
                await send({"type": "http.response.body", "body": failure, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except (ConnectionError, OSError, RuntimeError):
            self.stats["streams_disconnected"] += 1
        finally:
            watcher.cancel()


def _error_body(dialect: object, status: int, code: str | None = None, message: str | None = None) -> dict[str, Any]:
    """The error body in the dialect of the path: OpenAI's, or Anthropic's on /v1/messages."""
    if dialect is anthropic:
        return anthropic.error_body(status, message)
    return error_body(status, code, message)


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = JSON) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _adding_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] < 400:
            message = {**message, "headers": [*message["headers"], *extra]}
        await send(message)

    return wrapped


async def _disconnected(receive: Receive, seconds: float | None) -> bool:
    """Wait for the client to leave (True) or for `seconds` to pass (False; None waits for ever)."""

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(watch(), seconds)
    except TimeoutError:
        return False
    return True


def _api_version(query: str) -> str | None:
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "api-version":
            return value
    return None


def _words(chunks: int) -> list[str]:
    return [events.WORDS[i % len(events.WORDS)].decode() for i in range(chunks)]


def app_from_env() -> MockUpstream:
    return MockUpstream(
        int(os.environ.get("MOCK_CHUNKS", "10")),
        float(os.environ.get("MOCK_DELAY_MS", "0")),
        os.environ.get("MOCK_MODE", ""),
        frozenset(k.strip() for k in os.environ.get("MOCK_REJECT_KEYS", "").split(",") if k.strip()),
    )
