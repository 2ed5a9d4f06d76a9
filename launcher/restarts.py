"""The two restart budgets: crash loop (backoff, then give up) and remedies (attempts and tried environments).

The remedy budget persists in the state directory, so a systemd restart of ollama-gpu does not reset it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


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
        return min(self.backoff * (2 ** (len(self._crashes) - 1)), self.backoff_max)

    @property
    def recent(self) -> int:
        """Crashes counted in the current window."""
        return len(self._crashes)


def fingerprint(patch: Mapping[str, str | None]) -> str:
    """A stable name for an environment patch (None = variable removed)."""
    canonical = json.dumps(sorted(patch.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(slots=True)
class RemedyBudget:
    """Remedy restarts: at most `max_attempts` in all, never the same environment twice; kept in `path`."""

    path: Path
    max_attempts: int
    attempts: list[dict[str, object]] = field(default_factory=list)
    load_error: str | None = None

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
        """Remember an attempt, atomically on disk (failure to write is not fatal: the in-memory budget holds)."""
        self.attempts.append({"fingerprint": fingerprint(patch), "cause": cause, "patch": dict(patch),
                              "at": time.time()})
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
            with os.fdopen(fd, "w") as out:
                json.dump({"attempts": self.attempts}, out)
            Path(tmp).replace(self.path)
