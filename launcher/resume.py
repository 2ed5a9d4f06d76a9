"""Resume detection (issue 16): CLOCK_BOOTTIME counts the time the host slept, CLOCK_MONOTONIC does not, so their
difference grows by the length of each suspend. Two clock reads per check, no thread, no D-Bus. Where logind is
reachable (launcher.logind), its PrepareForSleep(false) signals the resume at once: the next check reports it even
when the gap did not grow (a sleep shorter than THRESHOLD), and a signal that arrives just after the gap already
reported the same sleep is not reported again.

After a resume `nvidia_uvm` may be broken (new runners get cuInit 999); the health check runs again at once, and the
resume is a fact in status and the event record.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

THRESHOLD: Final = 2.0  # seconds: below this the two clocks' difference is noise (NTP slewing, scheduling)
SAME_SLEEP: Final = 30.0  # seconds awake: a logind signal this soon after a reported resume is that same resume


def sleep_gap() -> float:
    """Seconds the host has spent suspended since boot (BOOTTIME − MONOTONIC); 0 where BOOTTIME does not exist."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return 0.0
    return time.clock_gettime(boottime) - time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclass
class ResumeWatch:
    """Says how long the host slept since the last check (None when it did not); `via` names what found the newest
    resume: "clock" (the gap) or "logind" (its signal)."""

    gap: Callable[[], float] = sleep_gap
    last: float | None = field(default=None)
    clock: Callable[[], float] = time.monotonic  # awake time: it does not advance while the host sleeps
    via: str = "clock"
    _signalled: bool = False
    _reported: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def signal(self) -> None:
        """logind says the host resumed now (from any thread): the next check reports a resume."""
        with self._lock:
            self._signalled = True

    def check(self) -> float | None:
        """The sleep since the previous call, when it is at least THRESHOLD seconds or logind signalled a resume
        that was not just reported; the first call only reads (unless signalled)."""
        now = self.gap()
        before, self.last = self.last, now
        with self._lock:
            signalled, self._signalled = self._signalled, False
        slept = 0.0 if before is None else max(now - before, 0.0)
        if before is not None and slept >= THRESHOLD:
            self.via = "logind" if signalled else "clock"
        elif signalled and (self._reported is None or self.clock() - self._reported >= SAME_SLEEP):
            self.via = "logind"
        else:
            return None
        self._reported = self.clock()
        return slept
