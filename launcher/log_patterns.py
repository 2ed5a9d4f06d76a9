"""Ollama log patterns as data: rows keyed by generation (reference/ollama-internals.md A–D and pre-slog 0.1.x)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from launcher.error_codes import code_cause
from launcher.generations import (
    ALL,
    GENERATIONS,
    MIN_COMPUTE,
    OFFLOAD_LINE_TRUSTED,
    ROCM_TARGETS,
    VERSION_TABLE,
    generation_of,
    parse_version,
)

# Generation knowledge lives in launcher.generations; re-exported here for the modules that import it from the rows.
__all__ = ["ALL", "GENERATIONS", "MIN_COMPUTE", "OFFLOAD_LINE_TRUSTED", "ROCM_TARGETS", "VERSION_TABLE",
           "generation_of", "parse_version"]

Data = dict[str, Any]
Builder = Callable[[re.Match[str]], "Data | None"]


# --- cause tables: text of an error → cause -------------------------------------------------------------------

# CUDA driver/runtime errors, by message text or CUresult/cudaError code (CUDA driver API docs, cuda.h).
CUDA_ERROR_CAUSES: Final = (
    (re.compile(r"forward compatibility was attempted|\b804\b"), "driver_library_mismatch"),
    (re.compile(r"unsupported display driver|driver/library version mismatch|version mismatch|\b803\b"),
     "driver_library_mismatch"),
    (re.compile(r"driver version is insufficient|driver is too old|too old or missing|\b35\b"), "driver_too_old"),
    (re.compile(r"stub library|\b34\b"), "stub_library"),
    (re.compile(r"no CUDA-capable device|no nvidia devices|\b100\b"), "device_filter_hides_gpu"),
    (re.compile(r"no kernel image|architectural feature absent|not compiled with support for this arch|\b209\b"),
     "unsupported_compute_capability"),
    (re.compile(r"named symbol not found|init failure: 500\b|err: 500\b|\b500\b"), "driver_container_incompat"),
    (re.compile(r"unknown error|\b999\b"), "uvm_not_loaded"),
    (re.compile(r"out of memory|\b2\b$"), "insufficient_vram"),
    (re.compile(r"[Pp]ermission denied|\b(?:46|47)\b"), "permission_denied"),
    (re.compile(r"symbol lookup for \S+ failed"), "driver_too_old"),
)

# The dynamic loader's text (dlerror) when a GPU backend or driver library does not load.
DLERROR_CAUSES: Final = (
    (re.compile(r"/stubs?/"), "stub_library"),
    (re.compile(r"libcuda\.so[.\d]*: cannot open shared object|nvcuda\.dll"), "libcuda_not_found"),
    (re.compile(r"lib(?:cudart|cublas|cublasLt)\S*: cannot open shared object"), "missing_gpu_runners"),
    (re.compile(r"failed to map segment|[Oo]peration not permitted"), "tmp_noexec"),
    (re.compile(r"[Pp]ermission denied"), "permission_denied"),
    (re.compile(r"undefined symbol: cu\w+|symbol lookup error"), "backend_load_failed"),
)


def classify(text: str, table: tuple[tuple[re.Pattern[str], str], ...], default: str = "unknown") -> str:
    """First cause whose pattern occurs in `text`."""
    for pattern, cause in table:
        if pattern.search(text):
            return cause
    return default


# --- value helpers ----------------------------------------------------------------------------------------------

_KV = re.compile(r'([\w.]+|"[^"]*")=("(?:[^"\\]|\\.)*"|\[[^\]]*\]|\S*)')
_UNITS: Final = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, "KB": 1000, "MB": 10**6,
                 "GB": 10**9}


def kv(text: str) -> dict[str, str]:
    """slog `key=value` pairs of a line (quotes removed)."""
    out: dict[str, str] = {}
    for k, v in _KV.findall(text):
        out[k.strip('"')] = v[1:-1] if len(v) >= 2 and v[0] == '"' and v[-1] == '"' else v
    return out


def size_bytes(text: str) -> int | None:
    """`"1.7 GiB"` → bytes; None when unreadable."""
    m = re.match(r'"?\s*([\d.]+)\s*([KMGT]?i?B)', text)
    if not m or m[2] not in _UNITS:
        return None
    try:
        return int(float(m[1]) * _UNITS[m[2]])
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


_ARG = re.compile(r"(?:^|\s)(--?[\w-]+)(?:[ =]([^\s-][^\s]*))?")


def runner_cmd(cmd: str) -> Data:
    """What a runner's argv says: role, program, model, port, requested GPU layers, library dir or variant."""
    args: dict[str, str] = {}
    for flag, value in _ARG.findall(cmd):
        args.setdefault(flag, value)
    layers = args.get("--n-gpu-layers", args.get("-ngl", args.get("--gpu-layers")))
    variant = None
    m = re.search(r"[/\\](?:runners|lib[/\\]ollama)[/\\](\w+)[/\\]", cmd)
    if m:
        variant = m[1]
    if "--list-devices" in args or ("--model" not in args and "-m" not in args):
        role = "discovery"
    else:
        role = "model"
    program = cmd.split(" ", 1)[0] if cmd else ""
    return {"role": role, "program": program[-200:], "model": (args.get("--model") or args.get("-m") or "")[-200:],
            "port": _int(args.get("--port")), "gpu_layers": _int(layers), "variant": variant, "cmd": cmd[:2000]}


