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

# Audit findings are not causes of a CPU fallback (DESIGN.md, cause vocabulary).
FINDINGS: Final = ("runner_env_missing",)


def is_outcome(value: str) -> bool:
    """True when `value` is one of the outcomes."""
    return value in OUTCOMES


def is_cause(value: str) -> bool:
    """True when `value` is one of the causes."""
    return value in CAUSES
