"""Three `fastproxy serve` instances (2 workers each) behind HAProxy, sharing Redis and PostgreSQL.

HAProxy (Debian's) balances round robin and checks each instance's /readyz every 200 ms, so an
instance that starts draining (503) leaves the rotation before it stops accepting; a connection
refused anyway is retried on another instance (`retry-on conn-failure`), never shown to the client.
Every process is started here and stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.integration.servers import Server
from tests.services import free_port, wait_for_port

ADMIN_KEY = "admin-fleet-secret-0042"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)

_CONFIG = """
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 1s
    retries 3
    option redispatch
    retry-on conn-failure empty-response response-timeout
frontend api
    bind 127.0.0.1:{port}
    default_backend proxies
backend proxies
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server check inter 200ms fall 1 rise 2
{servers}
"""


class LoadBalancer:
    def __init__(self, backends: list[int]) -> None:
        assert HAPROXY is not None
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fastproxy-haproxy-"))
        servers = "\n".join(f"    server p{i} 127.0.0.1:{port}" for i, port in enumerate(backends))
        config = self.dir / "haproxy.cfg"
        config.write_text(_CONFIG.format(port=self.port, servers=servers))
        check = subprocess.run([HAPROXY, "-c", "-q", "-f", str(config)], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port("127.0.0.1", self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Fleet:
    """The instances and their balancer. `env` holds the shared settings (database, Redis, prefix)."""

    def __init__(
        self,
        upstream_url: str,
        env: dict[str, str],
        instances: int = 3,
        variant: str = "",
        instance_env: Callable[[int], dict[str, str]] | None = None,
    ) -> None:
        """`instance_env(i)`: settings of instance i alone (e.g. its own usage journal directory)."""
        self.variant = variant
        self.instance_env = instance_env
        self.env = {
            "FASTPROXY_UPSTREAM_URL": upstream_url,
            "FASTPROXY_WORKERS": "2",
            "FASTPROXY_AUTH": "keys",
            "FASTPROXY_ADMIN_KEY": ADMIN_KEY,
            "FASTPROXY_AUTH_CACHE_TTL": "60",  # only pub/sub can explain a revocation seen within 1 s
            "FASTPROXY_DRAIN_SECONDS": "1",
            "FASTPROXY_SHUTDOWN_GRACE": "5",
            "FASTPROXY_USAGE_FLUSH_INTERVAL": "0.2",
            "FASTPROXY_REDIS_TIMEOUT": "0.5",
            "FASTPROXY_ACCESS_LOG": "false",
            **env,
        }
        self.instances: list[Server] = []
        try:
            for index in range(instances):
                self.instances.append(self._start(index))
            self.balancer = LoadBalancer([s.port for s in self.instances])
            self.wait_in_rotation()
        except BaseException:
            self.stop()
            raise

    def _start(self, index: int, port: int | None = None) -> Server:
        env = {**self.env, **(self.instance_env(index) if self.instance_env else {})}
        server = Server(["serve"], env, port=port)
        _wait_ready(server.url)
        return server

    @property
    def url(self) -> str:
        return self.balancer.url

    def wait_in_rotation(self, timeout: float = 10.0) -> None:
        """Until HAProxy has seen every instance ready (rise 2 checks of 200 ms)."""
        time.sleep(0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(_ready(s.url) for s in self.instances):
                time.sleep(0.5)  # HAProxy needs two good checks in a row
                return
            time.sleep(0.1)
        raise TimeoutError("an instance never became ready")

    def restart(self, index: int) -> float:
        """SIGTERM the instance's master (the drain runs), wait for it to exit, start it again on the same
        port, wait until the balancer has it back. Returns how long the instance took to exit."""
        old = self.instances[index]
        started = time.monotonic()
        os.kill(old.proc.pid, signal.SIGTERM)  # the master only, as a container runtime would
        old.proc.wait(30)
        took = time.monotonic() - started
        old.log_path.unlink(missing_ok=True)
        self.instances[index] = self._start(index, old.port)
        self.wait_in_rotation()
        return took

    def kill(self, index: int) -> None:
        """SIGKILL every process of the instance (master and workers, as an OOM kill of its container
        would), and wait until they are gone. `start_again` brings it back."""
        old = self.instances[index]
        os.killpg(old.proc.pid, signal.SIGKILL)
        old.proc.wait(10)
        deadline = time.monotonic() + 10
        while _group_alive(old.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def start_again(self, index: int) -> None:
        """Start instance `index` on its old port (after `kill`) and wait until the balancer has it."""
        old = self.instances[index]
        old.log_path.unlink(missing_ok=True)
        self.instances[index] = self._start(index, old.port)
        self.wait_in_rotation()

    def stop(self) -> None:
        if getattr(self, "balancer", None) is not None:
            self.balancer.stop()
        for server in self.instances:
            server.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not _ready(url):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} never became ready")
        time.sleep(0.1)


def requests_total(metrics_text: str) -> float:
    """The sum of fastproxy_requests_total over every label set of one instance's exposition."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("fastproxy_requests_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total
