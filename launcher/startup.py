"""What `serve` does before Ollama starts, shared with `ollama-gpu env`: the shim, the driver scan, the plan."""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher import shim_build
from launcher.children import ChildRegistry, SpawnError
from launcher.config import Mode, Settings
from launcher.driverlib import DriverFinding, find_driver, ld_cache
from launcher.environment import EnvPlan, plan_environment, with_advice, with_patch
from launcher.remedies import RemedyContext, proactive
from launcher.remedy_record import remedy_record
from launcher.restarts import RemedyBudget


def registry_runner(registry: ChildRegistry) -> shim_build.Runner:
    """shim_build's Runner through our child registry, so the reaper never steals a compiler's status."""

    def run(
        argv: Sequence[str], *, env: Mapping[str, str], timeout: float, cwd: Path | None = None
    ) -> shim_build.Completed:
        full = list(argv) if cwd is None else ["/bin/sh", "-c", 'cd "$0" && exec "$@"', str(cwd), *argv]
        try:
            code, out, err = registry.run(full, env, timeout=timeout, name=Path(argv[0]).name)
        except SpawnError as exc:
            return shim_build.Completed(tuple(argv), 127, "", f"{argv[0]}: {exc.strerror}")
        return shim_build.Completed(tuple(argv), code, out, err)

    return run


def resolve_ollama(name: str, env: Mapping[str, str]) -> str:
    """The Ollama binary: a path as given, or a name looked up on the environment's PATH."""
    if "/" in name:
        return name
    return shutil.which(name, path=env.get("PATH")) or name


@dataclass(frozen=True, slots=True)
class Prepared:
    """Everything decided before Ollama starts."""

    plan: EnvPlan
    shim: shim_build.Resolved | None
    shim_problem: str | None
    driver: DriverFinding
    applied: tuple[dict[str, Any], ...] = field(default=())  # pre-start remedies, as `status` shows them
    advised: tuple[dict[str, Any], ...] = field(default=())  # pre-start fixes reported but not applied (mode)


def prepare(
    settings: Settings,
    env: Mapping[str, str],
    registry: ChildRegistry,
    log: Any,
    serve_args: Sequence[str] = (),
    *,
    root: Path = Path("/"),
) -> Prepared:
    """Build (or take) the shim and preflight it, scan for the driver, and plan Ollama's environment."""
    runner = registry_runner(registry)
    resolved: shim_build.Resolved | None = None
    problem: str | None = None
    if settings.mode is not Mode.OFF:
        try:
            resolved = shim_build.resolve(settings.shim, settings.dirs.cache, env, runner=runner, reuse_preflight=True)
            if not resolved.ok:
                problem = f"preflight failed: {resolved.preflight.message}"
        except shim_build.ShimError as exc:
            problem = str(exc)
        except OSError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            log.warning("shim_unavailable", problem=problem, action="serving without the shim; verdicts use "
                        "Ollama's log, /proc and NVML")

    def run_ldconfig(argv: Sequence[str]) -> tuple[int, str]:
        done = runner(argv, env=env, timeout=10.0)
        return (done.returncode if done.returncode is not None else 137), done.stdout

    driver = find_driver(env, root=root, cache=ld_cache(run_ldconfig) if root == Path("/") else (),
                         extra_dirs=settings.driver_lib_dirs)
    shim_path = resolved.path if resolved is not None and resolved.ok else None
    plan = plan_environment(
        env, settings, ollama=resolve_ollama(settings.ollama, env), serve_args=serve_args, shim=shim_path,
        events_socket=settings.dirs.events_socket if shim_path is not None else None,
    )
    ctx = RemedyContext(env=plan.env, may_override=settings.may_override, driver=driver)
    plans = proactive(ctx)
    if not plans:
        return Prepared(plan=plan, shim=resolved, shim_problem=problem, driver=driver)
    from launcher.policy import Action, decide_proactive  # the board's types: only when there is a remedy to weigh

    budget = RemedyBudget(settings.dirs.state_file, settings.remedy_max)  # proactive patches are not counted
    applied: list[dict[str, Any]] = []
    advised: list[dict[str, Any]] = []
    for decision in decide_proactive(plans, settings.mode, None, budget):
        plan_ = decision.plan
        if plan_ is None:
            continue
        apply = decision.action is Action.APPLY_NOW and plan_.patch is not None
        if apply or decision.action is Action.ADVISE:
            (applied if apply else advised).append(remedy_record(
                subject="start", cause=plan_.cause, patch=plan_.patch, before=plan.env,
                when="before start" if apply else "advised only", reason=decision.reason, at=time.time(),
                advice=plan_.advice, instruction=plan_.instruction))
        if apply and plan_.patch is not None:
            plan = with_patch(plan, plan_.patch, f"{plan_.cause}: {plan_.advice}")
        elif decision.action is Action.ADVISE:
            plan = with_advice(plan, f"{plan_.cause}: {', '.join(plan_.changes) or plan_.instruction}")
    return Prepared(plan=plan, shim=resolved, shim_problem=problem, driver=driver, applied=tuple(applied),
                    advised=tuple(advised))
