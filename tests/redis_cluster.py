"""A real Redis Cluster for the tests: 3 masters and 3 replicas on free loopback ports.

Started with `redis-server --cluster-enabled yes` and joined with `redis-cli --cluster create`, each
server stopped by its PID. A short node timeout keeps a failover (a master killed, its replica
promoted) within about a second.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.services import free_port, wait_for_port

NODE_TIMEOUT_MS = 500


class RedisCluster:
    def __init__(self, root: Path, masters: int = 3, replicas: int = 1) -> None:
        self.root = root
        self.ports = _cluster_ports(masters * (1 + replicas))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        try:
            self._create(replicas)
        except BaseException:
            self.stop()
            raise

    def _create(self, replicas: int) -> None:
        for port in self.ports:
            self.start_node(port)
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def start_node(self, port: int) -> None:
        data = self.root / str(port)
        data.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [
                "redis-server",
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(data / "nodes.conf"),
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                # A replica may take over however long its link was down (a test kills at any time).
                "--cluster-replica-validity-factor", "0",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(data),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port("127.0.0.1", port)

    def cli(self, port: int, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok and all 16384 slots are served."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [self.cli(p, "cluster", "info") for p, proc in self.procs.items() if proc.poll() is None]
            links = [self.cli(p, "info", "replication") for p, proc in self.procs.items() if proc.poll() is None]
            replicas_up = all("role:master" in r or "master_link_status:up" in r for r in links)
            if infos and replicas_up and all("cluster_state:ok" in i and "cluster_slots_ok:16384" in i for i in infos):
                return
            time.sleep(0.1)
        raise TimeoutError("the Redis Cluster did not become ok")

    def master_of(self, key: str) -> int:
        """The port of the master serving `key`'s slot."""
        slot = int(self.cli(self.ports[0], "cluster", "keyslot", key).strip())
        for line in self.cli(self.ports[0], "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" in fields[2] and "fail" not in fields[2]:
                for span in fields[8:]:
                    low, _, high = span.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        return int(fields[1].split(":")[1].split("@")[0])
        raise LookupError(slot)

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def _cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster-bus port (port + 10000) is free and valid too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port < 55000 and port not in ports and _bindable(port + 10000):
            ports.append(port)
    return ports


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def redis_cluster() -> Iterator[RedisCluster]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise RuntimeError("redis-server and redis-cli are needed for the Redis Cluster tests")
    with tempfile.TemporaryDirectory(prefix="fastproxy-cluster-") as tmp:
        cluster = RedisCluster(Path(tmp))
        try:
            yield cluster
        finally:
            cluster.stop()
