"""Check the three properties of each pass-through variant against a slow SSE upstream.

  .venv/bin/python bench/clients/verify.py [client ...]

For every client (default: all four) it runs passthrough.<Backend>.proxy() in-process
against a tiny asyncio HTTP/1.1 upstream that streams `data: ...` events with a delay:

  streams  : first body chunk reaches ASGI `send` long before the upstream finishes,
             and one `send` per upstream event (no buffering / re-chunking into one body)
  bounded  : POOL=2, 6 concurrent requests -> upstream never sees > 2 concurrent connections
  cancel   : task cancelled after the first chunk -> upstream sees its socket closed
             mid-stream (within 1 s), and the client stays usable afterwards

Then, through a real Granian process: the HTTP client disconnects mid-stream and we check
whether the upstream connection gets closed (depends on Granian cancelling/erroring the
ASGI task, not only on the client library).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import passthrough  # noqa: E402

UP_PORT = 18091
GRANIAN_PORT = 18191
N_EVENTS = 10
EVENT_DELAY = 0.1


class SlowUpstream:
    def __init__(self) -> None:
        self.active = 0  # requests currently being answered
        self.max_active = 0
        self.open_conns = 0
        self.max_open_conns = 0
        self.aborted = 0  # peer closed before we sent every event
        self.completed = 0
        self.n_events = N_EVENTS

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_conns += 1
        self.max_open_conns = max(self.max_open_conns, self.open_conns)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                clen = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        clen = int(line.split(b":", 1)[1])
                if clen:
                    await reader.readexactly(clen)
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                try:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                    )
                    await writer.drain()
                    eof = asyncio.ensure_future(reader.read(1))  # peer closing -> b""
                    ok = True
                    for i in range(self.n_events):
                        ev = b'data: {"i":%d}\n\n' % i
                        writer.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                        await writer.drain()
                        done, _ = await asyncio.wait({eof}, timeout=EVENT_DELAY)
                        if done:
                            ok = False
                            break
                    if not ok:
                        self.aborted += 1
                        return
                    eof.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await eof
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    self.completed += 1
                finally:
                    self.active -= 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_conns -= 1
            writer.close()


async def check_client(name: str, up: SlowUpstream) -> dict:
    passthrough.UPSTREAM = f"http://127.0.0.1:{UP_PORT}/v1/chat/stream"
    passthrough.POOL = 2
    be = passthrough.BACKENDS[name]()
    await be.start()
    res: dict = {}
    try:
        # ---- streams chunk by chunk
        up.n_events = N_EVENTS
        t0 = time.perf_counter()
        times: list[float] = []

        async def send(msg):
            if msg["type"] == "http.response.body" and msg.get("body"):
                times.append(time.perf_counter() - t0)

        await be.proxy(b"{}", send)
        total = time.perf_counter() - t0
        res["streams"] = bool(times) and times[0] < total / 3 and len(times) >= N_EVENTS // 2
        res["streams_detail"] = (
            f"first chunk {times[0] * 1e3:.0f} ms / total {total * 1e3:.0f} ms, {len(times)} body sends"
        )

        # ---- bounded pool (POOL=2), 6 concurrent requests of 3 events
        up.n_events = 3
        up.max_active = 0
        base_conns = up.open_conns
        up.max_open_conns = up.open_conns

        async def nop(msg):
            pass

        t0 = time.perf_counter()
        await asyncio.gather(*(be.proxy(b"{}", nop) for _ in range(6)))
        el = time.perf_counter() - t0
        res["bounded"] = up.max_active <= 2
        res["bounded_detail"] = (
            f"upstream max concurrent={up.max_active}, max open conns={up.max_open_conns} "
            f"(idle before={base_conns}), 6 reqs took {el:.2f}s"
        )

        # ---- cancellation mid-stream
        up.n_events = N_EVENTS
        aborted0 = up.aborted
        first = asyncio.Event()

        async def send_c(msg):
            if msg["type"] == "http.response.body" and msg.get("body"):
                first.set()

        task = asyncio.ensure_future(be.proxy(b"{}", send_c))
        await asyncio.wait_for(first.wait(), 5)
        t0 = time.perf_counter()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        while up.aborted == aborted0 and time.perf_counter() - t0 < 1.0:
            await asyncio.sleep(0.01)
        dt = time.perf_counter() - t0
        res["cancellable"] = up.aborted > aborted0
        res["cancel_detail"] = (
            f"upstream saw close after {dt * 1e3:.0f} ms" if res["cancellable"] else "upstream NOT closed within 1 s"
        )
        # still usable after the cancel?
        up.n_events = 2
        await asyncio.wait_for(be.proxy(b"{}", nop), 5)
        res["usable_after_cancel"] = True
    finally:
        await be.stop()
    return res


def granian_disconnect(name: str, up_loop_check, watch: str) -> str:
    env = dict(
        os.environ,
        BENCH_CLIENT=name,
        BENCH_WATCH_DISCONNECT=watch,
        BENCH_UPSTREAM=f"http://127.0.0.1:{UP_PORT}/v1/chat/stream",
    )
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--loop",
            "uvloop",
            "--workers",
            "1",
            "--no-ws",
            "--http",
            "1",
            "--log-level",
            "warning",
            "--no-access-log",
            "--port",
            str(GRANIAN_PORT),
            "passthrough:app",
        ],
        cwd=HERE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", GRANIAN_PORT), 0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        return up_loop_check()
    finally:
        p.terminate()
        p.wait(10)


async def main(names: list[str]) -> None:
    up = SlowUpstream()
    server = await asyncio.start_server(up.handle, "127.0.0.1", UP_PORT)
    results = {}
    for n in names:
        try:
            results[n] = await check_client(n, up)
        except Exception as exc:  # record and continue
            results[n] = {"error": repr(exc)}
        print(n, results[n], flush=True)

    # through Granian: client disconnects mid-stream
    loop = asyncio.get_running_loop()
    for n, watch in [(n, w) for n in names for w in ("0", "1")]:
        up.n_events = 30  # 3 s stream
        a0 = up.aborted

        def run_check(a0: int = a0) -> str:
            s = socket.create_connection(("127.0.0.1", GRANIAN_PORT))
            s.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
            s.recv(4096)  # headers + first event
            s.close()
            t0 = time.time()
            while time.time() - t0 < 4:
                if up.aborted > a0:
                    return f"upstream closed {1e3 * (time.time() - t0):.0f} ms after client disconnect"
                time.sleep(0.02)
            return "upstream NOT closed within 4 s of client disconnect (stream ran to completion)"

        r = await loop.run_in_executor(None, granian_disconnect, n, run_check, watch)
        results.setdefault(n, {})["granian_disconnect" + ("_watch" if watch == "1" else "")] = r
        print(n, f"granian disconnect (BENCH_WATCH_DISCONNECT={watch}):", r, flush=True)
        await asyncio.sleep(3.5)  # let a non-aborted stream finish before the next check
    server.close()

    print(
        "\nclient            streams  bounded  cancellable  granian-disconnect->upstream closed (plain / with watcher)"
    )
    for n, r in results.items():
        g = "yes" if "upstream closed" in str(r.get("granian_disconnect")) else "no"
        gw = "yes" if "upstream closed" in str(r.get("granian_disconnect_watch")) else "no"
        print(f"{n:<17} {r.get('streams')!s:<8} {r.get('bounded')!s:<8} {r.get('cancellable')!s:<12} {g} / {gw}")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(sys.argv[1:] or list(passthrough.BACKENDS)))
