"""Process, /proc and load-tool plumbing shared by the scenarios.

CPU accounting, the suite's one copy (the scenarios and bench.interleaved use it): utime+stime of a
whole process tree read from /proc/<pid>/stat (threads included), and "other CPU" = busy time of both
cores (user+nice+system from /proc/stat) minus what the measured processes used, so a noisy box shows
up in the figures.
Every process is started in its own session (process group) and stopped by group, so a Granian
master and its workers, or nginx and its worker, never outlive the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
CLK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
WRK = shutil.which("wrk") or "/usr/bin/wrk"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PROXY_CPU = 0
LOAD_CPU = 1


def pinned(cpu: int, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv]


def raise_nofile() -> int:
    """2,000 slow streams need ~4,000 sockets in the proxy and 2,000 in the client; children inherit this."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


# ----------------------------------------------------------------------------- /proc
def proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime+stime ticks) for every process."""
    out: dict[int, tuple[int, int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                s = f.read()
        except OSError:
            continue
        # comm may contain spaces and parentheses: split after the last ')'.
        rest = s[s.rindex(b")") + 2 :].split()
        out[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
    return out


def descendants(root: int, table: Mapping[int, tuple[int, int]]) -> list[int]:
    """root and every process below it."""
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, stack = [], [root]
    while stack:
        p = stack.pop()
        if p in table:
            out.append(p)
        stack.extend(kids.get(p, ()))
    return out


def tree_seconds(root: int | None, table: Mapping[int, tuple[int, int]]) -> float:
    if root is None:
        return 0.0
    return sum(table[p][1] for p in descendants(root, table)) / CLK


def cpu_busy() -> tuple[float, float]:
    """(user+nice+system, irq+softirq) seconds over all CPUs. Loopback TCP work done in softirq is
    charged to no process, so it is reported on its own."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2]) / CLK, (v[5] + v[6]) / CLK


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KB / 1024
    except OSError:
        return 0.0


def worker_pid(root: int) -> int:
    """Granian's worker: the biggest process below the master (the master itself only supervises)."""
    pids = [p for p in descendants(root, proc_table()) if p != root]
    return max(pids, key=rss_mb) if pids else root


