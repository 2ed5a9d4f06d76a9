"""The log tier: where the last model load went, and the log-only verdict (`explain`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from launcher import device_evidence as gpus_ev
from launcher.device_evidence import DeviceUse
from launcher.events import Event
from launcher.evidence.deciders import deciding_lines
from launcher.evidence.facts import (
    CAUSE_PRIORITY,
    EXPECTED_CPU_CAUSES,
    GPU_LIBRARIES,
    Evidence,
    Facts,
    Problem,
    Ruling,
    Runner,
    Verdict,
    _d,
    _ev,
    event_cause,
    settle,
)
from launcher.evidence.log_facts import _below_minimum
from launcher.generations import LIBRARY_DIRS, OFFLOAD_LINE_TRUSTED, ROCM_TARGETS

# --- the log tier: rules over the facts ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Placement:
    """Where the last model load's weights went, how sure we are, and the events that say so."""

    where: str | None  # "gpu", "partial", "cpu" or None when the log does not show it
    level: str  # "report" (runner output), "devices", "plan" (server intent), "none"
    evidence: tuple[Evidence, ...] = ()


def _device_weights(rep: list[Event]) -> bool:
    """Whether the runner put model weights in device memory (`CUDA0 model buffer size = 3627.97 MiB`, `Metal buffer
    size = …`): a buffer is an allocation the backend made, so its GPU initialised."""
    return any(e.kind == "buffer" and _d(e, "what") == "model" and _d(e, "gpu") and float(_d(e, "mib") or 0) > 0
               for e in rep)


def _trusted(f: Facts, e: Event, rep: list[Event]) -> bool:
    """Whether an `offloaded N/M layers to GPU` line proves placement. In generations 0 and A (and in a log whose
    generation is unknown, for the `llm_load_tensors:` form those print) the line is printed even after CUDA init
    failed (reference A.5); the same runner's weights in device memory rule that out, so the count stands."""
    if OFFLOAD_LINE_TRUSTED.get(f.generation or ""):
        return True
    if f.generation not in OFFLOAD_LINE_TRUSTED and _d(e, "form") != "llm_load_tensors":
        return True
    return _device_weights(rep)


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
        if not _trusted(f, e, rep):
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
    gpu_loaded = [e for e in loaded if _d(e, "gpu")]
    devices = [e for e in rep if e.kind == "device"]
    if gpu_loaded and systems and devices and not any(e.kind == "runner_no_gpu" for e in rep):
        # a GPU backend loaded (`load_backend: loaded Vulkan backend from …`), its device enumerated (`ggml_vulkan:
        # 0 = …`) and the runner finished registering backends (`system`): the runner has that GPU, as with CUDA's
        # `found N CUDA devices` above (Vulkan's `Found N Vulkan devices` is often cut from a paste)
        return Placement("gpu", "devices", (_ev(gpu_loaded[-1], f"the runner loaded its "
                                                                f"{_d(gpu_loaded[-1], 'backend')} backend"),
                                            _ev(devices[0], "and enumerated its GPU")))
    planned = _gpu_plan(r)
    if systems and planned is not None and not gpu_seen and _d(planned, "library") in ("cuda", "rocm"):
        # ggml's `system` line names every backend the runner registered (CUDA.0.ARCHS=…, ROCm.0.…): none for the
        # library the scheduler planned the layers on means the runner had no such backend to load
        return Placement("cpu", "devices", (_ev(systems[-1], "the runner registered no GPU backend"),
                                            _ev(planned, f"although the scheduler planned layers on "
                                                         f"{_d(planned, 'library')}")))
    offloads = [e for e in rep if e.kind == "offload"]
    if offloads and all(int(_d(e, "n", 0)) == 0 for e in offloads):
        return Placement("cpu", "devices", tuple(_ev(e, "no layer offloaded to the GPU") for e in offloads))
    return None


def _gpu_plan(r: Runner) -> Event | None:
    """The runner's last offload plan when it put layers on a GPU library, else None."""
    plans = [e for e in r.plans if e.kind == "offload_plan" and _d(e, "offload") is not None]
    if plans and int(_d(plans[-1], "offload")) > 0 and _d(plans[-1], "library") in GPU_LIBRARIES:
        return plans[-1]
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
    # An offload line that is not proof (above) still prints the layer count the server asked for, which Ollama sized
    # to the VRAM it found: fewer than all is the scheduler's own "does not fit", as good as an offload plan. (All of
    # them is no such evidence: after a failed CUDA init the line says all, too.)
    for e in reversed(r.reports):
        if e.kind == "offload" and 0 < int(_d(e, "n", 0)) < int(_d(e, "m", 0)):
            return Placement("partial", "plan", (_ev(e, f"the runner was asked for only {_d(e, 'n')} of "
                                                         f"{_d(e, 'm')} layers (an estimate of what fits)"),))
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


