"""Resume detection (issue 16): CLOCK_BOOTTIME counts the time the host slept, CLOCK_MONOTONIC does not, so their
difference grows by the length of each suspend. Two clock reads per check, no thread, no D-Bus.

After a resume `nvidia_uvm` may be broken (new runners get cuInit 999); the health check runs again at once, and the
resume is a fact in status and the event record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

THRESHOLD: Final = 2.0  # seconds: below this the two clocks' difference is noise (NTP slewing, scheduling)


def sleep_gap() -> float:
    """Seconds the host has spent suspended since boot (BOOTTIME − MONOTONIC); 0 where BOOTTIME does not exist."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return 0.0
    return time.clock_gettime(boottime) - time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclass
class ResumeWatch:
    """Says how long the host slept since the last check (None when it did not)."""

    gap: Callable[[], float] = sleep_gap
    last: float | None = field(default=None)

    def check(self) -> float | None:
        """The sleep since the previous call, when it is at least THRESHOLD seconds; the first call only reads."""
        now = self.gap()
        before, self.last = self.last, now
        if before is None or now - before < THRESHOLD:
            return None
        return now - before