@dataclass
class CpuWindow:
    """CPU used by the measured processes and by everything else between start() and stop()."""

    roots: dict[str, int | None]
    before: dict[str, float] = field(default_factory=dict)
    busy0: tuple[float, float] = (0.0, 0.0)
    children0: float = 0.0
    wall0: float = 0.0

    def start(self) -> None:
        table = proc_table()
        self.before = {k: tree_seconds(r, table) for k, r in self.roots.items()}
        self.busy0 = cpu_busy()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.children0 = ru.ru_utime + ru.ru_stime
        self.wall0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Seconds per root, "loadgen" (children reaped in the window: wrk or a Python client),
        "other" (busy time of the box not attributable to any of them), "softirq" and "wall"."""
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy1 = cpu_busy()
        table = proc_table()
        out = {k: tree_seconds(r, table) - self.before[k] for k, r in self.roots.items()}
        out["loadgen"] = ru.ru_utime + ru.ru_stime - self.children0
        out["wall"] = time.monotonic() - self.wall0
        out["softirq"] = busy1[1] - self.busy0[1]
        # Busy time of the box, softirq included (a process's stime may or may not hold the softirq work
        # done on its behalf, depending on the kernel's IRQ time accounting), minus what the measured
        # processes used. The harness itself is pinned to CPU 1 and mostly sleeps; its time lands here.
        busy = busy1[0] + busy1[1] - self.busy0[0] - self.busy0[1]
        out["other"] = busy - sum(out[k] for k in (*self.roots, "loadgen"))
        return out


# ----------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before opening port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


def spawn(argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches the workers too
        )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # Workers may linger a moment after the master; never let one run into the next measurement.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def wait_quiet(max_wait: float, limit: float = 0.15) -> float:
    """The box is shared: wait up to max_wait s until the rest of the box uses < `limit` cores for
    two consecutive 0.5 s windows (nothing of ours runs meanwhile). Returns the seconds waited."""
    t0 = time.monotonic()
    ok = 0
    while time.monotonic() - t0 < max_wait:
        b0, _ = cpu_busy()
        time.sleep(0.5)
        b1, _ = cpu_busy()
        ok = ok + 1 if (b1 - b0) / 0.5 < limit else 0
        if ok >= 2:
            break
    return time.monotonic() - t0


# ----------------------------------------------------------------------------- request bodies
CHAT_BODY = (
    '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},'
    '{"role":"user","content":"What is the capital of France? Answer in two short sentences and mention one '
    'landmark."}],"temperature":0.7,"max_tokens":128,"stream":false,"user":"bench-user-42"}'
)
# include_usage is asked by the client so the proxy has nothing to inject: every configuration,
# direct included, moves the same bytes.
STREAM_BODY = CHAT_BODY.replace('"stream":false', '"stream":true,"stream_options":{"include_usage":true}')
CANNED_CHAT = (
    '{"id":"chatcmpl-9xQbench0000000000000000000001","object":"chat.completion","created":1732540800,'
    '"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Sure! '
    "Here is a short answer to your question: the capital of France is Paris. It is known for the Eiffel "
    'Tower, the Louvre and its cafes.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":'
    '{"prompt_tokens":42,"completion_tokens":31,"total_tokens":73,"prompt_tokens_details":{"cached_tokens":0,'
    '"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"system_fingerprint":"fp_0ba0d124f1"}'
)

# The same answer as Anthropic's Messages API gives it (for the `*-anthropic` configurations).
CANNED_MESSAGE = (
    '{"id":"msg_01XbenchBenchBenchBench0001","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",'
    '"content":[{"type":"text","text":"Sure! Here is a short answer to your question: the capital of France is '
    'Paris. It is known for the Eiffel Tower, the Louvre and its cafes."}],"stop_reason":"end_turn",'
    '"stop_sequence":null,"usage":{"input_tokens":42,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,'
    '"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":31,'
    '"service_tier":"standard"}}'
)


def post(url: str, body: str, key: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> bytes:
    """One request from the harness: the sanity check before a configuration is loaded."""
    req = urllib.request.Request(url, data=body.encode(), method="POST")  # noqa: S310 (our own http:// URL)
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {key}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
        data: bytes = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {data[:200]!r}")
        return data


# ----------------------------------------------------------------------------- wrk
_DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,"err_write":%d,'
    .. '"err_status":%d,"err_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def write_lua(
    path: Path,
    key: str,
    bodies: Sequence[str],
    headers: Mapping[str, str] | None = None,
    delay_ms: float = 0,
    first: tuple[int, float] = (0, 0.0),
) -> Path:
    """A wrk script POSTing the bodies in turn with a Bearer key; done() prints one BENCH_JSON line.
    `delay_ms`: a random pause of up to that long before each request. `first` = (n, ms): the first n
    requests (wrk -t1: the first request of each of n connections) pause up to ms instead."""
    quoted = ", ".join(f"[==[{b}]==]" for b in bodies)
    extra = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in (headers or {}).items())
    pause = ""
    if delay_ms:
        pause = (
            f"local delayed = 0\ndelay = function()\n  delayed = delayed + 1\n"
            f"  if delayed <= {first[0]} then return math.random(0, {first[1]:.0f}) end\n"
            f"  return math.random(0, {delay_ms:.0f})\nend\n"
        )
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n' + extra + pause + f"local bodies = {{{quoted}}}\n"
        "wrk.body = bodies[1]\n"
        "local n = 0\n"
        # Only with several bodies: a request() function costs wrk a little per request.
        + (
            "request = function()\n  n = n + 1\n  return wrk.format(nil, nil, nil, bodies[n % #bodies + 1])\nend\n"
            if len(bodies) > 1
            else ""
        )
        + _DONE_LUA
    )
    return path


def wrk(
    url: str,
    lua: Path,
    seconds: float,
    conns: int,
    sample: Callable[[], None] | None = None,
    every: float = 0.5,
    timeout_s: float = 2.0,
) -> dict[str, Any]:
    """wrk -t1 on the load CPU; its done() line as a dict, plus rps and the error total."""
    secs = max(1, round(seconds))
    argv = [WRK, "-t1", f"-c{conns}", f"-d{secs}s", f"--timeout={timeout_s:g}s", "--latency", "-s", str(lua), url]
    stdout = run_sampling(pinned(LOAD_CPU, argv), secs + timeout_s + 60, sample, every)
    m = re.search(r"BENCH_JSON (\{.*\})", stdout)
    if not m:
        raise RuntimeError(f"wrk output unparsable:\n{stdout}")
    d: dict[str, Any] = json.loads(m.group(1))
    d["rps"] = d["requests"] / (d["duration_us"] / 1e6)
    d["errors"] = sum(v for k, v in d.items() if k.startswith("err_"))
    return d


def run_sampling(
    argv: Sequence[str], timeout: float, sample: Callable[[], None] | None = None, every: float = 0.5
) -> str:
    """Run a load tool to completion, calling sample() every `every` s meanwhile (RSS probes); stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, cwd=REPO, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[:4]} still running after {timeout}s")
                if sample is not None:
                    sample()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(every)
        finally:
            stop(proc)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[:4]} failed ({proc.returncode}):\n{err.read().decode()[-2000:]}")
        return out.read().decode()


