"""Reloading `nvidia_uvm` after a resume broke it (issue 16), the policy side: a pure decision asked at each tick
while the break stands, with the operator contract's terms as inputs (the setting, the mode, a known Ollama
generation, root, the remedy budget, idle), and the controller's part that turns it into advice and directives."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from launcher.config import Mode, Settings
from launcher.directives import Directive, ReloadUvm, RestartWith, View
from launcher.remedy_record import remedy_record
from launcher.restarts import RemedyBudget
from launcher.resume_cuda import COMMANDS, UVM, ResumeCuda


class UvmStep(Enum):
    """What to do about a resume that broke nvidia_uvm now."""

    ADVISE = "advise"  # only advise the commands (the reason says why)
    WAIT = "wait"  # reload once Ollama is idle
    RELOAD = "reload"  # reload now (nothing holds the GPU is checked by the reload itself)


def uvm_step(*, may_reload: bool, mode: Mode, generation: str | None, root: bool, budget: tuple[bool, str],
             runner_alive: bool) -> tuple[UvmStep, str]:
    """(step, why): the reload only with OGPU_MAY_RELOAD_UVM, in mode auto, for a known generation, as root, within
    the remedy budget, and only while no model runner is alive."""
    if not may_reload:
        return UvmStep.ADVISE, "OGPU_MAY_RELOAD_UVM is not set"
    if mode is not Mode.AUTO:
        return UvmStep.ADVISE, f"mode {mode.value}: advice only"
    if generation is None:
        return UvmStep.ADVISE, "unknown Ollama generation: observe only"
    if not root:
        return UvmStep.ADVISE, "not running as root: modprobe needs root"
    allowed, why = budget
    if not allowed:
        return UvmStep.ADVISE, why
    if runner_alive:
        return UvmStep.WAIT, "a model runner is alive: reloading once Ollama is idle"
    return UvmStep.RELOAD, "nothing loaded; reloading nvidia_uvm unless something holds the GPU"


@dataclass
class UvmRemedy:
    """The controller's part for a resume that broke nvidia_uvm (cuInit ok→999): the advice once; with
    OGPU_MAY_RELOAD_UVM a ReloadUvm directive when idle (done in the NVML thread, which first checks that nothing
    holds the GPU); once the re-probe finds CUDA working, one restart of Ollama when idle so its discovery sees the
    GPU. Once per resume: the key (boot id, the host's sleep total) is recorded in the persisted remedy budget."""

    settings: Settings
    budget: RemedyBudget
    log: Any
    boot_id: str
    root: bool
    wall: Callable[[], float]
    stages: dict[str, str] = field(default_factory=dict)  # resume key -> advised | reloading | done

    def tick(self, view: View, generation: str | None, cuda: ResumeCuda,
             advised: dict[tuple[str, str], dict[str, Any]], applied: deque[dict[str, Any]]) -> list[Directive]:
        """The directives for now; `advised` and `applied` (the controller's, for status) are updated in place."""
        out = self._outcomes(view, cuda)
        broken = cuda.broken
        if broken is None or broken.get("cause") != UVM:
            advised.pop(("resume", UVM), None)
            return out
        key = f"{self.boot_id}@{broken.get('resume')}"
        stage = self.stages.get(key)
        if stage in ("reloading", "done"):
            return out
        patch: dict[str, str | None] = {"ogpu_uvm_reload": key}
        step, why = uvm_step(may_reload=self.settings.may_reload_uvm, mode=self.settings.mode,
                             generation=generation, root=self.root, budget=self.budget.allows(patch),
                             runner_alive=view.runner_alive)
        if stage is None:
            self.stages[key] = "advised"
            item = remedy_record(subject="resume", cause=UVM, patch=None, before=view.plan.env,
                                 when="advised only" if step is UvmStep.ADVISE else "when idle", reason=why,
                                 at=self.wall(), advice=f"cuInit went {broken.get('change')} after the host resumed",
                                 instruction=f"run {COMMANDS}, then restart ollama-gpu")
            advised[("resume", UVM)] = item
            self.log.warning("advice", subject="resume", cause=UVM, reason=why, advice=item["advice"],
                             instruction=item["instruction"])
        if step is not UvmStep.RELOAD:
            return out
        self.budget.record(patch, UVM)
        self.stages[key] = "reloading"
        applied.append(remedy_record(subject="resume", cause=UVM, patch=None, before=view.plan.env, when="when idle",
                                     reason=why, at=self.wall(),
                                     instruction="modprobe -r nvidia_uvm; modprobe nvidia_uvm; restart Ollama"))
        self.log.warning("remedy", subject="resume", cause=UVM, when="when idle", reason=why)
        return [*out, ReloadUvm(key)]

    def _outcomes(self, view: View, cuda: ResumeCuda) -> list[Directive]:
        """What became of the reloads under way: CUDA works again (restart when idle), or held, failed, or CUDA
        still failing (done; the status advice says which)."""
        out: list[Directive] = []
        reload, probe = cuda.reload, cuda.probe
        for key in [k for k, stage in self.stages.items() if stage == "reloading"]:
            if cuda.fixed_by_reload == key:
                self.stages[key] = "done"
                reason = "nvidia_uvm reloaded after the resume and CUDA works again"
                self.log.warning("remedy", subject="resume", cause=UVM, when="when idle",
                                 reason=f"{reason}: restarting Ollama so that its discovery sees the GPU")
                out.append(RestartWith(view.plan, reason, immediately=False))
            elif (reload is not None and reload.get("key") == key and reload.get("outcome") != "reloaded") or \
                    (probe is not None and probe.get("after") == "uvm_reload" and probe.get("key") == key):
                self.stages[key] = "done"
        return out
