"""The supervisor: starts `ollama serve` in its own process group, forwards its output, watches its runners,
restarts it within budgets, and stops it (and every runner) on TERM/INT. Tiny and careful, like tini.

A state machine driven by `tick(now)`: signals, exits, readiness answers, reload results and timers are inputs
queued by whoever sees them (a signal handler, the reaper, the probe thread, the reload worker); the loop's thread
alone acts on them, and nothing in a tick blocks. Every transition goes through `launcher.lifecycle`'s table. The
OS is reached through one seam (`launcher.system.System`), so unit tests drive every transition with a fake clock.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from launcher.children import Child, Orphan, SpawnError, describe_status, exit_code
from launcher.directives import Directive, Fail, RestartWith, View
from launcher.environment import EnvPlan
from launcher.events import Event, now
from launcher.exitcodes import Exit
from launcher.lifecycle import RUNNING_STATES, State, Trigger, next_state
from launcher.ollama_host import OllamaHost
from launcher.output import ChunkQueue, Line, SharedStream
from launcher.proctree import TreeWatcher
from launcher.restarts import CrashBudget
from launcher.sdnotify import Notifier
from launcher.system import System
from launcher.vocabulary import INTENT_VARS, SCHEDULER_VARS

__all__ = ["Options", "Policy", "State", "Supervisor", "Wiring", "exec_off"]

SCAN_INTERVAL = 0.2  # while starting and for a few seconds after the tree changed (runners come and go)
IDLE_SCAN_INTERVAL = 1.0  # a quiet tree: the shim's hello is the first signal of a new runner anyway
BUSY_FOR = 5.0
READ_SIZE = 1 << 20
SWITCH_INTERVAL = 0.0005
PIPE_DRAIN = 1.0  # after Ollama's exit, its pipes are read this long more (a runner may still hold them)
KILL_WAIT = 5.0  # after SIGKILL, how long before an unreaped Ollama is reported (a process stuck in the kernel)
GATE_POLL = 0.05
RECHECK_POLL = 0.05
FORWARDED = (signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
STOPPING = (signal.SIGTERM, signal.SIGINT)
HANDLED = (*STOPPING, signal.SIGHUP, signal.SIGCHLD, *FORWARDED)

EventSink = Callable[[Event], None]
LineSink = Callable[[Line], None]


class Policy(Protocol):
    """The controller, as the supervisor sees it: decisions come back as data."""

    def tick(self, view: View, now: float) -> Sequence[Directive]:
        """Judge what arrived; what to do about it."""

    def ready_gate(self, since_answer: float) -> bool:
        """True once READY may be sent, `since_answer` seconds after /api/version first answered."""


class EventSource(Protocol):
    """The shim event server, as the loop uses it."""

    def fileno(self) -> int:
        """Readable when `poll(0)` has work."""

    def poll(self, timeout: float | None = 0.0) -> list[Event]:
        """What arrived."""

    @property
    def rechecking(self) -> bool:
        """Connections wait for a second look at their peer: poll again soon."""


def _drop(_event: Event) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Options:
    """The supervisor's settings."""

    host: OllamaHost
    stop_grace: float
    ready_timeout: float
    give_up_code: int = Exit.CRASH_LOOP
    watchdog_interval: float | None = None  # seconds between two WATCHDOG=1 (half of WATCHDOG_USEC); None: off


@dataclass(slots=True)
class Wiring:
    """The supervisor's optional collaborators, all given at construction (nothing is patched in later)."""

    sink: EventSink = _drop  # every event, to the board
    line_sink: LineSink | None = None  # Ollama's lines, in the parser thread
    event_server: EventSource | None = None
    make_watcher: Callable[[int], TreeWatcher] | None = None
    reload: Callable[[], EnvPlan | None] | None = None  # SIGHUP, run in a worker: a new plan, None: keep the old one
    policy: Policy | None = None
    after_first_spawn: Callable[[Supervisor], None] | None = None  # late setup that Ollama need not wait for


@dataclass(slots=True)
class _Pipe:
    name: str
    stream: SharedStream
    owner: int  # the pid whose output it carries
    close_at: float | None = None


