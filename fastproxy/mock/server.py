"""A built-in OpenAI-compatible mock provider, for the demo, the tests and the benchmarks.

Deterministic output (fixed ids and timestamps) so a test can compare bytes through the proxy with
bytes straight from here. Per-request knobs, as headers:
    x-mock-chunks: content chunks in a stream (default from the CLI)
    x-mock-delay-ms: pause between stream chunks
    x-mock-sleep-ms: pause before the response starts (for timeout tests)
    x-mock-status: answer with this HTTP status and an OpenAI error body
`GET /_mock/stats` counts streams started, completed and cut off by the client; `GET /_mock/last`
returns the last request's headers and body as seen here.
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import msgspec

from fastproxy.core.types import Receive, Scope, Send

CREATED = 1_700_000_000
WORDS = [b"The", b" quick", b" brown", b" fox", b" jumps", b" over", b" the", b" lazy", b" dog", b"."]
JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


class _Opts(msgspec.Struct):
    include_usage: bool | None = None


class _Req(msgspec.Struct):
    model: str = "mock-model"
    stream: bool = False
    stream_options: _Opts | None = None
    # Raw fragments: only their size is used, to make up a plausible prompt token count.
    messages: msgspec.Raw = msgspec.Raw(b"")
    prompt: msgspec.Raw = msgspec.Raw(b"")
    input: msgspec.Raw = msgspec.Raw(b"")


_KINDS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/responses": "responses"}
_decode = msgspec.json.Decoder(_Req).decode
_encode = msgspec.json.encode


def _prompt_tokens(req: _Req) -> int:
    raw = req.messages or req.prompt or req.input
    return max(1, len(raw) // 4) if raw else 1


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


class MockUpstream:
    def __init__(self, chunks: int = 10, delay_ms: float = 0.0) -> None:
        self.chunks = chunks
        self.delay_ms = delay_ms
        self.stats = {"requests": 0, "streams_started": 0, "streams_completed": 0, "streams_disconnected": 0}
        self.last: dict[str, Any] = {}
        self._models = _encode(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": CREATED, "owned_by": "fastproxy-mock"}
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
            payload = self.stats if path == "/_mock/stats" else self.last
            await _respond(send, 200, _encode(payload))
            return
        self.stats["requests"] += 1
        self.last = {
            "method": method,
            "path": path,
            "query": scope["query_string"].decode("latin-1"),
            "headers": headers,
            "body": base64.b64encode(body).decode(),
        }
        if "x-mock-sleep-ms" in headers:
            await asyncio.sleep(float(headers["x-mock-sleep-ms"]) / 1000)
        if "x-mock-status" in headers:
            status = int(headers["x-mock-status"])
            err = {
                "error": {
                    "message": f"mock error {status}",
                    "type": "mock_error",
                    "param": None,
                    "code": None,
                }
            }
            await _respond(send, status, _encode(err))
            return
        await self._route(method, path, body, headers, scope, receive, send)

    async def _route(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if path == "/v1/models":
            await _respond(send, 200, self._models)
        elif path.startswith("/v1/models/"):
            model = path.removeprefix("/v1/models/")
            await _respond(send, 200, _encode({"id": model, "object": "model", "created": CREATED, "owned_by": "x"}))
        elif path in ("/v1/chat/completions", "/v1/completions", "/v1/responses") and method == "POST":
            try:
                req = _decode(body)
            except msgspec.DecodeError as exc:
                err = {
                    "error": {
                        "message": str(exc),
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                }
                await _respond(send, 400, _encode(err))
                return
            chunks = int(headers.get("x-mock-chunks", self.chunks))
            delay = float(headers.get("x-mock-delay-ms", self.delay_ms)) / 1000
            kind = _KINDS[path]
            if req.stream:
                await self._stream(kind, req, chunks, delay, receive, send)
            else:
                await _respond(send, 200, _encode(_complete(kind, req, chunks)))
        elif path == "/v1/embeddings" and method == "POST":
            req = _decode(body)
            vec = [round(0.001 * i, 3) for i in range(256)]
            doc = {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": vec}],
                "model": req.model,
                "usage": {"prompt_tokens": _prompt_tokens(req), "total_tokens": _prompt_tokens(req)},
            }
            await _respond(send, 200, _encode(doc))
        elif path == "/v1/audio/speech" and method == "POST":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"audio/mpeg")]})
            for i in range(4):
                await send({"type": "http.response.body", "body": bytes([i]) * 1024, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            echo = {k: v for k, v in self.last.items() if k != "headers"}
            await _respond(send, 200, _encode({"object": "echo", **echo}))

    async def _stream(self, kind: str, req: _Req, chunks: int, delay: float, receive: Receive, send: Send) -> None:
        self.stats["streams_started"] += 1
        events = _stream_events(kind, req, chunks)
        disconnected = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE})
            for event in events:
                if delay:
                    await asyncio.sleep(delay)
                if disconnected.is_set():
                    raise ConnectionError
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            self.stats["streams_completed"] += 1
        except (ConnectionError, OSError, RuntimeError):
            self.stats["streams_disconnected"] += 1
        finally:
            watcher.cancel()


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON})
    await send({"type": "http.response.body", "body": body})


def _complete(kind: str, req: _Req, chunks: int) -> dict[str, Any]:
    text = b"".join(WORDS[i % len(WORDS)] for i in range(chunks)).decode()
    usage = _usage(_prompt_tokens(req), chunks)
    if kind == "chat":
        return {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": CREATED,
            "model": req.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
            "system_fingerprint": "fp_mock",
        }
    if kind == "completions":
        return {
            "id": "cmpl-mock",
            "object": "text_completion",
            "created": CREATED,
            "model": req.model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
            "usage": usage,
        }
    return _response_object(req, text, "completed", usage)


def _response_object(req: _Req, text: str, status: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    resp_usage = None
    if usage is not None:
        resp_usage = {
            "input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["total_tokens"],
        }
    output = []
    if text:
        output = [
            {
                "type": "message",
                "id": "msg_mock",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
    return {
        "id": "resp_mock",
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "model": req.model,
        "output": output,
        "usage": resp_usage,
    }


def _stream_events(kind: str, req: _Req, chunks: int) -> list[bytes]:
    if kind == "responses":
        return _responses_events(req, chunks)
    is_chat = kind == "chat"
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    obj = "chat.completion.chunk" if is_chat else "text_completion"
    ident = "chatcmpl-mock" if is_chat else "cmpl-mock"
    events: list[bytes] = []

    def chunk(choices: list[dict[str, Any]], usage: Any = ...) -> bytes:
        doc: dict[str, Any] = {"id": ident, "object": obj, "created": CREATED, "model": req.model}
        if is_chat:
            doc["system_fingerprint"] = "fp_mock"
        doc["choices"] = choices
        if usage is not ...:
            doc["usage"] = usage
        elif include_usage:
            doc["usage"] = None
        return b"data: " + _encode(doc) + b"\n\n"

    for i in range(chunks):
        word = WORDS[i % len(WORDS)].decode()
        if is_chat:
            delta: dict[str, Any] = {"content": word}
            if i == 0:
                delta = {"role": "assistant", "content": word}
            events.append(chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]))
        else:
            events.append(chunk([{"index": 0, "text": word, "logprobs": None, "finish_reason": None}]))
    if is_chat:
        events.append(chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]))
    else:
        events.append(chunk([{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]))
    if include_usage:
        events.append(chunk([], _usage(_prompt_tokens(req), chunks)))
    events.append(b"data: [DONE]\n\n")
    return events


def _responses_events(req: _Req, chunks: int) -> list[bytes]:
    seq = 0

    def event(name: str, doc: dict[str, Any]) -> bytes:
        nonlocal seq
        doc = {"type": name, "sequence_number": seq, **doc}
        seq += 1
        return b"event: " + name.encode() + b"\ndata: " + _encode(doc) + b"\n\n"

    text = ""
    events = [event("response.created", {"response": _response_object(req, "", "in_progress", None)})]
    for i in range(chunks):
        word = WORDS[i % len(WORDS)].decode()
        text += word
        events.append(
            event(
                "response.output_text.delta",
                {"item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": word},
            )
        )
    final = _response_object(req, text, "completed", _usage(_prompt_tokens(req), chunks))
    events.append(event("response.completed", {"response": final}))
    return events


def app_from_env() -> MockUpstream:
    return MockUpstream(int(os.environ.get("MOCK_CHUNKS", "10")), float(os.environ.get("MOCK_DELAY_MS", "0")))
