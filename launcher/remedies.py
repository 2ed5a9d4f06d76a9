"""Cause → remedy, one row per cause: when it may be applied, the environment patch, or the operator's exact commands.

A patch is a function of the current environment, the driver finding, the generation and the operator's overrides;
it returns `{VAR: value}` (None = unset) or None when no environment change can fix the cause here. Operator intent
wins: a variable the operator set is changed only when listed in `OGPU_MAY_OVERRIDE`, and scheduler-assigned GPUs
(Slurm, Kubernetes) are never widened (DESIGN.md, operator contract 3). The one-line advice is `remedy_text.ADVICE`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TypeAlias

from launcher import devices
from launcher.driverlib import DriverFinding, is_stub_dir
from launcher.remedy_text import ADVICE
from launcher.vocabulary import FILTER_VARS, INTENT_VARS, SCHEDULER_VARS

Patch: TypeAlias = dict[str, str | None]
When: TypeAlias = Literal["proactive", "discovery", "idle"]

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


@dataclass(frozen=True, slots=True)
class Remedy:
    """One row: the cause, the earliest moment it may be applied, the patch, and the operator's instruction."""

    cause: str
    when: When
    instruction: str  # exact commands; {user} is the service user
    patch: Callable[[RemedyContext], tuple[Patch | None, str]] | None = None  # (patch, why none)


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


def _driver_dir(ctx: RemedyContext) -> tuple[Patch | None, str]:
    real = ctx.driver.real_dir if ctx.driver is not None else None
    return _prepend_dir(ctx, str(real) if real is not None else None, "libcuda.so.1")


def _wsl_dir(ctx: RemedyContext) -> tuple[Patch | None, str]:
    return _prepend_dir(ctx, WSL_LIB_DIR, "WSL driver")


def _drop_stubs(ctx: RemedyContext) -> tuple[Patch | None, str]:
    entries = _path_entries(ctx.env.get("LD_LIBRARY_PATH", ""))
    kept = [e for e in entries if not is_stub_dir(Path(e))]
    if kept == entries:
        return None, "no stubs directory in LD_LIBRARY_PATH: the stub comes from ld.so.conf or the image"
    if ctx.driver is not None and ctx.driver.real_dir is not None and str(ctx.driver.real_dir) not in kept:
        kept.insert(0, str(ctx.driver.real_dir))
    return {"LD_LIBRARY_PATH": ":".join(kept) if kept else None}, ""


def _unset_intent(keys: tuple[str, ...], forces: Callable[[str, str], bool]) -> Callable[
        [RemedyContext], tuple[Patch | None, str]]:
    """Unset the operator's variables that cause this, where OGPU_MAY_OVERRIDE allows it."""
    def patch(ctx: RemedyContext) -> tuple[Patch | None, str]:
        culprits = [k for k in keys if k in ctx.env and forces(k, ctx.env[k])]
        if not culprits:
            return None, "none of " + ", ".join(keys) + " is set here"
        out: Patch = {}
        for key in culprits:
            ok, why = may_change(key, ctx)
            if not ok:
                return None, why
            out[key] = None
        return out, ""
    return patch


def _forces_cpu(key: str, value: str) -> bool:
    v = value.strip()
    if key in FILTER_VARS:
        return v in ("", "-1", "none", "void", "NoDevFiles")
    if key == "OLLAMA_LLM_LIBRARY":
        return v.startswith("cpu")
    return False


def _hides_devices(key: str, value: str) -> bool:
    return key in FILTER_VARS


def _names_no_gpu_library(key: str, value: str) -> bool:
    return key == "OLLAMA_LLM_LIBRARY" and not value.startswith(("cuda_", "rocm", "vulkan", "mlx_"))


def _narrow_filter(ctx: RemedyContext) -> tuple[Patch | None, str]:
    """CUDA_VISIBLE_DEVICES: drop the entries that name no GPU (CUDA stops reading at the first), so the GPUs the
    operator listed after them are used; never more GPUs than listed, never `unset`. Other filters: unset if allowed."""
    value = ctx.env.get("CUDA_VISIBLE_DEVICES")
    if value is None or value.strip() in devices.HIDE_ALL:
        return _unset_intent(tuple(k for k in FILTER_VARS if k != "CUDA_VISIBLE_DEVICES"), _hides_devices)(ctx)
    ok, why = may_change("CUDA_VISIBLE_DEVICES", ctx)
    if not ok:
        return None, why
    reading = devices.read_filter(value, ctx.gpus, ctx.env, cuda_saw=ctx.cuda_saw)
    narrowed, why = devices.narrowed(reading)
    return ({"CUDA_VISIBLE_DEVICES": narrowed}, "") if narrowed is not None else (None, why)


