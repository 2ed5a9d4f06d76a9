"""Environment patches, one function per remedy that can change Ollama's environment.

A patch is a function of the current environment, the driver finding, the generation and the operator's overrides;
it returns `{VAR: value}` (None = unset) or None and why no environment change can fix the cause here. Operator intent
wins: a variable the operator set is changed only when listed in `OGPU_MAY_OVERRIDE`, and scheduler-assigned GPUs
(Slurm, Kubernetes) are never widened (DESIGN.md, operator contract 3). The cause table (causes.py) names each row's
patch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeAlias

from launcher import devices
from launcher.driverlib import DriverFinding, is_stub_dir
from launcher.operator_vars import FILTER_VARS, INTENT_VARS, SCHEDULER_VARS

Patch: TypeAlias = dict[str, str | None]
PatchFn: TypeAlias = Callable[["RemedyContext"], tuple[Patch | None, str]]

WSL_LIB_DIR: Final = "/usr/lib/wsl/lib"
# Bundled CUDA runtimes per generation, newest first, with the lowest driver branch each runs on
# (reference/ollama-internals.md B.3, C.3, D.3: gen D drops cuda_v12 devices below driver 550; CUDA 13 needs 580;
# CUDA 12.x minor-version compatibility needs 525; cuda_v11 shipped in B only up to v0.9.2).
BUNDLED_RUNTIMES: Final[Mapping[str, tuple[tuple[str, int], ...]]] = {
    "B": (("cuda_v13", 580), ("cuda_v12", 525), ("cuda_v11", 450)),
    "C": (("cuda_v13", 580), ("cuda_v12", 525)),
    "D": (("cuda_v13", 580), ("cuda_v12", 550)),
}


@dataclass(frozen=True, slots=True)
class RemedyContext:
    """What a patch may look at: Ollama's current environment and what we know of the machine and the install."""

    env: Mapping[str, str]
    may_override: frozenset[str] = frozenset()
    driver: DriverFinding | None = None
    generation: str | None = None
    driver_version: str | None = None  # NVML's, "580.159.04"
    library_dirs: tuple[str, ...] | None = None  # lib/ollama entries that ship (cuda_v12, …); None: not known
    tmp_dir: Path | None = None  # an executable directory of ours for OLLAMA_TMPDIR
    cuda_discovered: bool = False  # CUDA itself found the GPU (then Vulkan taking it is a choice, not a rescue)
    service_user: str = "ollama"
    gpus: tuple[devices.Gpu, ...] | None = None  # NVML's GPUs (None: NVML unavailable)
    cuda_saw: tuple[str, ...] | None = None  # UUIDs CUDA showed under the current CUDA_VISIBLE_DEVICES, by ordinal


# --- operator intent --------------------------------------------------------------------------------------------


def scheduler_assigned(env: Mapping[str, str]) -> str | None:
    """The scheduler variable that assigned this job's GPUs, if any."""
    return next((k for k in SCHEDULER_VARS if env.get(k)), None)


def may_change(key: str, ctx: RemedyContext) -> tuple[bool, str]:
    """(may a remedy change `key`?, why not). Unset keys are free; the operator's need OGPU_MAY_OVERRIDE; device
    filters under a scheduler are never widened."""
    if key in FILTER_VARS and scheduler_assigned(ctx.env):
        return False, f"{key} comes with GPUs assigned by the scheduler ({scheduler_assigned(ctx.env)}): never widened"
    if key in ctx.env and key in INTENT_VARS and key not in ctx.may_override:
        return False, f"{key}={ctx.env[key]} was set by the operator; list it in OGPU_MAY_OVERRIDE to let us change it"
    return True, ""


# --- patches ----------------------------------------------------------------------------------------------------


def _path_entries(value: str) -> list[str]:
    return [p for p in re.split(r"[:;]", value) if p]


def _prepend_dir(ctx: RemedyContext, directory: str | None, what: str) -> tuple[Patch | None, str]:
    if directory is None:
        return None, f"no real {what} directory was found on this machine"
    entries = _path_entries(ctx.env.get("LD_LIBRARY_PATH", ""))
    if entries[:1] == [directory]:
        return None, f"{directory} is already first in LD_LIBRARY_PATH"
    return {"LD_LIBRARY_PATH": ":".join([directory, *[e for e in entries if e != directory]])}, ""


def driver_dir(ctx: RemedyContext) -> tuple[Patch | None, str]:
    """Put the real driver directory first in LD_LIBRARY_PATH."""
    real = ctx.driver.real_dir if ctx.driver is not None else None
    return _prepend_dir(ctx, str(real) if real is not None else None, "libcuda.so.1")


def wsl_dir(ctx: RemedyContext) -> tuple[Patch | None, str]:
    """Put WSL's driver directory first in LD_LIBRARY_PATH."""
    return _prepend_dir(ctx, WSL_LIB_DIR, "WSL driver")


def drop_stubs(ctx: RemedyContext) -> tuple[Patch | None, str]:
    """Drop the CUDA toolkit's stubs directories from LD_LIBRARY_PATH (the real driver directory first)."""
    entries = _path_entries(ctx.env.get("LD_LIBRARY_PATH", ""))
    kept = [e for e in entries if not is_stub_dir(Path(e))]
    if kept == entries:
        return None, "no stubs directory in LD_LIBRARY_PATH: the stub comes from ld.so.conf or the image"
    if ctx.driver is not None and ctx.driver.real_dir is not None and str(ctx.driver.real_dir) not in kept:
        kept.insert(0, str(ctx.driver.real_dir))
    return {"LD_LIBRARY_PATH": ":".join(kept) if kept else None}, ""


