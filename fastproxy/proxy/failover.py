"""Attempts: a model request goes to the targets its plan names, one at a time, until one answers.

The house rule: a client gets one complete, correct answer or an explicit error, never a truncated
stream that looks complete, and never a retry storm.

- Every failure before the commit point (proxy/commit.py) falls back invisibly: refused connections,
  timeouts (first_token_timeout covers the request up to the first content delta), 5xx and 529, 429
  (that key rests for its Retry-After), 401/403 (that key rests long, logged once), a stream cut or an
  error event before its first content; 400 context_length_exceeded goes to the route's context_fallback.
  Any other 4xx is the client's and goes back unchanged, after one attempt.
- One budget per request (the route's max_attempts, and request_timeout as a deadline) over every key
  and target; a worker-wide retry budget (retry_budget of its requests over 10 s) stops storms. A target
  tried again is backed off first (full jitter).
- After the commit the proxy never switches: a cut, an error or a stall ends the client's stream with
  an OpenAI-format error event and no `[DONE]`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from time import monotonic, perf_counter

from fastproxy.core.drain import STREAM_CUT
from fastproxy.core.errors import (
    InvalidRequest,
    ProxyError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnreachable,
)
from fastproxy.core.records import FailedAttempt
from fastproxy.core.schemas import usage_from_json
from fastproxy.core.types import RawHeaders, Send
from fastproxy.proxy.body import with_model
from fastproxy.proxy.commit import CommitPoint, MessagesCommitPoint, Verdict, error_event
from fastproxy.proxy.exchange import Outcome, cut_at_deadline, open_stream, response_headers
from fastproxy.proxy.headers import STREAM_HEADERS
from fastproxy.proxy.sse import SSEWatcher, StreamWatcher
from fastproxy.server.state import State
from fastproxy.translate.anthropic_chat import AnthropicChat, MalformedAnswer, for_attempt
from fastproxy.upstream import HeaderList, UpstreamResponse
from fastproxy.upstream.providers import LiveKey
from fastproxy.upstream.router import Failure, LiveTarget, Plan

log = logging.getLogger("fastproxy.proxy")

_BACKOFF_BASE = 0.1
_BACKOFF_CAP = 2.0
# A 429 without Retry-After rests its key this long.
_DEFAULT_RETRY_AFTER = 1.0


class _Failed(Exception):
    """An attempt failed before anything reached the client."""

    def __init__(
        self,
        kind: Failure,
        reason: str,
        *,
        sent: bool = True,
        error: ProxyError | None = None,
        response: tuple[int, RawHeaders, bytes] | None = None,
    ) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.sent = sent
        self.error = error
        self.response = response


def _classify(status: int, data: bytes) -> Failure | None:
    """What an upstream error status means for the plan; None: the client's own error, returned as is."""
    if status == 429 or status in (401, 403):
        return Failure.KEY
    if status == 400 and b"context_length_exceeded" in data:
        return Failure.CONTEXT
    if status >= 500 or status == 408:
        return Failure.TARGET
    return None


def _retry_after(headers: RawHeaders) -> float:
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"retry-after-ms":
            try:
                return max(0.0, float(value) / 1000)
            except ValueError:
                continue
        if lowered == b"retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                continue  # an HTTP date: rare from LLM providers; the default rest applies
    return _DEFAULT_RETRY_AFTER


async def run_plan(
    state: State,
    plan: Plan,
    method: str,
    tail: str,
    query: str,
    headers: HeaderList,
    body: bytes,
    send: Send,
    request_id: bytes,
    extra_headers: RawHeaders,
    out: Outcome,
) -> None:
    """Try the plan's targets until one answers (then it streams to the client) or the budget is spent."""
    router = state.router
    now = monotonic()
    router.budget.request(now)
    budget = plan.route.max_attempts
    deadline = out.started + state.settings.request_timeout
    choice: tuple[LiveTarget, LiveKey] | None = plan.first(now)
    last: _Failed | None = None
    denied = 0
    while choice is not None:
        target, key = choice
        if out.attempts:
            if out.attempts >= budget or perf_counter() >= deadline or not router.budget.try_retry(now):
                break
            if plan.repeat:
                await asyncio.sleep(random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2**out.attempts)))  # noqa: S311
        if key.breaker.state != "closed" and not (key.breaker.probe_due(now) and await router.probe(key)):
            # Resting (its cooldown not over, or this worker's probe already out), or another worker or
            # instance holds its one probe: not an attempt, look elsewhere (a bounded number of times:
            # every target may be resting behind someone else's probe). Asking for the permit before the
            # cooldown was over sent a probe into the outage moments after the breaker opened (the permit
            # is only set once the opening is published), and its failure doubled the cooldown.
            denied += 1
            if denied > 2 * budget:
                break
            now = monotonic()
            choice = plan.next(Failure.TARGET, now)
            continue
        out.attempts += 1
        try:
            await _attempt(state, plan, target, key, method, tail, query, headers, body, send, request_id,
                           extra_headers, out)  # fmt: skip
            return
        except _Failed as failed:
            last = failed
            now = monotonic()
            _record_failure(state, target, key, failed, now, out)
            choice = plan.next(failed.kind, now)
    if last is None:
        raise UpstreamUnavailable(
            "Every target of this model is resting after failures (circuit breakers open); try again shortly."
        )
    await _give_up(last, send, request_id, extra_headers, out)


