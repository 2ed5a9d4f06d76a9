"""The operator's variables that select devices or force the CPU (DESIGN contract 3): a leaf, so the cause table's
patches and the vocabulary can both import it."""

from __future__ import annotations

from typing import Final

# Variables that select devices: a filter that names none hides every GPU.
FILTER_VARS: Final = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")
# The operator's intent (DESIGN contract 3): device selection or forced CPU, never changed unless listed in
# OGPU_MAY_OVERRIDE. The supervisor reports their values at each start so the board tells them from Ollama's own.
INTENT_VARS: Final = (*FILTER_VARS, "OLLAMA_LLM_LIBRARY", "OLLAMA_VULKAN", "GGML_VK_VISIBLE_DEVICES")
# A scheduler assigned the GPUs and its filter may be all that enforces it (Slurm without ConstrainDevices): never
# widened. NVIDIA_VISIBLE_DEVICES is not here: the container runtime mounts only those GPUs, so no filter inside the
# container can reach beyond them (seen on the H100: it is set in effectively every NVIDIA container).
SCHEDULER_VARS: Final = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS")
# The setting that lets ollama-gpu change an operator's variable.
MAY_OVERRIDE: Final = "OGPU_MAY_OVERRIDE"
