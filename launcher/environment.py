"""The environment plan: what `ollama serve` is started with, and why each variable differs from ours.

The user's environment, plus the variables from our files that the environment does not set, plus `LD_PRELOAD`
(our shim first) and `OGPU_EVENTS`. `NOTIFY_SOCKET` and `WATCHDOG_*` are ours (systemd speaks to the supervisor)
and are removed; nothing else is dropped. Remedies (launcher/remedies.py) change a plan through `with_patch`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from launcher.config import Mode, Settings

OURS: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
EVENTS_VAR: Final = "OGPU_EVENTS"


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between our environment and Ollama's."""

    key: str
    action: str  # 'set' | 'removed' | 'from_file'
    value: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class EnvPlan:
    """The command line and environment for `ollama serve`, with the reasons for every change."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    changes: tuple[Change, ...] = field(default=())
    shim: Path | None = None
    advice: tuple[str, ...] = field(default=())  # fixes we did not apply (mode advise/observe)

    def to_dict(self) -> dict[str, object]:
        """JSON-able view for `ollama-gpu env --json`."""
        return {
            "argv": list(self.argv),
            "env": dict(sorted(self.env.items())),
            "changes": [{"key": c.key, "action": c.action, "value": c.value, "reason": c.reason} for c in self.changes],
            "shim": str(self.shim) if self.shim else None,
            "advice": list(self.advice),
        }


def split_preload(value: str) -> list[str]:
    """LD_PRELOAD entries: ld.so separates them by spaces or colons."""
    return [p for p in value.replace(":", " ").split() if p]


def with_preload(existing: str, shim: Path) -> str:
    """Our shim first, every existing preload kept in order, the shim not repeated."""
    rest = [p for p in split_preload(existing) if Path(p) != shim]
    return " ".join([str(shim), *rest])


def plan_environment(
    base_env: Mapping[str, str],
    settings: Settings,
    *,
    ollama: str,
    serve_args: Sequence[str] = (),
    shim: Path | None = None,
    events_socket: Path | None = None,
) -> EnvPlan:
    """Build Ollama's environment. `shim` is None when it is off or failed its preflight."""
    env = dict(base_env)
    changes: list[Change] = []
    advice: list[str] = []
    for key, value in settings.ollama_env.items():
        if key not in env:
            env[key] = value
            changes.append(Change(key, "from_file", value, f"set in {settings.ollama_env_sources[key]}"))
    for key in OURS:
        if env.pop(key, None) is not None:
            changes.append(Change(key, "removed", None, "systemd talks to ollama-gpu, not to Ollama"))

    if settings.mode is not Mode.OFF and shim is not None:
        value = with_preload(env.get("LD_PRELOAD", ""), shim)
        env["LD_PRELOAD"] = value
        changes.append(Change("LD_PRELOAD", "set", value, "the CUDA shim reports from inside every runner"))
        if events_socket is not None:
            env[EVENTS_VAR] = str(events_socket)
            changes.append(Change(EVENTS_VAR, "set", str(events_socket), "where the shim sends its events"))

    return EnvPlan(
        argv=(ollama, "serve", *serve_args),
        env=env,
        changes=tuple(changes),
        shim=shim if settings.mode is not Mode.OFF else None,
        advice=tuple(advice),
    )


def with_patch(plan: EnvPlan, patch: Mapping[str, str | None], reason: str) -> EnvPlan:
    """The same plan with `patch` applied to Ollama's environment (None unsets), each change recorded with why."""
    env = dict(plan.env)
    changes = list(plan.changes)
    for key, value in sorted(patch.items()):
        if value is None:
            env.pop(key, None)
            changes.append(Change(key, "removed", None, reason))
        else:
            env[key] = value
            changes.append(Change(key, "set", value, reason))
    return EnvPlan(argv=plan.argv, env=env, changes=tuple(changes), shim=plan.shim, advice=plan.advice)


def with_advice(plan: EnvPlan, advice: str) -> EnvPlan:
    """The same plan with one more fix we report but do not apply."""
    return EnvPlan(argv=plan.argv, env=plan.env, changes=plan.changes, shim=plan.shim, advice=(*plan.advice, advice))
