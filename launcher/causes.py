"""The cause table: one row per cause of the vocabulary (DESIGN.md), everything we know about it in one place.

A row is the label, its priority (when several causes are in evidence the lowest number is reported: the most
specific and actionable first, the ones that are often a consequence of another — a filter, a generic load failure —
last), whether a CPU run with it is what the machine or the operator asked for, the one-line advice, the operator's
instruction as steps, the earliest moment a remedy may be applied, and the environment patch (remedy_patches.py).

Instructions are computed from the settings in force: a step names the settings it asks for, and a step whose
settings are all in force already is not said (issue 15: "no advice line may tell the operator to set what is already
set"); a row may add sentences computed from the context (why no override applies, what exactly to set instead).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from launcher import remedy_patches as rp
from launcher.operator_vars import FILTER_VARS, INTENT_VARS, MAY_OVERRIDE
from launcher.remedy_patches import RemedyContext

When: TypeAlias = Literal["proactive", "discovery", "idle"]
Setting: TypeAlias = tuple[str, str]  # (variable, value); variable MAY_OVERRIDE: value is the variable to list
Situational: TypeAlias = Callable[[RemedyContext, str], tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Step:
    """One thing the operator can do, and the settings it asks for (said only while one of them is not in force)."""

    text: str
    sets: tuple[Setting, ...] = ()
    applies: Callable[[RemedyContext], bool] | None = None  # None: always; else said only where this is true


@dataclass(frozen=True, slots=True)
class Cause:
    """One cause: label, priority, expected CPU, advice, instruction steps, timing and patch."""

    label: str
    priority: int
    advice: str
    steps: tuple[Step, ...]
    when: When = "idle"
    patch: rp.PatchFn | None = None
    expected_cpu: bool = False  # a CPU run with this cause is what the machine or the operator asked for
    advice_sets: tuple[Setting, ...] = ()  # the settings the one-line advice asks for
    situational: Situational | None = None  # sentences from the context and the patch's why-not


# --- settings in force ------------------------------------------------------------------------------------------


def _subject(ctx: RemedyContext, keys: tuple[str, ...] = INTENT_VARS) -> str:
    """The operator variable a row is about here: the first of `keys` that is set, else the first of them."""
    return next((k for k in keys if k in ctx.env), keys[0])


def in_force(setting: Setting, ctx: RemedyContext) -> bool:
    """The setting is already what the environment (or OGPU_MAY_OVERRIDE) holds."""
    var, value = setting
    if var == MAY_OVERRIDE:
        return value in ctx.may_override
    return ctx.env.get(var) == value


def _resolve(setting: Setting, ctx: RemedyContext) -> Setting:
    var, value = setting
    return var, value.format(filter=_subject(ctx, FILTER_VARS), intent=_subject(ctx))


def _said(setting: Setting) -> str:
    var, value = setting
    return f"{MAY_OVERRIDE} lists {value}" if var == MAY_OVERRIDE else f"{var}={value}"


def render(row: Cause, ctx: RemedyContext, why_no_patch: str = "") -> str:
    """The row's instruction for this context: steps whose settings are all in force are left out and said to be
    in force; the row's situational sentences follow."""
    kept: list[str] = []
    already: list[str] = []
    for step in row.steps:
        if step.applies is not None and not step.applies(ctx):
            continue
        sets = tuple(_resolve(s, ctx) for s in step.sets)
        if sets and all(in_force(s, ctx) for s in sets):
            already += [_said(s) for s in sets]
            continue
        kept.append(step.text.format(user=ctx.service_user, filter=_subject(ctx, FILTER_VARS),
                                     intent=_subject(ctx)))
    extra = row.situational(ctx, why_no_patch) if row.situational is not None else ()
    out = " ".join(kept)
    if already and not extra:  # the situational sentences say what is in force, and why it is not enough
        out += (" " if out else "") + "Already in force: " + ", ".join(dict.fromkeys(already)) + "."
    if extra:
        out += (" " if out else "") + " ".join(extra)
    if not kept and not extra:
        out += " What this advice asks for is set already: look at the evidence and run `ollama-gpu doctor`."
    return out.strip()


def advice_for(row: Cause, ctx: RemedyContext, why_no_patch: str = "") -> str:
    """The one-line advice, unless everything it asks for is in force already: then the computed instruction."""
    sets = tuple(_resolve(s, ctx) for s in row.advice_sets)
    if sets and all(in_force(s, ctx) for s in sets):
        return render(row, ctx, why_no_patch)
    return row.advice