def _record_failure(state: State, target: LiveTarget, key: LiveKey, failed: _Failed, now: float, out: Outcome) -> None:
    key.last_error = failed.reason
    if failed.kind is not Failure.TARGET and key.breaker.probing:
        # A probe that met a 429 or a 4xx proved nothing either way: the next request may probe at once.
        key.breaker.probing = False
        key.breaker.until = now
    if failed.kind is Failure.KEY:
        status = failed.response[0] if failed.response else 0
        if status == 429:
            key.cooldown_until = now + _retry_after(failed.response[1] if failed.response else [])
        else:
            if key.cooldown_until <= now:
                log.warning(
                    "provider %s refused key %s with %d: it rests %.0fs",
                    target.provider.name,
                    key.hint,
                    status,
                    state.settings.bad_key_cooldown,
                )
            key.cooldown_until = now + state.settings.bad_key_cooldown
    elif failed.kind is Failure.TARGET and key.breaker.failure(now):
        state.router.opened(key)
    if out.failures is None:
        out.failures = []
    out.failures.append(FailedAttempt(target.provider.name, key.hint, failed.reason, failed.sent))


async def _give_up(last: _Failed, send: Send, request_id: bytes, extra_headers: RawHeaders, out: Outcome) -> None:
    """Every attempt failed: the last upstream answer as it was, or an explicit gateway error."""
    answer = last.response
    if answer is not None and (last.kind is not Failure.KEY or answer[0] == 429):
        status, headers, data = answer
        if out.leg is not None:
            data = out.leg.error_body(status, data)
        out.upstream_status = out.status = status
        out_headers = response_headers(headers, request_id, out.started, out.sent, extra_headers)
        out_headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": data})
        return
    if answer is not None:  # 401/403 on every key: about the gateway's credentials, never the client's
        out.upstream_status = answer[0]
        raise UpstreamError(
            "The upstream provider refused the gateway's credentials; no other key or target could answer.",
            code="upstream_auth_error",
        )
    if last.error is not None:
        raise last.error
    raise UpstreamError("The upstream stream failed before its first token.", code="upstream_stream_error")


async def _attempt(
    state: State,
    plan: Plan,
    target: LiveTarget,
    key: LiveKey,
    method: str,
    tail: str,
    query: str,
    headers: HeaderList,
    body: bytes,
    send: Send,
    request_id: bytes,
    extra_headers: RawHeaders,
    out: Outcome,
) -> None:
    provider = target.provider
    model = plan.upstream_model(target)
    translation: AnthropicChat | None = None
    ingress = out.ingress
    if ingress is None:
        url = provider.url(tail, model, query)
        payload = body
        if provider.translates:  # another wire format (Anthropic): chosen once per attempt, by provider type
            try:
                translation = for_attempt(tail, body, model, out.stream, out.injected,
                                          provider.default_max_tokens or state.settings.default_max_tokens)  # fmt: skip
            except InvalidRequest:
                key.breaker.probing = False  # nothing was sent: a probe that never happened
                raise
            if translation is not None:
                payload = translation.body
        if model != out.model and translation is None:
            payload = with_model(body, model)
        sent_headers = [*headers, *key.headers]
    else:  # Anthropic ingress: this provider's leg says what it is sent and what the client gets (proxy/messages.py)
        leg = out.leg = ingress.leg(provider)
        url, payload = leg.url(provider, model, query), leg.payload(model)
        sent_headers = leg.headers(headers, key.headers)
    out.provider, out.upstream_model = provider.name, model
    started = perf_counter()
    if out.sent is None:
        out.sent = started
    key.inflight += 1
    target.inflight += 1
    try:
        await _exchange(state, target, key, url, method, sent_headers, payload, send, request_id, extra_headers, out,
                        started, translation)  # fmt: skip
    finally:
        key.inflight -= 1
        target.inflight -= 1


