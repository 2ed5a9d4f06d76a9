"""One supervisor per Ollama instance: an exclusive lock per OLLAMA_HOST in the runtime directory, taken before any
socket is created, held for the supervisor's life and released by the kernel however it ends (SIGKILL included).

The lock file holds the owner's pid, so a second `serve` on the same instance can name the one that runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class AlreadyRunning(Exception):
    """Another supervisor holds this instance's lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(f"another ollama-gpu serve (pid {pid if pid is not None else 'unknown'}) runs this instance "
                         f"(lock {path})")
        self.path = path
        self.pid = pid


class InstanceLock:
    """The held lock; `release()` (or our exit) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, path: Path) -> InstanceLock:
        """Take the lock at `path` without waiting; AlreadyRunning (with the holder's pid) when it is held."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise AlreadyRunning(path, pid) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Free the lock (the file stays: removing it would race with a starting supervisor)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