def run_json(
    argv: Sequence[str], timeout: float, sample: Callable[[], None] | None = None, every: float = 0.5
) -> dict[str, Any]:
    """Run one of our Python load clients, pinned to the load CPU; it prints one JSON object."""
    stdout = run_sampling(pinned(LOAD_CPU, [PY, *argv]), timeout, sample, every)
    out: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return out


# ----------------------------------------------------------------------------- services
NGINX_CONF = """# canned OpenAI upstream for fastproxy's benchmark (generated by bench/harness.py)
{main}worker_processes 1;
worker_cpu_affinity {affinity};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 16384; use epoll; multi_accept on; }}
worker_rlimit_nofile 65536;
http {{
    access_log off;
    server_tokens off;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    client_body_buffer_size 64k;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    {http}
    server {{
        listen 127.0.0.1:{port} backlog=8192;
        location = /v1/chat/completions {{
            {location}
        }}
        location = /v1/messages {{
            {messages}
        }}
    }}
}}
"""


def _run_nginx(
    d: Path, main: str = "", http: str = "", location: str = "", messages: str = "return 404;"
) -> tuple[subprocess.Popen[bytes], int]:
    """nginx from NGINX_CONF in directory `d`, its one worker on the load CPU; (process, port)."""
    d.mkdir(exist_ok=True)
    port = free_port()
    affinity = "1".ljust(LOAD_CPU + 1, "0")[::-1]  # bitmask, rightmost = CPU 0
    conf = d / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            main=main, affinity=affinity, dir=d, http=http, port=port, location=location, messages=messages
        )
    )
    proc = spawn(pinned(LOAD_CPU, [NGINX, "-c", str(conf), "-p", f"{d}/"]), os.environ, d / "stdout.log")
    wait_port(port, proc)
    return proc, port


