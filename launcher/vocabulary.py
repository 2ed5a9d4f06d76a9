"""The outcome and cause vocabularies of DESIGN.md: one list for parser, board, remedies, fixtures and tests."""

from __future__ import annotations

from typing import Final

OUTCOMES: Final = ("gpu", "partial_offload", "cpu_fallback", "cpu_expected", "crash", "unknown")

CAUSES: Final = (
    "none",
    "operator_forced_cpu",
    "libcuda_not_found",
    "stub_library",
    "driver_too_old",
    "driver_library_mismatch",
    "driver_container_incompat",
    "uvm_not_loaded",
    "device_filter_hides_gpu",
    "forced_cpu_library",
    "missing_gpu_runners",
    "cpu_lacks_avx",
    "unsupported_compute_capability",
    "unsupported_gpu_arch",
    "unsupported_igpu",
    "insufficient_vram",
    "discovery_timeout",
    "permission_denied",
    "container_no_gpu_runtime",
    "tmp_noexec",
    "wsl_libcuda_path",
    "physx_cudart_misdetect",
    "vulkan_selected_over_cuda",
    "backend_load_failed",
    "unknown",
)

# Variables that select devices: a filter that names none hides every GPU.
FILTER_VARS: Final = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")
# The operator's intent (DESIGN contract 3): device selection or forced CPU, never changed unless listed in
# OGPU_MAY_OVERRIDE. The supervisor reports their values at each start so the board tells them from Ollama's own.
INTENT_VARS: Final = (*FILTER_VARS, "OLLAMA_LLM_LIBRARY", "OLLAMA_VULKAN", "GGML_VK_VISIBLE_DEVICES")
# A scheduler assigned the GPUs and its filter may be all that enforces it (Slurm without ConstrainDevices): never
# widened. NVIDIA_VISIBLE_DEVICES is not here: the container runtime mounts only those GPUs, so no filter inside the
# container can reach beyond them (seen on the H100: it is set in effectively every NVIDIA container).
SCHEDULER_VARS: Final = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS")

# Audit findings are not causes of a CPU fallback (DESIGN.md, cause vocabulary).
FINDINGS: Final = ("runner_env_missing",)


def is_outcome(value: str) -> bool:
    """True when `value` is one of the outcomes."""
    return value in OUTCOMES


def is_cause(value: str) -> bool:
    """True when `value` is one of the causes."""
    return value in CAUSES
