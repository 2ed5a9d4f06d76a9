"""Ollama generations B, C and D as data: versions, runner argv shapes, env rewriting rules and server log lines.

Everything here is read from ../shared/reference/ollama-internals.md (sections 2-4) and, for D, checked against the
real 0.32.15 logs and process listings in ../shared/fixtures/ollama-real-cpu/. Behaviour lives in these tables; the
code that uses them (envrules, runners, server) has no per-generation `if` chains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Condition = Literal["always", "gpu", "cpu", "validate"]


@dataclass(frozen=True)
class EnvRule:
    """One rewrite of one variable in a child's environment (`cmd.Env = os.Environ()` plus these)."""

    key: str
    op: Literal["prepend", "append", "set"]
    parts: tuple[str, ...]  # placeholder names joined with ':'; empty values drop out
    when: Condition = "always"
    dedupe: bool = False


@dataclass(frozen=True)
class Line:
    """One server log line: level, Go source location, message template, attribute names in order."""

    level: str
    source: str
    msg: str
    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Generation:
    """What one Ollama generation does, as data."""

    name: str
    version: str
    discovery: Literal["in_process", "bootstrap_runner", "llama_server"]
    runner_flavour: Literal["go_runner", "ollama_engine", "llama_server"]
    cuda_dirs: tuple[str, ...]  # lib/ollama sub-directories that hold libggml-cuda.so in a release install
    argv: dict[str, tuple[str, ...]]  # spawn kind -> tokens; "{x}" one value, "{x*}" a list spliced in
    env: dict[str, tuple[EnvRule, ...]]  # spawn kind -> rules
    lines: dict[str, Line] = field(default_factory=dict)


_D_PATH = (EnvRule("LD_LIBRARY_PATH", "prepend", ("libdir", "gpudir"), dedupe=True),)
_D_PROBE = (
    *_D_PATH,
    EnvRule("GGML_BACKEND_PATH", "set", ("backend",), when="gpu"),
    EnvRule("CUDA_VISIBLE_DEVICES", "set", ("visible",), when="validate"),
    EnvRule("GGML_CUDA_INIT", "set", ("one",), when="validate"),
)

_COMMON_D_C_LINES = {
    "discovering": Line("INFO", "runner.go:60", "discovering available GPUs..."),
    "user_overrode": Line("WARN", "runner.go:74", "user overrode visible devices", ("CUDA_VISIBLE_DEVICES",)),
    "user_overrode_hint": Line("WARN", "runner.go:78", "if GPUs are not correctly discovered, unset and try again"),
    "inference_compute": Line("INFO", "types.go:50", "inference compute", (
        "id", "filter_id", "library", "compute", "name", "description", "libdirs", "driver", "pci_id", "type",
        "total", "available")),
}

