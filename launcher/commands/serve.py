"""`ollama-gpu serve [ARGS]`: a drop-in for `ollama serve ARGS` that proves where models run."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from launcher import log as logsetup
from launcher import shim_events
from launcher.children import ChildRegistry, set_subreaper
from launcher.commands.context import Context
from launcher.config import Mode, Settings, log_warnings
from launcher.driverlib import DriverFinding
from launcher.environment import EnvPlan
from launcher.events import Event, now
from launcher.exitcodes import Exit
from launcher.memory_live import MemoryWatch, add_memory
from launcher.output import Line, SharedStream
from launcher.paths import UnsafeDirectoryError, current_user, ensure_dirs
from launcher.proctree import TreeWatcher
from launcher.restarts import CrashBudget
from launcher.sdnotify import Notifier
from launcher.startup import Prepared, prepare
from launcher.supervisor import Supervisor, exec_off

HELP = "run `ollama serve` (same arguments and environment) under supervision, with the CUDA shim"


def configure(parser: argparse.ArgumentParser) -> None:
    """Everything after `serve` goes to `ollama serve` unchanged."""
    parser.description = (f"{HELP}. Every argument after `serve` goes to `ollama serve` unchanged (only a lone "
                          "-h/--help is ours; write `serve -- --help` for Ollama's). ollama-gpu's own settings go "
                          "before `serve`: ollama-gpu --mode advise serve.")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="OLLAMA_SERVE_ARGS",
                        help="every other argument: passed to `ollama serve` unchanged")


class Recorder:
    """Every event as JSON lines to OGPU_RECORD (for replay and bug reports); nothing when unset."""

    def __init__(self, path: Path | None) -> None:
        self._out: IO[str] | None = open(path, "a", buffering=1, encoding="utf-8") if path else None  # noqa: SIM115
        self.count = 0

    def __call__(self, event: Event) -> None:
        self.count += 1
        if self._out is not None:
            self._out.write(event.to_json() + "\n")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


def _line_consumer(sink: Callable[[Event], None], memory: Any = None) -> Callable[[Line], None]:
    """The parser, built on first use in the parser thread: its pattern tables compile after Ollama started.
    `memory` (a MemoryWatch) reads the same cleaned lines for the memory account of each load (issue 17)."""
    state: dict[str, Any] = {}

    def on_line(line: Line) -> None:
        if not state:
            from launcher.log_input import Line as LogLine
            from launcher.log_input import clean
            from launcher.ollama_logs import LogParser

            state.update(parser=LogParser(), clean=clean, LogLine=LogLine)
        text, pid = state["clean"](line.raw)
        for event in state["parser"].feed(state["LogLine"](line.number, text, pid, line.truncated)):
            sink(dataclasses.replace(event, t=now()))  # live: the shared monotonic clock, not the line number
        if memory is not None:
            for event in memory.feed(line.number, text):
                sink(event)

    return on_line


def machine_event(driver: DriverFinding, dev: Path = Path("/dev")) -> Event:
    """What the machine shows of an NVIDIA GPU before Ollama starts: device nodes and the driver library."""
    try:
        nodes = sorted(p.name for p in dev.iterdir() if p.name.startswith("nvidia") or p.name == "dxg")
    except OSError:
        nodes = []
    return Event("supervisor", "machine", now(), None, {
        "device_nodes": nodes, "driver_dir": str(driver.real_dir) if driver.real_dir else None,
        "loader_path": str(driver.loader_path) if driver.loader_path and not driver.stub_first else None})


def ollama_library_dirs(ollama: str) -> tuple[str, ...] | None:
    """The entries of Ollama's `lib/ollama` (cuda_v12, cuda_v13, vulkan, ...) beside its binary; None if unknown."""
    exe = shutil.which(ollama) or ollama
    libdir = Path(os.path.realpath(exe)).parent.parent / "lib" / "ollama"
    try:
        return tuple(sorted(p.name for p in libdir.iterdir() if p.is_dir()))
    except OSError:
        return None


