"""What an operator should do about a verdict when no context is known (explain, doctor): the cause table's advice."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from launcher.causes import CAUSE_TABLE, row

ADVICE: Final[Mapping[str, str]] = {r.label: r.advice for r in CAUSE_TABLE}

# Outcomes that need saying even when the cause is `none` or `unknown`.
OUTCOME_ADVICE: Final[dict[str, str]] = {
    "unknown": "The log cannot show where the model runs: load a model with OLLAMA_DEBUG=1 and explain that log.",
    "crash": "The runner failed: the evidence lines show how; a crash right after GPU init usually means a driver "
             "or architecture problem.",
}


def advice(outcome: str, cause: str) -> str:
    """The operator's next step for a verdict."""
    if cause in ("none", "unknown") and outcome in OUTCOME_ADVICE:
        return OUTCOME_ADVICE[outcome]
    return row(cause).advice
