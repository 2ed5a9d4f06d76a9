"""The live tier: verdicts for discovery and each model runner, and the reading of the device filter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from launcher import device_evidence as gpus_ev
from launcher import devices, error_codes
from launcher.events import Event
from launcher.evidence.decide import _decide, _gpu_seen
from launcher.evidence.facts import HIDE_ALL_VALUES, Facts, Problem, Proc, Runner, Signal, Verdict, _d, _ev, _lev, _rank
from launcher.evidence.live_facts import DISCOVERY_CLASSES, MODEL_CLASSES, NVML_RISE_BYTES
from launcher.evidence.log_tier import _named_devices, _vulkan_over_cuda, log_tier
from launcher.evidence.signals import (
    _log_signal,
    _mib,
    _nvml_signal,
    _operator_value,
    _proc_signal,
    _runner_log,
    _shim_initialised,
    _shim_signal,
)
from launcher.vocabulary import FILTER_VARS, SCHEDULER_VARS

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
    if latest and f.runners[-1].failures and log_tier(f).outcome == "crash":
        crash = log_tier(f)
        return replace(crash, tier="live", subject=subject, signals=tuple(f"{s.source}:{s.says}" for s in signals))
    degraded = "vulkan_selected_over_cuda" if latest and _vulkan_over_cuda(f) else None
    notes = [] if latest else ["log lines carry no pid: they are attributed to the newest model runner only"]
    notes += _cuda_error_notes(p)
    nvml_gpus = f.live.nvml is not None and f.live.nvml.kind == "gpus"
    if nvml_gpus and p.nvml_listed is None and p.rise >= NVML_RISE_BYTES and p.rise_event is not None \
            and p.rise_shared:
        notes.append(f"GPU memory rose by {_mib(p.rise)} while several runners were alive: not attributed")
    return _decide(f, subject, signals, _base(f), RUNNER_STAGES, degraded, notes)


def _cuda_error_notes(p: Proc) -> list[str]:
    """The driver errors the shim saw in this runner whose code names a cause (a GPU lost, a container's device
    access revoked mid-run), each function once: said beside the verdict, which rests on the signals."""
    out: dict[str, str] = {}
    for e in p.cuda_errors:
        code = _d(e, "code")
        row = error_codes.lookup("cu", code) if isinstance(code, int) else None
        if row is not None and row.cause is not None:
            out[str(_d(e, "fn"))] = (f"the shim saw {_d(e, 'fn')} fail with {row.code} ({row.name}: {row.text}), "
                                     f"{_d(e, 'count', 1)} time(s): {row.cause}")
    return list(out.values())


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
    notes: list[str] = []
    if vulkan_only and _gpu_seen(f):
        cuda_failures = [s.cause for s in shim if s.says == "cpu" and s.cause]
        cuda_failures += [p.cause for p in f.problems if p.stage in DISCOVERY_STAGES]
        degraded = min(cuda_failures, key=_rank) if cuda_failures else "unknown"
        notes.append("the NVIDIA GPU is used through Vulkan because CUDA did not discover it")
        signals = [s for s in signals if not (s.source == "shim" and s.says == "cpu")]
    v = _decide(f, "discovery", signals, _base(f), DISCOVERY_STAGES, degraded, notes)
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
    """Verdicts for discovery and every model runner (the rules read the facts and never change them)."""
    discovery = discovery_verdict(f)
    runners = {}
    for p in sorted((p for p in f.live.procs.values() if p.cls in MODEL_CLASSES), key=lambda p: p.seq):
        runners[p.key] = _after_discovery(runner_verdict(f, p), discovery)
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
