"""The runner programs: gen D `llama-server` and gen B/C `ollama runner`, printing their real lines for what happened.

Each flavour loads backends through `ggml.load_all` (real dlopen of the install's libraries against whatever driver
the loader finds), reads the model's GGUF header, places layers on the CUDA devices the driver reported (limited by
their free memory) and prints the lines llama.cpp / Ollama's Go runner print for that outcome. A model file that is not
GGUF makes it exit 1 with llama.cpp's error lines; one whose header breaks llama.cpp's n_embd % n_head assertion makes
it abort (SIGABRT), as a real runner does on a broken model.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

from tests.ollama_sim import cuda, ggml, gguf, slog, sysinfo
from tests.ollama_sim.runner_http import RunnerHTTP

CUDA_ARCHS = "750,800,860,890,900,1000,1030,1100,1200,1210"  # the cuda_v13 list quoted in the reference (D.5)
CPU_FEATURES = ("SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2")
MIB = 1024 * 1024
FIT_MARGIN = 1024 * MIB  # llama-server's fit leaves 1024 MiB free per device


def plain(line: str) -> None:
    """A llama.cpp line on stderr."""
    slog.write_raw(line)


def go_log(level: str, source: str, msg: str, *attrs: tuple[str, object]) -> None:
    """A Go runner's slog line on stderr."""
    slog.write_raw(slog.format_line(level, source, msg, attrs))


@dataclass
class Args:
    """The runner flags we act on (others are accepted and ignored, as llama-server's parser would use them)."""

    model: str | None = None
    port: int = 0
    host: str = "127.0.0.1"
    list_devices: bool = False
    ctx: int = 4096
    parallel: int = 1
    ngl: int | None = None
    batch: int = 512
    load_mode: str = "mmap"


_VALUE_FLAGS = {"--model": "model", "-m": "model", "--port": "port", "--host": "host", "-c": "ctx",
                "--ctx-size": "ctx", "-np": "parallel", "--parallel": "parallel", "-ngl": "ngl",
                "--n-gpu-layers": "ngl", "--gpu-layers": "ngl", "-b": "batch", "--batch-size": "batch",
                "--load-mode": "load_mode"}


def parse(argv: list[str]) -> Args:
    """Parse the flags Ollama passes."""
    a = Args()
    it = iter(argv)
    for tok in it:
        if tok == "--list-devices":
            a.list_devices = True
        elif tok in _VALUE_FLAGS:
            field_ = _VALUE_FLAGS[tok]
            raw = next(it, "")
            current = getattr(a, field_)
            setattr(a, field_, int(raw) if isinstance(current, int) or field_ == "ngl" else raw)
    return a


@dataclass(frozen=True)
class Placement:
    """Where the model's layers went: `split` holds (device, layers) for every device that got layers."""

    gpu_layers: int
    total_layers: int
    device: cuda.Device | None
    gpu_bytes: int
    cpu_bytes: int
    split: tuple[tuple[cuda.Device, int], ...] = ()