def _amd_problems(f: Facts) -> list[Problem]:
    """AMD GPUs whose gfx targets the generation's ROCm does not ship (unless the operator overrode the check)."""
    if f.gfx_override or any(_d(e, "library") == "rocm" for e in f.discovered):
        return []
    known = ROCM_TARGETS.get(f.generation or "")
    if known is None and f.generation is None:
        known = frozenset().union(*ROCM_TARGETS.values())
    if known is None:
        return []
    out = []
    for e in f.amd_targets:
        targets = [str(t) for t in _d(e, "targets", ()) or ()]
        if targets and not any(t in known for t in targets):
            out.append(Problem("unsupported_gpu_arch", e, "discovery"))
    return out


def _library_problems(f: Facts) -> list[Problem]:
    """OLLAMA_LLM_LIBRARY naming no library directory of a generation whose discovery filters by it: every GPU
    library is skipped (`cpu…` is the operator's own CPU choice, read with the server config)."""
    dirs = LIBRARY_DIRS.get(f.generation or "")
    library = f.env.get("OLLAMA_LLM_LIBRARY", "")
    if dirs is None or f.env_event is None or not library or library.startswith("cpu") or library in dirs:
        return []
    return [Problem("forced_cpu_library", f.env_event, "config")]


def _crashed(f: Facts) -> tuple[Runner | None, tuple[str, ...]]:
    """The last runner, if it failed and nothing started after it (a restart that worked is a finding, not a crash),
    and the findings about earlier runners that failed."""
    last = f.runners[-1]
    fatal = [e for e in last.failures if e.kind != "runner_exited"]
    if fatal or (last.failures and last.ready is None):
        return last, ()
    found = tuple("a runner failed earlier and a later one started (see lines "
                  + ", ".join(str(_d(e, "line")) for e in r.failures[:3]) + ")" for r in f.runners[:-1] if r.failures)
    return None, found


def _vulkan_over_cuda(f: Facts) -> list[Evidence]:
    cuda = [e for e in f.discovered if _d(e, "library") in ("cuda", "rocm")]
    chosen = [e for e in f.selected if _d(e, "library") == "vulkan"]
    if cuda and chosen:
        return [_ev(chosen[-1], "the scheduler chose a Vulkan device"), _ev(cuda[0], "although a CUDA/ROCm device "
                                                                                     "was discovered")]
    return []


def _runner_without_gpu(r: Runner) -> bool:
    """The runner started was a CPU build (`runners/cpu_avx2/…`) or registered no GPU backend (its `system` line)."""
    if r.start is not None and str(_d(r.start, "variant") or "").startswith("cpu"):
        return True
    systems = [e for e in r.reports if e.kind == "runner_system"]
    loaded = any(e.kind == "backend_loaded" and _d(e, "gpu") for e in r.reports)
    return bool(systems) and not loaded and not any(_d(e, "gpu_backends") for e in systems)


def _cause_outcome(cause: str) -> str:
    return "cpu_expected" if cause in EXPECTED_CPU_CAUSES else "cpu_fallback"


def log_tier(f: Facts) -> Verdict:
    """The log-only rules (`explain`): runner reports beat scheduler plans; failures beat claims; silence is unknown.
    The GPUs of the last load that reported any are named per device (`devices`); an undecided cause says what would
    decide it. Pure: the facts are read, never changed."""
    v = settle(f, _log_rules(f))
    v = replace(v, notes=tuple(dict.fromkeys((*v.notes, *deciding_lines(f, v)))))
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