def start_nginx(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """nginx answering POST /v1/chat/completions with CANNED_CHAT, and Anthropic's POST /v1/messages with
    CANNED_MESSAGE (the same answer: what an `anthropic` provider's translation costs, beside the byte-exact path)."""
    for canned in (CANNED_CHAT, CANNED_MESSAGE):
        assert "'" not in canned and "$" not in canned  # would break nginx's quoted string
    return _run_nginx(
        workdir / "nginx",
        location=f"default_type application/json; return 200 '{CANNED_CHAT}';",
        messages=f"default_type application/json; return 200 '{CANNED_MESSAGE}';",
    )


ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")  # Debian: libnginx-mod-http-echo
_SSE_EVENT = (
    '{{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"mock-model",'
    '"system_fingerprint":"fp_mock","choices":[{choices}],"usage":{usage}}}'
)
_SSE_CONTENT = _SSE_EVENT.format(
    choices='{"index":0,"delta":{"content":" tok"},"logprobs":null,"finish_reason":null}', usage="null"
)
_SSE_TAIL = (
    _SSE_EVENT.format(choices='{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}', usage="null"),
    _SSE_EVENT.format(
        choices="",
        usage='{"prompt_tokens":8,"completion_tokens":100,"total_tokens":108,'
        '"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}',
    ),
    "[DONE]",
)


def sse_nginx_available() -> bool:
    return os.path.exists(NGINX) and ECHO_MODULE.exists()


def start_sse_nginx(workdir: Path, chunks: int, delays_ms: Sequence[float]) -> tuple[subprocess.Popen[bytes], int]:
    """nginx (echo module) streaming `chunks` chat chunks, each its own write after a sleep, then the
    finish, usage and [DONE] events at once: its floor is chunks x delay, the ideal itself. The delay
    comes from the x-mock-delay-ms header, one of `delays_ms` (others: the first); 0 means 1 ms.
    It costs a fraction of the Python mock's CPU per event."""
    delays = {f"{ms:g}": max(ms, 1.0) / 1000 for ms in delays_ms}
    mapping = " ".join(f'"{k}" {v:g};' for k, v in delays.items())
    step = f"echo_sleep $mock_delay; echo 'data: {_SSE_CONTENT}\\n'; echo_flush;"
    tail = " ".join(f"echo 'data: {e}\\n';" for e in _SSE_TAIL)
    return _run_nginx(
        workdir / "nginx-sse",
        main=f"load_module {ECHO_MODULE};\n",
        http=f"map $http_x_mock_delay_ms $mock_delay {{ default {next(iter(delays.values()))}; {mapping} }}",
        location="default_type text/event-stream;\n" + "\n".join([step] * chunks + [tail]),
    )


SSE_UPSTREAM_C = Path(__file__).with_name("sse_upstream.c")
CC = shutil.which("cc") or shutil.which("gcc")


def sse_upstream_available() -> bool:
    return CC is not None


def start_sse_upstream(workdir: Path, chunks: int, default_ms: float) -> tuple[subprocess.Popen[bytes], int]:
    """bench/sse_upstream.c (compiled here with cc -O2), pinned to the load CPU: the same events as
    start_sse_nginx, but chunk k of a stream is due at start + k x delay, so a busy moment's lateness
    does not add up over the stream. The delay comes from the x-mock-delay-ms header."""
    d = workdir / "sse-upstream"
    d.mkdir(exist_ok=True)
    exe = d / "sse_upstream"
    assert CC is not None
    subprocess.run([CC, "-O2", "-Wall", "-o", str(exe), str(SSE_UPSTREAM_C)], check=True, capture_output=True)
    content = f"data: {_SSE_CONTENT}\n\n"
    tail = "".join(f"data: {e}\n\n" for e in _SSE_TAIL)
    port = free_port()
    argv = [str(exe), str(port), str(chunks), f"{default_ms:g}", content, tail]
    proc = spawn(pinned(LOAD_CPU, argv), os.environ, d / "stdout.log")
    wait_port(port, proc)
    return proc, port


def start_mock(workdir: Path, chunks: int, delay_ms: float, workers: int = 1) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    argv = [PY, "-m", "fastproxy", "mock-upstream", "--port", str(port), "--workers", str(workers)]
    argv += ["--chunks", str(chunks), "--delay-ms", str(delay_ms)]
    proc = spawn(pinned(LOAD_CPU, argv), os.environ, workdir / f"mock-{port}.log")
    wait_port(port, proc)
    return proc, port


@dataclass
class Backing:
    """PostgreSQL database and Redis prefix of one run, and the keys created in it."""

    database_url: str
    redis_url: str
    redis_prefix: str
    keys: dict[str, str] = field(default_factory=dict)
    # A Redis Cluster's URL (redis+cluster://...) for the configurations that name {redis_cluster_url}.
    redis_cluster_url: str = ""


PG_ADMIN = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc"]


@contextlib.contextmanager
def backing(redis_url: str, key_limits: Mapping[str, int]) -> Iterator[Backing]:
    """A fresh PostgreSQL database with two keys (one plain, one with limits) and a fresh Redis
    prefix; both are removed afterwards."""
    name = f"fpbench_{secrets.token_hex(4)}"
    subprocess.run([*PG_ADMIN, f"CREATE DATABASE {name}"], check=True, capture_output=True)
    b = Backing(f"postgresql://postgres@127.0.0.1:5432/{name}", redis_url, f"fpbench:{name}:")
    try:
        env = {**os.environ, "FASTPROXY_DATABASE_URL": b.database_url, "FASTPROXY_REDIS_URL": ""}
        flags = {"plain": [], "limited": [f"--{k}={v}" for k, v in key_limits.items()]}
        for kind, extra in flags.items():
            r = subprocess.run(
                [PY, "-m", "fastproxy", "keys", "create", "--name", f"bench-{kind}", *extra],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            m = re.search(r"^key:\s*(\S+)", r.stdout, re.M)
            if not m:
                raise RuntimeError(f"no key in `fastproxy keys create` output: {r.stdout!r} {r.stderr!r}")
            b.keys[kind] = m.group(1)
        yield b
    finally:
        subprocess.run([*PG_ADMIN, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False, capture_output=True)
        scan = subprocess.run(
            ["redis-cli", "-u", redis_url, "--scan", "--pattern", b.redis_prefix + "*"],
            capture_output=True,
            text=True,
            check=False,
        )
        found = scan.stdout.split()
        for i in range(0, len(found), 500):
            subprocess.run(["redis-cli", "-u", redis_url, "del", *found[i : i + 500]], capture_output=True, check=False)


# The shared services the proxy talks to. Left unpinned, the scheduler runs them on the proxy's core
# too, where each of their wake-ups preempts the proxy: a measurement of the proxy should own its core.
BACKING_SERVICES = ("redis-server", "postgres")


@contextlib.contextmanager
def backing_services_on(cpu: int) -> Iterator[str]:
    """Move every thread of the local Redis and PostgreSQL processes to `cpu` for the run (new
    PostgreSQL backends fork from a moved postmaster and inherit it); put them back afterwards.
    Yields what was done, for the report."""
    moved: dict[int, set[int]] = {}
    refused = 0
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            if (pid_dir / "comm").read_text().strip() not in BACKING_SERVICES:
                continue
            for task in (pid_dir / "task").iterdir():
                tid = int(task.name)
                before = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, {cpu})
                moved[tid] = before
        except PermissionError:
            refused += 1
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
    try:
        if refused:
            yield f"Redis and PostgreSQL unpinned (no permission to move {refused} of their processes)"
        else:
            yield f"Redis and PostgreSQL ({len(moved)} threads) moved to CPU {cpu} for the run"
    finally:
        for tid, before in moved.items():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.sched_setaffinity(tid, before)


@contextlib.contextmanager
def redis_cluster(workdir: Path, masters: int = 3) -> Iterator[str]:
    """A Redis Cluster of `masters` masters (no replicas) on free loopback ports, for the run; its URL.

    Its servers are named redis-server like the standalone one, so backing_services_on pins them too
    when entered after this."""
    ports: list[int] = []
    while len(ports) < masters:
        port = free_port()
        if port < 55000 and port not in ports:  # the cluster bus listens on port + 10000
            ports.append(port)
    procs = []
    try:
        for port in ports:
            d = workdir / f"cluster-{port}"
            d.mkdir()
            argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                    "--cluster-config-file", str(d / "nodes.conf"), "--save", "", "--appendonly", "no", "--dir", str(d)]  # fmt: skip
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(port, procs[-1])
        nodes = [f"127.0.0.1:{p}" for p in ports]
        subprocess.run(["redis-cli", "--cluster", "create", *nodes, "--cluster-yes"], check=True, capture_output=True)
        deadline = time.monotonic() + 30
        while "cluster_state:ok" not in _cmd_out(["redis-cli", "-p", str(ports[0]), "cluster", "info"]):
            if time.monotonic() > deadline:
                raise RuntimeError("the bench's Redis Cluster did not become ok")
            time.sleep(0.1)
        yield "redis+cluster://" + ",".join(nodes)
    finally:
        for proc in procs:  # started in this session (not a group of their own): stopped by PID
            proc.terminate()
            proc.wait(10)


def _cmd_out(argv: Sequence[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="fpbench-suite-")
