"""Prometheus metrics of one supervisor: an event sink (`observe`), verdict updates, and a small /metrics server.

Off unless OGPU_METRICS_ADDR is set. Labels are bounded: model name, GPU (UUID, or index when NVML gives none),
cause and outcome from the vocabulary, and a few fixed words; never a pid. Thread-safe: the supervisor loop and the
parser thread call `observe`, the HTTP thread collects.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from launcher import __version__
from launcher.events import Event
from launcher.gpu_health import STATES as HEALTH_STATES
from launcher.lifecycle import State
from launcher.model_names import NO_MODEL, ModelNames
from launcher.vocabulary import CAUSES, OUTCOMES

RESUME_VIAS: Final = ("clock", "logind")
UVM_OUTCOMES: Final = ("reloaded", "held", "failed", "unverified")

if TYPE_CHECKING:
    from launcher.shim_events import ServerStats

PREFIX: Final = "ollama_gpu"
ACTIONS: Final = ("apply_now", "apply_when_idle", "advise")  # `nothing` is not a remedy and is not counted
STATES: Final = tuple(state.value for state in State)  # the supervisor's, launcher/lifecycle.py
LAUNCH_KINDS: Final = ("kernel", "kernel_ex", "cooperative", "graph")
COPY_DIRECTIONS: Final = ("htod", "dtoh", "dtod")
MEM_FIELDS: Final = ("allocs", "frees", "alloc_bytes", "free_bytes")
MAX_MODELS: Final = 256  # per-model memory series kept (oldest model dropped first)
MAX_PROCS: Final = 4096  # per-process bookkeeping is pruned past this (oldest first)
DISCOVERY: Final = "discovery"
MODEL: Final = "model"

ProcKey = tuple[int, int | None]  # (pid, start time): never a label, only the key of our own bookkeeping


def _cause(value: object) -> str:
    return value if isinstance(value, str) and value in CAUSES else "unknown"


def _outcome(value: object) -> str:
    return value if isinstance(value, str) and value in OUTCOMES else "unknown"


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass
class _Proc:
    """What we keep of one process: its model, its last cumulative shim totals, the GPUs it has a context on."""

    model: str
    totals: dict[str, int] = field(default_factory=dict)
    uuids: dict[int, str] = field(default_factory=dict)  # CUDA ordinal → UUID, from its `device` events
    gpus: set[str] = field(default_factory=set)


class Metrics:
    """Turns events and verdicts into Prometheus series; `registry` is what the HTTP server exposes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names = ModelNames()
        self._procs: dict[ProcKey, _Proc] = {}
        self._events: Counter[str] = Counter()
        self._state = "starting"
        self._ollama_version = ""
        self._verdicts: dict[tuple[str, str], tuple[str, str]] = {}
        self._transitions: Counter[tuple[str, str, str, str]] = Counter()
        self._restarts: Counter[tuple[str, str]] = Counter()
        self._remedies: Counter[tuple[str, str]] = Counter()
        self._pending_cause: str | None = None  # the cause of the latest applied remedy, until its restart
        self._shim: dict[str, Counter[str]] = {}
        self._dropped: Counter[tuple[str, str]] = Counter()
        self._server_dropped: dict[str, int] = {}
        self._gpu_label: dict[int, str] = {}
        self._gpu_total: dict[str, int] = {}
        self._gpu_used: dict[str, int] = {}
        self._layers: dict[str, tuple[int, int]] = {}  # model -> (layers on GPU, layers on CPU)
        self._shortfall: dict[str, int] = {}
        self._nvml_up: int | None = None
        self._health: dict[str, str] = {}  # GPU label -> health state (issue 16)
        self._xids: Counter[tuple[str, int]] = Counter()
        self._resumes: Counter[str] = Counter()  # host resumes, by how they were noticed (clock, logind)
        self._cuda_after_resume: int | None = None  # the latest after-resume probe: 1 CUDA works, 0 it does not
        self._uvm_reloads: Counter[str] = Counter()  # OGPU_MAY_RELOAD_UVM attempts, by outcome
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    # --- inputs ----------------------------------------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """Take one event (the supervisor's sink); an event we cannot read is counted, never raised."""
        with self._lock:
            self._events[event.source] += 1
            handler = _HANDLERS.get((event.source, event.kind))
            if handler is None:
                return
            try:
                handler(self, event)
            except (TypeError, ValueError, AttributeError, KeyError):
                self._dropped[("metrics", "unreadable_event")] += 1

    def __call__(self, event: Event) -> None:
        """Metrics is itself an event sink."""
        self.observe(event)

    def set_shim_server_stats(self, stats: ServerStats) -> None:
        """The shim event server's counters (cumulative since start), e.g. once per supervisor scan."""
        with self._lock:
            self._server_dropped = {str(k): int(v) for k, v in stats.dropped.items()}
            for reason, count in stats.rejected.items():
                self._server_dropped[f"rejected_{reason}"] = int(count)

    def _set_verdict(self, subject: str, model: str, outcome: object, cause: object) -> None:
        value = (_outcome(outcome), _cause(cause))
        if self._verdicts.get((subject, model)) != value:
            self._verdicts[(subject, model)] = value
            self._transitions[(subject, model, *value)] += 1

    # --- event handlers (called with the lock held) -------------------------------------------------------------

    def _proc(self, event: Event, argv: Iterable[Any] | None = None) -> _Proc | None:
        if event.pid is None:
            return None
        st = event.data.get("start_time")
        key: ProcKey = (event.pid, st if isinstance(st, int) and not isinstance(st, bool) else None)
        proc = self._procs.get(key) or self._procs.pop((event.pid, None), None)
        if proc is not None:
            self._procs[key] = proc
            if argv is not None and proc.model == NO_MODEL:
                proc.model = self._names.name([str(a) for a in argv])
            return proc
        proc = _Proc(self._names.name([str(a) for a in argv or ()]))
        self._procs[key] = proc
        if len(self._procs) > MAX_PROCS:
            del self._procs[next(iter(self._procs))]
        return proc

    def _on_hello(self, event: Event) -> None:
        self._proc(event, event.data.get("argv") or ())

    def _on_runner_started(self, event: Event) -> None:
        self._proc(event, event.data.get("argv") or ())

    def _on_device(self, event: Event) -> None:
        proc = self._proc(event)
        uuid = event.data.get("uuid")
        if proc is not None and isinstance(uuid, str) and uuid:
            proc.uuids[_int(event.data.get("ordinal"))] = uuid[:64]

    def _on_ctx(self, event: Event) -> None:
        proc = self._proc(event)
        if proc is not None and event.data.get("result") == 0:
            ordinal = _int(event.data.get("device"))
            proc.gpus.add(proc.uuids.get(ordinal, str(ordinal)))

    def _on_snapshot(self, event: Event) -> None:
        proc = self._proc(event)
        if proc is None:
            return
        now: dict[str, int] = {}
        for group, names in (("launches", LAUNCH_KINDS), ("mem", MEM_FIELDS), ("copies", COPY_DIRECTIONS)):
            values = event.data.get(group) or {}
            for name in names:
                key = f"{name}_bytes" if group == "copies" else name
                now[f"{group}.{name}"] = _int(values.get(key))
        now["dropped"] = _int(event.data.get("dropped"))
        totals = self._shim.setdefault(proc.model, Counter())
        for name, value in now.items():
            delta = value - proc.totals.get(name, 0)
            if delta > 0:  # cumulative per process: a lost snapshot costs nothing, a restart starts at zero
                if name == "dropped":
                    self._dropped[("shim", "send_buffer_full")] += delta
                else:
                    totals[name] += delta
        proc.totals = {k: max(v, proc.totals.get(k, 0)) for k, v in now.items()}

    def _on_ended(self, event: Event) -> None:
        if event.pid is None:
            return
        st = event.data.get("start_time")
        key = (event.pid, st if isinstance(st, int) and not isinstance(st, bool) else None)
        proc = self._procs.get(key)
        if proc is not None:
            proc.gpus.clear()  # kept for its model and totals: a late snapshot must not count twice

    def _on_gpus(self, event: Event) -> None:
        self._nvml_up = 1
        for gpu in event.data.get("gpus") or ():
            index = gpu.get("index")
            if not isinstance(index, int):
                continue
            uuid = gpu.get("uuid")
            label = uuid[:64] if isinstance(uuid, str) and uuid else str(index)
            self._gpu_label[index] = label
            if isinstance(gpu.get("memory_total"), int):
                self._gpu_total[label] = gpu["memory_total"]
            if isinstance(gpu.get("memory_used"), int):
                self._gpu_used[label] = gpu["memory_used"]

    def _on_gpu_health(self, event: Event) -> None:
        """`nvml/gpu_health` (issue 16): each GPU's state, as of the latest change."""
        for gpu in event.data.get("gpus") or ():
            index, state = gpu.get("index"), gpu.get("state")
            if isinstance(index, int) and state in HEALTH_STATES:
                self._health[self._gpu_label.get(index, str(index))] = state

    def _on_xid(self, event: Event) -> None:
        index, xid = event.data.get("index"), event.data.get("xid")
        if isinstance(index, int) and isinstance(xid, int):
            self._xids[(self._gpu_label.get(index, str(index)), xid)] += 1

    def _on_resumed(self, event: Event) -> None:
        via = event.data.get("via")
        self._resumes[via if via in RESUME_VIAS else "clock"] += 1

    def _on_cuda_probe(self, event: Event) -> None:
        """The probe after a resume (or a uvm reload): a probe that could not run (ok None) changes nothing."""
        ok = event.data.get("ok")
        if isinstance(ok, bool):
            self._cuda_after_resume = int(ok)

    def _on_uvm_reload(self, event: Event) -> None:
        outcome = event.data.get("outcome")
        if outcome in UVM_OUTCOMES:
            self._uvm_reloads[str(outcome)] += 1

    def _on_nvml_down(self, event: Event) -> None:
        self._nvml_up = 0

    def _on_memory(self, event: Event) -> None:
        for gpu in event.data.get("gpus") or ():
            index, used = gpu.get("index"), gpu.get("used")
            if isinstance(index, int) and isinstance(used, int):
                self._gpu_used[self._gpu_label.get(index, str(index))] = used

    def _on_memory_account(self, event: Event) -> None:
        """`log/memory_account` (issue 17): a load's layers on GPU and CPU and its VRAM shortfall, per model."""
        model = self._names.name(["--model", str(event.data.get("model") or "")])
        total, gpu = event.data.get("layers_total"), event.data.get("layers_gpu")
        if isinstance(total, int) and isinstance(gpu, int) and 0 <= gpu <= total:
            self._layers[model] = (gpu, total - gpu)
        short = event.data.get("shortfall")
        if isinstance(short, int):
            self._shortfall[model] = max(0, short)
        while len(self._layers) > MAX_MODELS:
            del self._layers[next(iter(self._layers))]
        while len(self._shortfall) > MAX_MODELS:
            del self._shortfall[next(iter(self._shortfall))]

    def _on_state(self, event: Event) -> None:
        to = event.data.get("to")
        if to in STATES:
            self._state = str(to)
        if event.data.get("from") == "backoff" and to == "starting":
            self._restarts[("crash", "none")] += 1

    def _on_verdict(self, event: Event) -> None:
        """`supervisor/verdict` (the controller's, on each change): subject `discovery` or `runner PID`."""
        subject = str(event.data.get("subject", ""))
        outcome, cause = event.data.get("outcome"), event.data.get("cause")
        if subject == DISCOVERY:
            self._set_verdict(DISCOVERY, "", outcome, cause)
        elif subject.startswith("runner ") and subject[7:].isdigit():
            pid = int(subject[7:])
            procs = [proc for (p, _st), proc in self._procs.items() if p == pid]
            self._set_verdict(MODEL, procs[-1].model if procs else "unknown", outcome, cause)

    def _on_ready(self, event: Event) -> None:
        version = event.data.get("version")
        if isinstance(version, str):
            self._ollama_version = version[:64]

    def _on_decision(self, event: Event) -> None:
        action = event.data.get("action")
        if action not in ACTIONS:
            return
        cause = _cause(event.data.get("cause"))
        self._remedies[(cause, str(action))] += 1
        if action in ("apply_now", "apply_when_idle"):
            self._pending_cause = cause

    def _on_restarted(self, event: Event) -> None:
        given = event.data.get("cause")
        cause = _cause(given) if given is not None else self._pending_cause
        self._pending_cause = None
        self._restarts[("remedy", cause) if cause else ("requested", "none")] += 1

    # --- output ----------------------------------------------------------------------------------------------------

    def families(self) -> list[Metric]:
        """Every series, built under the lock (the collector's answer)."""
        with self._lock:
            return list(self._families())

    def _families(self) -> Iterator[Metric]:
        p = PREFIX
        yield InfoMetricFamily(f"{p}_build", "ollama-gpu and the Ollama it supervises",
                               value={"version": __version__, "ollama_version": self._ollama_version})

        state = GaugeMetricFamily(f"{p}_supervisor_state", "1 for the supervisor's current state", labels=("state",))
        for name in STATES:
            state.add_metric((name,), 1.0 if name == self._state else 0.0)
        yield state

        verdict = GaugeMetricFamily(
            f"{p}_verdict", "1 for the current verdict of discovery (model=\"\") and of each model's newest runner",
            labels=("subject", "model", "outcome", "cause"))
        for (subject, model), (outcome, cause) in sorted(self._verdicts.items()):
            verdict.add_metric((subject, model, outcome, cause), 1.0)
        yield verdict

        changes = CounterMetricFamily(f"{p}_verdict_changes", "Times a subject's verdict became this one",
                                      labels=("subject", "model", "outcome", "cause"))
        for labels, count in sorted(self._transitions.items()):
            changes.add_metric(labels, count)
        yield changes

        on_gpu = GaugeMetricFamily(f"{p}_model_gpu_processes",
                                   "Live processes of a model holding a CUDA context on a GPU", labels=("model", "gpu"))
        held: Counter[tuple[str, str]] = Counter((proc.model, gpu) for proc in self._procs.values()
                                                 for gpu in proc.gpus)
        for held_labels, count in sorted(held.items()):
            on_gpu.add_metric(held_labels, count)
        yield on_gpu

        restarts = CounterMetricFamily(f"{p}_ollama_restarts", "Restarts of Ollama by reason (crash, remedy, "
                                       "requested) and the remedied cause", labels=("reason", "cause"))
        for restart_labels, count in sorted(self._restarts.items()):
            restarts.add_metric(restart_labels, count)
        yield restarts

        remedies = CounterMetricFamily(f"{p}_remedies", "Remedy decisions by cause and action (applied or advised)",
                                       labels=("cause", "action"))
        for remedy_labels, count in sorted(self._remedies.items()):
            remedies.add_metric(remedy_labels, count)
        yield remedies

        yield from self._shim_families()
        yield from self._gpu_families()
        yield from self._memory_families()

        dropped = CounterMetricFamily(f"{p}_dropped_events", "Events lost before the board: by the shim (send "
                                      "buffer full), the event server (per reason) or these metrics",
                                      labels=("where", "reason"))
        rows = dict(self._dropped)
        rows.update({("event_server", reason): n for reason, n in self._server_dropped.items()})
        for drop_labels, count in sorted(rows.items()):
            dropped.add_metric(drop_labels, count)
        yield dropped

        events = CounterMetricFamily(f"{p}_events", "Events observed, by source", labels=("source",))
        for source, count in sorted(self._events.items()):
            events.add_metric((source,), count)
        yield events

    def _shim_families(self) -> Iterator[Metric]:
        p = PREFIX
        launches = CounterMetricFamily(f"{p}_shim_launches", "CUDA launches seen by the shim, per model and kind",
                                       labels=("model", "kind"))
        copies = CounterMetricFamily(f"{p}_shim_copied_bytes", "Bytes copied through CUDA, per model and direction",
                                     labels=("model", "direction"))
        allocs = CounterMetricFamily(f"{p}_shim_allocations", "CUDA device allocations, per model", labels=("model",))
        frees = CounterMetricFamily(f"{p}_shim_frees", "CUDA device frees, per model", labels=("model",))
        alloc_bytes = CounterMetricFamily(f"{p}_shim_allocated_bytes", "Bytes allocated on the device, per model",
                                          labels=("model",))
        free_bytes = CounterMetricFamily(f"{p}_shim_freed_bytes", "Bytes freed on the device, per model",
                                         labels=("model",))
        for model, totals in sorted(self._shim.items()):
            for kind in LAUNCH_KINDS:
                launches.add_metric((model, kind), totals[f"launches.{kind}"])
            for direction in COPY_DIRECTIONS:
                copies.add_metric((model, direction), totals[f"copies.{direction}"])
            allocs.add_metric((model,), totals["mem.allocs"])
            frees.add_metric((model,), totals["mem.frees"])
            alloc_bytes.add_metric((model,), totals["mem.alloc_bytes"])
            free_bytes.add_metric((model,), totals["mem.free_bytes"])
        yield from (launches, copies, allocs, frees, alloc_bytes, free_bytes)

    def _gpu_families(self) -> Iterator[Metric]:
        p = PREFIX
        up = GaugeMetricFamily(f"{p}_nvml_up", "1 when NVML answers, 0 when it is unavailable or stopped answering")
        if self._nvml_up is not None:
            up.add_metric((), self._nvml_up)
        yield up
        used = GaugeMetricFamily(f"{p}_gpu_memory_used_bytes", "GPU memory in use as NVML reports it", labels=("gpu",))
        for gpu, value in sorted(self._gpu_used.items()):
            used.add_metric((gpu,), value)
        yield used
        total = GaugeMetricFamily(f"{p}_gpu_memory_total_bytes", "GPU memory in all as NVML reports it",
                                  labels=("gpu",))
        for gpu, value in sorted(self._gpu_total.items()):
            total.add_metric((gpu,), value)
        yield total
        health = GaugeMetricFamily(f"{p}_gpu_health", "1 for a GPU's current health state (ok, degraded, lost, "
                                   "driver_mismatch, access_denied, absent), 0 for the others", labels=("gpu", "state"))
        for gpu, current in sorted(self._health.items()):
            for state in HEALTH_STATES:
                health.add_metric((gpu, state), 1 if state == current else 0)
        yield health
        xids = CounterMetricFamily(f"{p}_xid", "Xid errors NVML reported, per GPU and Xid", labels=("gpu", "xid"))
        for (gpu, xid), count in sorted(self._xids.items()):
            xids.add_metric((gpu, str(xid)), count)
        yield xids
        resumes = CounterMetricFamily(f"{p}_host_resumes", "Host suspend/resume cycles seen, by how they were "
                                      "noticed (clock: the BOOTTIME gap; logind: PrepareForSleep)", labels=("via",))
        for via, count in sorted(self._resumes.items()):
            resumes.add_metric((via,), count)
        yield resumes
        if self._cuda_after_resume is not None:
            probe = GaugeMetricFamily(f"{p}_cuda_ok_after_resume", "1 when the CUDA init probe after the latest "
                                      "resume (or nvidia_uvm reload) succeeded, 0 when it failed")
            probe.add_metric((), self._cuda_after_resume)
            yield probe
        reloads = CounterMetricFamily(f"{p}_uvm_reloads", "nvidia_uvm reloads asked for (OGPU_MAY_RELOAD_UVM), by "
                                      "outcome", labels=("outcome",))
        for outcome, count in sorted(self._uvm_reloads.items()):
            reloads.add_metric((outcome,), count)
        yield reloads


    def _memory_families(self) -> Iterator[Metric]:
        p = PREFIX
        layers = GaugeMetricFamily(f"{p}_model_layers", "Layers of a model's newest load on the GPU and on the CPU "
                                   "(from Ollama's log)", labels=("model", "where"))
        for model, (gpu, cpu) in sorted(self._layers.items()):
            layers.add_metric((model, "gpu"), gpu)
            layers.add_metric((model, "cpu"), cpu)
        yield layers
        short = GaugeMetricFamily(f"{p}_model_vram_shortfall_bytes", "VRAM a model's newest load lacked for full "
                                  "offload (0: it fit), as its release line counts it", labels=("model",))
        for model, value in sorted(self._shortfall.items()):
            short.add_metric((model,), value)
        yield short


