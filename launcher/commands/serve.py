"""`ollama-gpu serve [ARGS]`: a drop-in for `ollama serve ARGS` that proves where models run."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from launcher import log as logsetup
from launcher import shim_events
from launcher.children import ChildRegistry, set_subreaper
from launcher.commands.context import Context
from launcher.config import Mode, Settings, log_warnings
from launcher.directives import Directive, ReloadUvm, View
from launcher.driverlib import DriverFinding
from launcher.environment import EnvPlan
from launcher.events import Event, now
from launcher.exitcodes import Exit
from launcher.guardian import GuardianKeeper
from launcher.instance import AlreadyRunning, InstanceLock
from launcher.lineage import descends_from
from launcher.memory_live import MemoryWatch, add_memory
from launcher.output import Line, SharedStream
from launcher.paths import UnsafeDirectoryError, current_user, ensure_dirs
from launcher.port_owner import answering, holder
from launcher.proctree import TreeWatcher
from launcher.remedy_record import variable_changes
from launcher.restarts import CrashBudget
from launcher.sdnotify import Notifier
from launcher.startup import Prepared, prepare, resolve_ollama
from launcher.supervisor import Options, Supervisor, Wiring, exec_off
from launcher.system import OsSystem

if TYPE_CHECKING:
    from launcher.controller import Controller

HELP = "run `ollama serve` (same arguments and environment) under supervision, with the CUDA shim"


def configure(parser: argparse.ArgumentParser) -> None:
    """Everything after `serve` goes to `ollama serve` unchanged."""
    parser.description = (f"{HELP}. Every argument after `serve` goes to `ollama serve` unchanged (only a lone "
                          "-h/--help is ours; write `serve -- --help` for Ollama's). ollama-gpu's own settings go "
                          "before `serve`: ollama-gpu --mode advise serve.")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="OLLAMA_SERVE_ARGS",
                        help="every other argument: passed to `ollama serve` unchanged")


def ollama_missing(path: str) -> tuple[int, str] | None:
    """(exit code, why) when Ollama cannot be started at all: 127 not found, 126 not executable, as shells say, in
    the words the spawn itself would have used."""
    if "/" not in path:
        return 127, f"cannot start {path}: not found on PATH"
    if not os.path.exists(path):
        return 127, f"cannot start {path}: {os.strerror(errno.ENOENT)}"
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        return 126, f"cannot start {path}: {os.strerror(errno.EACCES)}"
    return None


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


class ControllerSlot:
    """The supervisor's policy from its construction on: empty until the controller is built right after the first
    spawn (its imports and setup cost start-up time that Ollama does not have to wait for). A ReloadUvm directive
    goes to the NVML thread (`reload_uvm`), the others to the supervisor."""

    def __init__(self) -> None:
        self.controller: Controller | None = None
        self.reload_uvm: Callable[[str], None] | None = None

    def tick(self, view: View, now: float) -> Sequence[Directive]:
        if self.controller is None:
            return ()
        out = []
        for directive in self.controller.tick(view, now):
            if isinstance(directive, ReloadUvm):
                if self.reload_uvm is not None:
                    self.reload_uvm(directive.key)
                continue
            out.append(directive)
        return out

    def ready_gate(self, since_answer: float) -> bool:
        return self.controller.ready_gate(since_answer) if self.controller is not None else True


class StatsTap:
    """The shim event server as the loop polls it, with its counters handed to the metrics after each poll (the
    documented `dropped_events{where="event_server"}` series)."""

    def __init__(self, server: shim_events.ShimEventServer) -> None:
        self.server = server
        self.on_stats: Callable[[shim_events.ServerStats], None] | None = None

    def fileno(self) -> int:
        return self.server.fileno()

    def poll(self, timeout: float | None = 0.0) -> list[Event]:
        events = self.server.poll(timeout)
        if self.on_stats is not None:
            self.on_stats(self.server.stats())
        return events

    @property
    def rechecking(self) -> bool:
        return self.server.rechecking


NVML_INTERVAL = 1.0  # seconds between two NVML memory samples


def ollama_pids(sup: Supervisor) -> set[int]:
    """Ollama and its descendants (runners): VRAM they hold is the load's own, not another process's."""
    if sup.ollama is None:
        return set()
    import psutil

    pids = {sup.ollama.pid}
    with contextlib.suppress(psutil.Error):
        pids.update(p.pid for p in psutil.Process(sup.ollama.pid).children(recursive=True))
    return pids


def _attach_controller(sup: Supervisor, slot: ControllerSlot, settings: Settings, prepared: Prepared,
                       recorder: Recorder, pending: PendingSink, log: Any, closers: list[Callable[[], None]],
                       tap: StatsTap | None, memory: MemoryWatch | None = None,
                       env: Mapping[str, str] | None = None, registry: ChildRegistry | None = None) -> None:
    """Right after Ollama started: the board, the policy, NVML, the status socket and metrics (their imports and
    setup cost start-up time that Ollama does not have to wait for)."""
    from launcher.controller import MAX_APPLIED, Controller
    from launcher.gpu_wait import presence
    from launcher.health_board import HealthBoard, in_container
    from launcher.nvml import NvmlSampler
    from launcher.nvml_poller import NvmlPoller
    from launcher.remedies import RemedyContext
    from launcher.restarts import RemedyBudget
    from launcher.resume_probe import cuda_probe_event
    from launcher.status_socket import StatusServer
    from launcher.uvm_reload import reload_events

    container = in_container(env or {})
    cuda_probe = uvm_reload = None
    if registry is not None:  # children (the probe, modprobe) through the child registry, from the NVML thread
        def child(name: str) -> Callable[[Sequence[str], Mapping[str, str], float], tuple[int | None, str, str]]:
            return lambda argv, child_env, timeout: registry.run(argv, child_env, timeout=timeout, name=name)

        def cuda_probe(after: str = "resume") -> Event:  # doctor's probe, under the shim Ollama runs with
            return cuda_probe_event(child("cuda-probe"), sup.plan.env, sup.plan.shim, after=after)

        def uvm_reload(key: str, reading: Any) -> list[Event]:  # modprobe with our own environment (its PATH)
            return reload_events(key, reading, child("modprobe"), env or os.environ,
                                 lambda: cuda_probe("uvm_reload"))
    # opened and sampled by the poller's thread, started once the controller takes events; reopened at each health
    # check while unavailable only where NVIDIA hardware is present (issue 16: a driver that comes up late)
    nvml = NvmlSampler(reopen=settings.health_interval > 0 and presence(container=container).any,
                       cuda_probe=cuda_probe, uvm_reload=uvm_reload)
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
            if tap is not None:
                tap.on_stats = exported[0].set_shim_server_stats

    def record(event: Event) -> None:
        for each in sinks:
            each(event)

    controller = Controller(settings=settings, budget=budget, log=log, record=record,
                            remedy_context=remedy_context,
                            health=HealthBoard(in_container=container, may_reload_uvm=settings.may_reload_uvm),
                            applied=deque(prepared.applied, maxlen=MAX_APPLIED),
                            advised={(a["subject"], a["cause"]): a for a in prepared.advised})
    pending.attach(controller.sink)
    poller = NvmlPoller(nvml, controller.sink, NVML_INTERVAL, health_every=settings.health_interval,
                        xids=settings.health_interval > 0).start()
    closers.append(poller.close)
    slot.reload_uvm = poller.request_uvm_reload
    if settings.health_interval > 0 and registry is not None:  # logind's PrepareForSleep, where it is reachable
        from launcher.logind import start_listener

        listener = start_listener(env or {}, registry, poller.host_resumed, on_state=lambda state, tool: (
            controller.sink(Event("supervisor", "resume_signal", now(), None,
                                  {"via": "logind", "tool": tool, "state": state}))))
        if listener is not None:
            closers.append(listener.close)
    slot.controller = controller
    try:
        status = StatusServer(settings.dirs.status_socket, lambda: add_memory(
            controller.status(sup.view()), memory.reports() if memory is not None else [])).start()
        sup.add_reader(status.fileno(), status.handle)
        closers.append(status.close)
    except OSError as exc:
        log.warning("status_socket_unavailable", path=str(settings.dirs.status_socket), error=str(exc))


def instance_lock_path(settings: Settings) -> Path:
    """The lock that makes one supervisor per OLLAMA_HOST."""
    return settings.dirs.runtime / f"serve-{settings.dirs.instance}.lock"


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Start and supervise Ollama; returns the exit code of DESIGN.md."""
    settings = ctx.settings
    notifier = Notifier(ctx.env)
    if settings.mode is Mode.OFF:
        prepared = prepare(settings, ctx.env, ChildRegistry(), ctx.log, args.args)
        exec_off(prepared.plan.argv, dict(prepared.plan.env), notifier)
        return Exit.USAGE  # not reached: exec replaces us, or raises

    out, err = SharedStream(sys.stdout.fileno()), SharedStream(sys.stderr.fileno())
    # our lines share stderr with Ollama (SharedStream is the file-like object structlog writes to)
    log = logsetup.configure(settings.log_format, settings.log_level, cast("IO[str]", err))
    missing = ollama_missing(resolve_ollama(settings.ollama, ctx.env))
    if missing is not None:  # said before any directory is created or shim compiled (a first try leaves nothing)
        log.error("ollama_not_started", argv0=settings.ollama, error=missing[1],
                  hint="install Ollama, or set OGPU_OLLAMA (--ollama) to the path of the ollama binary")
        return missing[0]
    try:
        ensure_dirs(settings.dirs, os.geteuid())
    except (UnsafeDirectoryError, OSError) as exc:
        print(f"ollama-gpu: configuration error: {exc}", file=sys.stderr)
        return Exit.USAGE
    try:  # before any socket: a second supervisor must never touch the first one's
        lock = InstanceLock.acquire(instance_lock_path(settings))
    except AlreadyRunning as exc:
        log.error("already_running", pid=exc.pid, host=settings.host.netloc, lock=str(exc.path),
                  action="one supervisor per OLLAMA_HOST: stop that one, or set another OLLAMA_HOST")
        return Exit.USAGE
    except OSError as exc:
        print(f"ollama-gpu: configuration error: cannot take the instance lock: {exc}", file=sys.stderr)
        return Exit.USAGE
    try:
        return _supervise(args, ctx, settings, notifier, out, err, log)
    finally:
        lock.release()


