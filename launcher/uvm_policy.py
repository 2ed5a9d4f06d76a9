"""Whether to reload `nvidia_uvm` after a resume broke it (issue 16): a pure decision, asked at each tick while the
break stands, with the operator contract's terms as inputs (the setting, the mode, a known Ollama generation, root,
the remedy budget, idle)."""

from __future__ import annotations

from enum import Enum

from launcher.config import Mode


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
