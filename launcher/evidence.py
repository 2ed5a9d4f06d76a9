"""The evidence board: a pure function from an Event stream to a verdict, its cause and the lines that prove it."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from launcher import device_evidence as gpus_ev
from launcher import devices
from launcher.device_evidence import DeviceUse
from launcher.events import Event
from launcher.log_patterns import (
    DLERROR_CAUSES,
    MIN_COMPUTE,
    OFFLOAD_LINE_TRUSTED,
    ROCM_TARGETS,
    classify,
    generation_of,
)
from launcher.proctree import classify as classify_argv
from launcher.vocabulary import CAUSES, FILTER_VARS, INTENT_VARS, OUTCOMES, SCHEDULER_VARS

# When several causes are in evidence, the first in this list is the one reported: the most specific and the most
# actionable first, the ones that are often a consequence of another (a filter, a generic load failure) last.
CAUSE_PRIORITY: Final = (
    "wsl_libcuda_path", "stub_library", "physx_cudart_misdetect", "cpu_lacks_avx", "missing_gpu_runners",
    "operator_forced_cpu", "forced_cpu_library", "driver_library_mismatch", "driver_too_old",
    "driver_container_incompat", "uvm_not_loaded", "libcuda_not_found", "tmp_noexec", "permission_denied",
    "unsupported_compute_capability", "unsupported_gpu_arch", "discovery_timeout", "container_no_gpu_runtime",
    "backend_load_failed", "device_filter_hides_gpu", "unsupported_igpu", "insufficient_vram",
    "vulkan_selected_over_cuda", "unknown",
)
# A CPU result with one of these causes is what the machine or the operator asked for, not a fallback.
EXPECTED_CPU_CAUSES: Final = frozenset({"none", "operator_forced_cpu", "unsupported_igpu"})
GPU_LIBRARIES: Final = frozenset({"cuda", "rocm", "vulkan", "metal", "oneapi", "sycl", "musa"})
# A device-filter value that hides every device is the operator choosing CPU (DESIGN.md principle 3).
HIDE_ALL_VALUES: Final = frozenset({"-1", "none", "void", "NoDevFiles"})
LIST_CAP: Final = 64  # the board keeps at most this many events of each sort: the first ones and the latest ones
RUNNER_CAP: Final = 8  # model loads remembered: the first few and the latest


@dataclass(frozen=True, slots=True)
class Evidence:
    """One event the verdict rests on: where it is (log line), what it says, and why it matters."""

    source: str
    kind: str
    line: int | None
    text: str
    says: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {"source": self.source, "kind": self.kind, "line": self.line, "text": self.text, "says": self.says}


@dataclass(frozen=True, slots=True)
class Verdict:
    """Outcome and cause (vocabulary.py), the evidence, and what else the reader should know."""

    outcome: str
    cause: str
    evidence: tuple[Evidence, ...] = ()
    notes: tuple[str, ...] = ()
    findings: tuple[str, ...] = ()  # facts beside the verdict: runner killed and restarted, model file broken, …
    visible: bool = True  # False: this input cannot show the answer (say so rather than guess)
    generation: str | None = None
    version: str | None = None
    tier: str = "log"
    subject: str = ""  # live tier: "discovery" or "runner <pid>"
    signals: tuple[str, ...] = ()  # live tier: what each source says, e.g. "log:gpu", "shim:cpu"
    disagreement: tuple[str, ...] = ()  # live tier: sources that contradict each other, one line each
    devices: tuple[DeviceUse, ...] = ()  # per GPU: used, visible, discovered or hidden (and by whom), in UUIDs

    def __post_init__(self) -> None:
        seen: set[tuple[int | None, str]] = set()
        unique = []
        for ev in self.evidence:  # one line cited once, with its first reason
            key = (ev.line, ev.text) if ev.line is not None else (None, ev.says)
            if key not in seen:
                seen.add(key)
                unique.append(ev)
        object.__setattr__(self, "evidence", tuple(unique))
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r} is not in the vocabulary")
        if self.cause not in CAUSES:
            raise ValueError(f"cause {self.cause!r} is not in the vocabulary")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (for `explain --json` and recordings)."""
        return {"outcome": self.outcome, "cause": self.cause, "evidence": [e.to_dict() for e in self.evidence],
                "notes": list(self.notes), "findings": list(self.findings), "visible": self.visible,
                "generation": self.generation, "version": self.version, "tier": self.tier,
                "subject": self.subject, "signals": list(self.signals), "disagreement": list(self.disagreement),
                "devices": [d.to_dict() for d in self.devices]}


def _ev(event: Event, says: str) -> Evidence:
    line = event.data.get("line")
    return Evidence(event.source, event.kind, line if isinstance(line, int) else None,
                    str(event.data.get("text", ""))[:300], says)


@dataclass
class Problem:
    """A cause in evidence: the event, and whether a later success made it moot (e.g. another library worked)."""

    cause: str
    event: Event
    stage: str  # "discovery", "runner", "config", "install"
    superseded: bool = False


@dataclass
class Runner:
    """What one model runner (or the lines before any runner start) showed about placement and its end."""

    start: Event | None = None
    reports: list[Event] = field(default_factory=list)  # runner output about devices, backends, buffers, offload
    plans: list[Event] = field(default_factory=list)  # the server's intent: estimates, argv, scheduler choice
    failures: list[Event] = field(default_factory=list)  # crashes, terminations, runner_failed
    ready: Event | None = None
    layers: dict[str, int] = field(default_factory=dict)  # llama.cpp's `layer N assigned to device X`, counted


@dataclass
class Proc:
    """One process as the live sources saw it, keyed by (pid, start time): its class and its CUDA story."""

    pid: int
    start_time: int | None
    seq: int  # arrival order of the first event about it
    cls: str = "unknown"  # proctree's classes: model_runner, discovery_runner, server, …
    hello: Event | None = None
    cvd: str | None = None  # CUDA_VISIBLE_DEVICES as the process saw it (shim hello)
    cu_init: list[Event] = field(default_factory=list)
    devices: list[Event] = field(default_factory=list)
    ctx: list[Event] = field(default_factory=list)
    dlopen_ok: list[Event] = field(default_factory=list)
    dlopen_failed: list[Event] = field(default_factory=list)
    cuda_errors: list[Event] = field(default_factory=list)
    snapshot: Event | None = None
    libs: frozenset[str] | None = None
    libs_event: Event | None = None
    ended: Event | None = None
    log_runner: Runner | None = None  # the log's runner when this process appeared, and how many reports it had
    log_reports: int = 0
    baseline: dict[int, int] | None = None  # NVML per-GPU used bytes before it started
    nvml_listed: Event | None = None
    nvml_bytes: int = 0
    nvml_last_listed: bool | None = None
    nvml_last_seq: int = 0
    rise: int = 0
    rise_event: Event | None = None
    rise_shared: bool = False
    held: dict[int, int] = field(default_factory=dict)  # NVML: bytes per GPU index, listed for it or risen alone

    @property
    def key(self) -> tuple[int, int | None]:
        return (self.pid, self.start_time)

    def total(self, group: str, *names: str) -> int:
        """A sum of cumulative counters from the latest shim snapshot."""
        if self.snapshot is None:
            return 0
        values = _d(self.snapshot, group, {}) or {}
        return sum(int(values.get(n, 0) or 0) for n in names)


@dataclass
class Live:
    """What the live sources (shim, /proc, NVML, supervisor) said, beside the log facts."""

    seq: int = 0
    procs: dict[tuple[int, int | None], Proc] = field(default_factory=dict)
    server_pid: int | None = None
    operator_env: dict[str, str | None] = field(default_factory=dict)  # as the operator set it; None = unset
    ready: bool = False
    nvml: Event | None = None  # the `gpus` or `unavailable` event
    nvml_failed: Event | None = None
    gpu_used: dict[int, int] | None = None  # the latest NVML sample
    log_seq: int = 0  # arrival order of the latest log event
    machine: Event | None = None  # the supervisor's `machine` facts: driver library, device nodes, NVML


@dataclass
class Facts:
    """Everything the log tier decides from; filled by the handlers, one event at a time."""

    version: str | None = None
    generation: str | None = None
    generation_from: str | None = None
    version_unknown: bool = False
    discovered: list[Event] = field(default_factory=list)
    no_gpu: list[Event] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    runners: list[Runner] = field(default_factory=lambda: [Runner()])
    discovery_mode: bool = False  # between a discovery runner's start and the next model runner
    env: dict[str, str] = field(default_factory=dict)
    env_event: Event | None = None
    gpu_libraries: list[Event] = field(default_factory=list)
    amd_targets: list[Event] = field(default_factory=list)
    gfx_override: bool = False
    selected: list[Event] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    verbosity: int | None = None
    sources: set[str] = field(default_factory=set)
    lines: int = 0
    live: Live = field(default_factory=Live)

    def snapshot(self) -> Facts:
        """A copy whose lists a tier may extend without changing the board (verdicts are repeatable)."""
        return replace(self, problems=list(self.problems), notes=list(self.notes), findings=list(self.findings))

    @property
    def runner(self) -> Runner:
        return self.runners[-1]

    def add_problem(self, cause: str, event: Event, stage: str) -> None:
        if cause in CAUSES and cause != "none":
            _push(self.problems, Problem(cause, event, stage))

    def note(self, text: str) -> None:
        if text not in self.notes:
            _push(self.notes, text)

    def finding(self, text: str) -> None:
        if text not in self.findings:
            _push(self.findings, text)


