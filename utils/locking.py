"""An exclusive lock on a folder: one writer at a time; the lock of a dead process is free again.

The lock is an advisory ``flock`` on ``folder/.lock``, so the operating system releases it when its
process ends in any way (kill -9 included): a stale lock never blocks a later run. The file also holds
the owner's host, pid, start time and command line, so a second process is told who holds the folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".lock"


class LockHeld(Exception):
    """The folder is locked by another live process; the message says by whom."""


def _describe(owner: dict) -> str:
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return (
        f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {when} ({owner.get('command', '?')})"
    )


class FolderLock:
    """``with FolderLock(folder): ...`` holds ``folder/.lock`` for the block."""

    def __init__(self, folder: str | Path, name: str = LOCK_NAME):
        self.path = Path(folder) / name
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; :class:`LockHeld` (naming the owner) when another live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = self._read_owner(fd)
            os.close(fd)
            who = _describe(owner) if owner else "another process"
            raise LockHeld(f"{self.path.parent} is in use by {who}") from None
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "command": " ".join(sys.argv)[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        self._fd = fd

    @staticmethod
    def _read_owner(fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Release the lock (the file stays; its record is of the last holder)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
