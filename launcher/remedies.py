"""Cause → remedy: a row of the cause table (causes.py) applied to a context — the patch, when it may be applied, and
the operator's instruction and advice computed from the settings in force.

The patches are in remedy_patches.py; operator intent wins (DESIGN.md, operator contract 3): a variable the operator
set is changed only when listed in `OGPU_MAY_OVERRIDE`, and scheduler-assigned GPUs are never widened.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from launcher.causes import CAUSES_BY_LABEL, Cause, When, advice_for, render, row
from launcher.remedy_patches import (
    BUNDLED_RUNTIMES,
    WSL_LIB_DIR,
    Patch,
    RemedyContext,
    driver_major,
    may_change,
    scheduler_assigned,
)

__all__ = ["BUNDLED_RUNTIMES", "REMEDIES", "WSL_LIB_DIR", "Patch", "RemedyContext", "RemedyPlan", "When",
           "changes_of", "driver_major", "may_change", "proactive", "remedy_for", "scheduler_assigned"]

# Every cause's row, by label (the cause table is the one source).
REMEDIES: Final[Mapping[str, Cause]] = CAUSES_BY_LABEL


@dataclass(frozen=True, slots=True)
class RemedyPlan:
    """A row applied to a context: the patch (or None and why), the instruction and the one-line advice."""

    cause: str
    when: When
    patch: Patch | None
    instruction: str
    advice: str
    why_no_patch: str = ""
    changes: tuple[str, ...] = field(default=())  # "SET K=V" / "UNSET K", for logs and status


def changes_of(patch: Mapping[str, str | None]) -> tuple[str, ...]:
    """A patch as readable changes: `SET K=V`, `UNSET K`."""
    return tuple(f"UNSET {k}" if v is None else f"SET {k}={v}" for k, v in sorted(patch.items()))


def remedy_for(cause: str, ctx: RemedyContext) -> RemedyPlan:
    """The row for `cause` applied to `ctx` (an unknown cause gets the `unknown` row); the instruction and advice
    are computed from the settings in force."""
    found = row(cause)
    patch, why = (None, "no environment change fixes this cause") if found.patch is None else found.patch(ctx)
    why_not = "" if patch is not None else why
    return RemedyPlan(
        cause=found.label,
        when=found.when,
        patch=patch,
        instruction=render(found, ctx, why_not),
        advice=advice_for(found, ctx, why_not),
        why_no_patch=why_not,
        changes=changes_of(patch) if patch is not None else (),
    )


def proactive(ctx: RemedyContext) -> list[RemedyPlan]:
    """Remedies visible before Ollama starts, from the driver finding alone: stubs first, then a missing dir."""
    out = []
    if ctx.driver is not None and ctx.driver.stub_first:
        out.append(remedy_for("stub_library", ctx))
    elif ctx.driver is not None and ctx.driver.needs_dir:
        out.append(remedy_for("libcuda_not_found", ctx))
    return [plan for plan in out if plan.patch is not None]