async def _exchange(
    state: State,
    target: LiveTarget,
    key: LiveKey,
    url: str,
    method: str,
    headers: HeaderList,
    body: bytes,
    send: Send,
    request_id: bytes,
    extra_headers: RawHeaders,
    out: Outcome,
    started: float,
    translation: AnthropicChat | None,
) -> None:
    provider = target.provider
    timeout = provider.first_token_timeout
    try:
        if timeout is None:  # no timer at all: asyncio.timeout(None) alone costs ~1.6 µs a request
            first = await _first_answer(state, method, url, headers, body, out, translation)
        else:
            async with asyncio.timeout(timeout):
                first = await _first_answer(state, method, url, headers, body, out, translation)
    except TimeoutError as exc:
        timed_out = UpstreamTimeout("The upstream provider did not send its first token in time.")
        raise _Failed(Failure.TARGET, "first_token_timeout", error=timed_out) from exc
    except UpstreamError as err:
        sent = not isinstance(err, UpstreamUnreachable)
        raise _Failed(Failure.TARGET, err.code or "upstream_error", sent=sent, error=err) from err
    resp, status, watcher, chunks, held, data = first
    # Committed: from here on this target's answer is the client's.
    now = monotonic()
    if key.breaker.success(now):
        state.router.closed(key)
    answered = perf_counter()
    out.ttfb = answered
    out.upstream_status = out.status = status
    key.observe_ttft((answered - started) * 1000)
    if status < 300 and len(provider.keys) > 1:
        key.observe_ratelimit(resp.headers, now)
    out_headers = response_headers(resp.headers, request_id, out.started, out.sent, extra_headers)
    tee = out.tee
    if tee is not None:  # cache hook: the response cache keeps the upstream's own headers (out_headers' head)
        tee.start(status, out_headers[: len(out_headers) - 2 - len(extra_headers)], chunks is not None)
    if watcher is None or chunks is None:
        await resp.release()
        if status < 300 and out.leg is None:  # an ingress leg set the usage as it translated (proxy/messages.py)
            out.usage = usage_from_json(data)[0] if translation is None else translation.usage
        if tee is not None:  # cache hook: the whole body, stored when it is a 200
            tee.chunk(data)
            tee.end(out.usage)
        out_headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": data})
        target.ewma_ms = _ewma(target.ewma_ms, (perf_counter() - started) * 1000)
        return
    out_headers.extend(STREAM_HEADERS)
    await send({"type": "http.response.start", "status": status, "headers": out_headers})
    for part in held:
        if tee is not None:  # cache hook: the stream as the client gets it
            tee.chunk(part)
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await _rest_of_stream(state, key, resp, chunks, watcher, send, out, provider.stream_idle_timeout)
    target.ewma_ms = _ewma(target.ewma_ms, (out.ttfb - started) * 1000)


_First = tuple[UpstreamResponse, int, StreamWatcher | None, AsyncIterator[bytes] | None, list[bytes], bytes]


async def _first_answer(
    state: State,
    method: str,
    url: str,
    headers: HeaderList,
    body: bytes,
    out: Outcome,
    translation: AnthropicChat | None,
) -> _First:
    """Send, and read up to the commit point: a whole non-streamed body, or a stream's first content delta.
    With a translation, what is returned is already in the client's format (OpenAI's).

    Raises _Failed (the upstream's answer says fall back) or UpstreamError; the response is released or
    aborted before anything is raised.
    """
    resp = await state.upstream.send(method, url, headers, body, stream=out.stream)
    released = False
    try:
        status = resp.status
        if status >= 400:
            data = await resp.read()
            if translation is not None:
                status, data = translation.error(status, data)
            kind = _classify(status, data)
            if kind is not None:
                await resp.release()
                released = True
                raise _Failed(kind, f"status_{status}", response=(status, resp.headers, data))
            if out.leg is not None:
                data = out.leg.error_body(status, data)
            return resp, status, None, None, [], data
        leg = out.leg
        if _is_sse(resp.headers):
            chunks = resp.chunks().__aiter__()
            if translation is not None:
                translator = translation.stream()
                return resp, status, translator, chunks, await _until_commit(chunks, translator, True), b""
            if leg is not None:
                watcher = leg.watcher()
                return (
                    resp,
                    status,
                    watcher,
                    chunks,
                    await _until_commit(chunks, watcher, False, leg.commit_point()),
                    b"",
                )
            watcher = SSEWatcher(strip=out.injected)
            return resp, status, watcher, chunks, await _until_commit(chunks, watcher), b""
        data = await resp.read()
        if translation is not None:
            try:
                data = translation.response(data)
            except MalformedAnswer as exc:
                unreadable = UpstreamError(f"The upstream provider's answer could not be read: {exc}")
                raise _Failed(Failure.TARGET, "malformed_response", error=unreadable) from exc
        elif leg is not None:
            data = leg.response(data, out)  # MalformedUpstream (an UpstreamError) falls back like any failure
        return resp, status, None, None, [], data
    except BaseException:
        if not released:
            await resp.abort()
        raise