class PendingSink:
    """The event sink until the controller exists: events are kept, then handed over in order (the controller
    records them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[Event] = []
        self._target: Callable[[Event], None] | None = None

    def __call__(self, event: Event) -> None:
        with self._lock:
            if self._target is None:
                self._held.append(event)
                return
            target = self._target
        target(event)

    def attach(self, target: Callable[[Event], None]) -> None:
        """From now on every event goes to `target`, starting with the ones held."""
        with self._lock:
            held, self._held = self._held, []
            for event in held:
                target(event)
            self._target = target


def ollama_pids(sup: Supervisor) -> set[int]:
    """Ollama and its descendants (runners): VRAM they hold is the load's own, not another process's."""
    if sup.ollama is None:
        return set()
    import psutil

    pids = {sup.ollama.pid}
    with contextlib.suppress(psutil.Error):
        pids.update(p.pid for p in psutil.Process(sup.ollama.pid).children(recursive=True))
    return pids


def _attach_controller(sup: Supervisor, settings: Settings, prepared: Prepared, recorder: Recorder,
                       pending: PendingSink, log: Any, closers: list[Callable[[], None]],
                       memory: MemoryWatch | None = None) -> None:
    """Right after Ollama started: the board, the policy, NVML, the status socket and metrics (their imports and
    setup cost start-up time that Ollama does not have to wait for)."""
    from launcher.controller import Controller
    from launcher.nvml import NvmlSampler
    from launcher.remedies import RemedyContext
    from launcher.restarts import RemedyBudget
    from launcher.status import StatusServer

    nvml = NvmlSampler()  # opened by the controller's first turn
    closers.append(nvml.close)
    budget = RemedyBudget.load(settings.dirs.state_file, settings.remedy_max)
    if budget.load_error:
        log.warning("state_file_unreadable", path=str(settings.dirs.state_file), error=budget.load_error,
                    action="starting with a fresh remedy budget")
    library_dirs = ollama_library_dirs(prepared.plan.argv[0])
    user = current_user()

    def remedy_context(env: Mapping[str, str], generation: str | None, cuda: bool) -> RemedyContext:
        return RemedyContext(env=env, may_override=settings.may_override, driver=prepared.driver,
                             generation=generation, library_dirs=library_dirs,
                             driver_version=nvml.state.driver_version if nvml.state is not None else None,
                             tmp_dir=settings.dirs.runtime, cuda_discovered=cuda, service_user=user)

    sinks: list[Callable[[Event], None]] = [recorder]
    if memory is not None:
        memory.own_pids = lambda: ollama_pids(sup)
        sinks.append(memory.observe)
    if settings.metrics_addr is not None:
        from launcher import metrics  # prometheus_client is imported only when metrics are on

        exported = metrics.start(settings.metrics_addr, log)  # None (one warning) if it cannot bind
        if exported is not None:
            sinks.append(exported[0].observe)
            closers.append(exported[1].close)

    def record(event: Event) -> None:
        for each in sinks:
            each(event)

    controller = Controller(settings=settings, budget=budget, log=log, record=record,
                            remedy_context=remedy_context, nvml=nvml)
    pending.attach(controller.sink)
    sup.tick, sup.ready_gate = controller.tick, controller.ready_gate
    try:
        status = StatusServer(settings.dirs.status_socket, lambda: add_memory(
            controller.status(sup), memory.reports() if memory is not None else [])).start()
        sup.add_status_server(status)
        closers.append(status.close)
    except OSError as exc:
        log.warning("status_socket_unavailable", path=str(settings.dirs.status_socket), error=str(exc))


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Start and supervise Ollama; returns the exit code of DESIGN.md."""
    settings = ctx.settings
    notifier = Notifier(ctx.env)
    if settings.mode is Mode.OFF:
        prepared = prepare(settings, ctx.env, ChildRegistry(), ctx.log, args.args)
        exec_off(prepared.plan.argv, dict(prepared.plan.env), notifier)
        return Exit.USAGE  # not reached: exec replaces us, or raises

    out, err = SharedStream(sys.stdout.fileno()), SharedStream(sys.stderr.fileno())
    log = logsetup.configure(settings.log_format, settings.log_level, err)  # our lines share stderr with Ollama
    try:
        ensure_dirs(settings.dirs, os.geteuid())
    except (UnsafeDirectoryError, OSError) as exc:
        print(f"ollama-gpu: configuration error: {exc}", file=sys.stderr)
        return Exit.USAGE
    if os.getpid() != 1 and not set_subreaper():
        log.warning("no_subreaper", problem="PR_SET_CHILD_SUBREAPER failed",
                    consequence="orphaned runners are reaped by init, not by us")

    supervisor: Supervisor | None = None

    def on_orphan(orphan: Any) -> None:
        if supervisor is not None:
            supervisor.on_orphan(orphan)

    registry = ChildRegistry(on_orphan=on_orphan)
    prepared = prepare(settings, ctx.env, registry, log, args.args)
    for advice in prepared.plan.advice:
        log.warning("advice", fix=advice, mode=settings.mode.value)
    for change in prepared.plan.changes:
        if change.key not in ("LD_PRELOAD", "OGPU_EVENTS"):
            log.info("environment_change", key=change.key, action=change.action, reason=change.reason)

    server = None
    if prepared.plan.shim is not None:
        try:
            server = shim_events.ShimEventServer(settings.dirs.events_socket).start()
        except OSError as exc:
            log.warning("shim_events_unavailable", path=str(settings.dirs.events_socket), error=str(exc))

    recorder = Recorder(settings.record)
    pending = PendingSink()  # holds events until the controller exists (it is built after the spawn)
    pending(machine_event(prepared.driver))
    memory = MemoryWatch(log)
    on_line = _line_consumer(pending, memory)
    shim_path = prepared.plan.shim
    closers: list[Callable[[], None]] = []

    def reload() -> EnvPlan | None:
        """SIGHUP: read the configuration layers again and plan anew (a bad file keeps the running plan)."""
        if ctx.reload is None:
            return None
        new = ctx.reload()
        log_warnings(log, new.warnings)
        return prepare(new, ctx.env, registry, log, args.args).plan

    supervisor = Supervisor(
        plan=prepared.plan, host=settings.host, registry=registry, log=log, out=out, err=err, notifier=notifier,
        crash_budget=CrashBudget(settings.restart_max, settings.restart_window, settings.restart_backoff,
                                 settings.restart_backoff_max),
        stop_grace=settings.stop_grace, ready_timeout=settings.ready_timeout, sink=pending,
        line_sink=on_line, event_server=server,
        make_watcher=lambda root: TreeWatcher(root, shim_path, settings.dirs.events_socket if server else None),
        reload=reload,
        after_start=lambda sup: _attach_controller(sup, settings, prepared, recorder, pending, log, closers, memory),
    )
    try:
        return supervisor.run()
    finally:
        for close in reversed(closers):
            close()
        if server is not None:
            log.debug("shim_events_stats", **server.stats().to_dict())
            server.close()
        recorder.close()
