"""What an operator should do about a verdict outside `serve` (explain, doctor): the cause table's advice, computed
from the settings the log shows where it shows them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from launcher.causes import CAUSE_TABLE, advice_for, row
from launcher.remedy_patches import RemedyContext

ADVICE: Final[Mapping[str, str]] = {r.label: r.advice for r in CAUSE_TABLE}

# Outcomes that need saying even when the cause is `none` or `unknown`.
OUTCOME_ADVICE: Final[dict[str, str]] = {
    "unknown": "The log cannot show where the model runs: load a model with OLLAMA_DEBUG=1 and explain that log.",
    "crash": "The runner failed: the evidence lines show how; a crash right after GPU init usually means a driver "
             "or architecture problem.",
}


def advice(outcome: str, cause: str, settings: Mapping[str, str] | None = None) -> str:
    """The operator's next step for a verdict; with the settings in force (e.g. the log's `server config` line), it
    never asks for what is set already."""
    if cause in ("none", "unknown") and outcome in OUTCOME_ADVICE:
        return OUTCOME_ADVICE[outcome]
    if settings:
        return advice_for(row(cause), RemedyContext(env={k: v for k, v in settings.items() if v}))
    return row(cause).advice