def _push(items: list[Any], item: Any, cap: int = LIST_CAP) -> None:
    """Append, keeping memory flat on endless logs: past `cap`, the oldest of the later half is dropped."""
    if len(items) >= cap:
        del items[cap // 2]
    items.append(item)


# --- handlers: (source, kind) → how an event changes the facts -----------------------------------------------------

Handler = Callable[[Facts, Event], None]


def _d(event: Event, key: str, default: Any = None) -> Any:
    return event.data.get(key, default)


def _on_generation(f: Facts, e: Event) -> None:
    f.generation = _d(e, "generation")
    f.generation_from = _d(e, "from")
    if _d(e, "version") is not None:
        f.version = _d(e, "version")
        f.version_unknown = not _d(e, "known", True)


def _on_summary(f: Facts, e: Event) -> None:
    f.lines = int(_d(e, "lines", 0) or 0)
    if _d(e, "truncated"):
        f.note(f"{_d(e, 'truncated')} over-long line(s) were cut")


def _on_discovered(f: Facts, e: Event) -> None:
    _push(f.discovered, e)
    for p in f.problems:
        if p.stage in ("discovery", "config"):
            p.superseded = True


def _on_no_gpu(f: Facts, e: Event) -> None:
    _push(f.no_gpu, e)


def _on_problem(stage: str) -> Handler:
    def handle(f: Facts, e: Event) -> None:
        f.add_problem(str(_d(e, "cause", "unknown")), e, stage)
    return handle


def _on_cuda_init_failed(f: Facts, e: Event) -> None:
    if _d(e, "where") == "runner" and not f.discovery_mode:
        _push(f.runner.reports, e)
        f.add_problem(str(_d(e, "cause", "unknown")), e, "runner")
    else:
        f.add_problem(str(_d(e, "cause", "unknown")), e, "discovery")


def _on_backend_failed(f: Facts, e: Event) -> None:
    if _d(e, "backend") is None:
        return  # a CPU variant that does not load is normal: ggml scores every variant
    if not f.discovery_mode:
        _push(f.runner.reports, e)
    f.add_problem(str(_d(e, "cause", "backend_load_failed")), e, "discovery" if f.discovery_mode else "runner")


def _on_report(f: Facts, e: Event) -> None:
    if f.discovery_mode:
        if e.kind == "runner_devices" and int(_d(e, "count", 0) or 0) > 0:
            _on_discovered(f, e)
        return
    runner = f.runner
    if e.kind in ("offload", "buffer", "weights") and any(r.kind in ("offload", "buffer", "weights")
                                                          for r in runner.reports) and _restarted(runner, e):
        _push(f.runners, Runner(), RUNNER_CAP)
        runner = f.runner
    _push(runner.reports, e)
    if e.kind == "runner_devices" and int(_d(e, "count", 0) or 0) > 0:
        _on_discovered(f, e)


def _on_layer(f: Facts, e: Event) -> None:
    if not f.discovery_mode:
        device = str(_d(e, "device", ""))
        f.runner.layers[device] = f.runner.layers.get(device, 0) + 1


def _restarted(runner: Runner, e: Event) -> bool:
    """A second load's lines without a start line between them (partial pastes): a new offload line after buffers."""
    return e.kind == "offload" and any(r.kind == "offload" for r in runner.reports)


def _on_plan(f: Facts, e: Event) -> None:
    runner = f.runner
    if runner.reports or runner.failures or runner.ready:
        _push(f.runners, Runner(), RUNNER_CAP)
        runner = f.runner
    _push(runner.plans, e)


def _on_start(f: Facts, e: Event) -> None:
    if _d(e, "role") == "discovery":
        f.discovery_mode = True
        return
    f.discovery_mode = False
    runner = f.runner
    if runner.start is not None or runner.reports or runner.failures or runner.ready:
        _push(f.runners, Runner(start=e), RUNNER_CAP)
    else:
        runner.start = e
    if _d(e, "gpu_layers") == 0 and f.generation == "D":
        f.add_problem("operator_forced_cpu", e, "config")  # gen D passes -ngl only when num_gpu is set


def _on_failure(f: Facts, e: Event) -> None:
    if f.discovery_mode and e.kind == "runner_crash":
        f.add_problem(str(_d(e, "cause", "unknown")), e, "discovery")
        return
    _push(f.runner.failures, e)


def _on_exited(f: Facts, e: Event) -> None:
    _push(f.runner.failures, e)
    f.finding(f"runner exited: {_d(e, 'status', '')} (line {_d(e, 'line')})")


def _on_ready(f: Facts, e: Event) -> None:
    if f.runner.ready is None:
        f.runner.ready = e


def _on_config(f: Facts, e: Event) -> None:
    env = _d(e, "env", {}) or {}
    f.env.update({str(k): str(v) for k, v in env.items()})
    f.env_event = e
    for var in FILTER_VARS:
        value = f.env.get(var, "")
        if value in HIDE_ALL_VALUES:
            f.add_problem("operator_forced_cpu", e, "config")
        elif value:
            f.add_problem("device_filter_hides_gpu", e, "config")
    library = f.env.get("OLLAMA_LLM_LIBRARY", "")
    if library.startswith("cpu"):
        f.add_problem("operator_forced_cpu", e, "config")


def _on_filter(f: Facts, e: Event) -> None:
    value = str(_d(e, "value") or "")
    f.add_problem("operator_forced_cpu" if value in HIDE_ALL_VALUES else "device_filter_hides_gpu", e, "config")


def _on_override(f: Facts, e: Event) -> None:
    if str(_d(e, "value", "")).startswith("cpu"):
        f.add_problem("operator_forced_cpu", e, "config")


def _on_runners(f: Facts, e: Event) -> None:
    runners = [str(r) for r in _d(e, "runners", ()) or ()]
    if runners and not any(r.split("_")[0] in GPU_LIBRARIES or r.startswith(("cuda", "rocm")) for r in runners):
        f.add_problem("missing_gpu_runners", e, "install")


def _on_gpu_libraries(f: Facts, e: Event) -> None:
    _push(f.gpu_libraries, e)
    paths = [str(p) for p in _d(e, "paths", ()) or ()]
    if paths and "/stubs/" in paths[0]:
        f.add_problem("stub_library", e, "discovery")
    wsl = [p for p in paths if "/usr/lib/wsl/" in p]
    native = [p for p in paths if "/usr/lib/wsl/" not in p and p.startswith("/")]
    if wsl and native and paths.index(native[0]) < paths.index(wsl[0]):
        f.add_problem("wsl_libcuda_path", e, "discovery")  # a native Linux driver library shadows WSL's own


def _on_amd(f: Facts, e: Event) -> None:
    _push(f.amd_targets, e)


def _below_minimum(f: Facts, e: Event) -> bool:
    """A CUDA device whose compute capability is below the generation's minimum."""
    try:
        compute = float(str(_d(e, "compute", "")))
    except ValueError:
        return False
    return compute < MIN_COMPUTE.get(f.generation or "", min(MIN_COMPUTE.values()))


def _on_device(f: Facts, e: Event) -> None:
    if not f.discovery_mode:
        _push(f.runner.reports, e)
    if _below_minimum(f, e):
        f.add_problem("unsupported_compute_capability", e, "runner")


def _on_selected(f: Facts, e: Event) -> None:
    _push(f.selected, e)
    _on_plan(f, e)


def _on_verbosity(f: Facts, e: Event) -> None:
    f.verbosity = _d(e, "level")


def _on_finding(text: str) -> Handler:
    def handle(f: Facts, e: Event) -> None:
        f.finding(f"{text} (line {_d(e, 'line')})")
    return handle


def _on_note(text: str) -> Handler:
    def handle(f: Facts, e: Event) -> None:
        f.note(text)
    return handle


# --- live handlers: shim, /proc, NVML and supervisor events → per-process facts ------------------------------------

DISCOVERY_CLASSES: Final = frozenset({"server", "discovery_runner", "gpu_discover"})
MODEL_CLASSES: Final = frozenset({"model_runner", "mlx_runner"})
PROC_CAP: Final = 64  # processes remembered; the oldest ended ones go first
# dlopen names whose failure matters: CPU variants and ggml's libnvidia-ml probes fail on healthy systems.
GPU_DLOPEN: Final = re.compile(r"(?:^|/)lib(?:ggml-cuda|cuda\.so|cudart|cublas)")
NVML_RISE_BYTES: Final = 128 << 20  # less than one CUDA context: below this a per-GPU rise proves nothing


def _live_key(f: Facts, e: Event) -> Proc | None:
    """The process an event is about: (pid, start time), or the latest process with that pid when none is given."""
    if e.pid is None:
        return None
    live = f.live
    st = _d(e, "start_time")
    st = st if isinstance(st, int) and not isinstance(st, bool) else None
    found = live.procs.get((e.pid, st))
    if found is not None:
        return found
    if st is None:
        same = [p for p in live.procs.values() if p.pid == e.pid]
        if same:
            return max(same, key=lambda p: p.seq)
    else:
        loose = live.procs.pop((e.pid, None), None)
        if loose is not None:  # first seen without a start time (the shim's peer vanished before accept)
            loose.start_time = st
            live.procs[loose.key] = loose
            return loose
    runner = f.runner
    p = Proc(e.pid, st, live.seq, baseline=dict(live.gpu_used) if live.gpu_used is not None else None,
             log_runner=runner, log_reports=len(runner.reports))
    if live.server_pid == e.pid:
        p.cls = "server"
    live.procs[p.key] = p
    if len(live.procs) > PROC_CAP:
        ended = [q for q in live.procs.values() if q.ended is not None] or list(live.procs.values())
        del live.procs[min(ended, key=lambda q: q.seq).key]
    return p


def _on_proc_event(update: Callable[[Facts, Proc, Event], None]) -> Handler:
    def handle(f: Facts, e: Event) -> None:
        p = _live_key(f, e)
        if p is not None:
            update(f, p, e)
    return handle


def _hello(f: Facts, p: Proc, e: Event) -> None:
    p.hello = e
    p.cvd = _d(e, "cuda_visible_devices")
    if p.cls == "unknown":
        p.cls = classify_argv([str(a) for a in _d(e, "argv", ()) or ()])
    if p.cls == "server" or p.pid == f.live.server_pid:
        f.live.operator_env.setdefault("CUDA_VISIBLE_DEVICES", p.cvd)  # the server's own env is the operator's


def _dlopen(f: Facts, p: Proc, e: Event) -> None:
    name = str(_d(e, "name", ""))
    if not GPU_DLOPEN.search(name):
        return
    _push(p.dlopen_ok if _d(e, "ok") else p.dlopen_failed, e)


def _started(f: Facts, p: Proc, e: Event) -> None:
    cls = str(_d(e, "cls", "unknown"))
    if p.cls in ("unknown", "other") or cls != "other":
        p.cls = cls


def _libs(f: Facts, p: Proc, e: Event) -> None:
    p.libs = frozenset(str(x) for x in _d(e, "libs", ()) or ())
    p.libs_event = e


def _env_missing(f: Facts, p: Proc, e: Event) -> None:
    why = _d(e, "audit") or "LD_PRELOAD/OGPU_EVENTS not as planned"
    f.finding(f"runner_env_missing: {p.cls} pid {p.pid} runs without the shim ({why})")


def _ended(f: Facts, p: Proc, e: Event) -> None:
    if p.ended is None:
        p.ended = e


def _on_ollama_started(f: Facts, e: Event) -> None:
    f.live.server_pid = e.pid
    env = _d(e, "env")
    if isinstance(env, Mapping):
        for key in (*INTENT_VARS, *SCHEDULER_VARS, devices.ORDER_VAR):
            f.live.operator_env[key] = None if env.get(key) is None else str(env.get(key))
        set_env = {k: str(v) for k, v in env.items() if v is not None}
        _on_config(f, Event("supervisor", "ollama_started", e.t, e.pid, {"env": set_env}))
        for key in FILTER_VARS:  # an empty filter hides every device (reference fixtures: CUDA_VISIBLE_DEVICES=)
            if set_env.get(key) == "":
                f.add_problem("operator_forced_cpu", e, "config")


def _on_ready(f: Facts, e: Event) -> None:
    f.live.ready = True
    version = _d(e, "version")
    if version and f.version is None:
        f.version = str(version)
        f.generation = f.generation or generation_of(str(version))
        f.generation_from = f.generation_from or "supervisor"


def _on_nvml_state(f: Facts, e: Event) -> None:
    f.live.nvml = e
    cause = _d(e, "cause")
    if cause:
        f.add_problem(str(cause), e, "install")


def _on_nvml_failed(f: Facts, e: Event) -> None:
    f.live.nvml_failed = e
    f.note(f"NVML stopped answering: {_d(e, 'reason')}")


def _on_nvml_memory(f: Facts, e: Event) -> None:
    live = f.live
    used = {int(g["index"]): int(g["used"]) for g in _d(e, "gpus", ()) or ()
            if isinstance(g, Mapping) and isinstance(g.get("index"), int) and isinstance(g.get("used"), int)}
    alive = [p for p in live.procs.values() if p.ended is None]
    models = [p for p in alive if p.cls in MODEL_CLASSES]
    listed = _d(e, "processes")
    if listed is not None and _d(e, "pids_comparable"):
        held: dict[int, int] = {}
        per_gpu: dict[int, dict[int, int]] = {}
        for entry in listed:
            pid = entry.get("pid") if isinstance(entry, Mapping) else None
            if isinstance(pid, int):
                held[pid] = held.get(pid, 0) + int(entry.get("used") or 0)
                if isinstance(entry.get("gpu"), int):
                    gpu = per_gpu.setdefault(pid, {})
                    gpu[entry["gpu"]] = gpu.get(entry["gpu"], 0) + int(entry.get("used") or 0) or 1
        for p in alive:
            p.nvml_last_listed = p.pid in held
            p.nvml_last_seq = live.seq
            if p.pid in held:
                p.nvml_listed = e
                p.nvml_bytes = max(p.nvml_bytes, held[p.pid])
                for index, n in per_gpu.get(p.pid, {}).items():
                    p.held[index] = max(p.held.get(index, 0), n)
    for p in models:
        if p.baseline is None:
            continue
        rise = sum(u - p.baseline.get(i, u) for i, u in used.items())
        p.nvml_last_seq = max(p.nvml_last_seq, live.seq)
        p.rise_shared = p.rise_shared or len(models) > 1
        if rise > p.rise:
            p.rise, p.rise_event = rise, e
        if not p.rise_shared and p.nvml_listed is None:
            for i, u in used.items():
                if u - p.baseline.get(i, u) >= NVML_RISE_BYTES:
                    p.held[i] = max(p.held.get(i, 0), u - p.baseline.get(i, u))
    live.gpu_used = used


LIVE_HANDLERS: Final[Mapping[tuple[str, str], Handler]] = {
    ("shim", "hello"): _on_proc_event(_hello),
    ("shim", "dlopen"): _on_proc_event(_dlopen),
    ("shim", "cu_init"): _on_proc_event(lambda f, p, e: _push(p.cu_init, e)),
    ("shim", "device"): _on_proc_event(lambda f, p, e: _push(p.devices, e)),
    ("shim", "ctx"): _on_proc_event(lambda f, p, e: _push(p.ctx, e)),
    ("shim", "cuda_error"): _on_proc_event(lambda f, p, e: _push(p.cuda_errors, e)),
    ("shim", "snapshot"): _on_proc_event(lambda f, p, e: setattr(p, "snapshot", e)),
    ("shim", "bye"): _on_proc_event(lambda f, p, e: None),
    ("shim", "process_end"): _on_proc_event(_ended),
    ("proc", "runner_started"): _on_proc_event(_started),
    ("proc", "process_started"): _on_proc_event(_started),
    ("proc", "runner_env_ok"): _on_proc_event(lambda f, p, e: None),
    ("proc", "runner_env_missing"): _on_proc_event(_env_missing),
    ("proc", "runner_libs"): _on_proc_event(_libs),
    ("proc", "runner_exited"): _on_proc_event(_ended),
    ("proc", "process_exited"): _on_proc_event(_ended),
    ("nvml", "gpus"): _on_nvml_state,
    ("nvml", "unavailable"): _on_nvml_state,
    ("nvml", "sample_failed"): _on_nvml_failed,
    ("nvml", "memory"): _on_nvml_memory,
    ("supervisor", "ollama_started"): _on_ollama_started,
    ("supervisor", "ready"): _on_ready,
    ("supervisor", "restarted"): lambda f, e: None,
    ("supervisor", "ollama_exited"): lambda f, e: None,
    ("supervisor", "decision"): lambda f, e: None,
    ("supervisor", "state"): lambda f, e: None,
}


def _on_machine(f: Facts, e: Event) -> None:
    f.live.machine = e


HANDLERS: Final[Mapping[tuple[str, str], Handler]] = {
    **LIVE_HANDLERS,
    ("supervisor", "machine"): _on_machine,
    ("log", "generation"): _on_generation,
    ("log", "parse_summary"): _on_summary,
    ("log", "server_config"): _on_config,
    ("log", "gpu_discovered"): _on_discovered,
    ("log", "no_gpu"): _on_no_gpu,
    ("log", "device_filter"): _on_filter,
    ("log", "gpu_dropped"): _on_problem("discovery"),
    ("log", "discovery_failed"): _on_problem("discovery"),
    ("log", "library_skipped"): _on_problem("config"),
    ("log", "library_failed"): _on_problem("discovery"),
    ("log", "cuda_init_failed"): _on_cuda_init_failed,
    ("log", "cpu_lacks_avx"): lambda f, e: f.add_problem("cpu_lacks_avx", e, "install"),
    ("log", "stub_warning"): _on_problem("discovery"),
    ("log", "runners_available"): _on_runners,
    ("log", "gpu_libraries"): _on_gpu_libraries,
    ("log", "amd_detected"): _on_amd,
    ("log", "gfx_override"): lambda f, e: setattr(f, "gfx_override", True),
    ("log", "library_override"): _on_override,
    ("log", "offload_plan"): _on_plan,
    ("log", "placement_plan"): _on_plan,
    ("log", "load_request"): _on_plan,
    ("log", "scheduler_selected"): _on_selected,
    ("log", "runner_start"): _on_start,
    ("log", "runner_ready"): _on_ready,
    ("log", "runner_failed"): _on_failure,
    ("log", "runner_crash"): _on_failure,
    ("log", "runner_exited"): _on_exited,
    ("log", "runner_devices"): _on_report,
    ("log", "device"): _on_device,
    ("log", "device_used"): _on_report,
    ("log", "layer_assigned"): _on_layer,
    ("log", "backend_loaded"): _on_report,
    ("log", "backend_failed"): _on_backend_failed,
    ("log", "runner_system"): _on_report,
    ("log", "offload"): _on_report,
    ("log", "buffer"): _on_report,
    ("log", "weights"): _on_report,
    ("log", "compute_graph"): _on_report,
    ("log", "runner_no_gpu"): lambda f, e: None,
    ("log", "log_verbosity"): _on_verbosity,
    ("log", "low_vram_mode"): _on_note("'entering low vram mode' only changes default context sizes; it is not a "
                                       "CPU fallback"),
    ("log", "estimate_fallback"): _on_note("llama-server VRAM tracking found no buffer sizes: `ollama ps` shows the "
                                           "model file size as 100% GPU, which proves nothing"),
    ("log", "model_load_failed"): _on_finding("the model file could not be loaded (broken or truncated blob)"),
    ("log", "ld_preload_failed"): _on_finding("an LD_PRELOAD object could not be preloaded"),
}


# --- the log tier: rules over the facts ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Placement:
    """Where the last model load's weights went, how sure we are, and the events that say so."""

    where: str | None  # "gpu", "partial", "cpu" or None when the log does not show it
    level: str  # "report" (runner output), "devices", "plan" (server intent), "none"
    evidence: tuple[Evidence, ...] = ()


def _trusted(f: Facts, e: Event) -> bool:
    if f.generation in OFFLOAD_LINE_TRUSTED:
        return OFFLOAD_LINE_TRUSTED[f.generation]
    return _d(e, "form") != "llm_load_tensors"


def _report_placement(f: Facts, r: Runner) -> Placement | None:
    rep = r.reports
    gpu: list[Evidence] = []
    cpu: list[Evidence] = []
    partial: list[Evidence] = []
    model_buffers = [e for e in rep if e.kind == "buffer" and _d(e, "what") == "model"]
    for e in model_buffers:
        if _d(e, "gpu"):
            gpu.append(_ev(e, f"weights in {_d(e, 'device')} memory"))
    weights = [e for e in rep if e.kind == "weights"]
    gpu_weights = [e for e in weights if _d(e, "gpu")]
    gpu += [_ev(e, f"model weights on {_d(e, 'device')}") for e in gpu_weights]
    graphs = [e for e in rep if e.kind == "compute_graph"]
    if gpu_weights and any(not _d(e, "gpu") for e in weights):
        host = sum(int(_d(e, "bytes") or 0) for e in graphs if not _d(e, "gpu"))
        dev = sum(int(_d(e, "bytes") or 0) for e in graphs if _d(e, "gpu"))
        if host > dev > 0:
            partial += [_ev(e, "a larger compute graph on the CPU than on the GPU: layers run on the CPU")
                        for e in graphs if not _d(e, "gpu")]
    for e in rep:
        if e.kind != "offload":
            continue
        n, m = int(_d(e, "n", 0)), int(_d(e, "m", 0))
        if not _trusted(f, e):
            continue
        if n == 0:
            cpu.append(_ev(e, "no layer offloaded to the GPU"))
        elif n < m:
            partial.append(_ev(e, f"only {n} of {m} layers on the GPU"))
        else:
            gpu.append(_ev(e, f"all {m} layers offloaded to the GPU"))
    if partial:
        return Placement("partial", "report", tuple(partial))
    if gpu:
        return Placement("gpu", "report", tuple(gpu))
    for e in rep:
        if e.kind == "cuda_init_failed":
            cpu.append(_ev(e, "the runner could not initialise CUDA"))
        elif e.kind == "backend_failed":
            cpu.append(_ev(e, "the runner could not load its GPU backend"))
        elif e.kind == "runner_no_gpu":
            cpu.append(_ev(e, "the runner found no usable GPU"))
    if model_buffers and not any(_d(e, "gpu") for e in model_buffers):
        cpu += [_ev(e, "weights only in host memory") for e in model_buffers]
    if weights and not gpu_weights:
        cpu += [_ev(e, "model weights only on the CPU") for e in weights]
    if cpu:
        return Placement("cpu", "report", tuple(cpu))
    return None


def _device_placement(f: Facts, r: Runner) -> Placement | None:
    rep = r.reports
    found = [e for e in rep if e.kind == "runner_devices" and int(_d(e, "count", 0) or 0) > 0]
    too_old = [e for e in rep if e.kind == "device" and _below_minimum(f, e)]
    if found and too_old:
        return Placement("cpu", "devices", tuple(_ev(e, "compute capability below what this Ollama's CUDA build "
                                                        "runs on") for e in too_old))
    if found:
        ev = [_ev(e, "the runner initialised the GPU") for e in found]
        ev += [_ev(e, "offload line (not proof in this generation)") for e in rep if e.kind == "offload"][:1]
        return Placement("gpu", "devices", tuple(ev))
    loaded = [e for e in rep if e.kind == "backend_loaded"]
    systems = [e for e in rep if e.kind == "runner_system"]
    finished = systems or any(e.kind == "offload" for e in rep)
    gpu_seen = any(_d(e, "gpu") for e in loaded) or any(_d(e, "gpu_backends") for e in systems)
    if loaded and finished and not gpu_seen:
        return Placement("cpu", "devices", tuple(_ev(e, "the runner loaded only CPU backends") for e in loaded))
    offloads = [e for e in rep if e.kind == "offload"]
    if offloads and all(int(_d(e, "n", 0)) == 0 for e in offloads):
        return Placement("cpu", "devices", tuple(_ev(e, "no layer offloaded to the GPU") for e in offloads))
    return None


def _plan_placement(f: Facts, r: Runner) -> Placement | None:
    for e in reversed(r.plans + ([r.start] if r.start else [])):
        if e.kind == "offload_plan" and _d(e, "offload") is not None:
            n, m = int(_d(e, "offload")), _d(e, "model_layers")
            if n == 0:
                return Placement("cpu", "plan", (_ev(e, "the scheduler planned no GPU layers"),))
            if m is not None and 0 < n < int(m):
                return Placement("partial", "plan", (_ev(e, f"the scheduler could fit only {n} of {m} layers"),))
            return Placement("gpu", "plan", (_ev(e, "the scheduler planned the layers on the GPU (an estimate)"),))
        if e.kind == "load_request":
            gl = int(_d(e, "gpu_layers", 0))
            return Placement("gpu" if gl else "cpu", "plan", (_ev(e, f"the load request assigns {gl} GPU layers"),))
        if e.kind == "placement_plan":
            libs = [str(x) for x in _d(e, "libraries", ()) or ()]
            gpu = _d(e, "gpu")
            if gpu is None:
                gpu = any(x in GPU_LIBRARIES for x in libs) and bool(_d(e, "vram"))
            return Placement("gpu" if gpu else "cpu", "plan", (_ev(e, "the scheduler placed the model"),))
        if e.kind == "scheduler_selected":
            return Placement("gpu", "plan", (_ev(e, f"the scheduler chose {_d(e, 'library')} {_d(e, 'name')}"),))
        if e.kind == "runner_start":
            variant = str(_d(e, "variant") or "")
            if _d(e, "gpu_layers") == 0 or variant.startswith("cpu"):
                return Placement("cpu", "plan", (_ev(e, "the runner was started for the CPU"),))
            if variant.split("_")[0] in GPU_LIBRARIES:
                return Placement("gpu", "plan", (_ev(e, f"the {variant} runner was started"),))
    return None


def placement(f: Facts) -> Placement:
    """Where the last model load went, from the strongest kind of evidence the log holds."""
    for r in reversed(f.runners):
        for judge in (_report_placement, _device_placement, _plan_placement):
            p = judge(f, r)
            if p is not None:
                return p
    return Placement(None, "none")


def _best(problems: Iterable[Problem]) -> Problem | None:
    ranked = sorted(problems, key=lambda p: CAUSE_PRIORITY.index(p.cause) if p.cause in CAUSE_PRIORITY else 99)
    return ranked[0] if ranked else None


def _amd_problems(f: Facts) -> None:
    if f.gfx_override or any(_d(e, "library") == "rocm" for e in f.discovered):
        return
    known = ROCM_TARGETS.get(f.generation or "")
    if known is None and f.generation is None:
        known = frozenset().union(*ROCM_TARGETS.values())
    if known is None:
        return
    for e in f.amd_targets:
        targets = [str(t) for t in _d(e, "targets", ()) or ()]
        if targets and not any(t in known for t in targets):
            f.add_problem("unsupported_gpu_arch", e, "discovery")


def _crashed(f: Facts) -> Runner | None:
    """The last runner, if it failed and nothing started after it (a restart that worked is a finding, not a crash)."""
    last = f.runners[-1]
    fatal = [e for e in last.failures if e.kind != "runner_exited"]
    if fatal or (last.failures and last.ready is None):
        return last
    for r in f.runners[:-1]:
        if r.failures:
            f.finding("a runner failed earlier and a later one started (see lines "
                      + ", ".join(str(_d(e, "line")) for e in r.failures[:3]) + ")")
    return None


def _vulkan_over_cuda(f: Facts) -> list[Evidence]:
    cuda = [e for e in f.discovered if _d(e, "library") in ("cuda", "rocm")]
    chosen = [e for e in f.selected if _d(e, "library") == "vulkan"]
    if cuda and chosen:
        return [_ev(chosen[-1], "the scheduler chose a Vulkan device"), _ev(cuda[0], "although a CUDA/ROCm device "
                                                                                     "was discovered")]
    return []


def _cause_outcome(cause: str) -> str:
    return "cpu_expected" if cause in EXPECTED_CPU_CAUSES else "cpu_fallback"


def log_tier(f: Facts) -> Verdict:
    """The log-only rules (`explain`): runner reports beat scheduler plans; failures beat claims; silence is unknown.
    The GPUs of the last load that reported any are named per device (`devices`)."""
    v = _log_rules(f)
    r = next((r for r in reversed(f.runners) if r.reports), None)
    if r is None or v.outcome not in ("gpu", "partial_offload", "cpu_fallback", "crash"):
        return v
    return _named_devices(v, gpus_ev.build(log=r.reports, layers=r.layers))


def _named_devices(v: Verdict, uses: tuple[DeviceUse, ...]) -> Verdict:
    """The verdict with its GPUs; a partial offload names the GPUs that lacked room, fullest first."""
    uses = gpus_ev.with_room(uses, v.outcome == "partial_offload")
    notes = list(v.notes)
    full = gpus_ev.lacked_room(uses)
    if full:
        notes.append("partial offload: " + ", ".join(
            u.label + (f" ({u.free_mib} MiB free at load)" if u.free_mib is not None else "") for u in full)
            + " lacked room for the remaining layers")
    line = gpus_ev.summary(uses)
    if line and v.outcome in ("gpu", "partial_offload") and len([u for u in uses if u.state != "visible"]) > 1:
        notes.append(f"GPUs: {line}")
    return replace(v, devices=uses, notes=tuple(dict.fromkeys(notes)))


def _log_rules(f: Facts) -> Verdict:
    _amd_problems(f)
    base = {"generation": f.generation, "version": f.version, "tier": "log"}
    if f.version_unknown:
        f.note(f"Ollama {f.version} is newer than the generation tables: only the patterns common to every "
               "generation were used")
    elif f.generation is None:
        f.note("no Ollama version in the log and no generation-specific line: only common patterns were used")
    elif f.generation_from == "inferred":
        f.note(f"no version line; generation {f.generation} inferred from its own log lines")
    active = [p for p in f.problems if not p.superseded]
    place = placement(f)

    crashed = _crashed(f)
    if crashed is not None:
        causes = [p for p in f.problems if p.cause != "device_filter_hides_gpu"]
        causes += [Problem(str(_d(e, "cause")), e, "runner") for e in crashed.failures
                   if _d(e, "cause") not in (None, "unknown", "device_filter_hides_gpu")]
        best = _best(causes)
        ev = [_ev(e, "the runner failed") for e in crashed.failures[:4]]
        if best:
            ev.append(_ev(best.event, f"cause: {best.cause}"))
        return Verdict("crash", best.cause if best else "unknown", tuple(ev), tuple(f.notes), tuple(f.findings),
                       **base)

    if place.where == "partial":
        return Verdict("partial_offload", "insufficient_vram", place.evidence, tuple(f.notes), tuple(f.findings),
                       **base)
    if place.where == "gpu":
        vulkan = _vulkan_over_cuda(f)
        if vulkan:
            return Verdict("gpu", "vulkan_selected_over_cuda", place.evidence + tuple(vulkan), tuple(f.notes),
                           tuple(f.findings), **base)
        if place.level == "plan" and not f.discovered:
            f.note("only the scheduler's plan is in the log: it is an estimate, not proof of GPU use")
        ev = place.evidence + tuple(_ev(e, "GPU discovered") for e in f.discovered[:2])
        return Verdict("gpu", "none", ev, tuple(f.notes), tuple(f.findings), **base)

    runner_problems = [p for p in f.problems if p.stage == "runner"]
    best = _best(active + [p for p in runner_problems if p not in active])
    if place.where == "cpu" or (place.where is None and best is not None):
        if best is not None:
            ev = (_ev(best.event, f"cause: {best.cause}"), *place.evidence)
            return Verdict(_cause_outcome(best.cause), best.cause, ev, tuple(f.notes), tuple(f.findings), **base)
        if f.discovered:
            plan = [e for r in f.runners for e in r.plans if e.kind == "offload_plan" and _d(e, "offload") == 0]
            cause = "insufficient_vram" if plan and (_d(plan[-1], "requested") or -1) < 0 else "unknown"
            ev = place.evidence + tuple(_ev(e, "a GPU was discovered") for e in f.discovered[:2])
            return Verdict("cpu_fallback", cause, ev, tuple(f.notes), tuple(f.findings), **base)
        if f.no_gpu:
            ev = place.evidence + tuple(_ev(e, "no usable GPU") for e in f.no_gpu[:2])
            return Verdict("cpu_expected", "none", ev, tuple(f.notes), tuple(f.findings), **base)
        f.note("the model ran on the CPU but the log does not show GPU discovery: if this machine has no usable GPU, "
               "this is expected")
        return Verdict("cpu_fallback", "unknown", place.evidence, tuple(f.notes), tuple(f.findings), **base)

    if f.discovered:
        f.note("a GPU was discovered but no model load is in the log: load a model and look again")
        vulkan = _vulkan_over_cuda(f)
        ev = tuple(_ev(e, "GPU discovered") for e in f.discovered[:3]) + tuple(vulkan)
        return Verdict("gpu", "vulkan_selected_over_cuda" if vulkan else "none", ev, tuple(f.notes),
                       tuple(f.findings), **base)
    if f.no_gpu:
        ev = tuple(_ev(e, "no usable GPU") for e in f.no_gpu[:3])
        return Verdict("cpu_expected", "none", ev, tuple(f.notes), tuple(f.findings), **base)
    if f.verbosity is not None and f.verbosity < 4:
        f.note("llama-server at its default verbosity prints no device, offload or buffer line: rerun with -lv 4 "
               "(Ollama: OLLAMA_DEBUG=1) to see where the model runs")
    else:
        f.note("nothing in this log shows where the model runs (no discovery, load or runner lines)")
    return Verdict("unknown", "unknown", (), tuple(f.notes), tuple(f.findings), visible=False, **base)


# --- the live tier: two independent signals for `gpu`, a GPU seen by NVML or the shim for `cpu_fallback` -----------

# cuInit results (CUresult, cuda.h) → cause. 100 (no device) depends on who set the device filter: _no_device_cause.
CU_INIT_CAUSES: Final[Mapping[int, str]] = {
    34: "stub_library",  # CUDA_ERROR_STUB_LIBRARY: the toolkit's stubs/libcuda.so was loaded as libcuda.so.1
    35: "driver_too_old",  # CUDA_ERROR_INSUFFICIENT_DRIVER
    46: "permission_denied",  # CUDA_ERROR_DEVICE_UNAVAILABLE: exclusive-process compute mode, device taken
    500: "driver_container_incompat",  # CUDA_ERROR_NOT_FOUND at init: the container runtime's driver mismatch
    803: "driver_library_mismatch",  # CUDA_ERROR_SYSTEM_DRIVER_MISMATCH: kernel module and libcuda differ
    804: "driver_library_mismatch",  # CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE: forward-compat libcuda mismatch
    999: "uvm_not_loaded",  # CUDA_ERROR_UNKNOWN: nvidia_uvm missing or broken (reference: after suspend/resume)
}
# Context creation results beyond cuInit's.
CTX_CAUSES: Final[Mapping[int, str]] = {**CU_INIT_CAUSES, 2: "insufficient_vram"}  # CUDA_ERROR_OUT_OF_MEMORY
NO_DEVICE: Final = 100
# Strengths: "strong" (memory or kernels seen), "medium" (a device initialised, a report in the log), "weak" (libraries
# mapped: the CUDA backend loads even with zero devices, so it only corroborates), "silence" (nothing seen where
# something was due: never enough for a fallback on its own).
STRENGTHS: Final = ("strong", "medium", "weak", "silence")


@dataclass(frozen=True, slots=True)
class Signal:
    """What one source says about one subject: gpu, partial or cpu, how strongly, why, and a cause if it names one."""

    source: str
    says: str
    strength: str
    evidence: tuple[Evidence, ...]
    cause: str | None = None


def _lev(e: Event, says: str) -> Evidence:
    """Evidence from a live event (no log line): the event's kind and pid stand for the text."""
    if e.source == "log":
        return _ev(e, says)
    return Evidence(e.source, e.kind, None, f"{e.source} {e.kind} pid={e.pid}", says)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def _operator_value(f: Facts, key: str) -> str | None:
    """An operator variable (None: unset or not known): the supervisor's env or the server's shim hello first, then
    the log's `server config` line (where an empty value means unset)."""
    if key in f.live.operator_env:
        return f.live.operator_env[key]
    return f.env.get(key) or None


def _no_device_cause(f: Facts, p: Proc) -> str:
    """cuInit 100: the operator's filter hides every device (their choice), or a filter hides the GPU."""
    value = _operator_value(f, "CUDA_VISIBLE_DEVICES")
    if value is not None:
        return "operator_forced_cpu" if value.strip() in HIDE_ALL_VALUES or not value.strip() \
            else "device_filter_hides_gpu"
    if p.cvd is not None:
        return "device_filter_hides_gpu"  # Ollama's own filter for this runner
    return "unknown"


def _dlopen_superseded(p: Proc, failed: Event) -> bool:
    base = re.sub(r"\.so.*$", "", str(_d(failed, "name", "")).rsplit("/", 1)[-1])
    return any(base and base in str(_d(ok, "name", "")) for ok in p.dlopen_ok if ok.t >= failed.t) or \
        any(int(_d(c, "result", 1)) == 0 for c in p.cu_init)


def _shim_causes(f: Facts, p: Proc) -> list[tuple[str, Event, str]]:
    """(cause, event, what it says) for every CUDA failure the shim saw in this process."""
    out: list[tuple[str, Event, str]] = []
    for e in p.cu_init[-1:]:
        code = int(_d(e, "result", 0))
        if code == NO_DEVICE:
            out.append((_no_device_cause(f, p), e, "cuInit: no CUDA-capable device (100)"))
        elif code:
            out.append((CU_INIT_CAUSES.get(code, "unknown"), e, f"cuInit failed with {code}"))
    for e in p.dlopen_failed:
        if not _dlopen_superseded(p, e):
            cause = classify(str(_d(e, "error", "")), DLERROR_CAUSES, "backend_load_failed")
            out.append((cause, e, f"dlopen {_d(e, 'name')} failed: {str(_d(e, 'error', ''))[:160]}"))
    failed = [e for e in p.ctx if int(_d(e, "result", 0))]
    if failed and not any(int(_d(e, "result", 1)) == 0 for e in p.ctx):
        code = int(_d(failed[-1], "result", 0))
        out.append((CTX_CAUSES.get(code, "unknown"), failed[-1], f"context creation failed with {code}"))
    return out


def _shim_initialised(p: Proc) -> list[Evidence]:
    ok_init = any(int(_d(e, "result", 1)) == 0 for e in p.cu_init)
    ev = [_lev(e, f"CUDA context on device {_d(e, 'device')}") for e in p.ctx if int(_d(e, "result", 1)) == 0]
    if ok_init or not p.cu_init:
        ev += [_lev(e, f"CUDA device {_d(e, 'ordinal')} {_d(e, 'name') or ''}".rstrip()) for e in p.devices[:2]]
    return ev


def _shim_signal(f: Facts, p: Proc, settled: bool) -> Signal | None:
    if p.hello is None and not (p.cu_init or p.devices or p.ctx or p.dlopen_ok or p.dlopen_failed or p.snapshot):
        return None
    launches = p.total("launches", "kernel", "kernel_ex", "cooperative", "graph")
    held = p.total("mem", "alloc_bytes") - p.total("mem", "free_bytes")
    strong: list[Evidence] = []
    if launches and p.snapshot is not None:
        strong.append(_lev(p.snapshot, f"{launches} kernel launches"))
    if held > 0 and p.snapshot is not None:
        strong.append(_lev(p.snapshot, f"{_mib(held)} of device memory allocated"))
    if strong:
        return Signal("shim", "gpu", "strong", tuple(strong))
    initialised = _shim_initialised(p)
    if initialised:
        return Signal("shim", "gpu", "medium", tuple(initialised))
    causes = _shim_causes(f, p)
    if causes:
        cause = min((c for c, _, _ in causes), key=_rank)
        return Signal("shim", "cpu", "strong", tuple(_lev(e, says) for _, e, says in causes[:3]), cause)
    if settled and p.hello is not None:
        return Signal("shim", "cpu", "silence", (_lev(p.hello, "the shim saw no CUDA device, memory or kernel"),))
    return None


def _proc_signal(p: Proc, settled: bool) -> Signal | None:
    if p.libs is None or p.libs_event is None:
        return None
    if "libcuda" in p.libs and p.libs & {"ggml_cuda", "cudart", "cublas"}:
        return Signal("proc", "gpu", "weak", (_lev(p.libs_event, "libcuda and the CUDA backend are mapped"),))
    if settled and "libcuda" not in p.libs and "ggml_cpu" in p.libs:
        # only once settled: GGML loads its CPU backend first, so a scan between two dlopens sees it alone
        return Signal("proc", "cpu", "medium", (_lev(p.libs_event, "backends loaded, libcuda never mapped"),))
    if settled and "libcuda" not in p.libs:
        return Signal("proc", "cpu", "silence", (_lev(p.libs_event, "libcuda is not mapped"),))
    return None


def _nvml_signal(f: Facts, p: Proc, settled: bool) -> Signal | None:
    nvml = f.live.nvml
    if nvml is None or nvml.kind != "gpus":
        return None
    if p.nvml_listed is not None:
        return Signal("nvml", "gpu", "strong", (_lev(p.nvml_listed, f"NVML: pid {p.pid} holds "
                                                                     f"{_mib(p.nvml_bytes)} of GPU memory"),))
    if p.rise >= NVML_RISE_BYTES and p.rise_event is not None:
        if p.rise_shared:
            f.note(f"GPU memory rose by {_mib(p.rise)} while several runners were alive: not attributed")
        else:
            return Signal("nvml", "gpu", "strong", (_lev(p.rise_event, f"GPU memory rose by {_mib(p.rise)} while "
                                                                        "it was the only runner"),))
    late = p.nvml_last_seq > f.live.log_seq  # the latest sample came after the latest log line
    if settled and late and p.nvml_last_listed is False:
        return Signal("nvml", "cpu", "medium", (_lev(nvml, f"NVML lists no GPU memory for pid {p.pid}"),))
    if settled and late and p.baseline is not None and not p.rise_shared and p.nvml_last_listed is None:
        return Signal("nvml", "cpu", "silence", (_lev(nvml, f"GPU memory did not rise while pid {p.pid} ran"),))
    return None


def _runner_log(f: Facts, p: Proc) -> Runner | None:
    """The log's lines about this runner: the log's latest runner, only what came after the process appeared."""
    latest = f.runners[-1]
    if latest is p.log_runner:
        if len(latest.reports) <= p.log_reports and latest.ready is None:
            return None
        return replace(latest, reports=latest.reports[p.log_reports:])
    return latest


def _log_signal(f: Facts, r: Runner | None) -> Signal | None:
    if r is None:
        return None
    for judge_ in (_report_placement, _device_placement):
        place = judge_(f, r)
        if place is None or place.where is None:
            continue
        strength = "strong" if place.level == "report" else "medium"
        if place.where == "cpu":
            causes = [p.cause for p in f.problems if p.stage == "runner" or not p.superseded]
            return Signal("log", "cpu", strength, place.evidence, min(causes, key=_rank) if causes else None)
        return Signal("log", place.where, strength, place.evidence)
    return None


def _gpu_seen(f: Facts) -> list[Evidence]:
    """A usable GPU seen by NVML or the shim (DESIGN principle 2: the condition for `cpu_fallback`)."""
    nvml = f.live.nvml
    if nvml is not None and nvml.kind == "gpus" and _d(nvml, "gpus"):
        return [_lev(nvml, f"NVML sees {len(_d(nvml, 'gpus'))} GPU(s)")]
    for p in f.live.procs.values():
        seen = _shim_initialised(p)
        if seen:
            return seen[:1]
    return []


def _no_nvidia_here(f: Facts) -> bool:
    """The machine shows no NVIDIA GPU at all: no device node, no driver library anywhere, NVML unavailable (the
    supervisor's `machine` event). Then a CPU run is what the machine can do, whatever the log's loader errors."""
    m = f.live.machine
    if m is None:
        return False
    nvml = f.live.nvml
    return (not _d(m, "device_nodes") and not _d(m, "driver_dir") and not _d(m, "loader_path")
            and not (nvml is not None and nvml.kind == "gpus" and _d(nvml, "gpus")))


def _decide(f: Facts, subject: str, signals: list[Signal], base: Mapping[str, Any], stages: frozenset[str],
            degraded: str | None = None) -> Verdict:
    """Combine the signals: disagreement is said; `gpu` needs two sources; a fallback needs a GPU seen and an
    explicit negative (silence alone never restarts a server)."""
    pos = [s for s in signals if s.says in ("gpu", "partial")]
    neg = [s for s in signals if s.says == "cpu"]
    firm_pos = [s for s in pos if s.strength != "weak"]
    said = tuple(f"{s.source}:{s.says}" + ("" if s.strength in ("strong", "medium") else f"({s.strength})")
                 for s in signals)
    ev = tuple(e for s in signals for e in s.evidence)
    kw = {**base, "subject": subject, "signals": said, "tier": "live"}
    if not signals:
        f.note("no source has said anything about this yet")
        return Verdict("unknown", "unknown", (), tuple(f.notes), tuple(f.findings), visible=False, **kw)
    if firm_pos and neg:
        lines = tuple(f"{s.source} says {s.says}: " + "; ".join(e.says for e in s.evidence[:2]) for s in pos + neg)
        f.note("the sources disagree: " + " / ".join(lines))
        firm_sources = {s.source for s in firm_pos}  # a weak signal (libraries mapped) never outvotes a source
        if len(firm_sources) >= 2 and any(s.strength == "strong" for s in pos):
            outcome = "partial_offload" if any(s.says == "partial" for s in pos) else "gpu"
            cause = "insufficient_vram" if outcome == "partial_offload" else "none"
            return Verdict(outcome, cause, ev, tuple(f.notes), tuple(f.findings), disagreement=lines, **kw)
        return Verdict("unknown", "unknown", ev, tuple(f.notes), tuple(f.findings), disagreement=lines, **kw)
    if any(s.says == "partial" for s in pos):
        return Verdict("partial_offload", "insufficient_vram", ev, tuple(f.notes), tuple(f.findings), **kw)
    if len({s.source for s in pos}) >= 2 and firm_pos:
        return Verdict("gpu", degraded or "none", ev, tuple(f.notes), tuple(f.findings), **kw)
    if pos and not neg:
        f.note(f"only {pos[0].source} shows GPU use: a gpu verdict needs a second, independent signal")
        return Verdict("unknown", "unknown", ev, tuple(f.notes), tuple(f.findings), **kw)
    return _decide_cpu(f, neg, ev, kw, stages)


def _rank(cause: str) -> int:
    return CAUSE_PRIORITY.index(cause) if cause in CAUSE_PRIORITY else len(CAUSE_PRIORITY)


def _decide_cpu(f: Facts, neg: list[Signal], ev: tuple[Evidence, ...], kw: Mapping[str, Any],
                stages: frozenset[str]) -> Verdict:
    explicit = [s for s in neg if s.strength != "silence"]
    candidates = [s.cause for s in neg if s.cause]
    candidates += [p.cause for p in f.problems if p.stage in stages and (not p.superseded or p.stage == "runner")]
    cause = min(candidates, key=_rank) if candidates else "unknown"
    seen = _gpu_seen(f)
    if cause in EXPECTED_CPU_CAUSES and cause != "none":
        return Verdict("cpu_expected", cause, ev, tuple(f.notes), tuple(f.findings), **kw)
    if not seen:
        if cause in ("none", "unknown") and explicit:
            f.note("neither NVML nor the shim saw a usable GPU")
            return Verdict("cpu_expected", "none", ev, tuple(f.notes), tuple(f.findings), **kw)
        if _no_nvidia_here(f):
            f.note(f"no NVIDIA device node, driver library or NVML on this machine: {cause} only says that the "
                   "GPU backend cannot run here")
            return Verdict("cpu_expected", "none", ev, tuple(f.notes), tuple(f.findings), **kw)
        f.note(f"no usable GPU seen by NVML or the shim, so this is not called a fallback; if a GPU is there, "
               f"the cause is {cause}")
        return Verdict("unknown", cause, ev, tuple(f.notes), tuple(f.findings), **kw)
    if not explicit:
        f.note("no source shows GPU use, but none shows a failure either: not called a fallback")
        return Verdict("unknown", cause if cause != "none" else "unknown", ev + tuple(seen), tuple(f.notes),
                       tuple(f.findings), **kw)
    return Verdict("cpu_fallback", cause, ev + tuple(seen), tuple(f.notes), tuple(f.findings), **kw)


RUNNER_STAGES: Final = frozenset({"runner", "discovery", "config", "install"})
DISCOVERY_STAGES: Final = frozenset({"discovery", "config", "install"})


def _base(f: Facts) -> dict[str, Any]:
    return {"generation": f.generation, "version": f.version}


def _settled(p: Proc, log_signal: Signal | None, r: Runner | None) -> bool:
    """The runner is past the point where GPU use shows: it ended, or the log reported its load."""
    return p.ended is not None or log_signal is not None or (r is not None and r.ready is not None)


def _latest_model(f: Facts) -> Proc | None:
    models = [p for p in f.live.procs.values() if p.cls in MODEL_CLASSES]
    return max(models, key=lambda p: p.seq) if models else None


def _operator(f: Facts) -> dict[str, str | None]:
    return {k: _operator_value(f, k) for k in (*FILTER_VARS, *SCHEDULER_VARS, devices.ORDER_VAR)}


def runner_verdict(f: Facts, p: Proc) -> Verdict:
    """One model runner, with the GPUs it used (layers, weights, NVML memory per GPU) and those hidden from it."""
    latest = _latest_model(f) is p
    r = _runner_log(f, p) if latest else None
    v = _runner_signals(f, p)
    uses = gpus_ev.build(shim=p.devices, log=r.reports if r is not None else (), layers=r.layers if r else None,
                         gpus=gpus_ev.nvml_gpus(f.live.nvml), held=p.held, process_cvd=p.cvd, operator=_operator(f))
    return _named_devices(v, uses)


def _runner_signals(f: Facts, p: Proc) -> Verdict:
    """One model runner: log (if it is the latest runner), shim, /proc and NVML signals combined."""
    latest = _latest_model(f) is p
    r = _runner_log(f, p) if latest else None
    log_sig = _log_signal(f, r)
    settled = _settled(p, log_sig, r)
    signals = [s for s in (log_sig, _shim_signal(f, p, settled), _proc_signal(p, settled),
                           _nvml_signal(f, p, settled)) if s is not None]
    subject = f"runner {p.pid}"
    if latest and f.runners[-1].failures and log_tier(f.snapshot()).outcome == "crash":
        crash = log_tier(f.snapshot())
        return replace(crash, tier="live", subject=subject, signals=tuple(f"{s.source}:{s.says}" for s in signals))
    degraded = "vulkan_selected_over_cuda" if latest and _vulkan_over_cuda(f) else None
    if not latest:
        f.note("log lines carry no pid: they are attributed to the newest model runner only")
    return _decide(f, subject, signals, _base(f), RUNNER_STAGES, degraded)


def _log_discovery_signal(f: Facts) -> tuple[Signal | None, bool]:
    """(what the log says of discovery, whether only Vulkan found a GPU)."""
    if f.discovered:
        libraries = {str(_d(e, "library", "")) for e in f.discovered}
        vulkan_only = bool(libraries) and libraries <= {"vulkan"}
        ev = tuple(_ev(e, f"Ollama discovered {_d(e, 'library') or 'a GPU'} {_d(e, 'name') or ''}".rstrip())
                   for e in f.discovered[:3])
        return Signal("log", "gpu", "medium", ev), vulkan_only
    active = [p for p in f.problems if not p.superseded and p.stage in DISCOVERY_STAGES]
    # A filter that names devices is set, not failing: it explains a CPU result, it is no evidence of one (on a
    # machine of several GPUs it is the operator picking some). Alone, it says nothing until discovery reports.
    if f.no_gpu or any(not _names_devices(p) for p in active):
        ev = tuple(_ev(e, "Ollama found no usable GPU") for e in f.no_gpu[:2])
        ev += tuple(_ev(p.event, f"cause: {p.cause}") for p in active[:2])
        cause = min((p.cause for p in active), key=_rank) if active else None
        return Signal("log", "cpu", "strong", ev, cause), False
    return None, False


def _names_devices(p: Problem) -> bool:
    """A device filter seen in the configuration (not one forcing the CPU)."""
    return p.stage == "config" and p.cause == "device_filter_hides_gpu"


def _nvml_discovery_signal(f: Facts) -> Signal | None:
    nvml = f.live.nvml
    if nvml is None or nvml.kind != "gpus" or not _d(nvml, "gpus"):
        return None
    gpus = [g for g in _d(nvml, "gpus") if isinstance(g, Mapping)]
    names = {str(g.get(k)) for g in gpus for k in ("uuid", "name") if g.get(k)}
    buses = {str(g.get("pci_bus_id", "")).lower()[-12:] for g in gpus if g.get("pci_bus_id")}
    for e in f.discovered:
        if str(_d(e, "id", "")) in names or str(_d(e, "name", "")) in names or \
                (_d(e, "pci_id") and str(_d(e, "pci_id")).lower()[-12:] in buses):
            return Signal("nvml", "gpu", "medium", (_lev(nvml, f"NVML sees the same GPU ({_d(e, 'name')})"),))
    return Signal("nvml", "gpu", "weak", (_lev(nvml, f"NVML sees {len(gpus)} GPU(s)"),))


def discovery_verdict(f: Facts) -> Verdict:
    """The server's GPU discovery: the log's `inference compute`, CUDA in the discovery processes (the server itself
    in generations A/B), their libraries, and NVML's GPUs."""
    log_sig, vulkan_only = _log_discovery_signal(f)
    procs = [p for p in f.live.procs.values() if p.cls in DISCOVERY_CLASSES]
    shim = [s for s in (_shim_signal(f, p, settled=False) for p in procs) if s is not None]
    shim_pos = [s for s in shim if s.says == "gpu"]
    shim_sig = shim_pos[0] if shim_pos else (min(shim, key=lambda s: _rank(s.cause or "unknown")) if shim else None)
    libs = [s for s in (_proc_signal(p, settled=False) for p in procs) if s is not None and s.says == "gpu"]
    signals = [s for s in (log_sig, shim_sig, libs[0] if libs else None, _nvml_discovery_signal(f)) if s is not None]
    degraded = "vulkan_selected_over_cuda" if _vulkan_over_cuda(f) else None
    if vulkan_only and _gpu_seen(f):
        cuda_failures = [s.cause for s in shim if s.says == "cpu" and s.cause]
        cuda_failures += [p.cause for p in f.problems if p.stage in DISCOVERY_STAGES]
        degraded = min(cuda_failures, key=_rank) if cuda_failures else "unknown"
        f.note("the NVIDIA GPU is used through Vulkan because CUDA did not discover it")
        signals = [s for s in signals if not (s.source == "shim" and s.says == "cpu")]
    v = _decide(f, "discovery", signals, _base(f), DISCOVERY_STAGES, degraded)
    view = _operator_view(f)
    uses = gpus_ev.build(shim=view, log=f.discovered, gpus=gpus_ev.nvml_gpus(f.live.nvml),
                         process_cvd=_operator_value(f, CVD), operator=_operator(f), discovery=True)
    return _filter_reading(f, replace(v, devices=uses))


CVD: Final = "CUDA_VISIBLE_DEVICES"


def _operator_view(f: Facts) -> list[Event]:
    """Shim `device` events of the discovery processes that ran under the operator's own CUDA_VISIBLE_DEVICES."""
    op = _operator_value(f, CVD)
    return [e for p in f.live.procs.values() if p.cls in DISCOVERY_CLASSES and p.hello is not None and p.cvd == op
            for e in p.devices]


def cuda_saw(f: Facts) -> tuple[str, ...] | None:
    """UUIDs CUDA showed under the operator's filter, by ordinal: only when the shim saw every ordinal from 0 and the
    log discovered as many CUDA GPUs (otherwise a partial enumeration could pass for a stale filter entry)."""
    by_ordinal: dict[int, str] = {}
    for e in _operator_view(f):
        if isinstance(_d(e, "ordinal"), int) and _d(e, "uuid"):
            by_ordinal.setdefault(int(_d(e, "ordinal")), str(_d(e, "uuid")))
    found = sum(1 for e in f.discovered if _d(e, "library") == "cuda")
    if not by_ordinal or sorted(by_ordinal) != list(range(len(by_ordinal))) or found != len(by_ordinal):
        return None
    return tuple(by_ordinal[i] for i in range(len(by_ordinal)))


def _filter_reading(f: Facts, v: Verdict) -> Verdict:
    """The operator's CUDA_VISIBLE_DEVICES read in UUIDs: a filter that names only GPUs that exist is the operator's
    choice; one whose stale entry makes CUDA ignore GPUs listed after it is a degraded GPU path."""
    value = _operator_value(f, CVD)
    if not value or value.strip() in HIDE_ALL_VALUES or v.outcome != "gpu":
        return v
    gpus = gpus_ev.nvml_gpus(f.live.nvml)
    reading = devices.read_filter(value, gpus, _operator(f), cuda_saw=cuda_saw(f))
    notes = [*v.notes, *reading.notes]
    who = gpus_ev.who_hid(value, _operator(f))
    if reading.cuts_off and v.cause == "none":
        notes.append(f"GPUs listed in {CVD} are hidden by a stale entry before them ({who})")
        return replace(v, cause="device_filter_hides_gpu", notes=tuple(notes))
    if not reading.stale:
        notes.append(f"{who}: CUDA shows only the GPUs it names; that is the operator's choice, not a fallback")
    return replace(v, notes=tuple(dict.fromkeys(notes)))


@dataclass(frozen=True, slots=True)
class LiveVerdicts:
    """The live tier's answer: the server's discovery and each model runner, keyed by (pid, start time)."""

    discovery: Verdict
    runners: Mapping[tuple[int, int | None], Verdict]
    cuda_discovered: bool = False  # CUDA itself found a GPU (log or shim): for RemedyContext.cuda_discovered
    gpus: tuple[devices.Gpu, ...] | None = None  # NVML's GPUs: for RemedyContext.gpus
    cuda_saw: tuple[str, ...] | None = None  # UUIDs CUDA showed under the operator's filter: RemedyContext.cuda_saw

    def latest(self) -> Verdict:
        """The newest model runner's verdict, or discovery's when no model runner was seen."""
        return list(self.runners.values())[-1] if self.runners else self.discovery


def _after_discovery(runner: Verdict, discovery: Verdict) -> Verdict:
    """A runner on the CPU with no cause of its own ran there because discovery found no usable GPU: it carries
    discovery's outcome and cause (the fix is the same), not a reassuring `cpu_expected`."""
    inherits = discovery.cause not in ("none", "unknown") and discovery.outcome in ("unknown", "cpu_fallback")
    own = runner.cause not in ("none", "unknown")
    if not inherits or own or runner.outcome not in ("cpu_expected", "unknown", "cpu_fallback"):
        return runner
    note = f"the runner had no GPU to use: discovery found {discovery.outcome} ({discovery.cause})"
    return replace(runner, outcome=discovery.outcome, cause=discovery.cause, notes=(*runner.notes, note))


def live_verdicts(f: Facts) -> LiveVerdicts:
    """Verdicts for discovery and every model runner (each on its own copy of the facts' notes)."""
    discovery = discovery_verdict(f.snapshot())
    runners = {}
    for p in sorted((p for p in f.live.procs.values() if p.cls in MODEL_CLASSES), key=lambda p: p.seq):
        runners[p.key] = _after_discovery(runner_verdict(f.snapshot(), p), discovery)
    return LiveVerdicts(discovery, runners, cuda_discovered(f), gpus_ev.nvml_gpus(f.live.nvml), cuda_saw(f))


def cuda_discovered(f: Facts) -> bool:
    """CUDA found a GPU: a CUDA `inference compute`/device line in the log, or a device the shim saw initialised."""
    return any(_d(e, "library") == "cuda" for e in f.discovered) or \
        any(_shim_initialised(p) for p in f.live.procs.values())


def _has_live(f: Facts) -> bool:
    return bool(f.sources & {"shim", "proc", "nvml"})


def live_tier(f: Facts) -> Verdict:
    """The single verdict `explain` and `judge` return when live sources are present: the newest runner's."""
    return live_verdicts(f).latest()


# Tiers, most demanding first: a tier decides when the sources it needs are present. With shim, /proc or NVML events
# the live tier decides (`serve`, replays of its recordings); `explain` has only logs, so the log tier decides.
Tier = tuple[str, Callable[[Facts], bool], Callable[[Facts], Verdict]]
TIERS: Final[tuple[Tier, ...]] = (("live", _has_live, live_tier), ("log", lambda f: True, log_tier))


class Board:
    """Accumulates events from every source and answers with a verdict; feeding the same events gives the same one."""

    def __init__(self) -> None:
        self.facts = Facts()
        self.ignored = 0
        self.starts = 0

    def add(self, event: Event) -> None:
        """Take one event; kinds no handler knows are counted, never an error. Each `ollama_started` after the first
        begins a fresh set of facts: verdicts are about the Ollama that runs now (a restart re-verifies)."""
        if event.source == "supervisor" and event.kind == "ollama_started":
            self.starts += 1
            if self.starts > 1:  # machine facts outlive a restart of Ollama
                machine, nvml = self.facts.live.machine, self.facts.live.nvml
                self.facts = Facts()
                self.facts.live.machine, self.facts.live.nvml = machine, nvml
        live = self.facts.live
        live.seq += 1
        if event.source == "log":
            live.log_seq = live.seq
        self.facts.sources.add(event.source)
        handler = HANDLERS.get((event.source, event.kind))
        if handler is None:
            self.ignored += 1
            return
        handler(self.facts, event)

    def verdict(self) -> Verdict:
        """The verdict of the first tier whose sources are present."""
        for _name, applies, decide in TIERS:
            if applies(self.facts):
                return decide(self.facts.snapshot())
        return Verdict("unknown", "unknown", visible=False)

    def live(self) -> LiveVerdicts:
        """Discovery's verdict and each model runner's, by (pid, start time) in start order (for `serve`/`status`)."""
        return live_verdicts(self.facts)


def judge(events: Iterable[Event]) -> Verdict:
    """The verdict of an event stream (pure: the same events always give the same verdict)."""
    board = Board()
    for event in events:
        board.add(event)
    return board.verdict()