_HANDLERS: Final[Mapping[tuple[str, str], Any]] = {
    ("shim", "hello"): Metrics._on_hello,
    ("shim", "device"): Metrics._on_device,
    ("shim", "ctx"): Metrics._on_ctx,
    ("shim", "snapshot"): Metrics._on_snapshot,
    ("shim", "process_end"): Metrics._on_ended,
    ("proc", "runner_started"): Metrics._on_runner_started,
    ("proc", "runner_exited"): Metrics._on_ended,
    ("nvml", "gpus"): Metrics._on_gpus,
    ("nvml", "unavailable"): Metrics._on_nvml_down,
    ("nvml", "sample_failed"): Metrics._on_nvml_down,
    ("nvml", "memory"): Metrics._on_memory,
    ("nvml", "gpu_health"): Metrics._on_gpu_health,
    ("nvml", "xid"): Metrics._on_xid,
    ("supervisor", "resumed"): Metrics._on_resumed,
    ("supervisor", "cuda_probe"): Metrics._on_cuda_probe,
    ("supervisor", "uvm_reload"): Metrics._on_uvm_reload,
    ("log", "memory_account"): Metrics._on_memory_account,
    ("supervisor", "state"): Metrics._on_state,
    ("supervisor", "ready"): Metrics._on_ready,
    ("supervisor", "verdict"): Metrics._on_verdict,
    ("supervisor", "decision"): Metrics._on_decision,
    ("supervisor", "restarted"): Metrics._on_restarted,
}