D = Generation(
    name="D",
    version="0.32.15",
    discovery="llama_server",
    runner_flavour="llama_server",
    cuda_dirs=("cuda_v13",),
    argv={
        "probe_verbose": ("{llama_server}", "--port", "{port}", "--host", "127.0.0.1", "--no-webui", "--offline",
                          "--verbose"),
        "probe_list": ("{llama_server}", "--list-devices", "--offline", "--verbose"),
        "gpu_discover": ("{exe}", "gpu-discover", "{lib_dir_args*}"),
        "model": ("{llama_server}", "--model", "{model}", "--port", "{port}", "--host", "127.0.0.1", "--no-webui",
                  "--offline", "-c", "{ctx}", "-np", "{parallel}", "--log-verbosity", "4", "--no-log-prefix",
                  "--no-log-timestamps", "{load_mode*}", "{kv_cache*}", "--flash-attn", "auto", "-b", "{batch}",
                  "-ub", "{batch}",
                  "--context-shift", "--keep", "4"),
    },
    env={
        "probe_verbose": _D_PROBE,
        "probe_list": _D_PROBE,
        "gpu_discover": _D_PROBE,
        "model": (
            *_D_PATH,
            EnvRule("GGML_BACKEND_PATH", "set", ("backend",), when="gpu"),
            EnvRule("CUDA_VISIBLE_DEVICES", "set", ("visible",), when="gpu"),
            EnvRule("LLAMA_MEDIA_MARKER", "set", ("media_marker",)),
        ),
    },
    lines={
        **_COMMON_D_C_LINES,
        "server_config": Line("INFO", "routes.go:1951", "server config", ("env",)),
        "cloud": Line("INFO", "routes.go:1953", "Ollama cloud disabled: false"),
        "total_blobs": Line("INFO", "images.go:919", "total blobs: {n}"),
        "unused_blobs": Line("INFO", "images.go:926", "total unused blobs removed: 0"),
        "listening": Line("INFO", "routes.go:2008", "Listening on {addr} (version {version})"),
        "skip_arch": Line("INFO", "llama_server.go:287",
                          "skipping CUDA device \u2014 compute capability not in compiled architectures",
                          ("device", "cc", "archs", "libDirs")),
        "discovery_failure": Line("INFO", "runner.go:512", "failure during llama-server GPU discovery",
                                  ("OLLAMA_LIBRARY_PATH", "extra_envs", "error", "detail")),
        "probe_stopped": Line("DEBUG", "llama_server.go:121",
                              "llama-server discovery: stopped subprocess after collecting GPU info",
                              ("exit", "libDirs")),
        "device_discovery_took": Line("DEBUG", "llama_server.go:52", "llama-server device discovery took",
                                      ("duration", "libDirs")),
        "bootstrap_took": Line("DEBUG", "runner.go:494", "bootstrap discovery took",
                               ("duration", "OLLAMA_LIBRARY_PATH", "extra_envs")),
        "vram_context": Line("INFO", "routes.go:2058", "vram-based default context",
                             ("total_vram", "default_num_ctx")),
        "disable_mmap": Line("INFO", "sched.go:1147", "disabling mmap for llama-server load by default",
                             ("model", "reason")),
        "using_runner": Line("INFO", "server.go:109", "using llama-server for model", ("model",)),
        "starting": Line("INFO", "llama_server.go:433", "starting llama-server", ("cmd",)),
        "subprocess": Line("DEBUG", "llama_server.go:434", "subprocess", ("env*",)),
        "system_memory": Line("INFO", "sched.go:613", "system memory", ("total", "free", "free_swap")),
        "gpu_memory": Line("INFO", "sched.go:620", "gpu memory", ("id", "library", "available", "free", "minimum",
                                                                  "overhead")),
        "loading": Line("INFO", "llama_server.go:1048", "loading model via llama-server", ("model",)),
        "waiting_responding": Line("INFO", "llama_server.go:1295", "waiting for llama-server to start responding"),
        "waiting_available": Line("INFO", "llama_server.go:1350", "waiting for llama-server to become available",
                                  ("status",)),
        "started": Line("INFO", "llama_server.go:1362", "llama-server started in {secs} seconds"),
        "loaded_runners": Line("INFO", "sched.go:728", "loaded runners", ("count",)),
        "finished_setting_up": Line("DEBUG", "sched.go:740", "finished setting up", (
            "runner.name", "runner.size", "runner.vram", "runner.parallel", "runner.pid", "runner.model",
            "runner.num_ctx")),
        "vram_tracking": Line("WARN", "llama_server.go:1410",
                              "llama-server VRAM tracking: no per-device buffer sizes were parsed from llama-server "
                              "logs. Reporting the model file size as VRAM usage."),
        "runner_gone": Line("WARN", "llama_server.go:1196", "llama-server process no longer running",
                            ("sys", "string")),
        "load_error": Line("ERROR", "sched.go:490", "error loading llama server", ("error",)),
        "terminated_prefix": Line("ERROR", "", "llama-server process has terminated: {status}"),
        "shutting_down_runner": Line("DEBUG", "sched.go:1707", "shutting down runner", ("model",)),
        "stopping_runner": Line("DEBUG", "llama_server.go:2580", "stopping llama-server", ("pid",)),
        "runner_stopped": Line("DEBUG", "llama_server.go:2588", "llama-server stopped", ("pid",)),
        "binary_missing": Line("INFO", "runner.go:512", "failure during llama-server GPU discovery",
                               ("OLLAMA_LIBRARY_PATH", "extra_envs", "error")),
    },
)