def _split(want: int, caps: list[int], rooms: list[int]) -> list[int]:
    """llama.cpp's default layer split, simplified: in proportion to each device's room, capped by what fits."""
    total_room = sum(rooms) or 1
    out = [min(cap, want * room // total_room) for cap, room in zip(caps, rooms, strict=True)]
    for i in range(len(out)):  # what rounding or a full device left over goes to the next device with room
        out[i] += max(0, min(caps[i] - out[i], want - sum(out)))
    return out


def place(loaded: ggml.Loaded, model: gguf.ModelInfo, requested: int | None) -> Placement:
    """llama.cpp's fit, simplified: the last layers go to the GPUs (each keeps FIT_MARGIN free), the rest to the CPU."""
    total = model.n_layer + 1
    devs = loaded.cuda_devices
    if not devs:
        return Placement(0, total, None, 0, model.size)
    want = total if requested is None or requested < 0 else min(requested, total)
    per_layer = max(1, model.size // total)
    rooms = [max(0, d.free - FIT_MARGIN) for d in devs]
    counts = _split(want, [r // per_layer for r in rooms], rooms)
    n = sum(counts)
    gpu = model.size * n // total
    split = tuple((d, c) for d, c in zip(devs, counts, strict=True) if c)
    return Placement(n, total, split[0][0] if split else devs[0], gpu, model.size - gpu, split)


def system_info(loaded: ggml.Loaded) -> str:
    """llama.cpp's system_info feature string."""
    n = sysinfo.threads()
    cuda_part = (f"CUDA : ARCHS = {CUDA_ARCHS.replace(',', ',')} | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | "
                 if loaded.has("cuda") else "")
    cpu_part = "CPU : " + " | ".join(f"{f} = 1" for f in CPU_FEATURES) + " | LLAMAFILE = 1 | REPACK = 1 | "
    return f"system_info: n_threads = {n} (n_threads_batch = {n}) / {n} | {cuda_part}{cpu_part}"


def cpu_device_line() -> str:
    """device_info's CPU entry."""
    total, avail = sysinfo.meminfo()
    return f"  - {'CPU':<8}: {sysinfo.cpu_model()} ({cuda.mib(total)} MiB, {cuda.mib(avail)} MiB free)"


def check_model(path: str, emit_error: Any) -> gguf.ModelInfo:
    """Read the model; on a broken file print llama.cpp's lines and exit 1, on an impossible shape abort."""
    try:
        model = gguf.read(path)
    except gguf.GGUFError as exc:
        emit_error(str(exc))
        sys.exit(1)
    if model.n_head and model.n_embd % model.n_head:
        plain("/llama.cpp/src/llama-model.cpp:612: GGML_ASSERT(hparams.n_embd % hparams.n_head() == 0) failed")
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.abort()
    return model


def breakdown_lines(loaded: ggml.Loaded, model: gguf.ModelInfo, ctx: int) -> list[str]:
    """common_memory_breakdown_print for the initial parameters (every layer on the GPU), in llama.cpp's columns:
    total = free + (self = model + context + compute) + unaccounted, MiB."""
    head = "common_memory_breakdown_print: "
    out = [head + "| memory breakdown [MiB]     | total    free    self   model   context   compute    unaccounted |"]
    weights, kv, compute = cuda.mib(model.size), cuda.mib(ctx * 512), 2
    for d in loaded.cuda_devices:
        used = weights + kv + compute
        name = f"CUDA{d.ordinal} ({d.name.removeprefix('NVIDIA ')})"
        other = cuda.mib(d.total) - cuda.mib(d.free) - used
        out.append(f"{head}|   - {name:<22} | {cuda.mib(d.total):5d} = {cuda.mib(d.free):5d} + ({used:4d} = "
                   f"{weights:5d} + {kv:7d} + {compute:7d}) + {other:14d} |")
    return out


def buffer_lines(p: Placement, cpu_name: str, ctx: int) -> list[str]:
    """load_tensors / kv cache / compute buffer lines for a placement (one line per device that holds layers)."""
    lines = []
    kv_devs = ["CPU"]
    if p.device is not None:
        lines += ["load_tensors: offloading output layer to GPU",
                  f"load_tensors: offloading {max(0, p.gpu_layers - 1)} repeating layers to GPU",
                  f"load_tensors: offloaded {p.gpu_layers}/{p.total_layers} layers to GPU"]
        lines.append(f"load_tensors: {cpu_name:>12} model buffer size = {p.cpu_bytes / MIB:8.2f} MiB")
        for dev, count in p.split:
            share = p.gpu_bytes * count // max(1, p.gpu_layers)
            lines.append(f"load_tensors: {'CUDA' + str(dev.ordinal):>12} model buffer size = {share / MIB:8.2f} MiB")
        kv_devs = [f"CUDA{dev.ordinal}" for dev, _ in p.split] or ["CPU"]
    else:
        lines.append(f"load_tensors: {cpu_name:>12} model buffer size = {p.cpu_bytes / MIB:8.2f} MiB")
    kv = ctx * 512 // len(kv_devs)
    lines += ["llama_context: constructing llama_context", f"llama_context: n_ctx                 = {ctx}",
              f"llama_context: {'CPU':>10}  output buffer size = {0.12:8.2f} MiB"]
    lines += [f"llama_kv_cache: {dev:>10} KV buffer size = {kv / MIB:8.2f} MiB" for dev in kv_devs]
    lines += [f"sched_reserve: {dev:>10} compute buffer size = {1.51:8.2f} MiB" for dev in kv_devs]
    return lines


# ---------------------------------------------------------------------------------------------- gen D llama-server

def _prog_dir(prog: str) -> str:
    return os.path.dirname(os.path.realpath(prog))


def llama_server(prog: str, argv: list[str]) -> int:
    """Gen D's runner: upstream llama-server as Ollama builds it (backends beside the binary + GGML_BACKEND_PATH)."""
    a = parse(argv)
    loaded = ggml.load_all([_prog_dir(prog), os.getcwd()], os.environ.get("GGML_BACKEND_PATH"), plain,
                           announce_scanned=False)
    if a.list_devices:
        print("Available devices:")
        for d in loaded.cuda_devices:
            print(f"  CUDA{d.ordinal}: {d.name} ({cuda.mib(d.total)} MiB, {cuda.mib(d.free)} MiB free)")
        if not loaded.cuda_devices:
            print("  (none)")
        sys.stdout.flush()
        return 0
    if a.ngl and not loaded.cuda_devices:
        for w in ("no usable GPU found, --gpu-layers option will be ignored",
                  "one possible reason is that llama.cpp was compiled without GPU support",
                  "consult docs/build.md for compilation instructions"):
            plain(f"warning: {w}")
    plain("cmn  common_param: common_params_print_info: build 0 (4df29be4f) with GNU 12.2.0 for Linux x86_64")
    plain("cmn  common_param: common_params_print_info: verbosity = 4 (adjust with the `-lv N` CLI arg)")
    plain("cmn  common_param: device_info:")
    for d in loaded.cuda_devices:
        plain(f"cmn  common_param:   - {'CUDA' + str(d.ordinal):<8}: {d.name} ({cuda.mib(d.total)} MiB, "
              f"{cuda.mib(d.free)} MiB free)")
    plain(f"cmn  common_param: {cpu_device_line()}")
    plain(f"cmn  common_param: {system_info(loaded)}")
    plain("srv          init: using 5 threads for HTTP server")
    plain("srv          init: The UI is disabled")
    plain("srv         start: binding port with default address family")
    http = RunnerHTTP(on_completion=_d_completion)
    if a.model is None:
        http.serve(a.host, a.port)
        plain(f"srv  llama_server: listening on http://{a.host}:{a.port}")
        signal.pause()
        return 0
    plain(f"srv    load_model: loading model '{a.model}'")
    plain(f"srv    load_model: local path '{a.model}'")

    def load_error(reason: str) -> None:
        plain(f"gguf_init_from_file_impl: {reason}")
        plain(f"llama_model_load: error loading model: llama_model_loader: failed to load model from {a.model}")
        plain("llama_model_load_from_file_impl: failed to load model")
        plain(f"srv    load_model: failed to load model, '{a.model}'")
        plain("srv    operator(): operator(): cleaning up before exit...")
        plain("main: exiting due to model loading error")

    model = check_model(a.model, load_error)
    if not loaded.backends:
        plain("llama_model_load_from_file_impl: no backends are loaded. hint: use ggml_backend_load() or "
              "ggml_backend_load_all() to load a backend before calling this function")
        return 1
    p = place(loaded, model, a.ngl)
    plain("cmn  common_init_: fitting params to device memory ...")
    plain("common_params_fit_impl: getting device memory data for initial parameters:")
    for line in breakdown_lines(loaded, model, a.ctx):
        plain(line)
    if p.device is not None:
        plain(f"common_params_fit_impl: projected to use {cuda.mib(p.gpu_bytes) + 1} MiB of device memory vs. "
              f"{cuda.mib(p.device.free)} MiB of free device memory")
    else:
        total, _ = sysinfo.meminfo()
        plain(f"common_params_fit_impl: projected to use {cuda.mib(model.size) + 1} MiB of host memory vs. "
              f"{cuda.mib(total)} MiB of total host memory")
    plain("common_fit_params: successfully fit params to free device memory")
    plain(f"llama_model_loader: loaded meta data with {len(model.kv)} key-value pairs and {model.n_tensors} tensors "
          f"from {a.model} (version GGUF V3 (latest))")
    plain("print_info: file format = GGUF V3 (latest)")
    plain(f"print_info: n_layer               = {model.n_layer}")
    for d in loaded.cuda_devices:
        plain(f"llama_prepare_model_devices: using device CUDA{d.ordinal} ({d.name}) ({d.pci_bus_id}) - "
              f"{cuda.mib(d.free)} MiB free")
    mode = "none" if a.load_mode == "none" else "mmap"
    plain(f"load_tensors: loading model tensors, this can take a while... (load_mode = {mode})")
    for line in buffer_lines(p, "CPU" if mode == "none" else "CPU_Mapped", a.ctx):
        plain(line)
    plain(f"srv    load_model: initializing, n_slots = {a.parallel}, n_ctx_slot = {a.ctx}, kv_unified = 'false'")
    http.serve(a.host, a.port)
    plain("srv  llama_server: model loaded")
    plain(f"srv  llama_server: listening on http://{a.host}:{a.port}")
    plain("srv  update_slots: all slots are idle")
    signal.pause()
    return 0


def _d_completion(prompt: str, n: int) -> None:
    plain(f"slot print_timing: id  0 | task 0 |        eval time =       4.07 ms / {n:5d} tokens (    0.51 ms per "
          "token,  1965.60 tokens per second)")
    plain("srv  update_slots: all slots are idle")


# ------------------------------------------------------------------------------------- gen B/C `ollama runner`

def _library_dirs(prog: str) -> list[str]:
    """OLLAMA_LIBRARY_PATH entries that belong to ollama (others: skipped), default <exe>/../lib/ollama."""
    default = os.path.join(os.path.dirname(_prog_dir(prog)), "lib", "ollama")
    raw = os.environ.get("OLLAMA_LIBRARY_PATH") or default
    return [d for d in raw.split(":") if d and ("lib/ollama" in d or d == _prog_dir(prog))]


def _system_line(loaded: ggml.Loaded) -> None:
    attrs: list[tuple[str, object]] = [(f"CPU.0.{f}", 1) for f in CPU_FEATURES] + [("CPU.0.LLAMAFILE", 1)]
    if loaded.cuda_devices:
        attrs += [("CUDA.0.ARCHS", CUDA_ARCHS), ("CUDA.0.USE_GRAPHS", 1), ("CUDA.0.PEER_MAX_BATCH_SIZE", 128)]
    attrs.append(("compiler", "cgo(gcc)"))
    go_log("INFO", "ggml.go:104", "system", *attrs)


class OllamaRunner:
    """Gen B (llama engine, flags on argv) and gen C (Ollama engine, /info and /load) runner."""

    def __init__(self, prog: str, argv: list[str], generation: str) -> None:
        self.prog, self.args, self.gen = prog, parse(argv), generation
        # This binary's vendored ggml prints the Ollama-era device lines (no VRAM column, with the UUID).
        os.environ.setdefault("MOCKGGML_STYLE", "ollama")
        self.loaded: ggml.Loaded | None = None
        self.lock = threading.Lock()

    def backends(self) -> ggml.Loaded:
        """Load backends once (ggml's OnceLoad)."""
        with self.lock:
            if self.loaded is None:
                self.loaded = ggml.load_all(_library_dirs(self.prog), os.environ.get("GGML_BACKEND_PATH"), plain)
                _system_line(self.loaded)
            return self.loaded

    def info(self) -> list[dict[str, Any]]:
        """GET /info: the devices this runner's backends see (gen C bootstrap discovery)."""
        loaded = self.backends()
        return [{"id": d.uuid, "library": "CUDA", "name": f"CUDA{d.ordinal}", "description": d.name,
                 "compute": f"{d.cc[0]}.{d.cc[1]}", "total": d.total, "free": d.free, "pci_id": d.pci_bus_id,
                 "filter_id": str(d.ordinal), "driver": loaded.driver} for d in loaded.cuda_devices]

    def load(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /load (gen C): place layers, print the Ollama engine's lines, report memory per device."""
        want = int(body.get("gpu_layers", 0))
        uuid = body.get("gpu_id", "")
        layers = f"{want}[ID:{uuid} Layers:{want}(0..{want - 1})]" if want else "[]"
        go_log("INFO", "runner.go:1284", "load", ("request", (
            f"{{Operation:commit LoraPath:[] Parallel:{self.args.parallel} BatchSize:{self.args.batch} "
            f"FlashAttention:Enabled KvSize:{self.args.ctx} KvCacheType: NumThreads:{sysinfo.threads()} "
            f"GPULayers:{layers} MultiUserCache:false ProjectorPath: MainGPU:0 UseMmap:false}}")))
        loaded = self.backends()
        model = check_model(str(self.args.model), lambda r: go_log("ERROR", "runner.go:1250",
                                                                  "failed to load model", ("error", r)))
        p = place(loaded, model, want)
        go_log("INFO", "ggml.go:482", f"offloading {max(0, p.gpu_layers - 1)} repeating layers to GPU")
        go_log("INFO", "ggml.go:488", "offloading output layer to " + ("GPU" if p.gpu_layers else "CPU"))
        go_log("INFO", "ggml.go:494", f"offloaded {p.gpu_layers}/{p.total_layers} layers to GPU")
        dev = f"CUDA{p.device.ordinal}" if p.device is not None and p.gpu_layers else "CPU"
        return {"success": True, "device": dev, "gpu_bytes": p.gpu_bytes, "cpu_bytes": p.cpu_bytes}

    def llama_engine_load(self) -> None:
        """Gen B llama engine: load at start with --n-gpu-layers from argv and print llama.cpp's lines."""
        loaded = self.backends()

        def load_error(reason: str) -> None:
            plain(f"gguf_init_from_file_impl: {reason}")
            plain(f"llama_model_load: error loading model: llama_model_loader: failed to load model from "
                  f"{self.args.model}")
            plain("llama_model_load_from_file_impl: failed to load model")
            go_log("ERROR", "runner.go:760", "failed to load model", ("error", f"unable to load model: "
                                                                                f"{self.args.model}"))

        model = check_model(str(self.args.model), load_error)
        p = place(loaded, model, self.args.ngl or 0)
        if p.device is not None:
            plain(f"llama_model_load_from_file_impl: using device CUDA{p.device.ordinal} ({p.device.name}) - "
                  f"{cuda.mib(p.device.free)} MiB free")
        plain(f"llama_model_loader: loaded meta data with {len(model.kv)} key-value pairs and {model.n_tensors} "
              f"tensors from {self.args.model} (version GGUF V3 (latest))")
        for line in buffer_lines(p, "CPU_Mapped", self.args.ctx):
            plain(line.replace("llama_kv_cache:", "llama_kv_cache_unified:").replace("sched_reserve:",
                                                                                     "llama_context:"))

    def run(self) -> int:
        """Serve until killed."""
        flavour = "starting ollama engine" if self.gen == "C" else "starting go runner"
        go_log("INFO", "runner.go:1398" if self.gen == "C" else "runner.go:815", flavour)
        http = RunnerHTTP(on_completion=lambda _p, _n: None, info=self.info,
                          load=self.load if self.gen == "C" else None)
        if self.gen != "C" and self.args.model:
            self.llama_engine_load()
        http.serve(self.args.host, self.args.port)
        go_log("INFO", "runner.go:1433" if self.gen == "C" else "runner.go:875",
               f"Server listening on {self.args.host}:{self.args.port}")
        signal.pause()
        return 0


def ollama_runner(prog: str, argv: list[str], generation: str) -> int:
    """`ollama runner ...` for gen B or C."""
    return OllamaRunner(prog, argv, generation).run()


# ---------------------------------------------------------------------------------------------- gen D gpu-discover

def gpu_discover(argv: list[str]) -> int:
    """`ollama gpu-discover --lib-dir ...`: dlopen the GPU backend and the driver by soname; JSON on stdout."""
    lib_dirs = [argv[i + 1] for i, tok in enumerate(argv[:-1]) if tok == "--lib-dir"]
    report: dict[str, Any] = {"lib_dirs": lib_dirs, "devices": [], "driver": 0}
    for d in lib_dirs[1:]:
        for path in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if path.startswith("libggml-") and path.endswith(".so"):
                try:
                    cuda.dlopen(os.path.join(d, path))
                except OSError as exc:
                    report.setdefault("errors", []).append(str(exc))
    for soname in ("libcuda.so.1", "libcuda.so"):
        try:
            drv = cuda.Driver.open(soname)
        except cuda.DriverError as exc:
            report.setdefault("errors", []).append(str(exc))
            continue
        report["cu_init"] = drv.init()
        if report["cu_init"] == cuda.CUDA_SUCCESS:
            report["driver"] = drv.driver_version()
            report["devices"] = [{"ordinal": x.ordinal, "pci_bus_id": x.pci_bus_id, "uuid": x.uuid}
                                 for x in drv.devices()]
        break
    print(json.dumps(report), flush=True)
    return 0