# --- situational sentences --------------------------------------------------------------------------------------


def _filter_situation(ctx: RemedyContext, why: str) -> tuple[str, ...]:
    """Why no override applies to a device filter the operator allowed us to change, and the value to set instead."""
    var = _subject(ctx, FILTER_VARS)
    scheduler = rp.scheduler_assigned(ctx.env)
    if var in ctx.env and scheduler:
        return (f"{var} comes with the GPUs {scheduler} assigned: ollama-gpu never widens it; ask the scheduler "
                "for the GPU instead.",)
    if var not in ctx.env or var not in ctx.may_override or not why:
        return ()
    out = [f"{MAY_OVERRIDE} already lists {var}, but no override applies: {why}."]
    uuids = [g.uuid for g in ctx.gpus or () if g.uuid]
    if var == "CUDA_VISIBLE_DEVICES" and uuids:
        out.append(f"Set {var}={','.join(uuids)} (every GPU NVML lists), or the subset of those UUIDs this service "
                   "should use.")
    else:
        out.append(f"Set {var} to the GPUs this service should use (`nvidia-smi -L` lists their UUIDs), or unset it.")
    return tuple(out)


def _intent_situation(keys: tuple[str, ...], forces: Callable[[str, str], bool]) -> Situational:
    """For an operator variable allowed in OGPU_MAY_OVERRIDE that still was not changed: why, in one sentence."""
    def say(ctx: RemedyContext, why: str) -> tuple[str, ...]:
        found = rp.culprits(keys, forces, ctx.env)
        listed = [k for k in found if k in ctx.may_override]
        if not listed or not why:
            return ()
        return (f"{MAY_OVERRIDE} already lists {', '.join(listed)}, but no override applies: {why}.",)
    return say


# --- the table --------------------------------------------------------------------------------------------------

def _no_scheduler(ctx: RemedyContext) -> bool:
    """Listing a filter in OGPU_MAY_OVERRIDE can help only where no scheduler assigned the GPUs."""
    return rp.scheduler_assigned(ctx.env) is None


_OVERRIDE_FILTER: Final = Step("Or list {filter} in OGPU_MAY_OVERRIDE to let ollama-gpu correct it.",
                               ((MAY_OVERRIDE, "{filter}"),), _no_scheduler)

