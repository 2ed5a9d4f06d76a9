"""What the controller sees of the supervisor (a snapshot) and what it asks of it (data, never a call back)."""

from __future__ import annotations

from dataclasses import dataclass

from launcher.environment import EnvPlan
from launcher.lifecycle import State


@dataclass(frozen=True, slots=True)
class View:
    """The supervisor as of one tick."""

    state: State
    plan: EnvPlan
    ollama_pid: int | None
    version: str
    restarts: int
    crash_recent: int
    crash_max: int
    runner_alive: bool  # a model runner was alive at the last tree scan

    @property
    def ready(self) -> bool:
        """READY=1 was sent for the running Ollama."""
        return self.state is State.RUNNING


@dataclass(frozen=True, slots=True)
class RestartWith:
    """Adopt `plan` and restart Ollama: at once (discovery time, before READY) or once no model runner is alive."""

    plan: EnvPlan
    reason: str
    immediately: bool


@dataclass(frozen=True, slots=True)
class Fail:
    """Stop Ollama and exit with `code` (4: OGPU_REQUIRE_GPU and no usable GPU)."""

    code: int


@dataclass(frozen=True, slots=True)
class ReloadUvm:
    """Reload nvidia_uvm (in the NVML thread, launcher.uvm_reload) for the resume `key`, then re-probe CUDA."""

    key: str


Directive = RestartWith | Fail | ReloadUvm
