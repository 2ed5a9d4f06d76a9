"""A fake OS for the supervisor: a clock the test moves in milliseconds, pids that are plain numbers, and exits the
test decides (set on the Child as any reaper would), so every transition runs without a process or a sleep."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from launcher.children import Child, SpawnError
from launcher.directives import Directive, View
from launcher.environment import EnvPlan
from launcher.events import Event
from launcher.lifecycle import State
from launcher.ollama_host import OllamaHost, parse_ollama_host
from launcher.output import SharedStream
from launcher.proctree import ProcInfo
from launcher.restarts import CrashBudget
from launcher.sdnotify import Notifier
from launcher.supervisor import Options, Supervisor, Wiring
from launcher.system import ProbeReport, Spawned

PLAN = EnvPlan(argv=("ollama", "serve"), env={"PATH": "/usr/bin"})
NEW_PLAN = EnvPlan(argv=("ollama", "serve"), env={"PATH": "/usr/bin", "OLLAMA_DEBUG": "1"})
HOST = parse_ollama_host("127.0.0.1:11434")
GRACE = 10.0


@dataclass
class FakeSystem:
    """Every OS call the supervisor makes, recorded; nothing real happens."""

    t: float = 0.0
    next_pid: int = 100
    spawned: list[Child] = field(default_factory=list)
    plans: list[EnvPlan] = field(default_factory=list)
    signals: list[tuple[int, int]] = field(default_factory=list)
    group_kills: list[tuple[int, int]] = field(default_factory=list)
    probes: list[tuple[Child, ProbeReport]] = field(default_factory=list)
    jobs: list[tuple[Callable[[], object], Callable[[object], None]]] = field(default_factory=list)
    guarded: list[int] = field(default_factory=list)
    spawn_error: OSError | None = None
    helper_pids: set[int] = field(default_factory=set)

    def monotonic(self) -> float:
        return self.t

    def spawn(self, plan: EnvPlan) -> Spawned:
        if self.spawn_error is not None:
            raise SpawnError(plan.argv[0], self.spawn_error)
        child = Child(pid=self.next_pid, name="ollama", argv=plan.argv, own_group=True, started=self.t)
        self.next_pid += 1
        self.spawned.append(child)
        self.plans.append(plan)
        return Spawned(child, None, None)

    def kill(self, pid: int, signum: int) -> bool:
        self.signals.append((pid, signum))
        return True

    def killpg(self, pgid: int, signum: int) -> bool:
        self.group_kills.append((pgid, signum))
        return True

    def reap(self) -> list[Child]:
        return []

    def probe(self, child: Child, host: OllamaHost, timeout: float, report: ProbeReport) -> None:
        self.probes.append((child, report))

    def submit(self, job: Callable[[], object], done: Callable[[object], None]) -> None:
        self.jobs.append((job, done))

    def guard(self, pgid: int) -> None:
        self.guarded.append(pgid)

    def helpers(self) -> set[int]:
        return set(self.helper_pids)

    # --- what the test does -----------------------------------------------------------------------------------

    def run_job(self) -> None:
        """The worker finishes its oldest job (as the real one would, in its own thread)."""
        job, done = self.jobs.pop(0)
        try:
            result: object = job()
        except Exception as exc:
            result = exc
        done(result)


def exits(child: Child, code: int = 0, signum: int | None = None) -> None:
    """The child ended and someone (our loop, the reload worker's registry.run) reaped it."""
    child.status = signum if signum is not None else code << 8
    child.done.set()


class RecordingNotifier(Notifier):
    """sd_notify datagrams, recorded instead of sent."""

    def __init__(self) -> None:
        super().__init__({})
        self.sent: list[tuple[str, ...]] = []

    def send(self, *fields: str) -> bool:
        self.sent.append(fields)
        return True


class RecordingLog:
    """structlog's bound-logger surface, recording (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def _record(self, level: str) -> Callable[..., None]:
        def log(event: str, **kw: Any) -> None:
            self.lines.append((level, event, kw))

        return log

    def __getattr__(self, level: str) -> Callable[..., None]:
        return self._record(level)

    def events(self) -> list[str]:
        return [event for _level, event, _kw in self.lines]


class FakeWatcher:
    """The tree as the test says it is."""

    def __init__(self) -> None:
        self.model_runner = False
        self.scans = 0
        self.tree: list[ProcInfo] = []  # our descendants, parents before children

    def scan(self) -> list[Event]:
        self.scans += 1
        return []

    def has_alive(self, cls: str) -> bool:
        return cls == "model_runner" and self.model_runner

    def descendants(self) -> list[ProcInfo]:
        return list(self.tree)

    def exited(self, pid: int, status: dict[str, int]) -> list[Event]:
        return []


@dataclass
class ScriptedPolicy:
    """A controller stand-in: hands out the directives the test queues; the gate opens when the test says."""

    directives: list[Directive] = field(default_factory=list)
    gate: bool = True
    views: list[View] = field(default_factory=list)

    def tick(self, view: View, now: float) -> Sequence[Directive]:
        self.views.append(view)
        out, self.directives = self.directives, []
        return out

    def ready_gate(self, since_answer: float) -> bool:
        return self.gate


@dataclass
class Rig:
    """A supervisor on the fake OS, with what it said."""

    sup: Supervisor
    system: FakeSystem
    log: RecordingLog
    notifier: RecordingNotifier
    events: list[Event]
    policy: ScriptedPolicy

    def tick(self, at: float | None = None) -> None:
        if at is not None:
            self.system.t = at
        self.sup.tick(self.system.t)

    @property
    def ollama(self) -> Child:
        assert self.sup.ollama is not None
        return self.sup.ollama

    def answer(self, owner: bool | None = True, holder: int | None = None) -> None:
        """/api/version answers for the newest Ollama (from the probe thread)."""
        child, report = self.system.probes[-1]
        report(child.pid, "0.32.15", owner, holder)

    def transitions(self) -> list[tuple[str, str, str]]:
        return [(str(e.data["from"]), str(e.data["on"]), str(e.data["to"]))
                for e in self.events if e.kind == "state"]

    def ready(self) -> None:
        """Start and answer: RUNNING."""
        self.tick()
        self.answer()
        self.tick()
        assert self.sup.state is State.RUNNING


def rig(*, restart_max: int = 3, backoff: float = 1.0, reload: Callable[[], EnvPlan | None] | None = None,
        watcher: FakeWatcher | None = None, watchdog: float | None = None, stop_grace: float = GRACE) -> Rig:
    """A fresh supervisor in STARTING at t=0."""
    system = FakeSystem()
    log = RecordingLog()
    notifier = RecordingNotifier()
    events: list[Event] = []
    policy = ScriptedPolicy()
    devnull = SharedStream(os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
    sup = Supervisor(
        plan=PLAN, system=system, log=log, notifier=notifier, out=devnull, err=devnull,
        options=Options(host=HOST, stop_grace=stop_grace, ready_timeout=60.0, watchdog_interval=watchdog),
        crash_budget=CrashBudget(restart_max, 60.0, backoff, 30.0),
        wiring=Wiring(sink=events.append, reload=reload, policy=policy,
                      make_watcher=(lambda _root: watcher) if watcher is not None else None),  # type: ignore[arg-type,return-value]
    )
    return Rig(sup, system, log, notifier, events, policy)