def culprits(keys: tuple[str, ...], forces: Callable[[str, str], bool], env: Mapping[str, str]) -> list[str]:
    """The variables of `keys` that are set and, at their value, cause this."""
    return [k for k in keys if k in env and forces(k, env[k])]


def unset_intent(keys: tuple[str, ...], forces: Callable[[str, str], bool]) -> PatchFn:
    """Unset the operator's variables that cause this, where OGPU_MAY_OVERRIDE allows it."""
    def patch(ctx: RemedyContext) -> tuple[Patch | None, str]:
        found = culprits(keys, forces, ctx.env)
        if not found:
            return None, "none of " + ", ".join(keys) + " is set here"
        out: Patch = {}
        for key in found:
            ok, why = may_change(key, ctx)
            if not ok:
                return None, why
            out[key] = None
        return out, ""
    return patch


def forces_cpu(key: str, value: str) -> bool:
    """The variable, at this value, chooses the CPU (a filter hiding every device, a CPU library)."""
    v = value.strip()
    if key in FILTER_VARS:
        return v in ("", "-1", "none", "void", "NoDevFiles")
    if key == "OLLAMA_LLM_LIBRARY":
        return v.startswith("cpu")
    return False


def hides_devices(key: str, value: str) -> bool:
    """Any device filter can hide the GPU."""
    return key in FILTER_VARS


def names_no_gpu_library(key: str, value: str) -> bool:
    """OLLAMA_LLM_LIBRARY names no GPU library directory (e.g. `cuda` after the 0.12 layout change)."""
    return key == "OLLAMA_LLM_LIBRARY" and not value.startswith(("cuda_", "rocm", "vulkan", "mlx_"))


def narrow_filter(ctx: RemedyContext) -> tuple[Patch | None, str]:
    """CUDA_VISIBLE_DEVICES: drop the entries that name no GPU (CUDA stops reading at the first), so the GPUs the
    operator listed after them are used; never more GPUs than listed, never `unset`. Other filters: unset if allowed."""
    value = ctx.env.get("CUDA_VISIBLE_DEVICES")
    if value is None or value.strip() in devices.HIDE_ALL:
        return unset_intent(tuple(k for k in FILTER_VARS if k != "CUDA_VISIBLE_DEVICES"), hides_devices)(ctx)
    ok, why = may_change("CUDA_VISIBLE_DEVICES", ctx)
    if not ok:
        return None, why
    reading = devices.read_filter(value, ctx.gpus, ctx.env, cuda_saw=ctx.cuda_saw)
    narrowed, why = devices.narrowed(reading)
    return ({"CUDA_VISIBLE_DEVICES": narrowed}, "") if narrowed is not None else (None, why)


def vulkan_off(ctx: RemedyContext) -> tuple[Patch | None, str]:
    """OLLAMA_VULKAN=0 where CUDA itself discovered the GPU."""
    if not ctx.cuda_discovered:
        return None, "CUDA did not discover the GPU: turning Vulkan off would leave the CPU"
    if ctx.generation not in ("C", "D"):
        return None, "OLLAMA_VULKAN exists from generation C on"
    ok, why = may_change("OLLAMA_VULKAN", ctx)
    return ({"OLLAMA_VULKAN": "0"}, "") if ok else (None, why)


def driver_major(version: str | None) -> int | None:
    """`580.159.04` → 580."""
    m = re.match(r"(\d+)", version or "")
    return int(m[1]) if m else None


def older_runtime(ctx: RemedyContext) -> tuple[Patch | None, str]:
    """OLLAMA_LLM_LIBRARY set to the newest bundled CUDA runtime the driver runs."""
    runtimes = BUNDLED_RUNTIMES.get(ctx.generation or "")
    if runtimes is None:
        return None, f"generation {ctx.generation or 'unknown'} ships no older CUDA runtime to choose"
    major = driver_major(ctx.driver_version)
    if major is None:
        return None, "the driver version is not known (NVML unavailable)"
    shipped = [r for r in runtimes if ctx.library_dirs is None or r[0] in ctx.library_dirs]
    fits = [name for name, minimum in shipped if major >= minimum]
    if not fits:
        return None, f"driver {major} is older than every CUDA runtime this Ollama ships"
    if fits[0] == runtimes[0][0]:
        return None, f"driver {major} runs the newest bundled runtime ({fits[0]}): the cause lies elsewhere"
    ok, why = may_change("OLLAMA_LLM_LIBRARY", ctx)
    return ({"OLLAMA_LLM_LIBRARY": fits[0]}, "") if ok else (None, why)


def tmpdir(ctx: RemedyContext) -> tuple[Patch | None, str]:
    """OLLAMA_TMPDIR set to an executable directory of ours (generation A extracts its runners there)."""
    if ctx.generation != "A":
        return None, "OLLAMA_TMPDIR moves runner extraction only in generation A"
    if ctx.tmp_dir is None:
        return None, "no executable directory of ours is known"
    ok, why = may_change("OLLAMA_TMPDIR", ctx)
    return ({"OLLAMA_TMPDIR": str(ctx.tmp_dir)}, "") if ok else (None, why)