_C_PATH = (
    EnvRule("LD_LIBRARY_PATH", "prepend", ("libdir", "gpudir")),
    EnvRule("OLLAMA_LIBRARY_PATH", "set", ("libdir", "gpudir")),
)

C = Generation(
    name="C",
    version="0.13.5",
    discovery="bootstrap_runner",
    runner_flavour="ollama_engine",
    cuda_dirs=("cuda_v12", "cuda_v13"),
    argv={
        "bootstrap": ("{exe}", "runner", "--ollama-engine", "--port", "{port}"),
        "model": ("{exe}", "runner", "--ollama-engine", "--model", "{model}", "--port", "{port}"),
    },
    env={
        "bootstrap": (
            *_C_PATH,
            EnvRule("CUDA_VISIBLE_DEVICES", "set", ("visible",), when="validate"),
            EnvRule("GGML_CUDA_INIT", "set", ("one",), when="validate"),
        ),
        "model": _C_PATH,
    },
    lines={
        **_COMMON_D_C_LINES,
        "server_config": Line("INFO", "routes.go:1544", "server config", ("env",)),
        "total_blobs": Line("INFO", "images.go:522", "total blobs: {n}"),
        "unused_blobs": Line("INFO", "images.go:529", "total unused blobs removed: 0"),
        "listening": Line("INFO", "routes.go:1597", "Listening on {addr} (version {version})"),
        "discovering": Line("INFO", "runner.go:67", "discovering available GPUs..."),
        "inference_compute": Line("INFO", "types.go:42", "inference compute", (
            "id", "filter_id", "library", "compute", "name", "description", "libdirs", "driver", "pci_id", "type",
            "total", "available")),
        "starting": Line("INFO", "server.go:392", "starting runner", ("cmd",)),
        "subprocess": Line("DEBUG", "server.go:393", "subprocess", ("env*",)),
        "discovery_failure": Line("INFO", "runner.go:464", "failure during GPU discovery",
                                  ("OLLAMA_LIBRARY_PATH", "extra_envs", "error")),
        "bootstrap_took": Line("DEBUG", "runner.go:494", "bootstrap discovery took",
                               ("duration", "OLLAMA_LIBRARY_PATH", "extra_envs")),
        "filtering_device": Line("DEBUG", "runner.go:146", "filtering device which didn't fully initialize",
                                 ("id", "libdir", "pci_id", "library")),
        "low_vram": Line("INFO", "routes.go:1638", "entering low vram mode", ("total vram", "threshold")),
        "system_memory": Line("INFO", "server.go:215", "system memory", ("total", "free", "free_swap")),
        "gpu_memory": Line("INFO", "server.go:222", "gpu memory", ("id", "library", "available", "free", "minimum",
                                                                   "overhead")),
        "loading": Line("INFO", "server.go:702", "loading model", ("model layers", "requested")),
        "model_weights": Line("INFO", "device.go:245", "model weights", ("device", "size")),
        "kv_cache": Line("INFO", "device.go:256", "kv cache", ("device", "size")),
        "compute_graph": Line("INFO", "device.go:267", "compute graph", ("device", "size")),
        "total_memory": Line("INFO", "device.go:272", "total memory", ("size",)),
        "loaded_runners": Line("INFO", "sched.go:517", "loaded runners", ("count",)),
        "waiting_responding": Line("INFO", "server.go:1289", "waiting for llama runner to start responding"),
        "waiting_available": Line("INFO", "server.go:1323", "waiting for server to become available",
                                  ("status",)),
        "started": Line("INFO", "server.go:1332", "llama runner started in {secs} seconds"),
        "runner_gone": Line("ERROR", "server.go:1150", "llama runner terminated", ("error",)),
        "load_error": Line("ERROR", "sched.go:480", "error loading llama server", ("error",)),
        "terminated_prefix": Line("ERROR", "", "llama runner process has terminated: {status}"),
    },
)