@dataclass
class Supervisor:
    """Runs Ollama per `plan` until stopped; `run()` returns the process exit code (DESIGN.md exit codes)."""

    plan: EnvPlan
    options: Options
    system: System
    crash_budget: CrashBudget
    log: Any
    notifier: Notifier
    out: SharedStream
    err: SharedStream
    wiring: Wiring = field(default_factory=Wiring)

    state: State = State.STARTING
    ollama: Child | None = None
    restarts: int = 0
    exit_status: int | None = None
    version: str = ""
    # inputs, queued by any thread and taken by the loop's
    _signals: deque[int] = field(default_factory=deque)
    _orphans: deque[Orphan] = field(default_factory=deque)
    _answers: deque[tuple[int, str, bool | None, int | None]] = field(default_factory=deque)
    _reloads: deque[object] = field(default_factory=deque)
    # the loop's own
    _root_pid: int = field(default_factory=os.getpid)
    _sel: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    _readers: dict[int, Callable[[], None]] = field(default_factory=dict)
    _pipes: dict[int, _Pipe] = field(default_factory=dict)
    _chunks: ChunkQueue = field(default_factory=ChunkQueue)
    _parser_thread: threading.Thread | None = None
    _watcher: TreeWatcher | None = None
    _next_scan: float = 0.0
    _tree_changed: float = float("-inf")
    _restart_at: float | None = None  # BACKOFF: when to start again
    _deadline: float | None = None  # RESTARTING/STOPPING: when to KILL (then: when to say it is stuck)
    _killed: bool = False
    _killed_after_grace: bool = False
    _stop_signal: int | None = None
    _fail_code: int | None = None
    _pending_restart: str | None = None  # reason, applied when no model runner is alive
    _restart_reason: str = ""
    _answered_at: float | None = None
    _foreign_told: bool = False
    _exit_handled: Child | None = None
    _reload_busy: bool = False
    _reload_again: bool = False
    _next_watchdog: float = 0.0
    _sink_broken: bool = False
    _spawned_once: bool = False
    _wake_r: int = -1
    _wake_w: int = -1
    _old_wakeup: int = -1
    _old_handlers: dict[int, Any] = field(default_factory=dict)

    # --- the process ---------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Start Ollama and supervise it until it is stopped; returns our exit code."""
        # The parser thread is CPU-bound; with Python's default 5 ms GIL switch interval the pump waits up to 5 ms
        # per read and forwarding drops to ~70 MB/s. 0.5 ms keeps forwarding first (~200 MB/s on 2 cores).
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._install_signals()
        if self.wiring.line_sink is not None:
            self._parser_thread = threading.Thread(target=self._parse_lines, name="ollama-gpu-parser", daemon=True)
            self._parser_thread.start()
        server = self.wiring.event_server
        if server is not None:
            self.add_reader(server.fileno(), lambda: self._shim_events(self.system.monotonic()))
        try:
            self.tick(self.system.monotonic())
            while self.state is not State.STOPPED:
                for key, _mask in self._sel.select(self.next_timeout(self.system.monotonic())):
                    self._readers[key.fd]()
                self.tick(self.system.monotonic())
            self._wind_down(self.system.monotonic() + PIPE_DRAIN)
            return self._finish()
        finally:
            self._restore_signals()

    def add_reader(self, fd: int, handler: Callable[[], None]) -> None:
        """Call `handler` in the loop whenever `fd` is readable (the status socket registers itself here)."""
        self._readers[fd] = handler
        self._sel.register(fd, selectors.EVENT_READ)

    def _remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._sel.unregister(fd)

    def view(self) -> View:
        """What the controller and `status` see."""
        return View(state=self.state, plan=self.plan, ollama_pid=self.ollama.pid if self.ollama else None,
                    version=self.version, restarts=self.restarts, crash_recent=self.crash_budget.recent,
                    crash_max=self.crash_budget.max_restarts,
                    runner_alive=self._watcher is not None and self._watcher.has_alive("model_runner"))

    # --- inputs (any thread) -------------------------------------------------------------------------------------

    def on_signal(self, signum: int, _frame: object = None) -> None:
        """A signal arrived (the handler only records it)."""
        self._signals.append(signum)

    def on_orphan(self, orphan: Orphan) -> None:
        """An adopted orphan was reaped (the registry's callback, from whichever thread reaped)."""
        self._orphans.append(orphan)

    def on_answer(self, pid: int, version: str, owner: bool | None, holder: int | None = None) -> None:
        """The probe thread: /api/version answered (`owner`: whether the port is `pid`'s; `holder`: whose it is)."""
        self._answers.append((pid, version, owner, holder))

    def _on_reload_done(self, result: object) -> None:
        self._reloads.append(result)

    # --- the tick ------------------------------------------------------------------------------------------------

    def tick(self, t: float) -> None:
        """Take every queued input and act on it; nothing here blocks."""
        self._take_signals(t)
        self._take_exits(t)
        self._take_answers(t)
        self._take_reloads(t)
        self._timers(t)
        if self.state is State.STARTING:
            self._spawn(t)
        if self.wiring.event_server is not None and self.wiring.event_server.rechecking:
            self._shim_events(t)
        self._scan_if_due(t)
        if self.state is State.WAITING_READY and self._answered_at is not None and self._gate_open(t):
            self._became_ready(t)
        self._consult_policy(t)
        self._close_drained_pipes(t)
        if self.options.watchdog_interval is not None and t >= self._next_watchdog \
                and self.state is not State.STOPPED:
            self._next_watchdog = t + self.options.watchdog_interval
            self.notifier.watchdog()

    def next_timeout(self, t: float) -> float:
        """Seconds until the next timer is due (the loop waits at most this long for I/O)."""
        due = [t + 1.0]
        if self.state is State.WAITING_READY and self._answered_at is not None:
            due.append(t + GATE_POLL)
        if self._watcher is not None and self.state in RUNNING_STATES:
            due.append(self._next_scan)
        for when in (self._restart_at, self._deadline):
            if when is not None:
                due.append(when)
        if self.options.watchdog_interval is not None:
            due.append(self._next_watchdog)
        due.extend(p.close_at for p in self._pipes.values() if p.close_at is not None)
        if self.wiring.event_server is not None and self.wiring.event_server.rechecking:
            due.append(t + RECHECK_POLL)
        if self._signals or self._answers or self._reloads or self._orphans:
            due.append(t)
        return max(0.0, min(due) - t)

    def _transition(self, trigger: Trigger, **why: Any) -> None:
        target = next_state(self.state, trigger)
        if target is not self.state:
            self._emit(Event("supervisor", "state", now(), None,
                             {"from": self.state.value, "to": target.value, "on": trigger.value, **why}))
        self.state = target

    # --- signals -------------------------------------------------------------------------------------------------

    def _take_signals(self, t: float) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum in STOPPING:
                self.stop(signum, t)
            elif signum == signal.SIGHUP:
                self._on_hup(t)
            elif signum in FORWARDED and self._ollama_alive():
                assert self.ollama is not None
                self.system.kill(self.ollama.pid, signum)
                self.log.info("signal_forwarded", signal=signal.Signals(signum).name, pid=self.ollama.pid)
            # SIGCHLD: the reap below

    def stop(self, signum: int, t: float) -> None:
        """Begin a stop: the signal to Ollama, KILL of its group after the grace period."""
        if self.state in (State.STOPPING, State.STOPPED):
            return
        self._stop_signal = signum
        self.notifier.stopping()
        self.log.info("stopping", signal=signal.Signals(signum).name, grace_s=self.options.stop_grace)
        if self.state in (State.STARTING, State.BACKOFF):
            self.exit_status = self._fail_code if self._fail_code is not None else Exit.OK
            self._restart_at = None
            self._transition(Trigger.STOP, reason="stopped while Ollama was down")
            return
        deadline = t + self.options.stop_grace
        if self.state is State.RESTARTING and self._deadline is not None:
            deadline = min(deadline, self._deadline)  # the restart's TERM already runs against its own grace
            self._pending_restart = None
        else:
            self._killed = False
        self._deadline = deadline
        self._transition(Trigger.STOP, signal=signum)
        self._signal_ollama(signum)

    def fail(self, code: int, t: float) -> None:
        """Stop Ollama and exit with `code`."""
        self._fail_code = code
        self.stop(signal.SIGTERM, t)

    def _on_hup(self, t: float) -> None:
        self.log.info("reload_requested")
        if self.state in (State.STOPPING, State.STOPPED):
            return
        if self.wiring.reload is None:
            self.request_restart("configuration reloaded (SIGHUP)", t)
            return
        if self._reload_busy:  # a second HUP while one is being prepared: prepare again afterwards
            self._reload_again = True
            return
        self._reload_busy = True
        self.system.submit(self.wiring.reload, self._on_reload_done)

    def _take_reloads(self, t: float) -> None:
        while self._reloads:
            result = self._reloads.popleft()
            self._reload_busy = False
            if self.state in (State.STOPPING, State.STOPPED):
                continue
            if isinstance(result, BaseException):  # a bad new config keeps the old one running
                self.log.error("reload_failed", error=str(result)[:300], action="keeping the running configuration")
            else:
                if isinstance(result, EnvPlan):
                    self.plan = result
                self.request_restart("configuration reloaded (SIGHUP)", t)
            if self._reload_again and self.wiring.reload is not None:
                self._reload_again = False
                self._reload_busy = True
                self.system.submit(self.wiring.reload, self._on_reload_done)

    # --- exits ---------------------------------------------------------------------------------------------------

    def _take_exits(self, t: float) -> None:
        self.system.reap()  # statuses land on their Child, whichever thread reaped them
        while self._orphans:
            self._orphan_reaped(self._orphans.popleft())
        child = self.ollama
        if child is not None and child.done.is_set() and child is not self._exit_handled:
            self._exit_handled = child
            self._ollama_exited(child, t)

    def _ollama_alive(self) -> bool:
        return self.ollama is not None and not self.ollama.done.is_set()

    def _ollama_exited(self, child: Child, t: float) -> None:
        status = child.status if child.status is not None else 0
        code = exit_code(status)
        self._emit(Event("supervisor", "ollama_exited", now(), child.pid, describe_status(status)))
        # Runners have no parent-death signal: whatever is left of the group is orphaned. Kill it.
        self._kill_group("Ollama exited")
        self.system.guard(0)
        for pipe in self._pipes.values():
            if pipe.owner == child.pid and pipe.close_at is None:
                pipe.close_at = t + PIPE_DRAIN
        self._deadline = None
        if self.state is State.STOPPING:
            self.exit_status = Exit.OK if code == 0 else code
            if self._fail_code is not None:
                self.exit_status = self._fail_code
            self.log.info("stopped", ollama_exit=code, killed_after_grace=self._killed_after_grace)
            self._transition(Trigger.EXITED, ollama_exit=code)
            return
        if self.state is State.RESTARTING:
            self._emit(Event("supervisor", "restarted", now(), child.pid, {"reason": self._restart_reason}))
            self._transition(Trigger.OLD_GONE, reason=self._restart_reason)
            return
        self.log.warning("ollama_exited", pid=child.pid, **describe_status(status))
        if code == 0:
            self.exit_status = Exit.OK
            self._transition(Trigger.EXITED_CLEAN, reason="Ollama exited by itself with 0")
            return
        if self.crash_budget.max_restarts == 0:
            self.exit_status = code
            self._transition(Trigger.GAVE_UP, reason="no restarts configured (OGPU_RESTART_MAX=0)")
            return
        delay = self.crash_budget.on_crash(t)
        if delay is None:
            self.log.error("crash_loop", restarts=self.crash_budget.recent, window_s=self.crash_budget.window,
                           action="giving up; systemd's Restart= takes over", exit=self.options.give_up_code)
            self.notifier.status("crash loop: gave up")
            self.exit_status = self.options.give_up_code
            self._transition(Trigger.GAVE_UP, reason="crash loop")
            return
        self.log.info("restart_scheduled", delay_s=delay, crashes=self.crash_budget.recent)
        self.notifier.status(f"Ollama exited ({code}); restarting in {delay:g}s")
        self._restart_at = t + delay
        self._transition(Trigger.CRASHED, delay=delay)

    def _orphan_reaped(self, orphan: Orphan) -> None:
        status = describe_status(orphan.status)
        self.log.debug("orphan_reaped", pid=orphan.pid, **status)
        self._emit(Event("supervisor", "orphan_reaped", now(), orphan.pid, status))
        if self._watcher is not None:
            for event in self._watcher.exited(orphan.pid, status):
                self._emit(event)

    # --- timers --------------------------------------------------------------------------------------------------

    def _timers(self, t: float) -> None:
        if self.state is State.BACKOFF and self._restart_at is not None and t >= self._restart_at:
            self._restart_at = None
            self._transition(Trigger.BACKOFF_OVER)
        if self.state in (State.RESTARTING, State.STOPPING) and self._deadline is not None and t >= self._deadline:
            if not self._killed:
                self._killed = True
                self._killed_after_grace = self.state is State.STOPPING
                self._kill_group("grace period over")
                self._deadline = t + KILL_WAIT
            else:
                self._deadline = None
                self.log.error("ollama_unkillable", pid=self.ollama.pid if self.ollama else None,
                               problem="not reaped 5 s after SIGKILL (stuck in the kernel: a driver call?)",
                               action="still waiting for it")

    # --- starting ------------------------------------------------------------------------------------------------

    def _spawn(self, t: float) -> None:
        if self._spawned_once:
            self.restarts += 1
        try:
            spawned = self.system.spawn(self.plan)
        except SpawnError as exc:
            self.log.error("ollama_not_started", argv0=self.plan.argv[0], error=exc.strerror,
                           hint="set OGPU_OLLAMA to the path of the ollama binary")
            self.exit_status = exc.exit_code
            self._transition(Trigger.SPAWN_FAILED, reason="spawn failed")
            return
        child = self.ollama = spawned.child
        self.system.guard(child.pid)
        for fd, name, stream in ((spawned.stdout, "stdout", self.out), (spawned.stderr, "stderr", self.err)):
            if fd is not None:
                self._pipes[fd] = _Pipe(name, stream, child.pid)
                self.add_reader(fd, lambda fd=fd: self._pump(fd))  # type: ignore[misc]
        self._answered_at = None
        self._foreign_told = False
        self._killed = self._killed_after_grace = False
        self._transition(Trigger.SPAWNED, pid=child.pid)
        self.log.info("ollama_started", pid=child.pid, argv=list(self.plan.argv), restarts=self.restarts,
                      shim=str(self.plan.shim) if self.plan.shim else None)
        # the operator's choices and what frames them (scheduler, CUDA's device order), None = unset
        intent = {key: self.plan.env.get(key) for key in (*INTENT_VARS, *SCHEDULER_VARS, "CUDA_DEVICE_ORDER")}
        self._emit(Event("supervisor", "ollama_started", now(), child.pid,
                         {"argv": list(self.plan.argv), "restarts": self.restarts, "env": intent}))
        self._watcher = self.wiring.make_watcher(self._root_pid) if self.wiring.make_watcher else None
        self._next_scan = t
        self.system.probe(child, self.options.host, self.options.ready_timeout, self.on_answer)
        if not self._spawned_once:
            self._spawned_once = True
            if self.wiring.after_first_spawn is not None:
                try:
                    self.wiring.after_first_spawn(self)
                except Exception as exc:  # our bug: Ollama runs on, observed less
                    self._internal_error("setup", exc)

    def _take_answers(self, t: float) -> None:
        while self._answers:
            pid, version, owner, holder = self._answers.popleft()
            child = self.ollama
            if child is None or pid != child.pid or self.state is not State.WAITING_READY:
                continue  # an answer for an Ollama that is gone, or already ready
            if owner is False:
                if not self._foreign_told:
                    self._foreign_told = True
                    self.log.error("port_held_by_another", port=self.options.host.port, holder_pid=holder,
                                   our_pid=pid, problem="/api/version answers, but not from the Ollama we started",
                                   action="not reporting ready; stop the other server (e.g. a stale ollama)")
                continue
            if self._answered_at is None:
                self._answered_at = t
                self.version = version
                self.log.info("api_answering", pid=pid, ollama_version=version)

    def _gate_open(self, t: float) -> bool:
        assert self._answered_at is not None
        policy = self.wiring.policy
        if policy is None or self._sink_broken:
            return True
        try:
            return bool(policy.ready_gate(t - self._answered_at))
        except Exception as exc:  # our bug: never hold READY back for it
            self._internal_error("ready_gate", exc)
            return True

    def _became_ready(self, t: float) -> None:
        assert self.ollama is not None
        self._answered_at = None
        self._transition(Trigger.READY, version=self.version)
        self.log.info("ready", pid=self.ollama.pid, url=self.options.host.url("/api/version"),
                      ollama_version=self.version)
        self._emit(Event("supervisor", "ready", now(), self.ollama.pid, {"version": self.version}))
        self.notifier.ready(f"ollama {self.version} ready on {self.options.host.netloc}")

    # --- restarts ------------------------------------------------------------------------------------------------

    def request_restart(self, reason: str, t: float) -> None:
        """Restart Ollama with the current plan as soon as no model runner is alive (never mid-request). Where
        Ollama is down (STARTING, BACKOFF) or already restarting, the next start takes the current plan anyway."""
        if self.state not in RUNNING_STATES:
            return
        if self._watcher is not None:
            self._scan_tree(t)  # decide on the tree as it is now, not as it was at the last scan
        if self._runner_alive():
            self._pending_restart = reason
            self.log.info("restart_deferred", reason=reason, until="no model is loaded")
            return
        self._restart_now(reason, t)

    def _restart_now(self, reason: str, t: float) -> None:
        if self.state not in RUNNING_STATES or not self._ollama_alive():
            return
        assert self.ollama is not None
        self._pending_restart = None
        self._restart_reason = reason
        self.log.info("restarting", reason=reason, pid=self.ollama.pid)
        self._deadline = t + self.options.stop_grace
        self._killed = False
        self._answered_at = None
        self._transition(Trigger.RESTART, reason=reason)
        self._signal_ollama(signal.SIGTERM)

    def _signal_ollama(self, signum: int) -> None:
        if self._ollama_alive():
            assert self.ollama is not None
            self.system.kill(self.ollama.pid, signum)

    def _kill_group(self, why: str) -> None:
        """SIGKILL Ollama's process group (its runners share it) and any runner that escaped to us as orphan."""
        if self.ollama is None:
            return
        killed = self.system.killpg(self.ollama.pid, signal.SIGKILL)
        for pid in self._escaped_runners():
            killed = self.system.kill(pid, signal.SIGKILL) or killed
        if killed:
            self.log.info("killed_process_group", pgid=self.ollama.pid, reason=why)

    def _escaped_runners(self) -> list[int]:
        """Our descendants that came from Ollama: everything below us except our own helpers' subtrees (the
        guardian, a compiler the reload worker runs)."""
        if self._watcher is None:
            return []
        helpers = self.system.helpers()
        skipped: set[int] = set()
        out: list[int] = []
        for info in self._watcher.descendants():
            if info.pid in helpers or info.ppid in skipped:
                skipped.add(info.pid)
                continue
            out.append(info.pid)
        return out

    # --- the policy ----------------------------------------------------------------------------------------------

    def _consult_policy(self, t: float) -> None:
        policy = self.wiring.policy
        if policy is None or self._sink_broken or self.state not in RUNNING_STATES:
            return
        try:
            directives = policy.tick(self.view(), t)
        except Exception as exc:  # our bug: drop to observe, Ollama keeps running
            self._internal_error("policy", exc)
            return
        for directive in directives:
            if isinstance(directive, Fail):
                self.fail(directive.code, t)
            elif isinstance(directive, RestartWith):
                self.plan = directive.plan
                if directive.immediately:
                    self._restart_now(directive.reason, t)
                else:
                    self.request_restart(directive.reason, t)

    # --- the tree ------------------------------------------------------------------------------------------------

    def _scan_if_due(self, t: float) -> None:
        if self._watcher is None or t < self._next_scan or self.state not in RUNNING_STATES:
            return
        busy = self.state is State.WAITING_READY or t - self._tree_changed < BUSY_FOR
        self._next_scan = t + (SCAN_INTERVAL if busy else IDLE_SCAN_INTERVAL)
        self._scan_tree(t)
        if self._pending_restart is not None and not self._runner_alive():
            self._restart_now(self._pending_restart, t)

    def _scan_tree(self, t: float) -> None:
        assert self._watcher is not None
        for event in self._watcher.scan():
            self._tree_changed = t
            if event.kind == "runner_env_missing":
                self.log.warning("runner_env_missing", pid=event.pid, cls=event.data.get("cls"),
                                 shim_in_env=event.data.get("shim_in_env"),
                                 shim_mapped=event.data.get("shim_mapped"))
            elif event.kind == "runner_started":
                self.log.debug("runner_started", pid=event.pid, cls=event.data.get("cls"))
            self._emit(event)

    def _runner_alive(self) -> bool:
        return self._watcher is not None and self._watcher.has_alive("model_runner")

    def _shim_events(self, t: float) -> None:
        server = self.wiring.event_server
        if server is None:
            return
        for event in server.poll(0):
            if event.kind == "hello":  # a new process under the shim: audit the tree now and keep looking closely
                self._tree_changed = self._next_scan = t
            self._emit(event)

    # --- output --------------------------------------------------------------------------------------------------

    def _pump(self, fd: int) -> None:
        """Forward first; then hand the same bytes to the parser's queue (never waiting for it)."""
        pipe = self._pipes.get(fd)
        if pipe is None:
            return
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_pipe(fd)
            return
        pipe.stream.forward(data)
        if self.wiring.line_sink is not None:
            self._chunks.offer(pipe.name, data)

    def _close_pipe(self, fd: int) -> None:
        pipe = self._pipes.pop(fd)
        self._remove_reader(fd)
        os.close(fd)
        pipe.stream.end_of_input()

    def _close_drained_pipes(self, t: float) -> None:
        """A process outside the group (or a stuck one) still holds an old pipe: stop reading it."""
        for fd in [fd for fd, p in self._pipes.items() if p.close_at is not None and t >= p.close_at]:
            self._close_pipe(fd)

    def _parse_lines(self) -> None:
        line_sink = self.wiring.line_sink
        assert line_sink is not None
        for line in self._chunks.lines():
            if self._sink_broken:
                continue
            try:
                line_sink(line)
            except Exception as exc:  # our bug must not take Ollama down: drop to observe
                self._internal_error("parser", exc)

    def _wind_down(self, deadline: float) -> None:
        """Stopped: forward what the pipes still hold and reap what is left of the group (bounded; the loop is
        over, so waiting here holds nothing up)."""
        clock = self.system.monotonic
        while self._pipes and clock() < deadline:
            for key, _mask in self._sel.select(max(0.0, deadline - clock())):
                if key.fd in self._pipes:
                    self._pump(key.fd)
                elif key.fd == self._wake_r:
                    self._drain_wakeups()
            self.system.reap()
        for fd in list(self._pipes):
            self._close_pipe(fd)
        reap_until = clock() + 2.0
        while self._escaped_runners() and clock() < reap_until:
            self.system.reap()
            time.sleep(0.02)
        self.system.reap()

    def _finish(self) -> int:
        self._chunks.close()
        if self._parser_thread is not None:
            self._parser_thread.join(timeout=5)
        self._emit(Event("supervisor", "stopped", now(), None, {
            "exit": self.exit_status or 0, "parser_skipped_bytes": self._chunks.skipped_bytes}))
        return self.exit_status if self.exit_status is not None else Exit.OK

    # --- events --------------------------------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        if self._sink_broken:
            return
        try:
            self.wiring.sink(event)
        except Exception as exc:
            self._internal_error("board", exc)

    def _internal_error(self, where: str, exc: Exception) -> None:
        if not self._sink_broken:
            self._sink_broken = True
            self.log.error("internal_error", where=where, error=type(exc).__name__, detail=str(exc)[:300],
                           action="dropping to observe; Ollama keeps running")

    # --- signal plumbing -----------------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._old_handlers = {signum: signal.signal(signum, self.on_signal) for signum in HANDLED}
        self.add_reader(self._wake_r, self._drain_wakeups)

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(self._old_wakeup)
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def wake(self) -> None:
        """Wake the loop from another thread (the probe, the reload worker)."""
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"\0")

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass


def exec_off(argv: Sequence[str], env: dict[str, str], notifier: Notifier) -> None:
    """Mode off: become `ollama serve` (same pid, so systemd's main process stays right); READY=1 first."""
    notifier.ready("mode off: exec ollama serve")
    notifier.watchdog_off()  # the shipped units set WatchdogSec=; Ollama itself never pings
    os.execvpe(argv[0], list(argv), env)
