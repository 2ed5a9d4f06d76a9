"""The outcome and cause vocabularies of DESIGN.md: one list for parser, board, remedies, fixtures and tests."""

from __future__ import annotations

from typing import Final

from launcher.causes import LABELS
from launcher.operator_vars import FILTER_VARS, INTENT_VARS, SCHEDULER_VARS

__all__ = ["CAUSES", "FILTER_VARS", "FINDINGS", "INTENT_VARS", "OUTCOMES", "SCHEDULER_VARS", "is_cause", "is_outcome"]

OUTCOMES: Final = ("gpu", "partial_offload", "cpu_fallback", "cpu_expected", "crash", "unknown")

# The cause vocabulary is the cause table's labels, in DESIGN.md's order (causes.py: one row per cause).
CAUSES: Final = LABELS

# Audit findings are not causes of a CPU fallback (DESIGN.md, cause vocabulary).
FINDINGS: Final = ("runner_env_missing",)


def is_outcome(value: str) -> bool:
    """True when `value` is one of the outcomes."""
    return value in OUTCOMES


def is_cause(value: str) -> bool:
    """True when `value` is one of the causes."""
    return value in CAUSES
