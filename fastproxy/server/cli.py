"""The `fastproxy` command: serve, demo, mock-upstream (one or several ports), migrate, users, keys."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from fastproxy import __version__
from fastproxy.accounts.cli import CommandError, add_commands, demo_key
from fastproxy.core.drain import MARKER_ENV, begin
from fastproxy.core.settings import ENV_PREFIX, Settings, SettingsError, load_settings
from fastproxy.mock.modes import ModeError, merge, parse
from fastproxy.observability import multiproc
from fastproxy.observability.multiproc import multiprocess_dir, serve_metrics_port
from fastproxy.server.fdlimit import needed, raise_soft_limit


def _granian(
    target: str, host: str, port: int, workers: int, log_level: str = "warning", drain: Settings | None = None
) -> None:
    """Serve `target` with Granian. With `drain` (serve), the first SIGTERM/SIGINT starts a graceful
    drain (core/drain.py) before Granian hears of it; a second one stops at once. The connection limits
    (HTTP version, header timeout, head size, keep-alive) are the settings' (defaults: the mock's)."""
    from granian import Granian
    from granian.constants import HTTPModes
    from granian.http import HTTP1Settings

    server_class: Any = Granian
    limits = drain or Settings()
    kill_timeout = None
    if drain is not None:
        marker = os.path.join(os.environ[multiproc.ENV], "draining")
        os.environ[MARKER_ENV] = marker
        server_class = _draining_server(Granian, marker, drain.drain_seconds, drain.shutdown_grace)
        # Past the grace the workers have cut their streams and flushed: a stuck one is killed then.
        kill_timeout = math.ceil(drain.shutdown_grace) + 5
    server_class(
        target,
        factory=True,
        address=host,
        port=port,
        interface="asgi",
        loop="uvloop",
        workers=workers,
        websockets=False,
        backlog=2048,
        http=HTTPModes.http1 if limits.http == "1" else HTTPModes.auto,
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, round(limits.http1_header_read_timeout * 1000)),
            keep_alive=limits.http1_keep_alive,
            max_buffer_size=limits.http1_buffer_size,
        ),
        log_level=log_level,
        log_access=False,
        workers_kill_timeout=kill_timeout,
    ).serve()


def _draining_server(base: type[Any], marker: str, drain_seconds: float, grace: float) -> type[Any]:
    class DrainingGranian(base):  # type: ignore[misc]
        """Granian whose first interrupt drains: the marker (workers' /readyz turns 503), then the
        interrupt itself `drain_seconds` later (Granian stops accepting and shuts the workers down)."""

        _draining = False

        def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
            if self._draining or drain_seconds <= 0:
                if not self._draining:
                    begin(marker, 0, grace)
                super().signal_handler_interrupt(*args, **kwargs)
                return
            self._draining = True
            begin(marker, drain_seconds, grace)
            timer = threading.Timer(drain_seconds, super().signal_handler_interrupt)
            timer.daemon = True
            timer.start()

    return DrainingGranian


def _apply_overrides(args: argparse.Namespace) -> Settings:
    """CLI flags become FASTPROXY_* variables so every Granian worker reads the same settings."""
    if args.config:
        os.environ[ENV_PREFIX + "CONFIG"] = args.config
    for name in ("host", "port", "workers", "upstream_url"):
        value = getattr(args, name, None)
        if value is not None:
            os.environ[ENV_PREFIX + name.upper()] = str(value)
    return load_settings()


def _serve(settings: Settings) -> None:
    workers = settings.workers or os.cpu_count() or 1
    open_files = raise_soft_limit()
    if open_files < needed(settings.pool_size):
        print(
            f"fastproxy: warning: the open-file limit is {open_files}, below the {needed(settings.pool_size)} "
            f"that {ENV_PREFIX}POOL_SIZE={settings.pool_size} can use: connections beyond it are refused "
            "(raise it with `ulimit -n` or the container's nofile limit)",
            file=sys.stderr,
            flush=True,
        )
    # Before any worker exists: every worker must see the same fresh metrics directory.
    with multiprocess_dir(settings.metrics_dir) as metrics_path:
        stop_metrics = None
        if settings.metrics and settings.metrics_port:
            stop_metrics = serve_metrics_port(settings.host, settings.metrics_port, metrics_path)
        try:
            _granian("fastproxy.app:create_app", settings.host, settings.port, workers, drain=settings)
        finally:
            if stop_metrics is not None:
                stop_metrics()


def cmd_serve(args: argparse.Namespace) -> None:
    _serve(_apply_overrides(args))


def _mock_plan(args: argparse.Namespace) -> dict[int, str | None]:
    """Each port to serve and its MOCK_MODE (None: inherit the environment's); raises CommandError."""
    try:
        ports = [int(p) for p in args.ports.split(",")] if args.ports else [args.port]
    except ValueError:
        raise CommandError(f"--ports: expected comma-separated port numbers, got {args.ports!r}") from None
    if len(set(ports)) != len(ports):
        raise CommandError(f"--ports: a port is listed twice in {args.ports!r}")
    plan: dict[int, str | None] = dict.fromkeys(ports)
    for item in args.mode:
        port, eq, directives = item.partition("=")
        if not eq or not port.isdigit() or int(port) not in plan:
            raise CommandError(f"--mode {item!r}: expected PORT=DIRECTIVES with PORT one of {ports}")
        try:
            merge(parse(directives), None, None)
        except ModeError as exc:
            raise CommandError(f"--mode {item!r}: {exc}") from None
        plan[int(port)] = directives
    return plan


def cmd_mock_upstream(args: argparse.Namespace) -> None:
    os.environ["MOCK_CHUNKS"] = str(args.chunks)
    os.environ["MOCK_DELAY_MS"] = str(args.delay_ms)
    plan = _mock_plan(args)
    if len(plan) == 1:
        port, mode = next(iter(plan.items()))
        if mode is not None:
            os.environ["MOCK_MODE"] = mode
        _granian("fastproxy.mock.server:app_from_env", args.host, port, args.workers)
        return
    _run_mocks(args, plan)


def _run_mocks(args: argparse.Namespace, plan: dict[int, str | None]) -> None:
    """One `mock-upstream` process per port (its own counters); all stop when one exits or we are told to."""
    common = ["--host", args.host, "--workers", str(args.workers), "--chunks", str(args.chunks)]
    common += ["--delay-ms", str(args.delay_ms)]
    procs = []

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        for port, mode in plan.items():
            env = {**os.environ, **({"MOCK_MODE": mode} if mode is not None else {})}
            argv = [sys.executable, "-m", "fastproxy", "mock-upstream", *common, "--port", str(port)]
            procs.append(subprocess.Popen(argv, env=env))
        while all(proc.poll() is None for proc in procs):
            time.sleep(0.2)
        raise SystemExit(next(proc.returncode for proc in procs if proc.returncode is not None) or 1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"fastproxy: the mock upstream did not start on {host}:{port}")


DEMO_BANNER = """
fastproxy {version} demo: proxy on http://{host}:{port}, mock provider on {upstream}

  curl http://{host}:{port}/v1/chat/completions \\
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"model": "mock-model", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  from openai import OpenAI
  client = OpenAI(base_url="http://{host}:{port}/v1", api_key="{key}")
  print(client.chat.completions.create(model="mock-model",
        messages=[{{"role": "user", "content": "Hello"}}]).choices[0].message.content)

Press Ctrl+C to stop.
"""


def cmd_demo(args: argparse.Namespace) -> None:
    upstream_port = args.upstream_port
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    os.environ.setdefault(ENV_PREFIX + "UPSTREAM_URL", upstream)
    os.environ.setdefault(ENV_PREFIX + "LOG_FORMAT", "text")
    os.environ[ENV_PREFIX + "WORKERS"] = "1"
    os.environ[ENV_PREFIX + "PORT"] = str(args.port)
    settings = load_settings()
    key = "(none needed: FASTPROXY_AUTH=none)"
    if settings.auth == "keys":
        key = asyncio.run(demo_key(settings))
    mock = subprocess.Popen(
        [sys.executable, "-m", "fastproxy", "mock-upstream", "--port", str(upstream_port), "--delay-ms", "30"]
    )
    try:
        _wait_for_port("127.0.0.1", upstream_port)
        print(
            DEMO_BANNER.format(
                version=__version__,
                host=settings.host,
                port=settings.port,
                upstream=settings.upstream_url,
                key=key,
            ),
            flush=True,
        )
        _serve(settings)
    finally:
        mock.terminate()
        mock.wait(timeout=10)


def cmd_openapi(args: argparse.Namespace) -> None:
    """Print the OpenAPI document (or write it to --output); --check: fail when --output differs from it."""
    from fastproxy.contract.document import document_bytes

    doc = document_bytes()
    if args.output is None:
        sys.stdout.buffer.write(doc)
        return
    if args.check:
        try:
            with open(args.output, "rb") as f:
                same = f.read() == doc
        except OSError:
            same = False
        if not same:
            raise CommandError(f"{args.output} is not the current document: run `fastproxy openapi -o {args.output}`")
        return
    with open(args.output, "wb") as f:
        f.write(doc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastproxy", description="An OpenAI-compatible LLM API proxy.")
    parser.add_argument("--version", action="version", version=f"fastproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy (production entry)")
    serve.add_argument("--config", help="TOML settings file (also FASTPROXY_CONFIG)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="worker processes (default: one per CPU)")
    serve.add_argument("--upstream-url", dest="upstream_url")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="run the proxy on embedded defaults with the built-in mock provider")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--upstream-port", type=int, default=8001)
    demo.set_defaults(func=cmd_demo)

    mock = sub.add_parser("mock-upstream", help="run the built-in OpenAI-compatible mock provider")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8001)
    mock.add_argument("--ports", help="comma-separated ports: one mock per port, each with its own counters")
    mock.add_argument(
        "--mode",
        action="append",
        default=[],
        metavar="PORT=DIRECTIVES",
        help="MOCK_MODE failure directives for one port, e.g. 8001=status=503 (repeatable)",
    )
    mock.add_argument("--workers", type=int, default=1)
    mock.add_argument("--chunks", type=int, default=10, help="content chunks per stream")
    mock.add_argument("--delay-ms", type=float, default=0.0, help="pause between stream chunks")
    mock.set_defaults(func=cmd_mock_upstream)

    spec = sub.add_parser("openapi", help="print the OpenAPI 3.1 document (served at /openapi.json)")
    spec.add_argument("-o", "--output", help="write it to this file (docs/openapi.json) instead")
    spec.add_argument("--check", action="store_true", help="with --output: fail if the file is out of date")
    spec.set_defaults(func=cmd_openapi)
    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SettingsError as exc:
        print(f"fastproxy: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except CommandError as exc:
        print(f"fastproxy: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
