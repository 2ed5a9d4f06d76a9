"""The pure decision: a verdict, the mode, the generation, the budget and the moment → apply, defer, advise or nothing.

Rules are a list of small functions, tried in order; the first that returns a Decision wins (DESIGN.md, operator
contract 1, 3, 4 and 5). Nothing here touches the environment or the budget: the caller applies the patch and calls
`RemedyBudget.record` only when it really restarts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from launcher.config import Mode
from launcher.events import Event
from launcher.evidence import Verdict
from launcher.remedies import RemedyContext, RemedyPlan, remedy_for
from launcher.restarts import RemedyBudget, fingerprint


class Action(enum.Enum):
    """What the supervisor does with a decision."""

    APPLY_NOW = "apply_now"  # restart Ollama with the patch now
    APPLY_WHEN_IDLE = "apply_when_idle"  # advise now; restart with the patch once no model runner is alive
    ADVISE = "advise"  # report the fix (patch or instruction); change nothing
    NOTHING = "nothing"  # healthy, expected, or not ours to act on; the verdict is still reported


@dataclass(frozen=True, slots=True)
class Situation:
    """Everything the decision depends on besides the remedy context."""

    verdict: Verdict
    which: str  # "discovery" | "runner"
    mode: Mode
    generation: str | None  # None: unknown generation ⇒ observe only
    ready: bool  # Ollama answered /api/version
    runner_alive: bool  # a model runner is alive (a restart would cut a loaded model)
    t: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """The action, why, the plan it rests on (patch and/or instruction) and the event to record."""

    action: Action
    reason: str
    cause: str
    plan: RemedyPlan | None
    event: Event

    @property
    def patch(self) -> dict[str, str | None] | None:
        """The environment patch to apply, for APPLY_NOW / APPLY_WHEN_IDLE."""
        if self.action in (Action.APPLY_NOW, Action.APPLY_WHEN_IDLE) and self.plan is not None:
            return self.plan.patch
        return None


# Outcomes that a remedy may act on: a fallback, a degraded GPU path, and the operator's own CPU choice (only with
# OGPU_MAY_OVERRIDE). `unknown`, `partial_offload` and `crash` are advised, never patched: no verified fallback.
PATCHABLE: Final = frozenset({"cpu_fallback", "gpu", "cpu_expected"})
ADVISABLE: Final = frozenset({"cpu_fallback", "gpu", "cpu_expected", "unknown", "partial_offload", "crash"})

Rule = Callable[[Situation, RemedyPlan | None, RemedyBudget], "tuple[Action, str] | None"]


def _mode_off(s: Situation, plan: RemedyPlan | None, budget: RemedyBudget) -> tuple[Action, str] | None:
    return (Action.NOTHING, "mode off: Ollama runs unchanged") if s.mode is Mode.OFF else None


def _nothing_to_fix(s: Situation, plan: RemedyPlan | None, budget: RemedyBudget) -> tuple[Action, str] | None:
    v = s.verdict
    if v.cause == "none":
        return Action.NOTHING, ("healthy GPU run" if v.outcome == "gpu" else f"{v.outcome}: nothing to fix")
    if v.outcome not in ADVISABLE or (v.outcome == "unknown" and v.cause == "unknown"):
        return Action.NOTHING, "the evidence does not settle a cause yet"
    return None


def _observe_only(s: Situation, plan: RemedyPlan | None, budget: RemedyBudget) -> tuple[Action, str] | None:
    if s.mode is Mode.OBSERVE:
        return Action.NOTHING, "mode observe: the verdict is reported, nothing is changed"
    if s.generation is None:
        return Action.NOTHING, "unknown Ollama generation: observe only (its env handling and log lines are not known)"
    return None


def _observe_mode(s: Situation, plan: RemedyPlan | None, budget: RemedyBudget) -> tuple[Action, str] | None:
    return (Action.NOTHING, "mode observe: nothing is changed") if s.mode is Mode.OBSERVE else None


def _no_patch(s: Situation, plan: RemedyPlan | None, budget: RemedyBudget) -> tuple[Action, str] | None:
    if plan is None or plan.patch is None:
        return Action.ADVISE, (plan.why_no_patch if plan else "no remedy") or "no environment change fixes this"
    if s.verdict.outcome not in PATCHABLE:
        return Action.ADVISE, f"{s.verdict.outcome} is not a verified fallback: advised, not applied"
    if s.verdict.outcome == "gpu" and s.verdict.cause == "unknown":
        return Action.ADVISE, "degraded GPU path with no known cause"
    return None


def _advise_mode(s: Situation, plan: RemedyPlan | None, budget: RemedyBudget) -> tuple[Action, str] | None:
    return (Action.ADVISE, "mode advise: the fix is reported, never applied") if s.mode is Mode.ADVISE else None


def _budget(s: Situation, plan: RemedyPlan | None, budget: RemedyBudget) -> tuple[Action, str] | None:
    assert plan is not None and plan.patch is not None
    ok, why = budget.allows(plan.patch)
    return None if ok else (Action.ADVISE, why)


def _moment(s: Situation, plan: RemedyPlan | None, budget: RemedyBudget) -> tuple[Action, str] | None:
    assert plan is not None
    if s.runner_alive:
        return Action.APPLY_WHEN_IDLE, "a model is loaded: advised now, applied once Ollama is idle"
    if not s.ready and s.which == "discovery" and plan.when in ("proactive", "discovery"):
        return Action.APPLY_NOW, "found at discovery, before READY: a restart now costs no request"
    return Action.APPLY_NOW, "Ollama is idle: no model runner is alive"


RULES: Final[tuple[Rule, ...]] = (_mode_off, _nothing_to_fix, _observe_only, _no_patch, _advise_mode, _budget,
                                  _moment)


def decide(situation: Situation, ctx: RemedyContext, budget: RemedyBudget) -> Decision:
    """Run the rules; the first answer is the decision, recorded as a `supervisor/decision` event."""
    v = situation.verdict
    plan = remedy_for(v.cause, ctx) if v.cause not in ("none",) else None
    action, reason = Action.NOTHING, "no rule applied"
    for rule in RULES:
        answer = rule(situation, plan, budget)
        if answer is not None:
            action, reason = answer
            break
    data: dict[str, Any] = {
        "action": action.value, "reason": reason, "which": situation.which, "subject": v.subject,
        "outcome": v.outcome, "cause": v.cause, "mode": situation.mode.value, "generation": situation.generation,
        "ready": situation.ready, "runner_alive": situation.runner_alive,
        "patch": dict(plan.patch) if plan is not None and plan.patch is not None else None,
        "fingerprint": fingerprint(plan.patch) if plan is not None and plan.patch is not None else None,
        "instruction": plan.instruction if plan is not None else None,
    }
    return Decision(action, reason, v.cause, plan, Event("supervisor", "decision", situation.t, None, data))


def decide_proactive(plans: list[RemedyPlan], mode: Mode, generation: str | None, budget: RemedyBudget,
                     t: float = 0.0) -> list[Decision]:
    """Decisions for remedies found before Ollama starts (remedies.proactive): applied in auto. They shape the first
    environment rather than restart anything, so the restart budget does not count them."""
    out = []
    for plan in plans:
        v = Verdict("cpu_fallback", plan.cause, subject="start", tier="live")
        s = Situation(v, "discovery", mode, generation, ready=False, runner_alive=False, t=t)
        action, reason = Action.NOTHING, ""
        # Before start the generation is not known yet: these patches (a driver directory, stubs dropped) are right
        # for every generation, so only the mode decides.
        for rule in (_mode_off, _observe_mode, _advise_mode):
            answer = rule(s, plan, budget)
            if answer is not None:
                action, reason = answer
                break
        else:
            action, reason = Action.APPLY_NOW, "visible before start: applied to the first environment"
        data: Mapping[str, Any] = {"action": action.value, "reason": reason, "which": "start", "cause": plan.cause,
                                   "mode": mode.value, "patch": dict(plan.patch or {}),
                                   "instruction": plan.instruction}
        out.append(Decision(action, reason, plan.cause, plan, Event("supervisor", "decision", t, None, data)))
    return out