def _log_rules(f: Facts) -> Ruling:
    """The verdict and the rules' own notes (the facts' notes are added by `settle`)."""
    notes: list[str] = []
    problems = [*f.problems, *_amd_problems(f), *_library_problems(f)]
    crashed, earlier = _crashed(f)
    findings = (*f.findings, *earlier)

    def ruling(outcome: str, cause: str, evidence: Iterable[Evidence], visible: bool = True) -> Ruling:
        v = Verdict(outcome, cause, tuple(evidence), (), findings, visible=visible, generation=f.generation,
                    version=f.version, tier="log")
        return v, tuple(notes)

    basis = f" ({f.generation_basis})" if f.generation_basis else ""
    if f.version_unknown and f.generation_from == "inferred":
        notes.append(f"Ollama {f.version} is newer than the generation tables; generation {f.generation} inferred "
                     f"from the shapes of its lines{basis}")
    elif f.version_unknown:
        notes.append(f"Ollama {f.version} is newer than the generation tables and its lines show no generation: "
                     "only the patterns common to every generation were used")
    elif f.generation is None:
        notes.append("no Ollama version in the log and no line that shows the generation: only common patterns "
                     "were used")
    elif f.generation_from == "inferred":
        notes.append(f"no version line; generation {f.generation} inferred from the shapes of its lines{basis}")
    active = [p for p in problems if not p.superseded]
    place = placement(f)

    if crashed is not None:
        causes = [p for p in problems if p.cause != "device_filter_hides_gpu"]
        causes += [Problem(event_cause(e), e, "runner") for e in crashed.failures
                   if event_cause(e) not in ("unknown", "device_filter_hides_gpu")]
        best = _best(causes)
        failed = [_ev(e, "the runner failed") for e in crashed.failures[:4]]
        if best:
            failed.append(_ev(best.event, f"cause: {best.cause}"))
        return ruling("crash", best.cause if best else "unknown", failed)

    if place.where == "partial":
        return ruling("partial_offload", "insufficient_vram", place.evidence)
    if place.where == "gpu":
        vulkan = _vulkan_over_cuda(f)
        if vulkan:
            return ruling("gpu", "vulkan_selected_over_cuda", place.evidence + tuple(vulkan))
        if place.level == "plan" and not f.discovered:
            notes.append("only the scheduler's plan is in the log: it is an estimate, not proof of GPU use")
        return ruling("gpu", "none", place.evidence + tuple(_ev(e, "GPU discovered") for e in f.discovered[:2]))

    runner_problems = [p for p in problems if p.stage == "runner"]
    best = _best(active + [p for p in runner_problems if p not in active])
    if place.where == "cpu" or (place.where is None and best is not None):
        if best is not None:
            return ruling(_cause_outcome(best.cause), best.cause,
                          (_ev(best.event, f"cause: {best.cause}"), *place.evidence))
        planned = _gpu_plan(f.runners[-1]) if f.runners else None
        if planned is not None and _runner_without_gpu(f.runners[-1]):
            # the scheduler put layers on a GPU (so it found one) and the runner that ran had no GPU backend: the
            # build or install lacks the GPU runner/library for it
            return ruling("cpu_fallback", "missing_gpu_runners", (
                *place.evidence, _ev(planned, f"the scheduler planned {_d(planned, 'offload')} layers on "
                                              f"{_d(planned, 'library')}")))
        plan = [e for r in f.runners for e in r.plans if e.kind == "offload_plan" and _d(e, "offload") == 0]
        requested = _d(plan[-1], "requested") if plan else None
        sized = bool(plan) and (requested is None or int(requested) < 0)  # 0 is num_gpu=0: the operator's choice
        if f.discovered:
            return ruling("cpu_fallback", "insufficient_vram" if sized else "unknown",
                          place.evidence + tuple(_ev(e, "a GPU was discovered") for e in f.discovered[:2]))
        if sized and _d(plan[-1], "library") in GPU_LIBRARIES:
            # `msg=offload library=cuda … layers.offload=0` with no layer count asked for: the scheduler had a GPU
            # (it names its library and memory) and found that not one layer fits in it
            return ruling("cpu_fallback", "insufficient_vram", (
                *place.evidence, _ev(plan[-1], f"the scheduler fitted no layer on the {_d(plan[-1], 'library')} GPU")))
        if f.no_gpu:
            return ruling("cpu_expected", "none", place.evidence + tuple(_ev(e, "no usable GPU") for e in f.no_gpu[:2]))
        notes.append("the model ran on the CPU but the log does not show GPU discovery: if this machine has no usable "
                     "GPU, this is expected")
        return ruling("cpu_fallback", "unknown", place.evidence)

    if f.discovered:
        notes.append("a GPU was discovered but no model load is in the log: load a model and look again")
        vulkan = _vulkan_over_cuda(f)
        return ruling("gpu", "vulkan_selected_over_cuda" if vulkan else "none",
                      tuple(_ev(e, "GPU discovered") for e in f.discovered[:3]) + tuple(vulkan))
    if f.no_gpu:
        return ruling("cpu_expected", "none", (_ev(e, "no usable GPU") for e in f.no_gpu[:3]))
    if f.verbosity is not None and f.verbosity < 4:
        notes.append("llama-server at its default verbosity prints no device, offload or buffer line: rerun with "
                     "-lv 4 (Ollama: OLLAMA_DEBUG=1) to see where the model runs")
    else:
        notes.append("nothing in this log shows where the model runs (no discovery, load or runner lines)")
    return ruling("unknown", "unknown", (), visible=False)