def _vulkan_off(ctx: RemedyContext) -> tuple[Patch | None, str]:
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


def _older_runtime(ctx: RemedyContext) -> tuple[Patch | None, str]:
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


def _tmpdir(ctx: RemedyContext) -> tuple[Patch | None, str]:
    if ctx.generation != "A":
        return None, "OLLAMA_TMPDIR moves runner extraction only in generation A"
    if ctx.tmp_dir is None:
        return None, "no executable directory of ours is known"
    ok, why = may_change("OLLAMA_TMPDIR", ctx)
    return ({"OLLAMA_TMPDIR": str(ctx.tmp_dir)}, "") if ok else (None, why)


# --- the table --------------------------------------------------------------------------------------------------

_ROWS: Final[tuple[Remedy, ...]] = (
    Remedy("none", "idle", "Nothing to do."),
    Remedy("operator_forced_cpu", "discovery",
           "Unset what forces the CPU (e.g. `systemctl edit ollama-gpu` and remove CUDA_VISIBLE_DEVICES=-1 or "
           "OLLAMA_LLM_LIBRARY=cpu*), or list the variable in OGPU_MAY_OVERRIDE to let ollama-gpu do it.",
           _unset_intent(INTENT_VARS, _forces_cpu)),
    Remedy("device_filter_hides_gpu", "discovery",
           "Make the device filter name the GPU: `nvidia-smi -L` lists UUIDs; set CUDA_VISIBLE_DEVICES=<uuid or "
           "index> (or unset it), or list it in OGPU_MAY_OVERRIDE.", _narrow_filter),
    Remedy("forced_cpu_library", "discovery",
           "Unset OLLAMA_LLM_LIBRARY or set it to a directory this Ollama ships (`ls $(dirname $(readlink -f "
           "$(command -v ollama)))/../lib/ollama`), e.g. cuda_v13.",
           _unset_intent(("OLLAMA_LLM_LIBRARY",), _names_no_gpu_library)),
    Remedy("libcuda_not_found", "proactive",
           "Put the driver's library directory on the loader path: `ldconfig -p | grep libcuda.so.1`; if absent, "
           "`echo /usr/local/nvidia/lib64 | sudo tee /etc/ld.so.conf.d/nvidia.conf && sudo ldconfig` (the directory "
           "that holds libcuda.so.1), or install the driver's user-space package.", _driver_dir),
    Remedy("wsl_libcuda_path", "proactive",
           "WSL2: remove the Linux NVIDIA driver packages inside the distribution (`sudo apt purge 'libnvidia-*' "
           "'nvidia-utils-*'`) so /usr/lib/wsl/lib is used, or set LD_LIBRARY_PATH=/usr/lib/wsl/lib first.",
           _wsl_dir),
    Remedy("stub_library", "proactive",
           "Remove the CUDA toolkit's stubs directory from LD_LIBRARY_PATH and from /etc/ld.so.conf.d/*.conf, then "
           "`sudo ldconfig`; `ldconfig -p | grep libcuda.so.1` must not show a path containing /stubs/.",
           _drop_stubs),
    Remedy("vulkan_selected_over_cuda", "discovery",
           "Set OLLAMA_VULKAN=0 (or OLLAMA_LLM_LIBRARY=cuda_v13) so the CUDA device is used.", _vulkan_off),
    Remedy("driver_too_old", "discovery",
           "Upgrade the NVIDIA driver (`nvidia-smi` shows the version; CUDA 13 needs 580+, CUDA 12 needs 525+, "
           "Ollama's cuda_v12 from 0.30 needs 550+), e.g. `sudo apt install nvidia-driver-580` and reboot.",
           _older_runtime),
    Remedy("tmp_noexec", "proactive",
           "Set OLLAMA_TMPDIR to an executable directory (`sudo mkdir -p /var/lib/ollama/tmp`; "
           "OLLAMA_TMPDIR=/var/lib/ollama/tmp), or remount /tmp without noexec.", _tmpdir),
    Remedy("driver_library_mismatch", "idle",
           "The driver was updated but the old kernel module is loaded: reboot (`sudo reboot`), or with no GPU user "
           "left `sudo rmmod nvidia_uvm nvidia_drm nvidia_modeset nvidia && sudo modprobe nvidia nvidia_uvm`."),
    Remedy("driver_container_incompat", "idle",
           "Update the NVIDIA container toolkit on the host (`sudo apt install --only-upgrade "
           "nvidia-container-toolkit && sudo systemctl restart docker`), or use a driver branch it supports."),
    Remedy("uvm_not_loaded", "idle",
           "Load the unified memory module: `sudo modprobe nvidia_uvm` (or `sudo nvidia-modprobe -u -c=0`); after "
           "suspend/resume: `sudo rmmod nvidia_uvm && sudo modprobe nvidia_uvm`. Then restart ollama-gpu."),
    Remedy("permission_denied", "idle",
           "Give the service user the GPU device nodes: `ls -l /dev/nvidia*` (WSL: /dev/dxg); "
           "`sudo usermod -aG video,render {user}`; in exclusive-process mode "
           "`sudo nvidia-smi -c DEFAULT`. Then restart the service."),
    Remedy("container_no_gpu_runtime", "idle",
           "Run the container with a GPU: `docker run --gpus all …` after installing nvidia-container-toolkit "
           "(`sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`); Kubernetes: "
           "request `nvidia.com/gpu: 1` with the NVIDIA device plugin or runtimeClassName: nvidia."),
    Remedy("cpu_lacks_avx", "idle",
           "Expose AVX to the VM (`grep -o -m1 avx /proc/cpuinfo` must print avx): e.g. libvirt "
           "`<cpu mode='host-passthrough'/>`, Proxmox `cpu: host`; or use an Ollama release from 0.5.8 on."),
    Remedy("unsupported_compute_capability", "idle",
           "This GPU's compute capability (`nvidia-smi --query-gpu=name,compute_cap --format=csv`) is not in this "
           "Ollama's CUDA build: use a release that includes it, or build Ollama with "
           "CMAKE_CUDA_ARCHITECTURES set to it."),
    Remedy("unsupported_gpu_arch", "idle",
           "The AMD gfx target is not in the bundled ROCm: set HSA_OVERRIDE_GFX_VERSION to a supported neighbour "
           "(e.g. 10.3.0 for gfx103x) or build for this target."),
    Remedy("unsupported_igpu", "idle", "Only an integrated GPU is present; set OLLAMA_IGPU_ENABLE=1 to try it."),
    Remedy("missing_gpu_runners", "idle",
           "Install the official build with its GPU libraries (`curl -fsSL https://ollama.com/install.sh | sh`) or the "
           "distribution's CUDA package; `ls <prefix>/lib/ollama` must list cuda_v12/ or cuda_v13/."),
    Remedy("insufficient_vram", "idle",
           "Free GPU memory (`nvidia-smi` lists the processes), use a smaller or more quantised model, or lower "
           "num_ctx / OLLAMA_CONTEXT_LENGTH."),
    Remedy("discovery_timeout", "idle",
           "Check for a hung driver (`timeout 10 nvidia-smi`), enable persistence mode (`sudo nvidia-smi -pm 1`), "
           "and look at discovery with OLLAMA_DEBUG=2."),
    Remedy("physx_cudart_misdetect", "idle", "Windows: update Ollama, or remove the PhysX directory from PATH."),
    Remedy("backend_load_failed", "idle",
           "Check what the GPU backend cannot resolve: `ldd <prefix>/lib/ollama/cuda_v13/libggml-cuda.so | grep -E "
           "'not found|libcuda'`; libcuda.so.1 must be the driver's (`ollama-gpu doctor`)."),
    Remedy("unknown", "idle", "Run `ollama-gpu doctor` and look at the evidence; restart with OLLAMA_DEBUG=1."),
)
REMEDIES: Final[Mapping[str, Remedy]] = {row.cause: row for row in _ROWS}


def changes_of(patch: Mapping[str, str | None]) -> tuple[str, ...]:
    """A patch as readable changes: `SET K=V`, `UNSET K`."""
    return tuple(f"UNSET {k}" if v is None else f"SET {k}={v}" for k, v in sorted(patch.items()))


def remedy_for(cause: str, ctx: RemedyContext) -> RemedyPlan:
    """The row for `cause` applied to `ctx` (an unknown cause gets the `unknown` row)."""
    row = REMEDIES.get(cause, REMEDIES["unknown"])
    patch, why = (None, "no environment change fixes this cause") if row.patch is None else row.patch(ctx)
    return RemedyPlan(
        cause=row.cause,
        when=row.when,
        patch=patch,
        instruction=row.instruction.format(user=ctx.service_user),
        advice=ADVICE.get(row.cause, ADVICE["unknown"]),
        why_no_patch="" if patch is not None else why,
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
