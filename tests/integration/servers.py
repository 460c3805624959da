"""Start fastproxy and the mock provider as real Granian processes on free ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tests.services import free_port, wait_for_port


class Server:
    def __init__(
        self,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.log_path = Path(tempfile.mkstemp(prefix="fastproxy-test-", suffix=".log")[1])
        full_env = {**os.environ, **(env or {})}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fastproxy", *argv, "--port", str(self.port)],
                env=full_env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_port("127.0.0.1", self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"server did not start: {self.log()}") from None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.stop_proc_only()
        self.log_path.unlink(missing_ok=True)

    def stop_proc_only(self) -> None:
        """Stop the process (flushing its logs) but keep the log file for the test to read."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def start_mock(**env: str) -> Server:
    return Server(["mock-upstream"], env)


def start_proxy(upstream_url: str, **env: str) -> Server:
    settings = {
        "FASTPROXY_UPSTREAM_URL": upstream_url,
        "FASTPROXY_WORKERS": "1",
        "FASTPROXY_DATABASE_URL": "",
        # Anonymous unless a test asks for keys (FASTPROXY_AUTH="keys" plus a database URL).
        "FASTPROXY_AUTH": "none",
        **env,
    }
    return Server(["serve"], settings)
