# ruff: noqa: E501  (a table of format-string patterns reads best one row per line)
"""Curate a draft of tools/catalogue_extract.py into launcher/catalogue/{ollama_go,ggml_c}.jsonl (a maintainer's tool).

Usage: python tools/catalogue_curate.py DRAFT.jsonl FIXTURE_LINES.json OUT_DIR
Each statement gets its fact from the first rule of T whose regex matches its format string (default: irrelevant),
realistic arguments or slog values where the defaults of launcher/catalogue/sample.py would not show the fact, and the
C function name `%s: …` prints where the extraction guessed it wrong (FUNC). FIXTURE_LINES (from
tools/catalogue_fixture_lines.py) adds, per entry, the real fixture line of release lines whose source the extraction
could not read (the upstream llama-server of generation D, 0.1.x's llama.cpp submodule). Hand-added entries live in
curated.jsonl and are edited directly.
"""

from __future__ import annotations

import json
import re
import sys
from collections import OrderedDict
from typing import Any

LINES = ["0.1","0.2-0.3","0.4-0.5","0.6-0.11","0.12-0.24","0.30+"]
# (shape or None, regex on fmt, fact, extras)
FUNC = [
 (r"^%s: loaded %s backend from|^%s: failed to load %s|^%s: failed to find ggml_backend_init|^%s: failed to initialize backend from|^%s: backend %s is not supported", "load_backend"),
 (r"%12s model buffer size", "load_tensors"),
 (r"^%s: %10s buffer size = %8.2f MiB", "llm_load_tensors"),
 (r"^%s: using device %s \(%s\) - ", "llama_load_model_from_file"),
]
T = [
 # ---- Go
 (None, r"^Nvidia GPU detected", "gpu_discovered", {}),
 (None, r"^amdgpu devices detected but permission problems block access", "gpu_dropped", {"args": ["permissions not set up properly.  Either run ollama as root, or add you user account to the render group. open /dev/kfd: permission denied"], "expect": {"cause": "permission_denied"}}),
 (None, r"^starting runner for device discovery", "runner_start", {"values": {"cmd": "/usr/local/bin/ollama runner --ollama-engine --port 41077"}, "expect": {"role": "discovery"}}),
 (None, r"^running llama-server for discovery", "runner_start", {"values": {"cmd": "/usr/lib/ollama/llama-server"}}),
 (None, r"^removing unsupported or overlapping GPU combination", "gpu_dropped", {"values": {"libDir": "/usr/lib/ollama/rocm", "description": "AMD Radeon RX 6600", "compute": "gfx1032"}, "expect": {"cause": "unsupported_gpu_arch"}, "note": "an AMD gfx device dropped from a non-Vulkan dir; NVIDIA's overlapping cuda_v12/cuda_v13 pairs and covered Vulkan pairs give combination_removed, which the board does not weigh"}),
 (None, r"^%d MB VRAM available, loading up to %d GPU layers", "offload_plan", {"args": ["7863", "35"]}),
 (None, r"^error starting (the external )?llama runner: %v|^llama runner stopped with error: %v", "runner_failed", {"args": ["fork/exec /tmp/ollama1234/llama.cpp/gguf/build/cuda/bin/ollama-runner: no such file or directory"]}),
 (None, r"^less than 2 GB VRAM available", "placement_plan", {"expect": {"gpu": False}}),
 (None, r"^skipping accelerated runner because num_gpu=0", "load_request", {"expect": {"gpu_layers": 0}}),
 (None, r"^Radeon GPU detected", "gpu_discovered", {}),
 (None, r"^(\[\w+-?\w*\] )?(NVML |CUDART )?CUDA Compute Capability detected", "gpu_discovered", {}),
 (None, r"CUDA GPU is too old", "gpu_dropped", {"expect": {"cause": "unsupported_compute_capability"}, "args": ["0", "3", "5"]}),
 (None, r"^Discovered GPU libraries|^discovered GPU libraries", "gpu_libraries", {}),
 (None, r"^Unable to load (CUDA|ROCm|NVML|cudart CUDA|oneAPI) management library|^Unable to load (cudart|nvcuda)$|^unable to load cuda driver library", "library_failed",
   {"args": ["/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.545.29.06", "nvml vram init failure: 9"],
    "values": {"library": "/usr/lib/x86_64-linux-gnu/libcuda.so.545.29.06", "error": "cuda driver library init failure: 999"}}),
 (None, r"^not enough vram available, falling back to CPU only", "placement_plan", {"expect": {"gpu": False}}),
 (None, r"^GPU not available, falling back to CPU", "no_gpu", {}),
 (None, r"^Failed to load dynamic library", "backend_failed", {"args": ["/tmp/ollama1200/cuda/libext_server.so", "Unable to load dynamic library: libcudart.so.11.0: cannot open shared object file"]}),
 (None, r"^Dynamic LLM (variants|libraries)", "runners_available", {"args": ["[cpu cpu_avx cpu_avx2 cuda_v11 rocm_v5]"], "values": {"runners": "[cpu cpu_avx cpu_avx2 cuda_v11 cuda_v12 rocm_v60102]"}}),
 (None, r"^Listening on", "version", {"args": ["127.0.0.1:11434", "0.1.20"]}),
 (None, r"^amdgpu \[%d\] too old|^amdgpu too old", "gpu_dropped", {"expect": {"cause": "unsupported_gpu_arch"}, "args": ["0", "gfx803"], "values": {"gpu": "gfx803"}}),
 (None, r"^detected amdgpu versions", "amd_detected", {"args": ["[gfx1030 gfx1031]"]}),
 (None, r"^unable to verify rocm library|^failed to lookup supported GFX types|^amdgpu detected, but no compatible rocm library found", "library_failed", {"expect": {"cause": "missing_gpu_runners"}, "args": ["no suitable rocm found"], "values": {"error": "no suitable rocm found, falling back to CPU"}}),
 (None, r"^amdgpu \[%d\] %s is not supported|^amdgpu is not supported", "gpu_dropped", {"expect": {"cause": "unsupported_gpu_arch"}, "args": ["0", "gfx1031", "/opt/rocm/lib", "[gfx1030 gfx1100]"], "values": {"gpu_type": "gfx1031"}}),
 (None, r"^skipping rocm gfx compatibility check", "gfx_override", {}),
 (None, r"iGPU.*skipping|appears to be an iGPU|unsupported Radeon iGPU", "gpu_dropped", {"expect": {"cause": "unsupported_igpu"}, "args": ["0", "512"]}),
 (None, r"^Nvidia GPU detected via", "gpu_discovered", {}),
 (None, r"^CPU does not have", "cpu_lacks_avx", {}),
 (None, r"^GPU runner incompatible with host system, CPU does not have AVX", "cpu_lacks_avx", {}),
 (None, r"^offload to ", "offload_plan", {"args": ["cuda"]}),
 (None, r"^offload$", "offload_plan", {"fields": ["library", "layers.requested", "layers.model", "layers.offload", "layers.split", "memory.available", "memory.required.full"]}),
 (None, r"^user override$", "library_override", {"values": {"OLLAMA_LLM_LIBRARY": "cpu_avx2", "path": "/tmp/ollama/runners/cpu_avx2"}}),
 (None, r"^starting llama server$|^starting runner$|^starting llama-server$", "runner_start", {}),
 (None, r"^unable to load any llama server|^unable to start runner with compatible gpu", "runner_failed", {}),
 (None, r"^llama runner started in|^llama-server started in", "runner_ready", {"args": ["2.51"]}),
 (None, r"^error loading llama server$", "runner_failed", {"values": {"error": "llama runner process has terminated: exit status 2"}}),
 (None, r"^inference compute$", "gpu_discovered", {}),
 (None, r"^insufficient VRAM to load any model layers", "placement_plan", {"expect": {"gpu": False}}),
 (None, r"^llama runner process no longer running|^llama-server process no longer running", "runner_exited", {}),
 (None, r"^server config$", "server_config", {}),
 (None, r"^finished setting up", "placement_plan", {}),
 (None, r"will fit in available VRAM", "placement_plan", {"expect": {"gpu": True}}),
 (None, r"^cpu inference mode, model fits in available system memory", "placement_plan", {"expect": {"gpu": False}}),
 (None, r"^no compatible GPUs were discovered", "no_gpu", {}),
 (None, r"^version mismatch between driver and cuda driver library", "library_failed", {"expect": {"cause": "driver_library_mismatch"}}),
 (None, r"^no nvidia devices detected", "library_failed", {"expect": {"cause": "device_filter_hides_gpu"}}),
 (None, r"^unknown error initializing cuda driver library", "library_failed", {"expect": {"cause": "uvm_not_loaded"}}),
 (None, r"^llama runner terminated|^llama-server terminated", "runner_failed", {"values": {"error": "exit status 2"}}),
 (None, r"^unable to locate gpu dependency libraries", "library_failed", {"expect": {"cause": "missing_gpu_runners"}}),
 (None, r"^using requested gpu library", "library_override", {}),
 (None, r"^compatible gpu libraries", "placement_plan", {"values": {"compatible": "[]"}, "expect": {"gpu": False}}),
 (None, r"^model weights$", "weights", {}),
 (None, r"^compute graph$", "compute_graph", {}),
 (None, r"^offloaded %d/%d layers to GPU", "offload", {"args": ["33", "33"]}),
 (None, r"^entering low vram mode", "low_vram_mode", {}),
 (None, r"^skipping available library at users? ?'?s? request|^skipping available library at user's request", "library_skipped", {"expect": {"cause": "forced_cpu_library"}}),
 (None, r"^unable to start discovery subprocess|^failure during GPU discovery|^failed to start runner to discovery GPUs|^failure during llama-server GPU discovery|^llama-server discovery: timed out|^llama-server GPU discovery watchdog|^llama-server not available for device discovery|^llama-server discovery: failed to start|^llama-server discovery: server startup exited|^llama-server --list-devices failed", "discovery_failed", {}),
 (None, r"^filtering device which didn't fully initialize", "gpu_dropped", {}),
 (None, r"^user overrode visible devices", "device_filter", {"fields": ["CUDA_VISIBLE_DEVICES"], "values": {"CUDA_VISIBLE_DEVICES": "1"}}),
 (None, r"^vram-based default context", "no_gpu", {"values": {"total_vram": "0 B"}}),
 (None, r"^dropping ROCm device — no rocblas support", "gpu_dropped", {"expect": {"cause": "unsupported_gpu_arch"}}),
 (None, r"^AMD driver is too old", "gpu_dropped", {"expect": {"cause": "driver_too_old"}}),
 (None, r"^NVIDIA driver too old", "gpu_dropped", {"expect": {"cause": "driver_too_old"}, "values": {"driver": "535"}}),
 (None, r"^skipping CUDA device — compute capability not in compiled", "gpu_dropped", {"expect": {"cause": "unsupported_compute_capability"}, "values": {"cc": "610"}}),
 (None, r"^dropping integrated GPU", "gpu_dropped", {"expect": {"cause": "unsupported_igpu"}, "values": {"library": "Vulkan", "description": "Intel(R) UHD Graphics 770"}}),
 (None, r"^llama-server VRAM tracking", "estimate_fallback", {}),
 (None, r"^selecting (requested )?single GPU for llama-server model", "scheduler_selected", {}),
 (None, r"^failed to initialize ggml backend device", "backend_init_failed", {}),
 (None, r"^failed to load model metadata", "model_load_failed", {"values": {"error": "open /root/.ollama/models/blobs/sha256-6a07: no such file or directory"}}),
 # ---- C
 ("c", r"^load_tensors: layer %3d assigned to device %s", "layer_assigned", {"args": ["0", "CUDA0", "0"]}),
 ("c", r"^ggml_vulkan: Found %zu Vulkan devices", "runner_devices", {"args": ["1"], "expect": {"library": "vulkan"}}),
 ("c", r"^ggml_vulkan: %zu = %s \(%s\) \| uma", "device", {"args": ["0", "Intel(R) Arc(TM) 130V GPU (16GB)", "Intel Corporation", "1", "1", "0", "32", "32768", "1", "KHR_coopmat"], "expect": {"library": "vulkan"}}),
 ("c", r"^(cuInit|cudaSetDevice|cudaGetDeviceCount) err: %d", "cuda_init_failed", {"args": ["999"], "expect": {"cause": "uvm_not_loaded"}}),
 ("c", r"^nvmlInit_v2 err: %d", "cuda_init_failed", {"args": ["18"]}),
 ("c", r"^CUDA error: %s", "runner_crash", {"args": ["no kernel image is available for execution on the device"]}),
 ("c", r"^%s: failed to initialize CUDA: %s", "cuda_init_failed", {"args": ["CUDA driver version is insufficient for CUDA runtime version"], "expect": {"cause": "driver_too_old"}}),
 ("c", r"^%s: found %d CUDA devices \(Total VRAM", "runner_devices", {"args": ["1", "81079"]}),
 ("c", r"^  Device %d: %s, compute capability %d.%d, VMM: %s, VRAM", "device", {"args": ["0", "NVIDIA H100 80GB HBM3", "9", "0", "yes", "81079"]}),
 ("c", r"^  Device %d: %s, %s \(0x%x\), VMM: %s, Wave Size: %d, VRAM", "device", {"args": ["0", "AMD Radeon RX 7900 XTX", "gfx1100", "1100", "no", "32", "24560"]}),
 ("c", r"^ggml_vulkan: device (lost|fault) on %s", "runner_crash", {"args": ["Vulkan0", "VK_ERROR_DEVICE_LOST"]}),
 ("c", r"^%s: found %d CUDA devices", "runner_devices", {"args": ["1"]}),
 ("c", r"^  Device %d: %s, compute capability", "device", {"args": ["0", "NVIDIA GeForce RTX 3090", "8", "6", "yes", "GPU-9d2f6c0e-8f7a-4b1e-9c3d-2a1b0c9d8e7f"]}),
 ("c", r"^  Device %d: %s, %s \(0x%x\), VMM", "device", {"args": ["0", "AMD Radeon RX 6800 XT", "gfx1030", "1030", "no", "32", "GPU-6c8a"]}),
 ("c", r"allocating %.2f MiB on device %d: cudaMalloc failed", "alloc_failed", {"args": ["4096.00", "0", "out of memory"], "expect": {"cause": "insufficient_vram"}}),
 ("c", r"^%s: failed to allocate compute buffers", "alloc_failed", {}),
 ("c", r"cannot use GPU %d, check `vulkaninfo", "device_unusable", {}),
 ("c", r"^%s: offloaded %d/%d layers to GPU", "offload", {"args": ["33", "33"]}),
 ("c", r"^%s: %10s buffer size = %8.2f MiB|^%s: %12s model buffer size", "buffer", {"args": ["CUDA0", "4403.50"]}),
 ("c", r"^%s: failed to initialize (CUDA|Vulkan|SYCL|Metal|CANN|Kompute)", "backend_init_failed", {}),
 ("c", r"^%s: failed to initialize %s backend", "backend_init_failed", {"args": ["CUDA0"]}),
 ("c", r"^%s: failed to find ggml_backend_init in|^%s: failed to initialize backend from %s|^%s: failed to load %s", "backend_failed", {"args": ["/usr/lib/ollama/cuda_v12/libggml-cuda.so", "libcuda.so.1: cannot open shared object file: No such file or directory"]}),
 ("c", r"^%s: loaded %s backend from", "backend_loaded", {"args": ["CUDA", "/usr/lib/ollama/cuda_v12/libggml-cuda.so"]}),
 ("c", r"^%s: using device %s \(%s\) - ", "device_used", {"args": ["CUDA0", "NVIDIA GeForce RTX 3090", "23871"]}),
 ("c", r"^%s: using device %s \(%s\) \(%s\)", "device_used", {"args": ["CUDA0", "NVIDIA GeForce RTX 3090", "0000:01:00.0", "23871"]}),
 ("c", r"^%s: no devices with dedicated memory found", "runner_no_gpu", {}),
 ("c", r"^%s: failed to load model '%s', try reducing --n-gpu-layers", "model_load_failed", {}),
 ("c", r"unable to load libnvidia-ml|unable to initialize NVML", "nvml_unavailable", {"args": ["libnvidia-ml.so.1: cannot open shared object file: No such file or directory"]}),
 ("c", r"^ggml_vulkan: No devices found", "runner_no_gpu", {}),
 ("c", r"^%s: failed to fit params to free device memory", "fit_failed", {"args": ["n_gpu_layers already set by user to 99, abort"]}),
 ("c", r"^%s: failed to load model '%s'|^%s: failed to load model$|^%s: failed to load model\\n", "model_load_failed", {"args": ["/root/.ollama/models/blobs/sha256-6a07"]}),
]
SKIP_FIXTURE = {"c.buffer_size_mib", "c.using_device_mib_free", "c.failed_to_load", "c.found_cuda_devices"}
VERB = re.compile(r"%[-+ #0-9.*]*(?:l|ll|z|h)?[a-zA-Z]")


