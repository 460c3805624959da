"""Open-loop load client: requests sent on a fixed timetable, whatever the server's speed.

    python -m bench.openloop --url URL --rate 2000 --duration 10 [--key K]

Request i is due at t0 + i/rate. A thread sleeps in the kernel to each due time and wakes the event
loop for every request then due; a request goes out on an idle keep-alive connection, or on a new one
when every connection is busy, so a slow answer never delays the next send (no coordinated omission).
Latency is measured from the *scheduled* time to the last byte, so a client or server stall is charged
to every request it delayed; "svc" latencies run from the real send time. `lag` (real send time minus
scheduled) shows whether the client kept up: if its p99 nears the latencies, the client (or CPU 1,
which it shares with the upstream, Redis and PostgreSQL) is the bottleneck, not the server. Times come
from perf_counter (uvloop's loop.time() is cached in whole milliseconds). Prints one JSON object.

The client speaks just enough HTTP/1.1 on asyncio Protocols: keep-alive connections opened up front
(`--conns`), a request sent as one prepared write, a response framed by Content-Length or chunked
encoding, its end timed in the callback that completes it. Its predecessor, an aiohttp client that
slept on the loop's millisecond timers and so spun, holding CPU 1, is in bench/RESULTS.md (History).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import uvloop

from bench.harness import CHAT_BODY
from bench.stats import percentile


def _summary(
    rate: float,
    total: int,
    sent_wall: float,
    latencies: list[float],
    service: list[float],
    lags: list[float],
    errors: list[str],
) -> dict[str, Any]:
    return {
        "rate": rate,
        "scheduled": total,
        "completed": len(latencies),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "achieved_send_rate": total / sent_wall if sent_wall > 0 else float("nan"),
        "p50_us": percentile(latencies, 50) * 1e6,
        "p90_us": percentile(latencies, 90) * 1e6,
        "p99_us": percentile(latencies, 99) * 1e6,
        "max_us": max(latencies) * 1e6 if latencies else float("nan"),
        "svc_p50_us": percentile(service, 50) * 1e6,
        "svc_p99_us": percentile(service, 99) * 1e6,
        "lag_p50_us": percentile(lags, 50) * 1e6,
        "lag_p99_us": percentile(lags, 99) * 1e6,
    }


class _Results:
    """What the client's connections report: one list per figure, appended from callbacks."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.service: list[float] = []
        self.lags: list[float] = []
        self.errors: list[str] = []
        self.outstanding = 0
        self.idle: list[_Connection] = []
        self.settled = asyncio.Event()

    def finished(self, conn: _Connection, due: float, sent: float, done: float, status: int) -> None:
        if status == 200:
            self.latencies.append(done - due)
            self.service.append(done - sent)
        else:
            self.errors.append(f"HTTP {status}")
        self._one_less()
        if conn.reusable:
            self.idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()  # the server said `Connection: close`

    def failed(self, why: str) -> None:
        self.errors.append(why)
        self._one_less()

    def _one_less(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0:
            self.settled.set()


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self, results: _Results) -> None:
        self.results = results
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.due = self.sent = 0.0
        self.busy = False
        self.reusable = True
        self._status = 0
        self._length = -1  # body bytes still expected; -1 before the head, -2 for a chunked body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes, due: float, sent: float) -> None:
        assert self.transport is not None
        self.due, self.sent, self.busy = due, sent, True
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self._length == -1:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            self._status = int(head[9:12])
            self.reusable = b"\r\nconnection: close" not in head
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at + 2)
                self._length = int(head[at + 17 : line_end if line_end > 0 else None])
            elif b"\r\ntransfer-encoding: chunked" in head:
                self._length = -2
            else:
                self._length = 0
        if self._length >= 0:
            if len(buf) < self._length:
                return
            del buf[: self._length]
        elif not self._chunked_body_done():
            return
        done = time.perf_counter()
        self._length, self.busy = -1, False
        self.results.finished(self, self.due, self.sent, done, self._status)

    def _chunked_body_done(self) -> bool:
        buf, pos = self.buf, 0
        while True:
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                return False
            size = int(bytes(buf[pos:nl]).split(b";")[0], 16)
            if size == 0:
                if len(buf) < nl + 4:
                    return False
                del buf[: nl + 4]
                return True
            pos = nl + 2 + size + 2
            if len(buf) < pos:
                return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self.busy:
            self.busy = False
            self.results.failed(f"connection lost: {exc!r}"[:120])


def _tick(
    loop: asyncio.AbstractEventLoop,
    t0: float,
    rate: float,
    total: int,
    send_due: Callable[[int, int], None],
    ticked: asyncio.Future[None],
) -> None:
    i = 0
    while i < total:
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        now = time.perf_counter()
        last = min(total, int((now - t0) * rate) + 1)
        loop.call_soon_threadsafe(send_due, i, last)
        i = last
    loop.call_soon_threadsafe(ticked.set_result, None)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    body = args.body.encode()
    request = (
        f"POST {url.path or '/'} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {args.key}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    results = _Results()

    async def connect() -> _Connection:
        _, conn = await loop.create_connection(lambda: _Connection(results), host, port)
        return conn

    async def send_on_new(due: float, sent: float) -> None:
        try:
            conn = await connect()
        except OSError as exc:
            results.failed(repr(exc)[:120])
            return
        conn.send(request, due, sent)

    results.idle = list(await asyncio.gather(*(connect() for _ in range(args.conns))))
    pending: set[asyncio.Task[None]] = set()
    total = int(args.rate * args.duration)
    t0 = clock() + 0.05

    def send_due(first: int, last: int) -> None:
        for i in range(first, last):
            due = t0 + i / args.rate
            sent = clock()
            results.lags.append(sent - due)
            results.outstanding += 1
            if results.idle:
                results.idle.pop().send(request, due, sent)
            else:
                task = loop.create_task(send_on_new(due, sent))
                pending.add(task)
                task.add_done_callback(pending.discard)

    # The loop's own timers have millisecond granularity: sleeping until a send 0.35 ms away turns
    # into a busy loop that holds CPU 1, and the upstream, Redis and PostgreSQL then wait behind it
    # for the scheduler's time slice. A thread sleeping in the kernel to each due time, then waking
    # the loop for what is due, sends on time without spinning.
    ticked = loop.create_future()
    ticker = threading.Thread(target=_tick, args=(loop, t0, args.rate, total, send_due, ticked), daemon=True)
    sys.setswitchinterval(0.0002)  # the ticker must not wait 5 ms for the GIL when the loop is busy
    ticker.start()
    await ticked
    sent_wall = clock() - t0
    if results.outstanding:
        results.settled.clear()
        try:
            await asyncio.wait_for(results.settled.wait(), 35)
        except TimeoutError:
            results.errors.extend(["no response within 35 s"] * results.outstanding)
    for conn in results.idle:
        if conn.transport is not None:
            conn.transport.close()
    return _summary(args.rate, total, sent_wall, results.latencies, results.service, results.lags, results.errors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--rate", type=float, required=True, help="requests per second")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--key", default="sk-bench-unused")
    ap.add_argument("--body", default=CHAT_BODY)
    ap.add_argument("--conns", type=int, default=64, help="connections opened before the first send")
    args = ap.parse_args()
    print(json.dumps(uvloop.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
