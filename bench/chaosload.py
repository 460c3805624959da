"""The chaos run's client: a steady open-loop mix of chat, streamed chat and embeddings, every outcome kept.

Request i is due at t0 + i / rate whatever the answers do (a stalled server cannot slow the load
down, so a fault is met by the full rate). Each request carries its own `x-request-id`
(`chaos-<i>`), which the proxy records as the usage row's `client_request_id`: after the run every
answer is matched with its row. The mix cycles chat, stream, chat, embeddings, stream (40 % chat,
40 % streams, 20 % embeddings) over the keys in turn.

Outcomes (`Result.outcome`):
- `ok`: 200 and the whole body; a stream ended with `data: [DONE]`;
- `status`: any other status (`status` holds it, `body` its start; `from_proxy` when fastproxy's
  `x-request-id` came back, else the load balancer answered);
- `stream_error`: a 200 stream that ended with an OpenAI error event and no `[DONE]` (explicit);
- `cut`: the body broke off with a transfer error (explicit: the client knows it is incomplete);
- `truncated`: a 200 stream that ended cleanly with neither `[DONE]` nor an error event: a defect
  (a truncated answer that looks complete);
- `hang`: nothing complete within `timeout` seconds: a defect;
- `conn`: the connection failed before any answer (refused, reset).
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

import aiohttp

CHAT: dict[str, object] = {"model": "mock-model", "messages": [{"role": "user", "content": "chaos"}], "max_tokens": 16}
KINDS = ("chat", "stream", "chat", "embeddings", "stream")


@dataclass
class Result:
    rid: str
    kind: str
    key: int
    sent: float  # seconds since the run's start, when it was due
    took: float = 0.0
    outcome: str = "conn"
    status: int = 0
    from_proxy: bool = False
    body: str = ""
    done: bool = False

    @property
    def label(self) -> str:
        """`ok`, `status <N>` (`status <N> lb` when the balancer, not fastproxy, answered), or the outcome."""
        if self.outcome == "status":
            return f"status {self.status}" + ("" if self.from_proxy else " lb")
        return self.outcome


@dataclass
class Load:
    url: str
    keys: list[str]
    rate: float
    timeout: float = 30.0
    keep: bool = True  # keep every Result (the chaos run) or only count outcomes (a long soak)
    results: list[Result] = field(default_factory=list)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    t0: float = 0.0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _inflight: set[asyncio.Task[None]] = field(default_factory=set)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def stop(self) -> None:
        self._stop.set()

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Send at `rate` until stop(); then wait for every request still out (each bounded by `timeout`)."""
        self.t0 = time.monotonic()
        i = 0
        while not self._stop.is_set():
            due = i / self.rate
            delay = due - self.now()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                    break
                except TimeoutError:
                    pass
            result = Result(f"chaos-{i}", KINDS[i % len(KINDS)], i % len(self.keys), due)
            if self.keep:
                self.results.append(result)
            task = asyncio.create_task(self._one(session, result))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            i += 1
        if self._inflight:
            await asyncio.gather(*self._inflight)

    async def _one(self, session: aiohttp.ClientSession, r: Result) -> None:
        body: dict[str, object]
        if r.kind == "embeddings":
            path, body = "/v1/embeddings", {"model": "text-embedding-3-small", "input": "chaos"}
        else:
            path, body = "/v1/chat/completions", {**CHAT, "stream": r.kind == "stream"}
        headers = {"Authorization": f"Bearer {self.keys[r.key]}", "x-request-id": r.rid}
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                async with session.post(self.url + path, json=body, headers=headers) as resp:
                    r.status = resp.status
                    r.from_proxy = resp.headers.get("x-request-id") == r.rid
                    if resp.status != 200:
                        r.body = (await resp.read())[:300].decode(errors="replace")
                        r.outcome = "status"
                    elif r.kind == "stream":
                        r.outcome = await _read_stream(resp)
                    else:
                        await resp.read()
                        r.outcome = "ok"
        except TimeoutError:
            r.outcome = "hang"
        except aiohttp.ClientPayloadError:
            r.outcome = "cut"
        except (aiohttp.ClientError, OSError) as exc:
            # After the status line: the body broke off; before it: no answer at all.
            r.outcome = "cut" if r.status else "conn"
            r.body = repr(exc)[:200]
        r.took = time.monotonic() - started
        r.done = True
        self.counts[r.label] += 1

    async def recovered(self, since: float, quiet: float = 2.0, limit: float = 60.0) -> None:
        """Wait until the requests sent after `since` have succeeded for `quiet` seconds (at most `limit`)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            recent = [r for r in reversed(self.results) if r.sent >= since and r.done] if self.keep else []
            failed = [r.sent for r in recent if r.outcome != "ok"]
            last = max(failed, default=since)
            if self.now() - last >= quiet and any(r.sent > last for r in recent):
                return
            await asyncio.sleep(0.25)


async def closed_loop(
    session: aiohttp.ClientSession, url: str, keys: list[str], concurrency: int, seconds: float
) -> float:
    """The mix sent by `concurrency` clients back to back for `seconds`: completed requests per second."""
    load = Load(url, keys, rate=1.0, keep=False)
    load.t0 = time.monotonic()
    deadline = load.t0 + seconds
    counter = iter(range(10**9))

    async def client() -> None:
        while time.monotonic() < deadline:
            i = next(counter)
            await load._one(session, Result(f"sat-{i}", KINDS[i % len(KINDS)], i % len(keys), load.now()))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return load.counts["ok"] / (time.monotonic() - load.t0)


async def _read_stream(resp: aiohttp.ClientResponse) -> str:
    done = error = False
    async for line in resp.content:
        if line.startswith(b"data: [DONE]"):
            done = True
        elif line.startswith(b'data: {"error"'):
            error = True
    if done and not error:
        return "ok"
    return "stream_error" if error else "truncated"