def curate(draft: dict[str, Any], ids: set[str]) -> tuple[str, dict[str, Any]]:
    """The family and the catalogue record of one draft statement."""
    fam = "ggml_c" if draft["shape"] == "c" else "ollama_go"
    fmt = draft["fmt"]
    fact: str = "irrelevant"
    extra: dict[str, Any] = {}
    for shape, rx, f, x in T:
        if (shape and shape != draft["shape"]) or (shape is None and draft["shape"] == "c"):
            continue
        if re.search(rx, fmt):
            fact, extra = str(f), dict(x)  # type: ignore[call-overload]
            break
    slug = re.sub(r"[^a-z0-9]+", "_", VERB.sub("", fmt.replace("\\n", "")).lower()).strip("_")[:48] or "fmt"
    base = ("go." if fam == "ollama_go" else "c.") + slug
    i, id_ = 2, base
    while id_ in ids:
        id_ = f"{base}.{i}"
        i += 1
    ids.add(id_)
    rec: dict[str, Any] = OrderedDict(id=id_, fmt=fmt, shape=draft["shape"], fact=fact)
    fields = extra.get("fields", draft["fields"]) if draft["shape"] == "slog" else []
    if fields:
        rec["fields"] = fields
    func = draft.get("func")
    if draft["shape"] == "c":
        func = next((name for rx, name in FUNC if re.search(rx, fmt)), func)
    if func:
        rec["func"] = func
    for k in ("args", "values", "expect", "note"):
        if k in extra:
            rec[k] = extra[k]
    rec["at"] = OrderedDict(zip(draft["lines"], draft["at"], strict=True))
    rec["seen"] = draft["seen"]
    return fam, rec


def main() -> None:
    draft_path, fixture_path, out_dir = sys.argv[1:4]
    out: dict[str, list[dict[str, Any]]] = {"ollama_go": [], "ggml_c": []}
    ids: set[str] = set()
    with open(draft_path) as f:
        for raw in f:
            fam, rec = curate(json.loads(raw), ids)
            out[fam].append(rec)
    with open(fixture_path) as f:
        fixture_lines: dict[str, dict[str, str]] = json.load(f)
    for fam, recs in out.items():
        for r in recs:
            for line, prov in fixture_lines.get(r["id"], {}).items():
                if r["id"] not in SKIP_FIXTURE and line not in r["at"]:
                    r["at"][line] = prov
            r["at"] = OrderedDict(sorted(r["at"].items(), key=lambda kv: LINES.index(kv[0])))
        with open(f"{out_dir}/{fam}.jsonl", "w") as f:
            for r in recs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(fam, len(recs), sum(r["fact"] != "irrelevant" for r in recs))


if __name__ == "__main__":
    main()
