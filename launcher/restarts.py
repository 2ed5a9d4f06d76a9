"""The two restart budgets: crash loop (backoff, then give up) and remedies (attempts and tried environments).

The remedy budget persists in the state directory, so a systemd restart of ollama-gpu does not reset it. When the
state cannot be written (a read-only or full disk, a directory we may not write), the history is kept in memory for
the process's life, so "never the same environment twice" still holds within this run; one warning names the path
and errno, and `status` shows the failure.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.log import get as get_logger

log = get_logger(__name__)

Writer = Callable[[int, bytes], int]  # os.write's shape: the seam through which tests make a disk full


@dataclass(slots=True)
class CrashBudget:
    """At most `max_restarts` restarts within `window` seconds; the delay doubles from `backoff` to `backoff_max`."""

    max_restarts: int
    window: float
    backoff: float
    backoff_max: float
    _crashes: deque[float] = field(default_factory=deque)

    def on_crash(self, now: float | None = None) -> float | None:
        """Record a crash; the delay before the next start, or None when the budget is spent (give up)."""
        t = time.monotonic() if now is None else now
        while self._crashes and t - self._crashes[0] > self.window:
            self._crashes.popleft()
        if len(self._crashes) >= self.max_restarts:
            return None
        self._crashes.append(t)
        return min(self.backoff * 2.0 ** (len(self._crashes) - 1), self.backoff_max)

    @property
    def recent(self) -> int:
        """Crashes counted in the current window."""
        return len(self._crashes)


def fingerprint(patch: Mapping[str, str | None]) -> str:
    """A stable name for an environment patch (None = variable removed)."""
    canonical = json.dumps(sorted(patch.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def write_atomic(path: Path, data: bytes, write: Writer = os.write) -> None:
    """Replace `path` with `data` in one step (temp file in the same directory, fsync, rename). On any failure the
    temp file is removed and the OSError raised; the old file, if any, is left as it was."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state-", suffix=".tmp")
    try:
        written = 0
        while written < len(data):
            written += write(fd, data[written:])
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True, slots=True)
class StateWriteError:
    """The last failed write of the state file: what `status` shows and the warning said."""

    path: str
    errno: str  # symbolic: EROFS, ENOSPC, EACCES…
    error: str  # the system's text
    at: float  # wall-clock time of the failure

    def to_dict(self) -> dict[str, Any]:
        """JSON for `status`."""
        return {"path": self.path, "errno": self.errno, "error": self.error, "at": self.at}


@dataclass(slots=True)
class RemedyBudget:
    """Remedy restarts: at most `max_attempts` in all, never the same environment twice; kept in `path`."""

    path: Path
    max_attempts: int
    attempts: list[dict[str, object]] = field(default_factory=list)
    load_error: str | None = None
    write_error: StateWriteError | None = None  # the last write failed: the history since lives in memory only
    write: Writer = os.write

    @classmethod
    def load(cls, path: Path, max_attempts: int) -> RemedyBudget:
        """Read the state file; a missing one is a fresh budget, a corrupt one is reported and replaced."""
        budget = cls(path=path, max_attempts=max_attempts)
        try:
            data = json.loads(path.read_text())
            attempts = data.get("attempts", []) if isinstance(data, dict) else None
            if not isinstance(attempts, list) or not all(isinstance(a, dict) and "fingerprint" in a
                                                         for a in attempts):
                raise ValueError("unexpected shape")
            budget.attempts = attempts
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            budget.load_error = f"{type(exc).__name__}: {exc}"
        return budget

    @property
    def tried(self) -> set[str]:
        """Fingerprints of every environment already tried."""
        return {str(a["fingerprint"]) for a in self.attempts}

    def allows(self, patch: Mapping[str, str | None]) -> tuple[bool, str]:
        """(may we restart with this patch?, why not)."""
        if len(self.attempts) >= self.max_attempts:
            return False, f"remedy budget spent ({len(self.attempts)}/{self.max_attempts})"
        if fingerprint(patch) in self.tried:
            return False, "this environment was already tried"
        return True, ""

    def record(self, patch: Mapping[str, str | None], cause: str) -> None:
        """Remember an attempt: in memory first (that alone keeps this run from repeating it), then atomically on
        disk. A failed write is one warning naming the path and errno (repeats of the same errno are debug lines)
        and stays visible in `summary()` until a later write succeeds."""
        self.attempts.append({"fingerprint": fingerprint(patch), "cause": cause, "patch": dict(patch),
                              "at": time.time()})
        data = json.dumps({"attempts": self.attempts}).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, data, self.write)
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            repeated = self.write_error is not None and self.write_error.errno == code
            self.write_error = StateWriteError(str(self.path), code, exc.strerror or str(exc), time.time())
            (log.debug if repeated else log.warning)(
                "state_write_failed", path=str(self.path), errno=code, error=exc.strerror or str(exc),
                consequence="remedy history kept in memory for this run only; a restart of ollama-gpu forgets it")
            return
        if self.write_error is not None:
            log.info("state_write_recovered", path=str(self.path))
        self.write_error = None

    def summary(self) -> dict[str, Any]:
        """The budget as `status` shows it: attempts used, the limit, the state file, and any failure to read it at
        start (the budget then started fresh) or to write it since."""
        return {"used": len(self.attempts), "max": self.max_attempts, "state_file": str(self.path),
                "load_error": self.load_error,
                "write_error": self.write_error.to_dict() if self.write_error else None}