# --- rows -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One pattern: where `needle` occurs, `regex` is searched and `build` turns the match into event data."""

    kind: str
    needle: str
    regex: re.Pattern[str]
    build: Builder | None = None  # default: the named groups
    gens: frozenset[str] = ALL
    const: Mapping[str, Any] = field(default_factory=dict)
    msg: str | None = None  # set: the row is found by this exact slog `msg=` value instead of by `needle`

    def event_data(self, m: re.Match[str]) -> Data | None:
        """The event data of a match, or None when the match is not an event after all."""
        data = self.build(m) if self.build else {k: v for k, v in m.groupdict().items() if v is not None}
        if data is None:
            return None
        return {**self.const, **data}


def _r(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _inference_compute(m: re.Match[str]) -> Data | None:
    f = kv(m["rest"])
    library = f.get("library", "").lower()
    if not library:
        return None
    if library == "cpu":
        return {"kind": "no_gpu", "reason": "discovery found only the CPU"}
    return {"kind": "gpu_discovered", "library": library, "id": f.get("id"), "name": f.get("description") or
            f.get("name"), "compute": f.get("compute"), "driver": f.get("driver"), "variant": f.get("variant"),
            "libdirs": f.get("libdirs"), "total": f.get("total"), "available": f.get("available"),
            "type": f.get("type"), "pci_id": f.get("pci_id") or None, "filter_id": f.get("filter_id") or None}


def _dropped(cause: str) -> Builder:
    def build(m: re.Match[str]) -> Data:
        f = kv(m.string)
        return {"cause": cause, "library": f.get("library"), "name": f.get("description") or f.get("name") or
                f.get("device"), "compute": f.get("compute") or f.get("cc") or f.get("gpu_type")}
    return build


def _cuda_failure(where: str) -> Builder:
    def build(m: re.Match[str]) -> Data:
        error = m["error"].strip()
        return {"where": where, "error": error[:500], "code": _int(m.groupdict().get("code")),
                "cause": classify(error, CUDA_ERROR_CAUSES)}
    return build


def _context_failed(m: re.Match[str]) -> Data:
    """`cuda driver library failed to get device context 800`: discovery's free-memory refresh (nvcuda_get_free) of a
    GPU it had found; the number is a CUresult (800 not permitted: a container whose device access was revoked)."""
    code = int(m["code"])
    return {"error": m.group(0)[:300], "code": code, "cause": code_cause("cu", code) or "unknown"}


def _library_failed(m: re.Match[str]) -> Data:
    error = (m["error"] or "").strip()
    path = m["path"] or ""
    cause = classify(error, CUDA_ERROR_CAUSES)
    if cause == "unknown":
        cause = classify(f"{path} {error}", DLERROR_CAUSES)
    if "/stubs/" in path:
        cause = "stub_library"
    return {"path": path[-300:], "error": error[:500], "cause": cause}


def _backend_failed(m: re.Match[str]) -> Data:
    path, error = m["path"], (m["error"] or "").strip()
    gpu = re.search(r"ggml-(?!cpu|base)(\w+)", path)
    return {"path": path[-300:], "error": error[:500], "backend": gpu[1] if gpu else None,
            "cause": classify(error, DLERROR_CAUSES, "backend_load_failed")}


def _offload(m: re.Match[str]) -> Data:
    return {"n": int(m["n"]), "m": int(m["m"]), "form": "llm_load_tensors" if m["pfx"] else "current"}


def _buffer(m: re.Match[str]) -> Data | None:
    what = (m["what"] or "model").strip().lower()
    if what != "model":
        return None  # KV, compute and output buffers follow the weights; only weight placement is evidence
    return {"device": m["dev"], "what": what, "mib": _float(m["mib"]), "gpu": is_gpu_device(m["dev"])}


def _weights(m: re.Match[str]) -> Data:
    f = kv(m.string)
    dev = f.get("device") or f.get("buffer") or ""
    return {"device": dev, "bytes": size_bytes(f.get("size", "")), "gpu": is_gpu_device(dev)}


def _graph(m: re.Match[str]) -> Data:
    f = kv(m.string)
    dev = f.get("backend") or f.get("device") or ""
    return {"device": dev, "bytes": size_bytes(f.get("size", "")), "gpu": is_gpu_device(dev)}


def _plan(m: re.Match[str]) -> Data:
    f = kv(m.string)
    return {"library": f.get("library") or m["lib"], "requested": _int(f.get("layers.requested")),
            "model_layers": _int(f.get("layers.model")), "offload": _int(f.get("layers.offload")),
            "split": f.get("layers.split")}


def _start(m: re.Match[str]) -> Data:
    return runner_cmd(m["cmd"])


def _server_config(m: re.Match[str]) -> Data:
    env = dict(re.findall(r"\b(CUDA_VISIBLE_DEVICES|ROCR_VISIBLE_DEVICES|HIP_VISIBLE_DEVICES|GPU_DEVICE_ORDINAL|"
                          r"GGML_VK_VISIBLE_DEVICES|OLLAMA_LLM_LIBRARY|OLLAMA_VULKAN|OLLAMA_INTEL_GPU|"
                          r"OLLAMA_IGPU_ENABLE|HSA_OVERRIDE_GFX_VERSION|OLLAMA_NUM_GPU|OLLAMA_DEBUG):"
                          r"([^\s\]\"]*)", m.string))
    return {"env": env}


def _list(text: str) -> list[str]:
    return [x for x in re.split(r"[\s,]+", text.strip().strip('"[]')) if x][:64]


def _gpu_libraries(m: re.Match[str]) -> Data:
    return {"paths": [p[-300:] for p in _list(m["paths"])]}


def _runners(m: re.Match[str]) -> Data:
    return {"runners": _list(m["list"])}


def _filter(m: re.Match[str]) -> Data | None:
    f = kv(m.string)
    for var in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL",
                "GGML_VK_VISIBLE_DEVICES", "HSA_OVERRIDE_GFX_VERSION"):
        if var in f:
            return {"var": var, "value": f[var]}
    return {"var": None, "value": None}


