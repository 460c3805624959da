"""The append-only journal of usage rows the database could not take, and the replay of old journals.

Each writer (one per worker process) owns one file `usage-<pid>-<random>.jsonl` in the journal
directory and holds an exclusive `flock` on it for its whole life. A file whose lock can be taken
therefore belongs to a process that is gone (crash, SIGKILL, or a clean stop that could not reach the
database): any writer may claim it, replay it and remove it. A new file is created under a name the
scan ignores and renamed only once locked, so a file is never claimed while its owner is starting.

One line per row (a compact JSON array, see UsageRow); a batch is written with one write() and
fsynced before append() returns. A torn last line (crash mid-write) is skipped when read.
All methods block (file I/O): the writer calls them through asyncio.to_thread.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec

from fastproxy.usage.row import UsageRow

log = logging.getLogger("fastproxy.usage")

_PATTERN = "usage-*.jsonl"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(UsageRow).decode


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def read_rows(fd: int, name: str) -> list[UsageRow]:
    """Every decodable line of the open file `fd`, from the start."""
    os.lseek(fd, 0, os.SEEK_SET)
    with os.fdopen(os.dup(fd), "rb") as f:
        data = f.read()
    rows: list[UsageRow] = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(_decode(line))
        except msgspec.DecodeError:
            log.warning("usage journal %s: line %d is not a usage row (torn write?), skipped", name, n)
    return rows


class Orphan:
    """A journal left by a process that is gone, locked by us until released or removed."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def rows(self) -> list[UsageRow]:
        return read_rows(self._fd, self.path.name)

    def remove(self) -> None:
        """Its rows are in the database: delete the file, then drop the lock."""
        self.path.unlink(missing_ok=True)
        os.close(self._fd)

    def release(self) -> None:
        """Not replayed this time: keep the file for a later attempt."""
        os.close(self._fd)


class Journal:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"usage-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        self._fd: int | None = None
        self.size = 0

    def open(self) -> None:
        """Create and lock this process's file. Raises OSError when the directory is unusable."""
        self.directory.mkdir(parents=True, exist_ok=True)
        staging = self.directory / ("." + self.path.name + ".new")
        fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            if not _lock(fd):
                raise OSError(f"cannot lock {staging}")
            os.rename(staging, self.path)
        except BaseException:
            os.close(fd)
            staging.unlink(missing_ok=True)
            raise
        self._fd = fd
        self.size = 0

    def append(self, rows: Sequence[UsageRow]) -> None:
        """Write the rows durably (fsync) or raise OSError; a failed write is cut off again."""
        if self._fd is None:
            self.open()
        assert self._fd is not None
        data = b"".join([_encode(row) + b"\n" for row in rows])
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError:
            # Leave no partial batch behind: a later append must start on a line of its own.
            try:
                os.ftruncate(self._fd, self.size)
            except OSError:
                log.warning("usage journal %s: could not cut off a failed write", self.path.name)
            raise
        self.size += len(data)

    def rows(self) -> list[UsageRow]:
        if self._fd is None or self.size == 0:
            return []
        return read_rows(self._fd, self.path.name)

    def clear(self) -> None:
        """Every row of this journal is in the database."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
        self.size = 0

    def orphans(self) -> Iterator[Orphan]:
        """Journals of other processes that are gone, each locked until the caller removes or releases it."""
        try:
            paths = sorted(self.directory.glob(_PATTERN))
        except OSError:
            return
        for path in paths:
            if path == self.path:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue  # claimed and removed by another worker meanwhile
            if not _lock(fd) or not path.exists():
                os.close(fd)
                continue
            yield Orphan(path, fd)

    def close(self) -> None:
        """Release the lock; an empty journal is removed, one with rows stays for the next start."""
        if self._fd is None:
            return
        if self.size == 0:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
