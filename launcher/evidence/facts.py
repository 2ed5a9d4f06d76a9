"""The facts model: the evidence, verdict, problem, runner, process and signal types, and their helpers."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeAlias

from launcher import error_codes
from launcher.causes import BY_PRIORITY, EXPECTED_CPU, rank
from launcher.device_evidence import DeviceUse
from launcher.events import Event
from launcher.vocabulary import CAUSES, OUTCOMES

# When several causes are in evidence, the first in this list is the one reported (the cause table's priorities).
CAUSE_PRIORITY: Final = tuple(label for label in BY_PRIORITY if label != "none")
# A CPU result with one of these causes is what the machine or the operator asked for, not a fallback.
EXPECTED_CPU_CAUSES: Final = EXPECTED_CPU
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


# A rule's answer: the verdict and the notes the rule itself adds. Rules never write into the facts (DESIGN.md).
Ruling: TypeAlias = tuple[Verdict, tuple[str, ...]]


def settle(f: Facts, ruling: Ruling) -> Verdict:
    """A rule's verdict with the handlers' notes first and the rule's own after, each said once."""
    v, notes = ruling
    return replace(v, notes=tuple(dict.fromkeys((*f.notes, *v.notes, *notes))),
                   findings=tuple(dict.fromkeys(v.findings)))


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
    # issue 16: when the health check found every GPU's access denied, and when it was back ([start, end or None])
    denials: list[list[float | None]] = field(default_factory=list)


@dataclass
class Facts:
    """Everything the log tier decides from; filled by the handlers, one event at a time."""

    version: str | None = None
    generation: str | None = None
    generation_from: str | None = None
    generation_basis: str | None = None  # what an inferred generation was read from (a source file, a line shape)
    version_unknown: bool = False
    discovered: list[Event] = field(default_factory=list)
    no_gpu: list[Event] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    runners: list[Runner] = field(default_factory=lambda: [Runner()])
    discovery_mode: bool = False  # between a discovery runner's start and the next model runner
    env: dict[str, str] = field(default_factory=dict)
    env_event: Event | None = None
    gpu_libraries: list[Event] = field(default_factory=list)
    native_libcuda: Event | None = None  # a Linux driver's versioned libcuda tried first (WSL shadowing, if WSL)
    amd_targets: list[Event] = field(default_factory=list)
    gfx_override: bool = False
    selected: list[Event] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    verbosity: int | None = None
    sources: set[str] = field(default_factory=set)
    lines: int = 0
    live: Live = field(default_factory=Live)

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


Handler = Callable[[Facts, Event], None]


def _d(event: Event, key: str, default: Any = None) -> Any:
    return event.data.get(key, default)


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


def _rank(cause: str) -> int:
    return rank(cause)


# A loader's text (dlerror) is not an error code even where it shares words with one ("Operation not permitted").
_LOADER_TEXT: Final = re.compile(r"shared object|failed to map segment|undefined symbol|symbol lookup|dlerr|load err",
                                 re.I)


def event_cause(e: Event, default: str = "unknown") -> str:
    """The cause an event names: a known error code in its line (error_codes: by name, printed text or number)
    names it; else the parser's reading of the line."""
    parsed = str(_d(e, "cause") or default)
    text = " ".join(str(x) for x in (_d(e, "text"), _d(e, "error")) if x)
    if not text or _LOADER_TEXT.search(text):
        return parsed
    coded = error_codes.cause_of(text)
    return coded if coded in CAUSES else parsed