B = Generation(
    name="B",
    version="0.6.8",
    discovery="in_process",
    runner_flavour="go_runner",
    cuda_dirs=("cuda_v11", "cuda_v12"),
    argv={
        "model": ("{exe}", "runner", "--model", "{model}", "--ctx-size", "{ctx}", "--batch-size", "{batch}",
                  "{gpu_layers*}", "--threads", "{threads}", "--parallel", "{parallel}", "--port", "{port}"),
    },
    env={
        "model": (
            EnvRule("LD_LIBRARY_PATH", "prepend", ("gpudir", "gpudir", "libdir")),
            EnvRule("LD_LIBRARY_PATH", "append", ("libdir",)),
            EnvRule("OLLAMA_LIBRARY_PATH", "set", ("libdir", "gpudir")),
            EnvRule("CUDA_VISIBLE_DEVICES", "set", ("visible",), when="gpu"),
        ),
    },
    lines={
        "server_config": Line("INFO", "routes.go:1205", "server config", ("env",)),
        "total_blobs": Line("INFO", "images.go:458", "total blobs: {n}"),
        "unused_blobs": Line("INFO", "images.go:465", "total unused blobs removed: 0"),
        "listening": Line("INFO", "routes.go:1258", "Listening on {addr} (version {version})"),
        "looking": Line("INFO", "gpu.go:217", "looking for compatible GPUs"),
        "cuda_mismatch": Line("WARN", "gpu.go:605",
                              "version mismatch between driver and cuda driver library - reboot or upgrade may be "
                              "required: library {path}"),
        "cuda_no_devices": Line("INFO", "gpu.go:607", "no nvidia devices detected by library {path}"),
        "cuda_unknown": Line("WARN", "gpu.go:609",
                             "unknown error initializing cuda driver library {path}: {error}. see "
                             "https://github.com/ollama/ollama/blob/main/docs/troubleshooting.md for more information"),
        "cuda_unable": Line("INFO", "gpu.go:612", "Unable to load cudart library {path}: {error}"),
        "no_gpus": Line("INFO", "gpu.go:377", "no compatible GPUs were discovered"),
        "inference_compute": Line("INFO", "types.go:130", "inference compute", (
            "id", "library", "variant", "compute", "driver", "name", "total", "available")),
        "system_memory": Line("INFO", "server.go:105", "system memory", ("total", "free", "free_swap")),
        "offload": Line("INFO", "server.go:138", "offload", (
            "library", "layers.requested", "layers.model", "layers.offload", "layers.split", "memory.available",
            "memory.gpu_overhead", "memory.required.full", "memory.required.partial", "memory.required.kv",
            "memory.required.allocations", "memory.weights.total", "memory.weights.repeating",
            "memory.weights.nonrepeating", "memory.graph.full", "memory.graph.partial")),
        "starting": Line("INFO", "server.go:405", "starting llama server", ("cmd",)),
        "subprocess": Line("DEBUG", "server.go:406", "subprocess", ("env*",)),
        "loaded_runners": Line("INFO", "sched.go:451", "loaded runners", ("count",)),
        "waiting_responding": Line("INFO", "server.go:580", "waiting for llama runner to start responding"),
        "waiting_available": Line("INFO", "server.go:614", "waiting for server to become available",
                                  ("status",)),
        "started": Line("INFO", "server.go:619", "llama runner started in {secs} seconds"),
        "runner_gone": Line("ERROR", "server.go:470", "llama runner terminated", ("error",)),
        "load_error": Line("ERROR", "sched.go:458", "error loading llama server", ("error",)),
        "terminated_prefix": Line("ERROR", "", "llama runner process has terminated: {status}"),
    },
)

GENERATIONS: dict[str, Generation] = {g.name: g for g in (B, C, D)}