def _ewma(current: float, sample: float) -> float:
    return sample if not current else current + 0.2 * (sample - current)


def _is_sse(headers: RawHeaders) -> bool:
    return next((v for k, v in headers if k.lower() == b"content-type"), b"").startswith(b"text/event-stream")


async def _until_commit(
    chunks: AsyncIterator[bytes],
    watcher: StreamWatcher,
    translated: bool = False,
    commit: CommitPoint | MessagesCommitPoint | None = None,
) -> list[bytes]:
    """Read and hold the stream's bytes until its first content delta; raise _Failed if it breaks first.
    A translated stream is judged on what the client would get (the translator's output); an ingress leg
    brings the commit point of its upstream's format (proxy/messages.py)."""
    if commit is None:
        commit = CommitPoint()
    held: list[bytes] = []
    iterator = chunks.__anext__
    while True:
        try:
            chunk = await iterator()
        except StopAsyncIteration:
            tail = watcher.finish()
            if tail:
                held.append(tail)
            if watcher.ended:
                return held  # a whole stream with no content at all: complete as it is
            raise _Failed(Failure.TARGET, "stream_cut") from None
        if translated:
            forwarded = watcher.feed(chunk)
            verdict = commit.feed(forwarded) if forwarded else Verdict.WAIT
        else:
            verdict = commit.feed(chunk)
            forwarded = watcher.feed(chunk)
        if forwarded:
            held.append(forwarded)
        if verdict is Verdict.COMMIT:
            return held
        if verdict is Verdict.ERROR:
            raise _Failed(Failure.TARGET, "stream_error")


async def _rest_of_stream(
    state: State,
    key: LiveKey,
    resp: UpstreamResponse,
    chunks: AsyncIterator[bytes],
    watcher: StreamWatcher,
    send: Send,
    out: Outcome,
    idle: float | None,
) -> None:
    iterator = chunks.__anext__
    failed: str | None = None
    drain = state.drain
    task = open_stream(drain)
    try:
        while True:
            try:
                if idle is None:
                    chunk = await iterator()
                else:
                    async with asyncio.timeout(idle):
                        chunk = await iterator()
            except StopAsyncIteration:
                break
            chunk = watcher.feed(chunk)
            if chunk:
                if out.tee is not None:  # cache hook: the stream as the client gets it
                    out.tee.chunk(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if tail := watcher.finish():
            if out.tee is not None:
                out.tee.chunk(tail)
            await send({"type": "http.response.body", "body": tail, "more_body": True})
        if not watcher.ended:
            failed = watcher.failure or "upstream_stream_cut"
    except TimeoutError:
        failed = "upstream_stream_idle"
        await resp.abort()
    except UpstreamError as err:
        failed = (
            "upstream_stream_idle"
            if isinstance(err, UpstreamTimeout)
            else "upstream_stream_malformed"
            if err.code == "upstream_malformed"
            else "upstream_stream_cut"
        )
        await resp.abort()
    except asyncio.CancelledError:
        await resp.abort()
        if not cut_at_deadline(drain, task, out):
            raise
        await send({"type": "http.response.body", "body": STREAM_CUT, "more_body": True})
    except BaseException:
        await resp.abort()
        raise
    else:
        await resp.release()
    finally:
        drain.streams.discard(task)
        out.usage, out.events = watcher.usage, watcher.events
    if failed is None and out.tee is not None:  # cache hook: a stream that completed may be stored
        out.tee.end(out.usage)
    if failed is not None:
        out.error, out.partial = failed, True
        if key.breaker.failure(monotonic()):
            state.router.opened(key)
        log.warning("upstream stream failed after its first token (%s); the client got an error event", failed)
        if watcher.failure is None:  # a translator writes its own error event, with the upstream's reason
            message = "The upstream stream broke off after it had started; the answer is incomplete."
            event = error_event(message, failed) if out.leg is None else out.leg.error_event(message)
            await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