def _wait_for_driver(settings: Settings, env: Mapping[str, str], log: Any) -> None:
    """Issue 16, boot race: before Ollama's discovery, give a driver that is still loading OGPU_GPU_WAIT seconds."""
    from launcher.gpu_wait import nvml_probe, presence, wait_for_gpu
    from launcher.health_board import in_container

    container = in_container(env)
    result = wait_for_gpu(settings.gpu_wait, lambda: presence(container=container), nvml_probe(), time.monotonic,
                          time.sleep, on_wait=lambda seen: log.info(
                              "gpu_driver_waiting", up_to=settings.gpu_wait, pci_functions=len(seen.pci),
                              device_nodes=seen.nodes, driver_loaded=seen.driver,
                              meaning="NVIDIA hardware without a ready driver: Ollama starts once it is up"))
    if result.waited and result.ready:
        log.info("gpu_driver_ready", waited=round(result.waited, 1))
    elif result.waited:
        log.warning("gpu_driver_not_ready", waited=round(result.waited, 1),
                    consequence="Ollama starts now and may find no GPU",
                    action="check `nvidia-smi` and the driver service; raise OGPU_GPU_WAIT if it is only slow")


def _supervise(args: argparse.Namespace, ctx: Context, settings: Settings, notifier: Notifier, out: SharedStream,
               err: SharedStream, log: Any) -> int:
    if answering(settings.host):
        found = holder(settings.host.port)
        log.error("port_in_use", host=settings.host.netloc, holder_pid=found.pid if found else None,
                  holder=found.name if found else None,
                  consequence="Ollama cannot listen there; `ready` is not reported for a server that is not ours",
                  action="stop the process holding the port (a stale ollama?), or set another OLLAMA_HOST")
    if os.getpid() != 1 and not set_subreaper():
        log.warning("no_subreaper", problem="PR_SET_CHILD_SUBREAPER failed",
                    consequence="orphaned runners are reaped by init, not by us")

    _wait_for_driver(settings, ctx.env, log)
    holder_: list[Supervisor] = []
    registry = ChildRegistry(on_orphan=lambda orphan: holder_[0].on_orphan(orphan) if holder_ else None)
    guardian = GuardianKeeper(registry, log)  # before Ollama exists: it must never run unguarded
    prepared = prepare(settings, ctx.env, registry, log, args.args)
    for advice in prepared.plan.advice:
        log.warning("advice", fix=advice, mode=settings.mode.value)
    for change in prepared.plan.changes:
        if change.key not in ("LD_PRELOAD", "OGPU_EVENTS"):
            entries = {k: v for k, v in variable_changes(ctx.env, {change.key: change.value})[0].items()
                       if k in ("added", "removed") and v}  # a path list: the directory added, by name
            log.info("environment_change", key=change.key, action=change.action, value=change.value, **entries,
                     reason=change.reason)

    server = None
    if prepared.plan.shim is not None:
        me = os.getpid()
        try:  # only our own descendants are heard (Ollama, its runners, runners re-parented to us)
            server = shim_events.ShimEventServer(settings.dirs.events_socket,
                                                 peer_check=lambda pid: descends_from(pid, me)).start()
        except OSError as exc:
            log.warning("shim_events_unavailable", path=str(settings.dirs.events_socket), error=str(exc))
    tap = StatsTap(server) if server is not None else None

    recorder = Recorder(settings.record)
    pending = PendingSink()  # holds events until the controller exists (it is built after the spawn)
    pending(machine_event(prepared.driver))
    memory = MemoryWatch(log)
    on_line = _line_consumer(pending, memory)
    shim_path = prepared.plan.shim
    closers: list[Callable[[], None]] = []

    def reload() -> EnvPlan | None:
        """SIGHUP, in a worker: read the configuration layers again and plan anew (a bad file keeps the running
        plan; the loop forwards output and answers status meanwhile)."""
        if ctx.reload is None:
            return None
        new = ctx.reload()
        log_warnings(log, new.warnings)
        return prepare(new, ctx.env, registry, log, args.args).plan

    slot = ControllerSlot()
    system = OsSystem(registry, wake=lambda: holder_[0].wake() if holder_ else None, guardian=guardian.watch)
    supervisor = Supervisor(
        plan=prepared.plan, system=system, log=log, out=out, err=err, notifier=notifier,
        options=Options(host=settings.host, stop_grace=settings.stop_grace, ready_timeout=settings.ready_timeout,
                        watchdog_interval=notifier.watchdog_interval),
        crash_budget=CrashBudget(settings.restart_max, settings.restart_window, settings.restart_backoff,
                                 settings.restart_backoff_max),
        wiring=Wiring(
            sink=pending, line_sink=on_line, event_server=tap, reload=reload, policy=slot,
            make_watcher=lambda root: TreeWatcher(root, shim_path, settings.dirs.events_socket if server else None,
                                                  ignore=lambda pid: pid == guardian.pid),
            after_first_spawn=lambda sup: _attach_controller(sup, slot, settings, prepared, recorder, pending, log,
                                                             closers, tap, memory, ctx.env, registry),
        ),
    )
    holder_.append(supervisor)
    try:
        return supervisor.run()
    finally:
        for close in reversed(closers):
            close()
        if server is not None:
            log.debug("shim_events_stats", **server.stats().to_dict())
            server.close()
        recorder.close()
        guardian.close()  # end-of-file: the guardian kills what it was last told (0 after a clean stop)
