"""Abusive clients against a live proxy, and what the well-behaved ones see meanwhile.

    python -m bench.abuse [--scale 1.0] [--header-timeout 5] [--body-timeout 5]

Starts the mock upstream and `fastproxy serve` (one worker, HTTP/1.1, the limits given), then for each abuse:
1.5 s of well-behaved traffic alone ("before"), the abuse with that traffic going on ("during", until every
abusive connection was answered or closed), 1.5 s alone again ("after"). Well-behaved traffic is one client
sending non-streamed chat completions back to back over a keep-alive connection; its p99 and the worker's RSS
are printed per phase, with what each abusive connection got (status, closed, seconds until closed).
tests/integration/test_abusive_clients.py runs the same scenarios at a smaller scale and asserts on them.

Abuses: more than 100 headers, a 1 MiB header, headers trickled one byte a second (slowloris), a body trickled
one byte a second, idle connections by the thousand (half after one request, half that never send a byte),
a valid request followed by pipelined garbage, a chunked body that never ends (fast: past max_body_bytes;
slow: one chunk a second).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import http.client
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import free_port, rss_mb, spawn, stop, wait_port, worker_pid
from bench.stats import percentile

CHAT = b'{"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}'
_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@dataclass
class Abused:
    """What the abusive connections got: first status line (or none) and whether/when they were closed."""

    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    closed: int = 0
    open: int = 0
    seconds_to_close: list[float] = field(default_factory=list)

    def add(self, other: Abused) -> None:
        self.statuses.update(other.statuses)
        self.closed += other.closed
        self.open += other.open
        self.seconds_to_close += other.seconds_to_close

    def row(self) -> str:
        spread = " ".join(f"{s}:{n}" for s, n in sorted(self.statuses.items()))
        slowest = f"{max(self.seconds_to_close):.1f}s" if self.seconds_to_close else "-"
        return f"{spread}; closed {self.closed}, open {self.open}, slowest close {slowest}"


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)


async def _outcome(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, started: float, out: Abused,
                   limit: float) -> None:  # fmt: skip
    """Read until the server closes (or `limit` seconds pass); note the first status and the close."""
    data = b""
    try:
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                data += chunk
        out.closed += 1
        out.seconds_to_close.append(time.monotonic() - started)
    except TimeoutError:
        out.open += 1
    except OSError:  # reset by the server
        out.closed += 1
        out.seconds_to_close.append(time.monotonic() - started)
    finally:
        writer.close()
    # Responses follow each other without a separator (a body, then the next status line).
    statuses = [m.decode() for m in _STATUS.findall(data)]
    out.statuses["+".join(statuses) or "none"] += 1


async def _send_then_watch(port: int, payload: bytes, out: Abused, limit: float) -> None:
    started = time.monotonic()
    reader, writer = await _connect(port)
    with contextlib.suppress(OSError):
        writer.write(payload)
        await writer.drain()
    await _outcome(reader, writer, started, out, limit)


async def _trickle(port: int, head: bytes, tail: bytes, out: Abused, limit: float) -> None:
    """Send `head` at once, then `tail` one byte a second until the server answers or closes."""
    started = time.monotonic()
    reader, writer = await _connect(port)
    watcher = asyncio.ensure_future(_outcome(reader, writer, started, out, limit))
    with contextlib.suppress(OSError):
        writer.write(head)
        for byte in tail:
            if watcher.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(1.0)
    await watcher


async def many_headers(port: int, n: int, limit: float) -> Abused:
    out = Abused()
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n"
    await asyncio.gather(*(_send_then_watch(port, head, out, limit) for _ in range(n)))
    return out


async def huge_header(port: int, n: int, limit: float) -> Abused:
    out = Abused()
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    await asyncio.gather(*(_send_then_watch(port, head, out, limit) for _ in range(n)))
    return out


async def slowloris_headers(port: int, n: int, limit: float) -> Abused:
    out = Abused()
    tail = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 600
    await asyncio.gather(*(_trickle(port, b"", tail, out, limit) for _ in range(n)))
    return out


async def slowloris_body(port: int, n: int, limit: float) -> Abused:
    out = Abused()
    head = HEAD + b"Content-Length: 600\r\n\r\n{"
    await asyncio.gather(*(_trickle(port, head, b" " * 599, out, limit) for _ in range(n)))
    return out


async def endless_body_slow(port: int, n: int, limit: float) -> Abused:
    out = Abused()
    head = HEAD + b'Transfer-Encoding: chunked\r\n\r\n3\r\n{ "\r\n'
    chunk = b"1\r\n \r\n"
    await asyncio.gather(*(_trickle(port, head, chunk * 200, out, limit) for _ in range(n)))
    return out


async def endless_body_fast(port: int, n: int, limit: float) -> Abused:
    """Chunks of 64 KiB as fast as the server takes them, until it answers or closes."""
    out = Abused()
    block = b"10000\r\n" + b" " * 0x10000 + b"\r\n"

    async def one() -> None:
        started = time.monotonic()
        reader, writer = await _connect(port)
        watcher = asyncio.ensure_future(_outcome(reader, writer, started, out, limit))
        with contextlib.suppress(OSError):
            writer.write(HEAD + b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n")
            while not watcher.done() and time.monotonic() - started < limit:
                writer.write(block)
                await writer.drain()
        await watcher

    await asyncio.gather(*(one() for _ in range(n)))
    return out


async def idle_connections(port: int, n: int, limit: float) -> Abused:
    """Half send one request and then nothing (idle keep-alive), half never send a byte."""
    out = Abused()
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    await asyncio.gather(*(_send_then_watch(port, request if i % 2 else b"", out, limit) for i in range(n)))
    return out


async def pipelined_garbage(port: int, n: int, limit: float) -> Abused:
    out = Abused()
    payload = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02 NOT HTTP \xff\xfe\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    await asyncio.gather(*(_send_then_watch(port, payload, out, limit) for _ in range(n)))
    return out


Scenario = Callable[[int, int, float], Coroutine[Any, Any, Abused]]
# name -> (scenario, connections at scale 1)
SCENARIOS: dict[str, tuple[Scenario, int]] = {
    "too many headers (150)": (many_headers, 200),
    "1 MiB header": (huge_header, 50),
    "slowloris headers (1 B/s)": (slowloris_headers, 500),
    "slowloris body (1 B/s)": (slowloris_body, 500),
    "idle connections": (idle_connections, 2000),
    "pipelined garbage": (pipelined_garbage, 200),
    "endless chunked body, fast": (endless_body_fast, 8),
    "endless chunked body, 1 chunk/s": (endless_body_slow, 300),
}


class Prober(threading.Thread):
    """A well-behaved client: chat completions back to back on one keep-alive connection; (time, ms, status)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[tuple[float, float, int]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Content-Type": "application/json"}
        while not self.stopping.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/chat/completions", CHAT, headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                status = 0
            self.samples.append((time.monotonic(), (time.perf_counter() - t0) * 1000, status))
            time.sleep(0.002)
        conn.close()

    def window(self, start: float, end: float) -> tuple[float, int, int]:
        """(p99 ms, requests, failed) between two monotonic times."""
        inside = [(ms, status) for t, ms, status in self.samples if start <= t < end]
        return percentile([ms for ms, _ in inside], 99), len(inside), sum(1 for _, s in inside if s != 200)


@dataclass
class Phase:
    p99_ms: float
    requests: int
    failed: int
    rss_mb: float


@dataclass
class Measured:
    name: str
    connections: int
    abused: Abused
    before: Phase
    during: Phase
    after: Phase

    def row(self) -> str:
        b, d, a = self.before, self.during, self.after
        return (
            f"| {self.name} | {self.connections} | {b.p99_ms:.1f} / {d.p99_ms:.1f} / {a.p99_ms:.1f} "
            f"| {b.failed + d.failed + a.failed} of {b.requests + d.requests + a.requests} "
            f"| {b.rss_mb:.0f} / {d.rss_mb:.0f} / {a.rss_mb:.0f} | {self.abused.row()} |"
        )


HEADER = (
    "| abuse | connections | well-behaved p99 ms before / during / after | its failures "
    "| worker RSS MB before / max during / after | what the abusive connections got |\n|---|---|---|---|---|---|"
)


def measure(port: int, worker: int, name: str, scenario: Scenario, n: int, limit: float,
            quiet: float = 1.5, min_during: float = 1.0) -> Measured:  # fmt: skip
    """One abuse, with the well-behaved client's p99 and the worker's RSS before, during and after it."""
    prober = Prober(port)
    prober.start()
    try:
        t0 = time.monotonic()
        time.sleep(quiet)
        rss_before = rss_mb(worker)
        t1 = time.monotonic()
        peak = [rss_before]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.1):
                peak.append(rss_mb(worker))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # An abuse answered in milliseconds (431s, garbage) is sent again, five times a second, until the window
        # is long enough to see the well-behaved client in it.
        abused = asyncio.run(scenario(port, n, limit))
        rounds = 1
        while time.monotonic() - t1 < min_during:
            time.sleep(0.2)  # paced: the abuse, not a connection flood competing for this machine's 2 cores
            abused.add(asyncio.run(scenario(port, n, limit)))
            rounds += 1
        sampling.set()
        sampler.join()
        t2 = time.monotonic()
        time.sleep(quiet)
        t3 = time.monotonic()
        rss_after = rss_mb(worker)
    finally:
        prober.stopping.set()
        prober.join()
    return Measured(
        name,
        n * rounds,
        abused,
        Phase(*prober.window(t0, t1), rss_before),
        Phase(*prober.window(t1, t2), max(peak)),
        Phase(*prober.window(t2, t3), rss_after),
    )


