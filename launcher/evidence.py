"""The evidence board: a pure function from an Event stream to a verdict, its cause and the lines that prove it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from launcher.events import Event
from launcher.log_patterns import MIN_COMPUTE, OFFLOAD_LINE_TRUSTED, ROCM_TARGETS
from launcher.vocabulary import CAUSES, OUTCOMES

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
# Device filters: a value that hides every device is the operator choosing CPU (DESIGN.md principle 3).
FILTER_VARS: Final = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")
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
                "generation": self.generation, "version": self.version, "tier": self.tier}


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


HANDLERS: Final[Mapping[tuple[str, str], Handler]] = {
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
    """The log-only rules (`explain`): runner reports beat scheduler plans; failures beat claims; silence is unknown."""
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


# Tiers, most demanding first: a tier decides when the sources it needs are present. Live tiers (shim, NVML, /proc)
# are added here by the issues that build those sources; `explain` has only logs, so the log tier decides.
Tier = tuple[str, Callable[[Facts], bool], Callable[[Facts], Verdict]]
TIERS: Final[tuple[Tier, ...]] = (("log", lambda f: True, log_tier),)


class Board:
    """Accumulates events from every source and answers with a verdict; feeding the same events gives the same one."""

    def __init__(self) -> None:
        self.facts = Facts()
        self.ignored = 0

    def add(self, event: Event) -> None:
        """Take one event; kinds no handler knows are counted, never an error."""
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


def judge(events: Iterable[Event]) -> Verdict:
    """The verdict of an event stream (pure: the same events always give the same verdict)."""
    board = Board()
    for event in events:
        board.add(event)
    return board.verdict()