class _Collector(Collector):
    """Hands the registry our families at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics.families()


class MetricsServer:
    """The /metrics HTTP endpoint on its own daemon thread; `close()` stops it."""

    def __init__(self, metrics: Metrics, addr: tuple[str, int]) -> None:
        self.metrics = metrics
        self.addr = addr
        self._httpd: Any = None

    def start(self) -> MetricsServer:
        """Bind and serve; OSError (address in use, bad host) is the caller's to log."""
        self._httpd, _thread = start_http_server(self.addr[1], addr=self.addr[0], registry=self.metrics.registry)
        return self

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the kernel's choice for port 0 in tests)."""
        return int(self._httpd.server_address[1]) if self._httpd is not None else self.addr[1]

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


def tee(*sinks: Callable[[Event], None]) -> Callable[[Event], None]:
    """One event sink that hands each event to every sink in turn (e.g. the recorder, then Metrics)."""

    def sink(event: Event) -> None:
        for each in sinks:
            each(event)

    return sink


def start(addr: tuple[str, int] | None, log: Any) -> tuple[Metrics, MetricsServer] | None:
    """For serve: Metrics and its running server when OGPU_METRICS_ADDR is set; None when off or it cannot bind."""
    if addr is None:
        return None
    metrics = Metrics()
    try:
        server = MetricsServer(metrics, addr).start()
    except OSError as exc:
        log.warning("metrics_unavailable", addr=f"{addr[0]}:{addr[1]}", error=str(exc),
                    consequence="no /metrics; Ollama runs as usual")
        return None
    log.info("metrics_listening", url=f"http://{addr[0]}:{server.port}/metrics")
    return metrics, server