def _sched(m: re.Match[str]) -> Data:
    f = kv(m.string)
    libs = re.findall(r"Library:(\w+)", f.get("runner.inference", ""))
    return {"libraries": [x.lower() for x in libs], "size": size_bytes(f.get("runner.size", "")),
            "vram": size_bytes(f.get("runner.vram", ""))}


def _selected(m: re.Match[str]) -> Data:
    f = kv(m.string)
    return {"library": (f.get("library") or "").lower(), "name": f.get("description") or f.get("name")}


def _discovery_failed(m: re.Match[str]) -> Data:
    f = kv(m.string)
    error = " ".join(x for x in (f.get("error"), f.get("detail"), m.groupdict().get("what")) if x)
    if re.search(r"time(?:d)? ?out|deadline|timeout", error):
        cause = "discovery_timeout"
    elif re.search(r"baackend|backend|TMPDIR|tmp", error) and re.search(r"denied|read-only|permission", error):
        cause = "permission_denied"
    else:
        cause = classify(error, CUDA_ERROR_CAUSES)
    return {"error": error[:500], "cause": cause}


def _exited(m: re.Match[str]) -> Data:
    f = kv(m.string)
    text = f.get("string") or f.get("error") or ""
    return {"signal": "signal" in text, "status": text[:200]}


def _failed(m: re.Match[str]) -> Data:
    error = (m.groupdict().get("error") or m.group(0)).strip()
    cause = "insufficient_vram" if re.search(r"out[- ]of[- ]memory|OOM", error) else classify(error, CUDA_ERROR_CAUSES)
    if "may have noexec set" in error or (re.search(r"noexec|permission denied", error, re.I) and "/tmp" in error):
        cause = "tmp_noexec"
    return {"error": error[:500], "cause": cause}


def _crash(cause: str = "unknown") -> Builder:
    def build(m: re.Match[str]) -> Data:
        text = m.group(0)[:300]
        c = cause if cause != "from_text" else classify(text, CUDA_ERROR_CAUSES)
        return {"text": text, "cause": c}
    return build


def _combination_removed(m: re.Match[str]) -> Data:
    f = kv(m.string)
    data: Data = {k: f[k] for k in ("libDir", "description", "compute", "pci_id") if k in f}
    if f.get("compute", "").startswith("gfx") and "vulkan" not in f.get("libDir", "").lower():
        return {"kind": "gpu_dropped", "cause": "unsupported_gpu_arch", "library": "rocm",
                "name": f.get("description"), **data}
    return data


def _amd_versions(m: re.Match[str]) -> Data:
    return {"targets": [t.split(":")[0] for t in _list(m["list"]) if t.startswith("gfx")]}


def _load_request(m: re.Match[str]) -> Data:
    gl = m["gl"]
    return {"gpu_layers": 0 if gl == "[]" else int(gl)}


def _library_override(m: re.Match[str]) -> Data:
    return {"value": m["value"]}


def is_gpu_device(name: str) -> bool:
    """True for a ggml buffer/device name on a GPU (CUDA0, ROCm1, Vulkan0, Metal), false for CPU and host buffers."""
    n = name.strip('"')
    if not n:
        return False
    upper = n.upper()
    return not (upper.startswith(("CPU", "BLAS", "AMX")) or upper.endswith("_HOST") or upper in {"CPU_MAPPED"})


PRE = frozenset({"0"})
OLD = frozenset({"0", "A", "B"})  # in-process (cgo) discovery
AB = frozenset({"A", "B"})
GO_ENGINE = frozenset({"B", "C"})
BOOTSTRAP = frozenset({"C", "D"})
GEN_D = frozenset({"D"})

