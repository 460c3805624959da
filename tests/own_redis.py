"""A private redis-server this test may stop, start and flush (never the shared one)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

from tests.services import free_port, reachable, wait_for_port


class OwnRedis:
    def __init__(self, *extra: str) -> None:
        """`extra`: more redis-server arguments (e.g. "--requirepass", "secret")."""
        self._extra = extra
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self._binary = binary
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="fastproxy-own-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", self._dir.name, *self._extra]
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.port)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)
        self._proc = None
        assert not reachable("127.0.0.1", self.port, 0.2)

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def kill(self) -> None:
        """SIGKILL (a crash: no shutdown, nothing saved); `start` brings it back on the same port, empty."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        self._proc = None
