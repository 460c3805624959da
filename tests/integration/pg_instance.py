"""A PostgreSQL cluster of a test's own, which the test may stop and start (never the shared server)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

from tests.services import _pg_bin, free_port, wait_for_port


class PrivatePostgres:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.data = os.path.join(directory, "data")
        self.port = free_port()
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            # initdb refuses to run as root; the postgres system user owns the throwaway cluster.
            shutil.chown(directory, "postgres")
            self._run_as = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [*self._run_as, _pg_bin("initdb"), "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        subprocess.run(
            [
                *self._run_as,
                _pg_bin("pg_ctl"),
                "-D",
                self.data,
                "-w",
                "-l",
                os.path.join(self.directory, "log"),
                "-o",
                f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wait_for_port("127.0.0.1", self.port)

    def stop(self) -> None:
        subprocess.run(
            [*self._run_as, _pg_bin("pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
        )


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    with tempfile.TemporaryDirectory(prefix="fastproxy-pg-own-") as tmp:
        pg = PrivatePostgres(tmp)
        pg.start()
        try:
            yield pg
        finally:
            pg.stop()
