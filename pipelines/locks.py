"""An out dir's lock: an advisory ``flock`` on ``DIR/.lock`` held for a run's, a comparison's or a sweep
driver's life, so two processes never write the same out dir.  The kernel drops the lock when its process
dies, so a lock left by a killed run never blocks a resume."""
from __future__ import annotations

import fcntl
import os
import platform
from pathlib import Path

from zoplatform.errors import ConfigError

LOCK_FILE = ".lock"


class OutDirLock:
    """Exclusive advisory lock on ``<out_dir>/.lock`` (holder's pid and host inside)."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> OutDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"out_dir {self.path.parent} is in use by another run ({holder}); wait for it to "
                              f"end or choose another --out-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {platform.node()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