@contextlib.contextmanager
def servers(header_timeout: float, body_timeout: float, max_body: int, workdir: Path) -> Iterator[tuple[int, int]]:
    """The mock upstream and one proxy worker (no database, no auth): yields (proxy port, worker pid)."""
    mock_port, port = free_port(), free_port()
    py = sys.executable
    mock = spawn([py, "-m", "fastproxy", "mock-upstream", "--port", str(mock_port)], os.environ, workdir / "mock.log")
    env = {
        **os.environ,
        "FASTPROXY_UPSTREAM_URL": f"http://127.0.0.1:{mock_port}/v1",
        "FASTPROXY_AUTH": "none",
        "FASTPROXY_DATABASE_URL": "",
        "FASTPROXY_WORKERS": "1",
        "FASTPROXY_ACCESS_LOG": "false",
        "FASTPROXY_HTTP1_HEADER_READ_TIMEOUT": str(header_timeout),
        "FASTPROXY_BODY_READ_TIMEOUT": str(body_timeout),
        "FASTPROXY_MAX_BODY_BYTES": str(max_body),
    }
    proxy = spawn([py, "-m", "fastproxy", "serve", "--port", str(port)], env, workdir / "proxy.log")
    try:
        wait_port(mock_port, mock)
        wait_port(port, proxy)
        yield port, worker_pid(proxy.pid)
    finally:
        stop(proxy)
        stop(mock)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="connections per abuse, times the default")
    parser.add_argument("--header-timeout", type=float, default=5.0, help="FASTPROXY_HTTP1_HEADER_READ_TIMEOUT")
    parser.add_argument("--body-timeout", type=float, default=5.0, help="FASTPROXY_BODY_READ_TIMEOUT")
    parser.add_argument("--max-body", type=int, default=1 << 20, help="FASTPROXY_MAX_BODY_BYTES")
    args = parser.parse_args(argv)
    limit = max(args.header_timeout, args.body_timeout) + 10
    print(f"# abusive clients: 1 worker, header timeout {args.header_timeout}s, body timeout {args.body_timeout}s, "
          f"max body {args.max_body} B, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    print(HEADER)
    with (
        tempfile.TemporaryDirectory(prefix="fastproxy-abuse-") as tmp,
        servers(args.header_timeout, args.body_timeout, args.max_body, Path(tmp)) as (port, worker),
    ):
        for name, (scenario, n) in SCENARIOS.items():
            print(measure(port, worker, name, scenario, max(1, round(n * args.scale)), limit).row(), flush=True)


if __name__ == "__main__":
    main()
