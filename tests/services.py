"""Real Redis and PostgreSQL for the tests: the configured servers, or throwaway ones started here.

FASTPROXY_TEST_REDIS_URL / FASTPROXY_TEST_POSTGRES_DSN name the servers (default: the local services
on their standard ports). When nothing answers there, a private instance is started in a temporary
directory from the installed binaries (as pytest-redis and pytest-postgresql do) and removed after.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from urllib.parse import urlsplit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reachable(host, port, 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    url = os.environ.get("FASTPROXY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    parts = urlsplit(url)
    if reachable(parts.hostname or "127.0.0.1", parts.port or 6379):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(f"no Redis at {url} and no redis-server binary to start one")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="fastproxy-redis-") as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for_port("127.0.0.1", port)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    if found is None:
        raise RuntimeError(f"no PostgreSQL reachable and no {name} binary to start one")
    return found


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yields an admin DSN (a database we may CREATE DATABASE from)."""
    dsn = os.environ.get("FASTPROXY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    parts = urlsplit(dsn)
    if reachable(parts.hostname or "127.0.0.1", parts.port or 5432):
        yield dsn
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="fastproxy-pg-") as tmp:
        data = os.path.join(tmp, "data")
        run_as: list[str] = []
        if os.geteuid() == 0:
            # initdb refuses to run as root; the postgres system user owns the throwaway cluster.
            shutil.chown(tmp, "postgres")
            run_as = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [*run_as, _pg_bin("initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            [
                *run_as,
                _pg_bin("pg_ctl"),
                "-D",
                data,
                "-w",
                "-l",
                os.path.join(tmp, "log"),
                "-o",
                f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1",
                "start",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*run_as, _pg_bin("pg_ctl"), "-D", data, "-m", "immediate", "stop"], check=False)