ROWS: Final[tuple[Row, ...]] = (
    # identity and configuration (all generations)
    Row("version", "Listening on", _r(r"Listening on (?P<address>\S+) \(version (?P<version>[^)\s]+)\)")),
    Row("server_config", "server config", _r(r"(?<!read )(?<!parse )server config"), _server_config),
    # the same line pasted from its `env=` on (start cut): only the server config logs a map of OLLAMA_HOST and kin
    Row("server_config", 'env="map[', _r(r'^env="map\[.*?\bOLLAMA_(?:HOST|MODELS|DEBUG|KEEP_ALIVE):'), _server_config),
    # discovery, every generation from 0.1.3x
    Row("discovery", "inference compute", _r(r"inference compute(?P<rest>.*)"), _inference_compute),
    Row("device_filter", "user overrode visible devices", _r(r"user overrode visible devices"), _filter, BOOTSTRAP),
    Row("gpu_dropped", "dropping integrated GPU", _r(r"dropping integrated GPU"), _dropped("unsupported_igpu"),
        GEN_D),
    Row("gpu_dropped", "not in compiled architectures", _r(r"compute capability not in compiled architectures"),
        _dropped("unsupported_compute_capability"), GEN_D),
    Row("gpu_dropped", "NVIDIA driver too old", _r(r"NVIDIA driver too old"), _dropped("driver_too_old"), GEN_D),
    Row("gpu_dropped", "didn't fully initialize", _r(r"filtering device which didn't fully initialize.*?"
                                                       r"library=(?P<library>\w+)"),
        lambda m: {"cause": "unsupported_gpu_arch" if m["library"].lower() == "rocm"
                   else "unsupported_compute_capability", "library": m["library"]}, BOOTSTRAP),
    Row("discovery_failed", "failure during", _r(r"failure during (?:llama-server )?GPU discovery"),
        _discovery_failed, BOOTSTRAP),
    # TRACE: a (device, library dir) pair dropped at discovery. NVIDIA's overlapping cuda_v12/cuda_v13 pairs and a
    # Vulkan pair that ROCm or CUDA covers print it on healthy hosts, so only an AMD gfx device dropped from a
    # non-Vulkan dir is a dropped GPU; the rest are recorded, not weighed.
    Row("combination_removed", "removing unsupported or overlapping GPU combination",
        _r(r"removing unsupported or overlapping GPU combination"), _combination_removed, BOOTSTRAP),
    Row("discovery_failed", "unable to start discovery subprocess", _r(r"(?P<what>unable to start discovery "
                                                                       r"subprocess)"), _discovery_failed,
        frozenset({"C"})),
    Row("discovery_failed", "failed to start runner to discovery", _r(r"(?P<what>failed to start runner to discovery "
                                                                      r"GPUs)"), _discovery_failed, frozenset({"C"})),
    *(Row("discovery_failed", what, _r(f"(?P<what>{re.escape(what)})"), _discovery_failed, GEN_D)
      for what in ("llama-server not available for device discovery", "llama-server discovery: failed to start",
                   "llama-server discovery: server startup exited", "llama-server --list-devices failed")),
    Row("gpu_dropped", "no rocblas support", _r(r"dropping ROCm device — no rocblas support"), _dropped(
        "unsupported_gpu_arch"), GEN_D),
    Row("gpu_dropped", "AMD driver is too old", _r(r"AMD driver is too old"), _dropped("driver_too_old"), GEN_D),
    Row("discovery_failed", "timed out waiting for server startup",
        _r(r"discovery: (?P<what>timed out waiting for server startup)"), _discovery_failed, GEN_D),
    Row("discovery_failed", "watchdog timed out", _r(r"GPU discovery (?P<what>watchdog timed out)"),
        _discovery_failed, GEN_D),
    Row("no_gpu", "vram-based default context", _r(r'total_vram="?0 B"?'), None, BOOTSTRAP,
        {"reason": "total VRAM is 0 B"}),
    Row("library_skipped", "skipping available library at user", _r(r"skipping available library at user'?s request"),
        lambda m: {"cause": "forced_cpu_library"}, BOOTSTRAP),
    # in-process discovery (0.1.x to v0.12.3)
    Row("no_gpu", "no compatible GPUs were discovered", _r(r"no compatible GPUs were discovered"), None, OLD,
        {"reason": "no compatible GPUs were discovered"}),
    Row("no_gpu", "no GPU detected", _r(r"no GPU detected"), None, PRE, {"reason": "no GPU detected"}),
    Row("gpu_discovered", "Nvidia GPU detected", _r(r"Nvidia GPU detected"), None, PRE, {"library": "cuda"}),
    Row("gpu_discovered", "Radeon GPU detected", _r(r"Radeon GPU detected"), None, PRE, {"library": "rocm"}),
    Row("no_gpu", "GPU not available, falling back to CPU", _r(r"GPU not available, falling back to CPU"), None, PRE,
        {"reason": "GPU not available"}),
    Row("placement_plan", "not enough vram available", _r(r"not enough vram available, falling back to CPU"), None,
        PRE, {"gpu": False, "cause": "insufficient_vram"}),
    Row("placement_plan", "cpu inference mode", _r(r"cpu inference mode, model fits in available system memory"),
        None, ALL, {"gpu": False}),
    Row("gpu_discovered", "Compute Capability detected", _r(r"^(?!.*too old).*CUDA Compute Capability detected: "
                                                            r"(?P<compute>[\d.]+)"), None, PRE, {"library": "cuda"}),
    Row("gpu_dropped", "GPU is too old", _r(r"CUDA GPU is too old.*?Compute Capability detected: (?P<compute>[\d.]+)"),
        None, OLD, {"cause": "unsupported_compute_capability", "library": "cuda"}),
    Row("gpu_libraries", "GPU libraries", _r(r'[Dd]iscovered GPU libraries"?:? (?:paths=)?(?P<paths>"?\[[^\]]*\]?)'),
        _gpu_libraries, OLD),
    Row("library_failed", "nable to load", _r(r"[Uu]nable to load (?:(?:cudart CUDA|CUDA|ROCm|NVML|oneAPI) management|"
                                              r"cudart|nvcuda|nvml|cuda driver|cudart library|management)"
                                              r"[^/\\=]*?(?:library=)?(?P<path>[A-Za-z]?:?[/\\]\S*?)"
                                              r"(?::? error=|: |\s+)(?P<error>.*)"), _library_failed, OLD),
    Row("library_failed", "version mismatch between driver", _r(r"version mismatch between driver and cuda driver "
                                                               r"library(?P<error>.*)"),
        lambda m: {"error": m["error"][:300], "cause": "driver_library_mismatch"}, OLD),
    Row("library_failed", "no nvidia devices detected", _r(r"no nvidia devices detected(?P<error>.*)"),
        lambda m: {"error": m["error"][:300], "cause": "device_filter_hides_gpu"}, OLD),
    Row("library_failed", "unknown error initializing cuda", _r(r"unknown error initializing cuda driver library"
                                                               r"(?P<error>.*)"),
        lambda m: {"error": m["error"][:300], "cause": "uvm_not_loaded"}, OLD),
    Row("cuda_init_failed", "err: ", _r(r"^(?P<fn>cuInit|cudaSetDevice|cudaGetDeviceCount|cudaDriverGetVersion) err: "
                                        r"(?P<error>(?P<code>\d+).*)"), _cuda_failure("discovery"), OLD),
    Row("cpu_lacks_avx", "does not have", _r(r"CPU does not have (?:minimum )?(?:vector extensions|AVX)"), None, OLD),
    Row("cpu_lacks_avx", "GPU runner incompatible", _r(r"GPU runner incompatible with host system, CPU does not have "
                                                      r"AVX"), None, frozenset({"A"})),
    Row("runners_available", "Dynamic LLM ", _r(r"Dynamic LLM (?:libraries|variants)(?: \[|\" runners=\"?\[|\s+"
                                                r"runners=\"?\[)(?P<list>[^\]]*)\]"), _runners, OLD),
    Row("amd_detected", "detected amdgpu versions", _r(r"detected amdgpu versions \[(?P<list>[^\]]*)\]"),
        _amd_versions, OLD),
    Row("gpu_dropped", "is not supported", _r(r"amdgpu (?:\[\d+\] )?(?P<compute>gfx\w+)? ?is not supported"),
        None, OLD, {"cause": "unsupported_gpu_arch", "library": "rocm"}),
    Row("gpu_dropped", "too old", _r(r"amdgpu (?:\[\d+\] )?too old ?(?P<compute>gfx\w+)?"), None, OLD,
        {"cause": "unsupported_gpu_arch", "library": "rocm"}),
    Row("gpu_dropped", "iGPU", _r(r"iGPU(?: detected)?.{0,80}?skipping|appears to be an iGPU"), None, OLD,
        {"cause": "unsupported_igpu", "library": "rocm"}),
    *(Row("library_failed", what, _r(f"{what}.*"),
          lambda m: {"error": m.group(0)[:300], "cause": "missing_gpu_runners"}, OLD)
      for what in ("unable to verify rocm library", "no compatible rocm library found")),
    Row("library_failed", "supported GFX types", _r(r"failed to lookup supported GFX types.*"),
        lambda m: {"error": m.group(0)[:300], "cause": "missing_gpu_runners"}, OLD),
    Row("library_failed", "unable to locate gpu dependency libraries",
        _r(r"unable to locate gpu dependency libraries"), None, AB, {"cause": "missing_gpu_runners"}),
    Row("gpu_dropped", "permission problems block access", _r(r"amdgpu devices detected but permission problems "
                                                              r"block access"), None, OLD,
        {"cause": "permission_denied", "library": "rocm"}),
    Row("gfx_override", "skipping rocm gfx compatibility check", _r(r"skipping rocm gfx compatibility check"), None,
        OLD),
    Row("library_override", "user override", _r(r"user override.*?OLLAMA_LLM_LIBRARY=(?P<value>\S+)"),
        _library_override, OLD),
    Row("library_override", "using requested gpu library",
        _r(r"using requested gpu library.*?requested=(?P<value>\S+)"), _library_override, frozenset({"A", "B", "C"})),
    Row("stub_warning", "is a stub library", _r(r"is a stub library"), None, ALL, {"cause": "stub_library"}),
    # nvcuda_get_free's LOG (no newline: the next record is glued on) and nvcuda_bootstrap's error string, which
    # discover/gpu.go logs as `error looking up nvidia GPU memory error="…"`
    Row("library_failed", "failed to get device context",
        _r(r"(?:cuda driver library|nvcuda) failed to get device context (?P<code>\d+)"), _context_failed),
    Row("library_failed", "", _r(r"(?:cuda driver library|nvcuda) failed to get device context (?P<code>\d+)"),
        _context_failed, msg="error looking up nvidia GPU memory"),
    Row("runner_failed", "noexec", _r(r"(?P<error>.*may have noexec set.*)"), None, OLD, {"cause": "tmp_noexec"}),
    # the scheduler's report that starting the runner failed (server/sched.go, v0.1.33 to 0.17): the Go error is in
    # error=, so the message row reads it (a slog line's other fields are not searched for needles)
    Row("runner_failed", "", _r(r'\berror="?(?P<error>(?:[^"\\]|\\.)*)'), _failed, frozenset({"0", "A", "B", "C"}),
        msg="NewLlamaServer failed"),
    # scheduler plans (estimates: never proof of placement, reference section 5)
    Row("offload_plan", "offload to ", _r(r"offload to (?P<lib>\w+)"), _plan, OLD),
    Row("offload_plan", "", _r(r"msg=offload (?P<lib>)"), _plan, frozenset({"0", "A", "B", "C"}), msg="offload"),
    Row("offload_plan", "VRAM available, loading up to", _r(r"VRAM available, loading up to (?P<offload>\d+) GPU "
                                                            r"layers"), lambda m: {"offload": int(m["offload"])}, PRE),
    Row("placement_plan", "will fit in available VRAM", _r(r"will fit in available VRAM"), None, ALL,
        {"gpu": True}),
    Row("placement_plan", "finished setting up", _r(r"finished setting up"), _sched, ALL),
    Row("placement_plan", "insufficient VRAM to load any model layers",
        _r(r"insufficient VRAM to load any model layers"), None, ALL, {"gpu": False, "cause": "insufficient_vram"}),
    Row("scheduler_selected", "single GPU for llama-server", _r(r"selecting (?:requested )?single GPU"), _selected,
        GEN_D),
    Row("placement_plan", "compatible gpu libraries", _r(r"compatible gpu libraries\"? compatible=\[\]"), None, AB,
        {"gpu": False}),
    Row("load_request", "", _r(r"GPULayers:(?P<gl>\[\]|\d+)"), _load_request, GO_ENGINE, msg="load"),
    Row("low_vram_mode", "entering low vram mode", _r(r"entering low vram mode"), None, GO_ENGINE),
    Row("estimate_fallback", "VRAM tracking", _r(r"VRAM tracking: no per-device buffer sizes"), None, GEN_D),
    # runner lifecycle
    Row("runner_start", "starting llama server", _r(r'starting llama server.*?cmd="?(?P<cmd>[^"]*)'), _start, OLD),
    Row("runner_start", "starting runner", _r(r'starting runner.*?cmd="?(?P<cmd>[^"]*)'), _start,
        frozenset({"B", "C"})),
    Row("runner_start", "starting llama-server", _r(r'starting llama-server.*?cmd="?(?P<cmd>[^"]*)'), _start, GEN_D),
    Row("runner_start", "running llama-server for discovery", _r(r'running llama-server for discovery.*?'
                                                                 r'cmd=(?P<cmd>\S*)'),
        lambda m: {"role": "discovery", "program": m["cmd"][-200:]}, GEN_D),
    Row("runner_start", "starting llama runner", _r(r"(?<!error )starting llama runner$"), None, PRE,
        {"role": "model"}),
    Row("runner_failed", "Unable to load dynamic", _r(r"Unable to load dynamic (?:server )?library: (?P<error>.*)"),
        lambda m: {"error": m["error"][:500], "cause": classify(m["error"], DLERROR_CAUSES)}, PRE),
    Row("runner_failed", "error starting", _r(r"error starting (?:the external )?llama runner: (?P<error>.*)"), _failed,
        PRE),
    Row("runner_failed", "llama runner stopped with error", _r(r"llama runner stopped with error: (?P<error>.*)"),
        _failed, PRE),
    Row("placement_plan", "less than 2 GB VRAM available", _r(r"less than 2 GB VRAM available"), None, PRE,
        {"gpu": False, "cause": "insufficient_vram"}),
    Row("load_request", "skipping accelerated runner because num_gpu=0",
        _r(r"skipping accelerated runner because num_gpu=0"), None, PRE, {"gpu_layers": 0}),
    Row("runner_start", "Loading Dynamic llm server", _r(r"Loading Dynamic llm server: (?P<program>\S+)"),
        lambda m: {"role": "model", "program": m["program"][-200:], "variant": (re.search(
            r"[/\\](\w+)[/\\]libext_server", m["program"]) or [None, None])[1]}, PRE),
    Row("runner_ready", "started in", _r(r"(?:llama runner|llama-server|runner) started in (?P<seconds>[\d.]+) "
                                         r"seconds"), lambda m: {"seconds": _float(m["seconds"])}),
    Row("runner_failed", "to become available", _r(r'status="?llm server error'), None, ALL,
        {"error": "llm server error"}),
    Row("runner_failed", "has terminated", _r(r"(?:llama runner|llama-server) process has terminated:? "
                                              r"(?P<error>[^\"]*)"), _failed),
    Row("runner_failed", "error loading llama server", _r(r"error loading llama server.*?error=\"?(?P<error>[^\"]*)"),
        _failed),
    Row("runner_failed", "terminated", _r(r"(?:llama runner|llama-server) terminated.*?error=\"?(?P<error>[^\"]*)"),
        _failed),
    Row("runner_failed", "timed out waiting for llama", _r(r"(?P<error>timed out waiting for llama[- ]\w+ to start.*)"),
        _failed),
    Row("runner_failed", "reported out-of-memory", _r(r"(?P<error>llama-server reported out-of-memory.*)"), _failed,
        GEN_D),
    Row("runner_failed", "unable to start runner", _r(r"(?P<error>unable to start runner.*)"), _failed,
        frozenset({"A", "B", "C"})),
    Row("runner_failed", "unable to load any llama server", _r(r"(?P<error>unable to load any llama server.*)"),
        _failed, OLD),
    Row("runner_failed", "fork/exec", _r(r"(?P<error>fork/exec \S+: .*)"), _failed),
    Row("runner_exited", "no longer running", _r(r"process no longer running"), _exited),
    Row("model_load_failed", "failed to load model", _r(r"failed to load model(?: metadata)?.*?(?:error=)?"
                                                        r"(?P<error>\".*|$)"),
        lambda m: {"error": m["error"].strip('"')[:500]}),
    # runner output: ggml / llama.cpp (every generation prints some of these)
    Row("runner_devices", "found ", _r(r"(?:ggml_cuda_init|ggml_init_cublas): found (?P<count>\d+) CUDA devices"),
        lambda m: {"count": int(m["count"]), "library": "cuda"}),
    Row("runner_devices", "Vulkan devices", _r(r"ggml_vulkan: Found (?P<count>\d+) Vulkan devices"),
        lambda m: {"count": int(m["count"]), "library": "vulkan"}),
    Row("cuda_init_failed", "failed to initialize", _r(r"ggml_cuda_init: failed to initialize CUDA: (?P<error>.*)"),
        _cuda_failure("runner")),
    Row("device", "| uma: ", _r(r"ggml_vulkan: (?P<index>\d+) = (?P<name>.+?) \((?P<vendor>[^)]*)\) \| uma: "
                                r"(?P<uma>\d)"),
        lambda m: {"index": int(m["index"]), "name": m["name"][:200], "library": "vulkan",
                   "integrated": m["uma"] == "1"}),
    Row("device", "Wave Size", _r(r"^\s*Device (?P<index>\d+): (?P<name>.+?), (?P<compute>gfx\w+)(?::[\w+:-]*)? \(0x"),
        lambda m: {"index": int(m["index"]), "name": m["name"][:200], "compute": m["compute"], "library": "rocm"}),
    Row("device", "compute capability", _r(r"^\s*Device (?P<index>\d+): (?P<name>.+?), compute capability "
                                           r"(?P<compute>\d+\.\d+)"),
        lambda m: {"index": int(m["index"]), "name": m["name"][:200], "compute": m["compute"]}),
    Row("device_used", "using device ", _r(r"using device (?P<device>[\w-]+) \((?P<name>.+?)\)"
                                          r"(?: \((?P<pci>[0-9A-Fa-f]+:[0-9A-Fa-f:.]+)\))? - (?P<free>\d+) MiB free"),
        lambda m: {"device": m["device"], "name": m["name"][:200], "pci": m["pci"], "free_mib": int(m["free"])}),
    Row("layer_assigned", "assigned to device ", _r(r"layer +(?P<il>\d+) assigned to device (?P<device>[\w-]+)"),
        lambda m: {"layer": int(m["il"]), "device": m["device"]}),
    Row("backend_loaded", "load_backend:", _r(r"load_backend: loaded (?P<backend>\S+) backend from (?P<path>\S+)"),
        lambda m: {"backend": m["backend"], "path": m["path"][-300:], "gpu": m["backend"].upper() not in
                   {"CPU", "BLAS", "RPC"}}),
    Row("backend_failed", "load_backend:", _r(r"load_backend: failed to (?:load|find ggml_backend_init in|initialize "
                                              r"backend from) (?P<path>\S+?)(?::\s*(?P<error>.*))?$"),
        _backend_failed),
    Row("backend_failed", "Failed to load dynamic library",
        _r(r"Failed to load dynamic library (?P<path>\S+) - falling back to CPU mode (?P<error>.*)"), _backend_failed,
        PRE),
    Row("backend_init_failed", "failed to initialize", _r(r"failed to initialize (?P<backend>CUDA|ROCm|Vulkan|SYCL|"
                                                           r"Metal|Kompute|CANN)\d*(?: for No\.\d+)? backend"), None),
    Row("backend_init_failed", "failed to initialize",
        _r(r"failed to initialize ggml backend device"), lambda m: {"backend": kv(m.string).get("device")},
        frozenset({"C"})),
    Row("alloc_failed", "cudaMalloc failed", _r(r"allocating (?P<mib>[\d.]+) MiB on device (?P<device>\d+): cudaMalloc "
                                                r"failed: (?P<error>.*)"), None, ALL, {"cause": "insufficient_vram"}),
    Row("alloc_failed", "failed to allocate compute buffers", _r(r"failed to allocate compute buffers"), None, ALL,
        {"cause": "insufficient_vram"}),
    Row("device_unusable", "check `vulkaninfo", _r(r"cannot use GPU (?P<index>\d+), check `vulkaninfo"), None,
        ALL, {"library": "vulkan"}),
    Row("runner_system", "", _r(r"msg=system"),
        lambda m: {"gpu_backends": sorted(set(re.findall(r"\b(CUDA|ROCm|Vulkan|Metal|SYCL)\.\d+\.", m.string)))},
        GO_ENGINE, msg="system"),
    Row("offload", "offloaded ", _r(r"(?P<pfx>llm_load_tensors: +)?offloaded (?P<n>\d+)/(?P<m>\d+) layers to GPU"),
        _offload),
    Row("buffer", "buffer size", _r(r"(?:llm_load_tensors|load_tensors|llama_kv_cache\w*|llama_context|sched_reserve|"
                                    r"llama_new_context_with_model):\s+(?P<dev>[\w-]+)\s+(?P<what>model |KV |compute "
                                    r"|output )?buffer size =\s+(?P<mib>[\d.]+) MiB"), _buffer),
    Row("weights", "model weights", _r(r"model weights"), _weights, GO_ENGINE),
    Row("compute_graph", "compute graph", _r(r"compute graph\"? (?:backend|device|nodes|splits|size)="), _graph,
        GO_ENGINE),
    Row("runner_no_gpu", "No devices found", _r(r"ggml_vulkan: No devices found"), None, ALL,
        {"reason": "Vulkan found no device", "library": "vulkan"}),
    Row("runner_no_gpu", "no devices with dedicated memory found", _r(r"no devices with dedicated memory found"),
        None, ALL, {"reason": "llama.cpp's fit found no device with dedicated memory"}),
    Row("fit_failed", "failed to fit params", _r(r"failed to fit params to free device memory: ?(?P<error>.*)"),
        None, ALL),
    # ggml's free-memory helper (mem_nvml.cpp): informative only, the CUDA backend does not need NVML
    Row("nvml_unavailable", "libnvidia-ml: ", _r(r"unable to load libnvidia-ml: (?P<error>.*)"), None,
        frozenset({"B", "C"})),
    Row("nvml_unavailable", "unable to initialize NVML", _r(r"unable to initialize NVML: (?P<error>.*)"), None,
        frozenset({"B", "C"})),
    Row("runner_no_gpu", "no usable GPU found", _r(r"no usable GPU found"), None, ALL,
        {"reason": "llama-server found no usable GPU"}),
    Row("runner_no_gpu", "Not compiled with GPU offload support", _r(r"Not compiled with GPU offload support"), None,
        ALL, {"reason": "CPU-only runner build"}),
    Row("log_verbosity", "verbosity = ", _r(r"common_params_print_info: verbosity = (?P<level>\d+)"),
        lambda m: {"level": int(m["level"])}),
    # crashes
    Row("runner_crash", "CUDA error", _r(r"CUDA error(?: (?P<code>\d+))?(?: at \S+)?:? ?(?P<error>.*)"),
        lambda m: {"text": m.group(0)[:300], "code": _int(m["code"]),
                   "cause": classify(m["error"], CUDA_ERROR_CAUSES)}),
    Row("runner_crash", "not compiled with support for this arch", _r(r"not compiled with support for this arch"),
        _crash("unsupported_compute_capability")),
    Row("runner_crash", "ggml_vulkan: device ", _r(r"ggml_vulkan: device (?:lost|fault) on (?P<device>\S+)"),
        _crash()),
    Row("runner_crash", "GGML_ASSERT", _r(r"GGML_ASSERT\(.*"),
        lambda m: {"text": m.group(0)[:300], "cause": "unsupported_compute_capability" if "not compiled with support "
                   "for this arch" in m.string else "unknown"}),
    Row("runner_crash", "rocBLAS error", _r(r"rocBLAS error:.*?(?:GPU arch ?: ?(?P<arch>gfx\w+))?$"),
        lambda m: {"text": m.group(0)[:300], "cause": "unsupported_gpu_arch" if m["arch"] else "unknown"}),
    Row("runner_crash", "SIGABRT", _r(r"^SIGABRT: abort"), _crash()),
    Row("runner_crash", "SIGSEGV", _r(r"^SIGSEGV: segmentation violation"), _crash()),
    Row("runner_crash", "SIGILL", _r(r"^SIGILL: illegal instruction"), _crash()),
    Row("runner_crash", "SIGBUS", _r(r"^SIGBUS: bus error"), _crash()),
    Row("runner_crash", "__libc_start_main", _r(r"__libc_start_main"), _crash()),
    Row("runner_crash", "rip ", _r(r"^rip\s+0x[0-9a-f]+$"), _crash()),
    # lines that carry an error code (error_codes.py names the cause from the code or its printed text)
    Row("cuda_init_failed", "failed to initialize", _r(r"ggml_cuda_init: failed to initialize (?:ROCm|MUSA): "
                                                       r"(?P<error>.*)"), _cuda_failure("runner")),
    Row("runner_crash", "ROCm error", _r(r"ROCm error:? ?(?P<error>.*)"),
        lambda m: {"text": m.group(0)[:300], "cause": "unknown"}),
    Row("runner_crash", "hipError", _r(r"(?P<error>hipError\w+.*)"),
        lambda m: {"text": m.group(0)[:300], "cause": "unknown"}),
    Row("cuda_init_failed", "nvmlInit", _r(r"(?P<fn>nvmlInit\w*)(?:\(\))? (?:err|error|failed)\w*:? ?"
                                           r"(?P<error>(?P<code>\d+).*)"), _cuda_failure("discovery")),
    Row("nvml_failed", "Failed to initialize NVML", _r(r"Failed to initialize NVML: (?P<error>.*)"),
        lambda m: {"error": m["error"][:300]}),
    Row("gpu_dropped", "NVRM: Xid", _r(r"NVRM: Xid \((?P<pci>[^)]*)\): (?P<xid>\d+)\b"),
        lambda m: {"cause": "gpu_lost", "pci": m["pci"][:40], "xid": 79} if m["xid"] == "79" else None),
    # process-level findings
    Row("ld_preload_failed", "LD_PRELOAD cannot be preloaded",
        _r(r"object '(?P<object>[^']*)' from LD_PRELOAD cannot be preloaded"),
        lambda m: {"object": m["object"][-300:]}),
)


def _check_needles() -> None:
    """Needles must not contain one another's prefix relation, or the needle scan could hide a row."""
    needles = sorted({r.needle for r in ROWS if r.msg is None})
    for a in needles:
        for b in needles:
            if a != b and b.startswith(a):
                raise ValueError(f"needle {a!r} is a prefix of {b!r}")


_check_needles()
