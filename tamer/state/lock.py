"""The pid lock: an exclusive flock on a file that holds its holder's pid, for one supervisor per run
(`runs/<id>/lock`) and one daemon per home (`HOME/daemon.lock`).

The kernel drops an flock when its holder dies, even by kill -9, so a stale lock never needs cleaning.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

import psutil

from tamer.errors import LockedError


class PidLock:
    """An exclusive flock on `path`, written with this process's pid while held."""

    def __init__(self, path: Path, busy: str) -> None:
        self.path = path
        self.busy = busy
        """The LockedError's message when another process holds the lock; `{holder}` becomes its pid."""
        self.handle: Any = None

    def acquire(self) -> None:
        """Take the lock, or raise LockedError naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise LockedError(self.busy.format(holder=holder)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def lock_holder(path: Path) -> int | None:
    """The pid written in the lock file `path` while a live process holds it; None when it is free.

    A process that has just taken the lock may not have written its pid yet: then this waits a moment.
    """
    deadline = time.monotonic() + 2.0
    while True:
        try:
            handle = open(path)
        except FileNotFoundError:
            return None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = handle.read().strip()
            else:
                fcntl.flock(handle, fcntl.LOCK_UN)
                return None
        if text.isdigit() and psutil.pid_exists(int(text)):
            return int(text)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
