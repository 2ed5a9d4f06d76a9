"""`ollama serve` of the simulator: startup lines, discovery, a scheduler with one runner per model, shutdown."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from launcher.ollama_host import parse_ollama_host
from tests.ollama_sim import discovery, models, procs, slog, spawnspec, sysinfo
from tests.ollama_sim.gens import Generation
from tests.ollama_sim.layout import Layout

LOAD_TIMEOUT = 120.0
_BUFFER_RE = re.compile(r"^\w+:\s+(\S+)\s+(?:model|KV|compute|output) buffer size =\s+([\d.]+) MiB")
_SUBPROCESS_KEYS = re.compile(r"^(OLLAMA_LIBRARY_PATH$|CUDA_|ROCR_|ROCM_|HIP_|GPU_|HSA_|GGML_|PATH$|LD_LIBRARY_PATH$)")
_SERVER_CONFIG_KEYS = ("CUDA_VISIBLE_DEVICES", "GGML_VK_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "HIP_VISIBLE_DEVICES",
                       "HSA_OVERRIDE_GFX_VERSION", "HTTPS_PROXY", "HTTP_PROXY", "LLAMA_ARG_FIT", "LLAMA_ARG_FIT_TARGET",
                       "NO_PROXY", "OLLAMA_CONTEXT_LENGTH", "OLLAMA_DEBUG", "OLLAMA_FLASH_ATTENTION",
                       "OLLAMA_GPU_OVERHEAD", "OLLAMA_HOST", "OLLAMA_KEEP_ALIVE", "OLLAMA_LLM_LIBRARY",
                       "OLLAMA_MAX_LOADED_MODELS", "OLLAMA_MODELS", "OLLAMA_NUM_PARALLEL", "OLLAMA_VULKAN",
                       "ROCR_VISIBLE_DEVICES")


class LoadError(Exception):
    """A model could not be loaded; `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Runner:
    """One loaded model and its runner process."""

    model: models.Model
    child: procs.Child
    port: int
    ctx: int
    gpu: bool
    size: int = 0
    size_vram: int = 0
    buffers: dict[str, float] = field(default_factory=dict)
    expires_at: str = ""

    def on_line(self, line: str) -> None:
        """Gen D's memory-parsing writer: sum `... buffer size = X MiB` per device from the runner's output."""
        m = _BUFFER_RE.match(line)
        if m:
            self.buffers[m[1]] = self.buffers.get(m[1], 0.0) + float(m[2])


def _is_gpu_buffer(name: str) -> bool:
    return not (name in ("CPU", "BLAS") or name.startswith("CPU_") or name.endswith("_Host"))


class Sim:
    """The simulated server: one per process."""

    def __init__(self, gen: Generation, layout: Layout, log: slog.Logger) -> None:
        self.gen, self.layout, self.log = gen, layout, log
        self.children = procs.Registry()
        self.gpus: list[discovery.Gpu] = []
        self.runners: dict[str, Runner] = {}
        self.lock = threading.Lock()
        self.stopping = False
        self.host = parse_ollama_host(os.environ.get("OLLAMA_HOST"))

    # -------------------------------------------------------------------------------------------------- logging
    def line(self, key: str, **attrs: object) -> None:
        """Print the generation's line `key` (nothing if this generation has no such line)."""
        t = self.gen.lines.get(key)
        if t is None:
            return
        fields = {k: v for k, v in attrs.items() if f"{{{k}}}" in t.msg}
        msg = t.msg.format(**fields) if fields else t.msg
        pairs: list[tuple[str, object]] = []
        for k in t.keys:
            if k == "env*":
                pairs += list(attrs.get("env", []))  # type: ignore[call-overload]
            elif k in attrs:
                pairs.append((k, attrs[k]))
        self.log.log(t.level, t.source, msg, *pairs)

    def preamble(self) -> None:
        """The lines before `Listening on`."""
        values = {k: os.environ.get(k, "") for k in _SERVER_CONFIG_KEYS}
        values["OLLAMA_DEBUG"] = self.log.level_name
        values["OLLAMA_HOST"] = f"{self.host.scheme}://{self.host.netloc}"
        self.line("server_config", env="map[" + " ".join(f"{k}:{v}" for k, v in sorted(values.items())) + "]")
        self.line("cloud")
        self.line("total_blobs", n=models.count_blobs())
        self.line("unused_blobs")

    def discover(self) -> None:
        """Run the generation's discovery and print `inference compute` and the context line."""
        user_cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
        if user_cvd is not None and self.gen.discovery != "in_process":
            self.line("user_overrode", CUDA_VISIBLE_DEVICES=user_cvd)
            self.line("user_overrode_hint")
        self.gpus = discovery.DISCOVERY[self.gen.discovery](self)
        total, avail = sysinfo.meminfo()
        if not self.gpus:
            self.line("no_gpus")
            if self.gen.discovery == "in_process":
                self.line("inference_compute", id="0", library="cpu", variant="", compute="", driver="0.0", name="",
                          total=sysinfo.human_bytes2(total), available=sysinfo.human_bytes2(avail))
            else:
                self.line("inference_compute", id="cpu", library="cpu", compute="", name="cpu", description="cpu",
                          libdirs="ollama", driver="", pci_id="", type="", total=sysinfo.human_bytes2(total),
                          available=sysinfo.human_bytes2(avail))
        for g in self.gpus:
            libdirs = ",".join(["ollama", *([os.path.basename(g.gpudir)] if g.gpudir else [])])
            self.line("inference_compute", id=g.uuid if self.gen.name != "D" else str(g.index),
                      filter_id=str(g.index) if self.gen.name == "D" else "", library="CUDA"
                      if self.gen.name != "B" else "cuda", variant=self._variant(g), compute=g.compute,
                      name=f"CUDA{g.index}" if self.gen.name != "B" else g.description, description=g.description,
                      libdirs=libdirs, driver=g.driver_text, pci_id=g.pci, type="discrete",
                      total=sysinfo.human_bytes2(g.total), available=sysinfo.human_bytes2(g.free))
        vram = sum(g.total for g in self.gpus)
        ctx = 4096 if vram < 24 << 30 else 32768 if vram < 48 << 30 else 262144
        self.line("low_vram", **{"total vram": sysinfo.human_bytes2(vram), "threshold": "20.0 GiB"})
        self.line("vram_context", total_vram=sysinfo.human_bytes2(vram), default_num_ctx=ctx)
        self.default_ctx = ctx

    @staticmethod
    def _variant(g: discovery.Gpu) -> str:
        return "v11" if g.driver <= 12000 else "v12"

    # ---------------------------------------------------------------------------------------------- scheduling
    def _values(self, model: models.Model, port: int, ctx: int, gpus: list[discovery.Gpu]) -> dict[str, Any]:
        gpu = gpus[0] if gpus else None
        gpudir = (gpu.gpudir or self.layout.cuda_dir_for(self._variant(gpu))) if gpu else ""
        visible = ",".join(g.uuid if self.gen.name == "B" else self._remap(str(g.index)) for g in gpus)
        layers = ["--n-gpu-layers", str(999)] if gpu else []
        # As Ollama: -c is num_ctx times OLLAMA_NUM_PARALLEL; OLLAMA_KV_CACHE_TYPE becomes --cache-type-k/-v.
        par = os.environ.get("OLLAMA_NUM_PARALLEL", "")
        parallel = int(par) if par.isdigit() and int(par) > 0 else 1
        kv_type = os.environ.get("OLLAMA_KV_CACHE_TYPE", "")
        kv_cache = ["--cache-type-k", kv_type, "--cache-type-v", kv_type] if kv_type else []
        return {"exe": self.layout.exe, "llama_server": self.layout.llama_server, "model": str(model.blob),
                "port": str(port), "ctx": str(ctx * parallel), "parallel": str(parallel), "batch": "512",
                "kv_cache": kv_cache,
                "threads": str(sysinfo.threads()), "load_mode": [] if gpu else ["--load-mode", "none"],
                "gpu_layers": layers, "libdir": self.layout.libdir, "gpudir": gpudir,
                "backend": self.layout.backend_in(gpudir) if gpudir else "", "visible": visible,
                "media_marker": f"<__ollama_media_{secrets.token_hex(16)}__>"}

    @staticmethod
    def _remap(filter_id: str) -> str:
        """Gen D: filter ids are remapped to the tokens of the server's own CUDA_VISIBLE_DEVICES."""
        user = [t for t in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if t]
        return user[int(filter_id)] if user and int(filter_id) < len(user) else filter_id

    def get_runner(self, name: str, options: dict[str, Any]) -> Runner:
        """The loaded runner for `name`, starting one if needed (one load at a time, as the scheduler does)."""
        model = models.resolve(name)
        if model is None:
            raise LoadError(f"model '{name}' not found", 404)
        with self.lock:
            r = self.runners.get(model.name)
            if r is not None and r.child.proc.poll() is None:
                return r
            r = self._start(model, int(options.get("num_ctx") or self.default_ctx))
            self.runners[model.name] = r
            return r

    def _choose(self, size: int) -> list[discovery.Gpu]:
        """The scheduler's choice: the GPU with the most free memory when the model fits it alone (gen D's
        `selecting single GPU`), else every GPU (llama-server splits the layers), always every GPU with
        OLLAMA_SCHED_SPREAD=1; gen B/C take the first."""
        if len(self.gpus) < 2 or self.gen.name != "D":
            return self.gpus[:1]
        if os.environ.get("OLLAMA_SCHED_SPREAD", "") in ("1", "true", "True"):
            return list(self.gpus)
        best = max(self.gpus, key=lambda g: g.free)
        return [best] if size + (1 << 30) <= best.free else list(self.gpus)

    def _start(self, model: models.Model, ctx: int) -> Runner:
        chosen = self._choose(model.blob.stat().st_size)
        gpu = chosen[0] if chosen else None
        port = procs.free_port()
        values = self._values(model, port, ctx, chosen)
        argv, env = spawnspec.spawn(self.gen, "model", os.environ, values, frozenset({"gpu"} if gpu else set()))
        blob = str(model.blob)
        if gpu is None:
            self.line("disable_mmap", model=blob, reason="cpu")
        self.line("using_runner", model=blob)
        total, free = sysinfo.meminfo()
        size = model.blob.stat().st_size
        self.line("offload", library="cuda" if gpu else "cpu", **{
            "layers.requested": -1, "layers.model": 3, "layers.offload": 3 if gpu else 0, "layers.split": "",
            "memory.available": f"[{sysinfo.human_bytes2(gpu.free if gpu else free)}]",
            "memory.gpu_overhead": "0 B", "memory.required.full": sysinfo.human_bytes2(size),
            "memory.required.partial": sysinfo.human_bytes2(size if gpu else 0),
            "memory.required.kv": sysinfo.human_bytes2(ctx * 512), "memory.required.allocations":
            f"[{sysinfo.human_bytes2(size)}]", "memory.weights.total": sysinfo.human_bytes2(size),
            "memory.weights.repeating": sysinfo.human_bytes2(size), "memory.weights.nonrepeating": "0 B",
            "memory.graph.full": "0 B", "memory.graph.partial": "0 B"})
        self.line("starting", cmd=" ".join(argv))
        self.line("subprocess", env=[(k, v) for k, v in env.items() if _SUBPROCESS_KEYS.match(k)])
        self.line("system_memory", total=sysinfo.human_bytes2(total), free=sysinfo.human_bytes2(free),
                  free_swap="0 B")
        if gpu:
            self.line("gpu_memory", id=gpu.uuid, library="CUDA", available=sysinfo.human_bytes2(gpu.free),
                      free=sysinfo.human_bytes2(gpu.free), minimum="457.0 MiB", overhead="0 B")
        self.line("loading", model=blob, **{"model layers": 3, "requested": -1})
        started = time.monotonic()
        runner = Runner(model, None, port, ctx, gpu is not None)  # type: ignore[arg-type]
        try:
            runner.child = self.children.spawn(argv, env, forward=True, hook=runner.on_line)
        except OSError as exc:
            raise LoadError(f"fork/exec {argv[0]}: {exc.strerror}") from exc
        self.line("waiting_responding")
        self.line("waiting_available", status="llm server not responding")
        self._wait_healthy(runner, started)
        if self.gen.name == "C":
            self._c_load(runner, gpu)
        self._account(runner, size, gpu)
        self.line("started", secs=f"{time.monotonic() - started:.2f}")
        self.line("loaded_runners", count=len(self.runners) + 1)
        self.line("finished_setting_up", **{"runner.name": model.name, "runner.size": sysinfo.human_bytes2(
            runner.size), "runner.vram": sysinfo.human_bytes2(runner.size_vram), "runner.parallel": 1,
            "runner.pid": runner.child.pid, "runner.model": blob, "runner.num_ctx": ctx})
        threading.Thread(target=self._watch, args=(runner,), daemon=True).start()
        return runner

    def _wait_healthy(self, runner: Runner, started: float) -> None:
        deadline = started + LOAD_TIMEOUT
        while time.monotonic() < deadline:
            if runner.child.proc.poll() is not None:
                runner.child.output(5)
                reason = self.gen.lines["terminated_prefix"].msg.format(status=runner.child.status_text())
                last = next((x for x in reversed(runner.child.lines) if x.strip()), "")
                err = f"{reason}: {last}" if last and runner.child.proc.returncode else reason
                self.line("load_error", error=err)
                raise LoadError(err)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{runner.port}/health", timeout=1) as r:
                    if r.status == 200:
                        # the runner's lines up to "listening on" have been through the memory-parsing writer
                        runner.child.wait_line(lambda x: "listening on" in x.lower(), LOAD_TIMEOUT)
                        return
            except OSError:
                time.sleep(0.02)
        runner.child.kill()
        raise LoadError("timed out waiting for llama runner to start")

    def _c_load(self, runner: Runner, gpu: discovery.Gpu | None) -> None:
        body = json.dumps({"operation": "commit", "gpu_layers": 999 if gpu else 0,
                           "gpu_id": gpu.uuid if gpu else ""}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{runner.port}/load", data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=LOAD_TIMEOUT) as r:
                res = json.loads(r.read())
        except OSError as exc:
            runner.child.output(5)
            err = self.gen.lines["terminated_prefix"].msg.format(status=runner.child.status_text())
            self.line("load_error", error=err)
            raise LoadError(err) from exc
        gpu_bytes, cpu_bytes = int(res["gpu_bytes"]), int(res["cpu_bytes"])
        runner.buffers = {res["device"]: gpu_bytes / 2**20} if gpu_bytes else {}
        runner.buffers["CPU"] = cpu_bytes / 2**20
        for dev, n in ((res["device"], gpu_bytes), ("CPU", cpu_bytes)):
            if n:
                self.line("model_weights", device=dev, size=sysinfo.human_bytes2(n))
        self.line("total_memory", size=sysinfo.human_bytes2(gpu_bytes + cpu_bytes))

    def _account(self, runner: Runner, size: int, gpu: discovery.Gpu | None) -> None:
        if self.gen.name == "B" or not runner.buffers:
            if self.gen.name == "D":
                self.line("vram_tracking")
            runner.size = size
            runner.size_vram = size if (gpu or self.gen.name == "D") else 0
            return
        runner.size = int(sum(runner.buffers.values()) * 2**20)
        runner.size_vram = int(sum(v for k, v in runner.buffers.items() if _is_gpu_buffer(k)) * 2**20)

    def _watch(self, runner: Runner) -> None:
        rc = runner.child.proc.wait()
        if self.stopping:
            return
        text = runner.child.status_text()
        if self.gen.name == "D":
            self.line("runner_gone", sys=-rc if rc < 0 else rc, string=text)
        else:
            self.line("runner_gone", error=text)
        with self.lock:
            if self.runners.get(runner.model.name) is runner:
                del self.runners[runner.model.name]

    def completion(self, runner: Runner, prompt: str, n: int) -> Iterator[dict[str, Any]]:
        """Stream the runner's tokens."""
        body = json.dumps({"prompt": prompt, "n_predict": n, "stream": True}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{runner.port}/completion", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            for raw in r:
                yield json.loads(raw)

    def ps(self) -> list[dict[str, Any]]:
        """/api/ps models."""
        with self.lock:
            runners = [r for r in self.runners.values() if r.child.proc.poll() is None]
        return [{"name": r.model.name, "model": r.model.name, "size": r.size, "digest": r.model.digest[7:],
                 "details": {"format": "gguf", "family": "llama", "parameter_size": "4.2M",
                             "quantization_level": "F16"},
                 "expires_at": r.expires_at, "size_vram": r.size_vram, "context_length": r.ctx} for r in runners]

    # ---------------------------------------------------------------------------------------------------- stop
    def shutdown(self) -> None:
        """Clean stop: unload every model (SIGKILL its runner) and reap every child."""
        self.stopping = True
        with self.lock:
            runners = list(self.runners.values())
        for r in runners:
            self.line("shutting_down_runner", model=str(r.model.blob))
            self.line("stopping_runner", pid=r.child.pid)
        self.children.kill_all()
        for r in runners:
            self.line("runner_stopped", pid=r.child.pid)


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT request a clean stop."""
    def handler(_signum: int, _frame: object) -> None:
        stop.set()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
