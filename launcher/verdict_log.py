"""How a verdict is logged: warnings are for findings; a verdict that only lacks evidence so far is `pending` (debug).

Before Ollama has printed anything, or while a runner is seen by one source and a `gpu` verdict waits for a second,
the board answers unknown/unknown. That is not a finding: logged as a warning it made every healthy start and every
new runner look like a problem (issue 15 item 6).
"""

from __future__ import annotations

from typing import Any

from launcher.evidence import Verdict

HEALTHY_CAUSES = ("none", "operator_forced_cpu")


def is_pending(verdict: Verdict) -> bool:
    """Only "no evidence yet" (nothing said, or one signal waiting for a second). A named cause or sources that
    disagree are findings."""
    return verdict.outcome == "unknown" and verdict.cause == "unknown" and not verdict.disagreement


def verdict_log(subject: str, verdict: Verdict) -> tuple[str, dict[str, Any]]:
    """(level, fields) of the `verdict` log line: debug when pending, info when healthy, else warning."""
    pending = is_pending(verdict)
    healthy = verdict.outcome in ("gpu", "cpu_expected") and verdict.cause in HEALTHY_CAUSES
    level = "debug" if pending else "info" if healthy else "warning"
    return level, {"subject": subject, "outcome": "pending" if pending else verdict.outcome, "cause": verdict.cause,
                   "signals": list(verdict.signals), "disagreement": list(verdict.disagreement) or None}
