"""What an operator should do about each cause: one line of advice per cause (env patches live in remedies.py)."""

from __future__ import annotations

from typing import Final

ADVICE: Final[dict[str, str]] = {
    "none": "Nothing to do.",
    "operator_forced_cpu": "CPU was chosen by configuration (CUDA_VISIBLE_DEVICES=-1, OLLAMA_LLM_LIBRARY=cpu*, "
                           "num_gpu 0 or -ngl 0). Remove that setting if you want the GPU.",
    "libcuda_not_found": "The NVIDIA driver library libcuda.so.1 is not on the loader path: install the driver's "
                         "user-space libraries, or add their directory to LD_LIBRARY_PATH (containers: run with "
                         "--gpus all / the NVIDIA container runtime).",
    "stub_library": "A CUDA toolkit stub (…/stubs/libcuda.so or libnvidia-ml.so) is found before the driver's real "
                    "library: remove the stubs directory from LD_LIBRARY_PATH / ld.so.conf.",
    "driver_too_old": "The NVIDIA driver is older than the CUDA runtime Ollama ships: upgrade the driver (or use an "
                      "Ollama release built for your CUDA version).",
    "driver_library_mismatch": "The NVIDIA user-space driver was updated but the old kernel module is still loaded "
                               "(nvidia-smi: 'Driver/library version mismatch'): reboot, or reload the nvidia modules.",
    "driver_container_incompat": "The host driver and the container runtime do not work together (cuInit error 500 "
                                 "in containers): update nvidia-container-toolkit, or move to a driver the toolkit "
                                 "supports.",
    "uvm_not_loaded": "CUDA init returns 999, usually nvidia_uvm broken after suspend/resume: run "
                      "`sudo rmmod nvidia_uvm && sudo modprobe nvidia_uvm` (or reboot).",
    "device_filter_hides_gpu": "A device filter hides the GPU (CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES, "
                               "HIP_VISIBLE_DEVICES, GPU_DEVICE_ORDINAL; Slurm sets some of them): unset it or make it "
                               "name the GPU.",
    "forced_cpu_library": "OLLAMA_LLM_LIBRARY names no GPU library directory of this Ollama (e.g. `cuda` after the "
                          "0.12 layout change): unset it or use a directory name such as cuda_v13.",
    "missing_gpu_runners": "This installation has no GPU runners or CUDA libraries (incomplete install or a "
                           "CPU-only distribution package): install the official build or the distribution's CUDA "
                           "package.",
    "cpu_lacks_avx": "The CPU (or the vCPU model the VM exposes) lacks AVX, so Ollama disables its GPU runners: expose "
                     "AVX to the VM (e.g. CPU model `host`), or use a build without that requirement.",
    "unsupported_compute_capability": "The GPU's compute capability is not among the architectures this Ollama's "
                                      "CUDA build supports: use a release (or build) that includes it.",
    "unsupported_gpu_arch": "The AMD GPU's gfx target is not supported by the bundled ROCm: set "
                            "HSA_OVERRIDE_GFX_VERSION to a supported neighbour, or use a build for this target.",
    "unsupported_igpu": "Only an integrated GPU was found, which Ollama does not use by default: set "
                        "OLLAMA_IGPU_ENABLE=1 to try it.",
    "insufficient_vram": "The model and its context do not fit in free VRAM: use a smaller or more quantised model, "
                         "lower num_ctx / OLLAMA_CONTEXT_LENGTH, or free GPU memory.",
    "discovery_timeout": "GPU discovery hit its timeout: look for a hung driver (nvidia-smi), and retry with "
                         "OLLAMA_DEBUG=2 to see the discovery runner's output.",
    "permission_denied": "Permission denied on a GPU device node or directory: add the service user to the "
                         "video/render groups, or fix /dev/nvidia* permissions.",
    "container_no_gpu_runtime": "The container has no GPU: run it with --gpus all (Docker) or the NVIDIA runtime "
                                "class (Kubernetes).",
    "tmp_noexec": "The runner cannot execute from a noexec temporary directory: set OLLAMA_TMPDIR (or TMPDIR) to an "
                  "executable directory.",
    "wsl_libcuda_path": "WSL2: native Linux NVIDIA libraries in the distribution shadow /usr/lib/wsl/lib: remove the "
                        "Linux driver packages inside WSL, or put /usr/lib/wsl/lib first in LD_LIBRARY_PATH.",
    "physx_cudart_misdetect": "Windows: the PhysX copy of cudart was picked up: update Ollama, or remove the PhysX "
                              "directory from PATH.",
    "vulkan_selected_over_cuda": "The model runs through Vulkan (or on another device) although CUDA is available: "
                                 "set OLLAMA_LLM_LIBRARY=cuda_v13 (or cuda_v12), or OLLAMA_VULKAN=0.",
    "backend_load_failed": "The GPU backend library could not be loaded (see the loader error in the evidence): "
                           "check that libcuda/libcudart/libcublas resolve (`ldd` the backend).",
    "unknown": "The log does not settle the cause: rerun with OLLAMA_DEBUG=1 (or 2) and look again.",
}

# Outcomes that need saying even when the cause is `none` or `unknown`.
OUTCOME_ADVICE: Final[dict[str, str]] = {
    "unknown": "The log cannot show where the model runs: load a model with OLLAMA_DEBUG=1 and explain that log.",
    "crash": "The runner failed: the evidence lines show how; a crash right after GPU init usually means a driver "
             "or architecture problem.",
}


def advice(outcome: str, cause: str) -> str:
    """The operator's next step for a verdict."""
    if cause in ("none", "unknown") and outcome in OUTCOME_ADVICE:
        return OUTCOME_ADVICE[outcome]
    return ADVICE.get(cause, ADVICE["unknown"])
