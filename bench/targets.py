"""Starting the thing under test: the direct path, the reference pass-through, or fastproxy in one
of the configurations of bench/configs.py. The proxy (Granian, 1 worker) always runs on CPU 0."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.configs import ProxyConfig
from bench.harness import (
    CHAT_BODY,
    PROXY_CPU,
    PY,
    REPO,
    STREAM_BODY,
    Backing,
    free_port,
    pinned,
    post,
    spawn,
    stop,
    wait_port,
    write_lua,
)

# fastproxy serve starts Granian with exactly these (fastproxy/cli.py _granian); the reference gets
# the same so the two differ only in the application.
GRANIAN_FLAGS = [
    "--interface", "asgi", "--loop", "uvloop", "--workers", "1", "--no-ws", "--backlog", "2048",
    "--log-level", "warning", "--no-access-log", "--host", "127.0.0.1",
]  # fmt: skip
UNUSED_KEY = "sk-bench-unused"
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
# CHAT_BODY as an Anthropic SDK client sends it: served by an OpenAI-compatible upstream, it is translated
# to CHAT_BODY's request and the upstream's chat.completion back to an Anthropic message.
MESSAGES_BODY = (
    '{"model":"gpt-4o-mini","max_tokens":128,"system":"You are a helpful assistant.","messages":[{"role":"user",'
    '"content":"What is the capital of France? Answer in two short sentences and mention one landmark."}],'
    '"temperature":0.7,"metadata":{"user_id":"bench-user-42"}}'
)


@dataclass
class Target:
    name: str
    base: str  # http://127.0.0.1:PORT, the URL the load is aimed at
    key: str
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def redis_fallbacks(self) -> list[str]:
        """Proxy log lines saying Redis limits fell back to in-process (that would measure the wrong path)."""
        if self.log is None or not self.log.exists():
            return []
        text = self.log.read_text(errors="replace")
        return [ln for ln in text.splitlines() if "Redis unavailable" in ln][:3]

    def log_bytes(self) -> int:
        """Size of the proxy's stdout+stderr so far: shows whether the access log was really written."""
        return self.log.stat().st_size if self.log is not None and self.log.exists() else 0

    def errors_logged(self) -> int:
        if self.log is None or not self.log.exists():
            return 0
        return sum(1 for ln in self.log.read_text(errors="replace").splitlines() if '"level":"error"' in ln)

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)


def clean_env() -> dict[str, str]:
    """The harness's environment without FASTPROXY_* (a developer's shell must not leak in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FASTPROXY_")}


def start_target(name: str, configs: dict[str, ProxyConfig], upstream: str, backing: Backing, workdir: Path) -> Target:
    """Start `name` in front of `upstream` (http://host:port) and wait until it listens."""
    if name == "direct":
        return Target(name, upstream, UNUSED_KEY)
    port = free_port()
    # A name's @VAR=value settings may hold paths: keep the file name to one directory level.
    log = workdir / f"{name.strip('+').replace('/', '_')}-{port}.log"
    if name.split("@", 1)[0] == "reference":
        # reference@VAR=value: the reference with VAR in its environment (e.g. BENCH_RUNTIME_THREADS_BATCH=1).
        settings = dict(s.split("=", 1) for s in name.split("@")[1:] if "=" in s)
        env = {**clean_env(), **settings, "BENCH_UPSTREAM": upstream}
        argv = [PY, "-m", "granian", *GRANIAN_FLAGS, "--port", str(port), "bench.reference:app"]
        proc = spawn(pinned(PROXY_CPU, argv), env, log, cwd=REPO)
        target = Target(name, f"http://127.0.0.1:{port}", UNUSED_KEY, proc, log)
    else:
        cfg = configs[name]
        env = {
            **clean_env(),
            **cfg.resolved(
                database_url=backing.database_url,
                redis_url=backing.redis_url,
                redis_prefix=backing.redis_prefix,
                upstream_url=upstream + "/v1",
                redis_cluster_url=backing.redis_cluster_url,
            ),
            "FASTPROXY_PORT": str(port),
            "FASTPROXY_UPSTREAM_URL": upstream + "/v1",
        }
        key = backing.keys[cfg.key] if cfg.key != "none" else UNUSED_KEY
        proc = spawn(pinned(PROXY_CPU, [PY, "-m", "fastproxy", "serve"]), env, log, cwd=REPO)
        target = Target(name, f"http://127.0.0.1:{port}", key, proc, log)
    try:
        wait_port(port, proc)
    except BaseException:
        target.close()
        raise
    return target


def messages_load(target: Target, workdir: Path, stream: bool = False) -> tuple[str, Path]:
    """As chat_load, for the Anthropic ingress (`POST /v1/messages`, translated to chat completions and back;
    streamed: to its message_stop)."""
    url = target.base + MESSAGES
    body = MESSAGES_BODY.replace('"max_tokens":128,', '"max_tokens":128,"stream":true,') if stream else MESSAGES_BODY
    reply = post(url, body, target.key)
    ok = reply.endswith(b'{"type":"message_stop"}\n\n') if stream else b'"type":"message"' in reply
    if not ok:
        raise SystemExit(f"{target.name}: unexpected reply {reply[:200]!r}")
    return url, write_lua(workdir / f"load-messages-{target.pid}.lua", target.key, [body])


def chat_load(target: Target, workdir: Path, stream: bool = False) -> tuple[str, Path]:
    """Check that `target` answers the suite's chat request (streamed: STREAM_BODY, to its [DONE]); the URL
    and the wrk script that load it."""
    url = target.base + CHAT
    body = STREAM_BODY if stream else CHAT_BODY
    reply = post(url, body, target.key)
    ok = (
        b'"chat.completion.chunk"' in reply and reply.endswith(b"data: [DONE]\n\n")
        if stream
        else b'"chat.completion"' in reply
    )
    if not ok:
        raise SystemExit(f"{target.name}: unexpected reply {reply[:200]!r}")
    return url, write_lua(workdir / f"load-{target.pid}.lua", target.key, [body])