CAUSE_TABLE: Final[tuple[Cause, ...]] = (
    Cause("none", 1000, "Nothing to do.", (Step("Nothing to do."),), expected_cpu=True),
    Cause("operator_forced_cpu", 50,
          "CPU was chosen by configuration (CUDA_VISIBLE_DEVICES=-1, OLLAMA_LLM_LIBRARY=cpu*, num_gpu 0 or -ngl 0). "
          "Remove that setting if you want the GPU.",
          (Step("Unset what forces the CPU (e.g. `systemctl edit ollama-gpu` and remove CUDA_VISIBLE_DEVICES=-1 or "
                "OLLAMA_LLM_LIBRARY=cpu*)."),
           Step("Or list {intent} in OGPU_MAY_OVERRIDE to let ollama-gpu do it.", ((MAY_OVERRIDE, "{intent}"),))),
          "discovery", rp.unset_intent(INTENT_VARS, rp.forces_cpu), expected_cpu=True,
          situational=_intent_situation(INTENT_VARS, rp.forces_cpu)),
    Cause("libcuda_not_found", 110,
          "The NVIDIA driver library libcuda.so.1 is not on the loader path: install the driver's user-space "
          "libraries, or add their directory to LD_LIBRARY_PATH (containers: run with --gpus all / the NVIDIA "
          "container runtime).",
          (Step("Put the driver's library directory on the loader path: `ldconfig -p | grep libcuda.so.1`; if "
                "absent, `echo /usr/local/nvidia/lib64 | sudo tee /etc/ld.so.conf.d/nvidia.conf && sudo ldconfig` "
                "(the directory that holds libcuda.so.1), or install the driver's user-space package."),),
          "proactive", rp.driver_dir),
    Cause("stub_library", 10,
          "A CUDA toolkit stub (…/stubs/libcuda.so or libnvidia-ml.so) is found before the driver's real library: "
          "remove the stubs directory from LD_LIBRARY_PATH / ld.so.conf.",
          (Step("Remove the CUDA toolkit's stubs directory from LD_LIBRARY_PATH and from /etc/ld.so.conf.d/*.conf, "
                "then `sudo ldconfig`; `ldconfig -p | grep libcuda.so.1` must not show a path containing /stubs/."),),
          "proactive", rp.drop_stubs),
    Cause("driver_too_old", 80,
          "The NVIDIA driver is older than the CUDA runtime Ollama ships: upgrade the driver (or use an Ollama "
          "release built for your CUDA version).",
          (Step("Upgrade the NVIDIA driver (`nvidia-smi` shows the version; CUDA 13 needs 580+, CUDA 12 needs 525+, "
                "Ollama's cuda_v12 from 0.30 needs 550+), e.g. `sudo apt install nvidia-driver-580` and reboot."),),
          "discovery", rp.older_runtime),
    Cause("driver_library_mismatch", 70,
          "The NVIDIA user-space driver was updated but the old kernel module is still loaded (nvidia-smi: "
          "'Driver/library version mismatch'): reboot, or reload the nvidia modules.",
          (Step("The driver was updated but the old kernel module is loaded: reboot (`sudo reboot`), or with no GPU "
                "user left `sudo rmmod nvidia_uvm nvidia_drm nvidia_modeset nvidia && sudo modprobe nvidia "
                "nvidia_uvm`."),)),
    Cause("driver_container_incompat", 90,
          "The host driver and the container runtime do not work together (cuInit error 500 in containers): update "
          "nvidia-container-toolkit, or move to a driver the toolkit supports.",
          (Step("Update the NVIDIA container toolkit on the host (`sudo apt install --only-upgrade "
                "nvidia-container-toolkit && sudo systemctl restart docker`), or use a driver branch it supports."),)),
    Cause("uvm_not_loaded", 100,
          "CUDA init returns 999, usually nvidia_uvm broken after suspend/resume: run "
          "`sudo rmmod nvidia_uvm && sudo modprobe nvidia_uvm` (or reboot).",
          (Step("Load the unified memory module: `sudo modprobe nvidia_uvm` (or `sudo nvidia-modprobe -u -c=0`); "
                "after suspend/resume: `sudo rmmod nvidia_uvm && sudo modprobe nvidia_uvm`. Then restart "
                "ollama-gpu."),)),
    Cause("device_filter_hides_gpu", 190,
          "A device filter hides the GPU (CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES, HIP_VISIBLE_DEVICES, "
          "GPU_DEVICE_ORDINAL; Slurm sets some of them): unset it or make it name the GPU.",
          (Step("Make the device filter name the GPU: `nvidia-smi -L` lists UUIDs; set {filter}=<uuid or index> "
                "(or unset it)."), _OVERRIDE_FILTER),
          "discovery", rp.narrow_filter, situational=_filter_situation),
    Cause("forced_cpu_library", 60,
          "OLLAMA_LLM_LIBRARY names no GPU library directory of this Ollama (e.g. `cuda` after the 0.12 layout "
          "change): unset it or use a directory name such as cuda_v13.",
          (Step("Unset OLLAMA_LLM_LIBRARY or set it to a directory this Ollama ships (`ls $(dirname $(readlink -f "
                "$(command -v ollama)))/../lib/ollama`), e.g. cuda_v13."),),
          "discovery", rp.unset_intent(("OLLAMA_LLM_LIBRARY",), rp.names_no_gpu_library),
          situational=_intent_situation(("OLLAMA_LLM_LIBRARY",), rp.names_no_gpu_library)),
    Cause("missing_gpu_runners", 40,
          "This installation has no GPU runners or CUDA libraries (incomplete install or a CPU-only distribution "
          "package): install the official build or the distribution's CUDA package.",
          (Step("Install the official build with its GPU libraries (`curl -fsSL https://ollama.com/install.sh | sh`) "
                "or the distribution's CUDA package; `ls <prefix>/lib/ollama` must list cuda_v12/ or cuda_v13/."),)),
    Cause("cpu_lacks_avx", 30,
          "The CPU (or the vCPU model the VM exposes) lacks AVX, so Ollama disables its GPU runners: expose AVX to "
          "the VM (e.g. CPU model `host`), or use a build without that requirement.",
          (Step("Expose AVX to the VM (`grep -o -m1 avx /proc/cpuinfo` must print avx): e.g. libvirt "
                "`<cpu mode='host-passthrough'/>`, Proxmox `cpu: host`; or use an Ollama release from 0.5.8 on."),)),
    Cause("unsupported_compute_capability", 140,
          "The GPU's compute capability is not among the architectures this Ollama's CUDA build supports: use a "
          "release (or build) that includes it.",
          (Step("This GPU's compute capability (`nvidia-smi --query-gpu=name,compute_cap --format=csv`) is not in "
                "this Ollama's CUDA build: use a release that includes it, or build Ollama with "
                "CMAKE_CUDA_ARCHITECTURES set to it."),)),
    Cause("unsupported_gpu_arch", 150,
          "The AMD GPU's gfx target is not supported by the bundled ROCm: set HSA_OVERRIDE_GFX_VERSION to a "
          "supported neighbour, or use a build for this target.",
          (Step("The AMD gfx target is not in the bundled ROCm: set HSA_OVERRIDE_GFX_VERSION to a supported "
                "neighbour (e.g. 10.3.0 for gfx103x) or build for this target."),)),
    Cause("unsupported_igpu", 200,
          "Only an integrated GPU was found, which Ollama does not use by default: set OLLAMA_IGPU_ENABLE=1 to try "
          "it.",
          (Step("Only an integrated GPU is present; set OLLAMA_IGPU_ENABLE=1 to try it.",
                (("OLLAMA_IGPU_ENABLE", "1"),)),),
          expected_cpu=True, advice_sets=(("OLLAMA_IGPU_ENABLE", "1"),)),
    Cause("insufficient_vram", 210,
          "The model and its context do not fit in free VRAM: use a smaller or more quantised model, lower num_ctx / "
          "OLLAMA_CONTEXT_LENGTH, or free GPU memory.",
          (Step("Free GPU memory (`nvidia-smi` lists the processes), use a smaller or more quantised model, or lower "
                "num_ctx / OLLAMA_CONTEXT_LENGTH."),)),
    Cause("discovery_timeout", 160,
          "GPU discovery hit its timeout: look for a hung driver (nvidia-smi), and retry with OLLAMA_DEBUG=2 to see "
          "the discovery runner's output.",
          (Step("Check for a hung driver (`timeout 10 nvidia-smi`), enable persistence mode "
                "(`sudo nvidia-smi -pm 1`), and look at discovery with OLLAMA_DEBUG=2."),)),
    Cause("permission_denied", 130,
          "Permission denied on a GPU device node or directory: add the service user to the video/render groups, "
          "or fix /dev/nvidia* permissions.",
          (Step("Give the service user the GPU device nodes: `ls -l /dev/nvidia*` (WSL: /dev/dxg); "
                "`sudo usermod -aG video,render {user}`; in exclusive-process mode `sudo nvidia-smi -c DEFAULT`. "
                "Then restart the service."),)),
    Cause("container_no_gpu_runtime", 170,
          "The container has no GPU: run it with --gpus all (Docker) or the NVIDIA runtime class (Kubernetes).",
          (Step("Run the container with a GPU: `docker run --gpus all …` after installing nvidia-container-toolkit "
                "(`sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`); "
                "Kubernetes: request `nvidia.com/gpu: 1` with the NVIDIA device plugin or runtimeClassName: "
                "nvidia."),)),
    Cause("tmp_noexec", 120,
          "The runner cannot execute from a noexec temporary directory: set OLLAMA_TMPDIR (or TMPDIR) to an "
          "executable directory.",
          (Step("Set OLLAMA_TMPDIR to an executable directory (`sudo mkdir -p /var/lib/ollama/tmp`; "
                "OLLAMA_TMPDIR=/var/lib/ollama/tmp), or remount /tmp without noexec.",
                (("OLLAMA_TMPDIR", "/var/lib/ollama/tmp"),)),),
          "proactive", rp.tmpdir),
    Cause("wsl_libcuda_path", 0,
          "WSL2: native Linux NVIDIA libraries in the distribution shadow /usr/lib/wsl/lib: remove the Linux driver "
          "packages inside WSL, or put /usr/lib/wsl/lib first in LD_LIBRARY_PATH.",
          (Step("WSL2: remove the Linux NVIDIA driver packages inside the distribution (`sudo apt purge "
                "'libnvidia-*' 'nvidia-utils-*'`) so /usr/lib/wsl/lib is used, or set "
                "LD_LIBRARY_PATH=/usr/lib/wsl/lib first."),),
          "proactive", rp.wsl_dir),
    Cause("physx_cudart_misdetect", 20,
          "Windows: the PhysX copy of cudart was picked up: update Ollama, or remove the PhysX directory from PATH.",
          (Step("Windows: update Ollama, or remove the PhysX directory from PATH."),)),
    Cause("vulkan_selected_over_cuda", 220,
          "The model runs through Vulkan (or on another device) although CUDA is available: set "
          "OLLAMA_LLM_LIBRARY=cuda_v13 (or cuda_v12), or OLLAMA_VULKAN=0.",
          (Step("Set OLLAMA_VULKAN=0 so the CUDA device is used.", (("OLLAMA_VULKAN", "0"),)),
           Step("OLLAMA_LLM_LIBRARY=cuda_v13 also makes Ollama use CUDA.", (("OLLAMA_LLM_LIBRARY", "cuda_v13"),))),
          "discovery", rp.vulkan_off, advice_sets=(("OLLAMA_VULKAN", "0"),)),
    Cause("backend_load_failed", 180,
          "The GPU backend library could not be loaded (see the loader error in the evidence): check that "
          "libcuda/libcudart/libcublas resolve (`ldd` the backend).",
          (Step("Check what the GPU backend cannot resolve: `ldd <prefix>/lib/ollama/cuda_v13/libggml-cuda.so | "
                "grep -E 'not found|libcuda'`; libcuda.so.1 must be the driver's (`ollama-gpu doctor`)."),)),
    Cause("fabric_manager_not_running", 64,
          "CUDA init returns 802 'system not yet initialized': on an NVSwitch system (HGX/DGX) the NVIDIA Fabric "
          "Manager is not running; start nvidia-fabricmanager (its version must match the driver's).",
          (Step("Start the fabric manager: `sudo systemctl enable --now nvidia-fabricmanager` (package "
                "nvidia-fabricmanager-<driver branch>, the same version as the driver: `nvidia-smi` shows it); "
                "`nvidia-smi -q | grep -A2 Fabric` must say Completed. Then restart ollama-gpu."),)),
    Cause("container_gpu_access_lost", 66,
          "The running container lost access to its GPU devices (CUDA 800 'operation not permitted', NVML 'Unknown "
          "Error'), typically after the host ran `systemctl daemon-reload` with the systemd cgroup driver: restart "
          "the container.",
          (Step("Restart the container (`docker restart <name>`, or delete the pod). Permanent fix on the host: "
                "Docker's cgroupfs driver (`\"exec-opts\": [\"native.cgroupdriver=cgroupfs\"]` in "
                "/etc/docker/daemon.json), or the NVIDIA container toolkit's device rules (`sudo nvidia-ctk system "
                "create-dev-char-symlinks --create-all`, CDI). `docker exec <name> nvidia-smi` must list the GPU."),)),
    Cause("gpu_lost", 62,
          "The GPU fell off the bus (Xid 79, NVML 'GPU is lost'): the driver cannot reach it until the GPU is reset "
          "or the machine rebooted.",
          (Step("Check the kernel log (`sudo dmesg | grep -i xid`; Xid 79 means the GPU fell off the bus), then "
                "reset the GPU with no process using it (`sudo nvidia-smi -r -i <index>`) or reboot; repeated Xid 79 "
                "points at power, cooling or the PCIe slot. Then restart ollama-gpu."),)),
    Cause("unknown", 230,
          "The log does not settle the cause: rerun with OLLAMA_DEBUG=1 (or 2) and look again.",
          (Step("Run `ollama-gpu doctor` and look at the evidence; restart with OLLAMA_DEBUG=1."),)),
)

CAUSES_BY_LABEL: Final[Mapping[str, Cause]] = {row.label: row for row in CAUSE_TABLE}
LABELS: Final = tuple(row.label for row in CAUSE_TABLE)
# Labels, most important first (the order `min(..., key=rank)` picks from).
BY_PRIORITY: Final = tuple(row.label for row in sorted(CAUSE_TABLE, key=lambda r: r.priority))
EXPECTED_CPU: Final = frozenset(row.label for row in CAUSE_TABLE if row.expected_cpu)


def row(label: str) -> Cause:
    """The row of `label` (the `unknown` row for a label not in the table)."""
    return CAUSES_BY_LABEL.get(label, CAUSES_BY_LABEL["unknown"])


def rank(label: str) -> int:
    """The priority of a label: lower is reported first; labels not in the table last."""
    found = CAUSES_BY_LABEL.get(label)
    return found.priority if found is not None else 10_000
