"""The supervisor: starts `ollama serve` in its own process group, forwards its output, watches its runners,
restarts it within budgets, and stops it (and every runner) on TERM/INT. Tiny and careful, like tini.

One thread runs the loop below; the parser consumes lines from a bounded queue in its own thread, and the
readiness probe runs in a short-lived thread. Signals arrive through Python's wakeup fd.
"""

from __future__ import annotations

import contextlib
import enum
import os
import selectors
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from launcher.children import Child, ChildRegistry, Orphan, SpawnError, describe_status, exit_code
from launcher.environment import EnvPlan
from launcher.events import Event, now
from launcher.exitcodes import Exit
from launcher.ollama_host import OllamaHost
from launcher.output import ChunkQueue, Line, SharedStream
from launcher.proctree import TreeWatcher
from launcher.readiness import probe_version
from launcher.restarts import CrashBudget
from launcher.sdnotify import Notifier
from launcher.vocabulary import INTENT_VARS, SCHEDULER_VARS

SCAN_INTERVAL = 0.2  # while starting and for a few seconds after the tree changed (runners come and go)
IDLE_SCAN_INTERVAL = 1.0  # a quiet tree: the shim's hello is the first signal of a new runner anyway
BUSY_FOR = 5.0
READ_SIZE = 1 << 20
SWITCH_INTERVAL = 0.0005
F_SETPIPE_SZ = 1031
FORWARDED = (signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
STOPPING = (signal.SIGTERM, signal.SIGINT)


class State(enum.Enum):
    """Where the supervisor is (one value at a time; every transition goes through `_set_state`)."""

    STARTING = "starting"
    RUNNING = "running"  # Ollama answered /api/version
    BACKOFF = "backoff"  # waiting to restart after a crash
    STOPPING = "stopping"
    STOPPED = "stopped"


EventSink = Callable[[Event], None]
LineSink = Callable[[Line], None]


@dataclass
class Supervisor:
    """Runs Ollama per `plan` until stopped; `run()` returns the process exit code (DESIGN.md exit codes)."""

    plan: EnvPlan
    host: OllamaHost
    registry: ChildRegistry
    log: Any
    out: SharedStream
    err: SharedStream
    notifier: Notifier
    crash_budget: CrashBudget
    stop_grace: float
    ready_timeout: float
    sink: EventSink = lambda _e: None
    line_sink: LineSink | None = None
    event_server: Any = None  # launcher.shim_events.ShimEventServer (fileno(), poll())
    make_watcher: Callable[[int], TreeWatcher] | None = None
    reload: Callable[[], EnvPlan | None] | None = None  # SIGHUP: a new plan, or None to keep the old one
    give_up_code: int = Exit.CRASH_LOOP
    # READY waits for this too once /api/version answers: True go, False wait (e.g. GPU discovery still running).
    ready_gate: Callable[[float], bool] | None = None  # called with the seconds since the API first answered
    tick: Callable[[Supervisor], None] | None = None  # runs in the loop's thread each turn (decisions, remedies)
    status_server: Any = None  # launcher.status.StatusServer (fileno(), handle())
    after_start: Callable[[Supervisor], None] | None = None  # once, right after the first spawn (late setup)

    state: State = State.STARTING
    ollama: Child | None = None
    restarts: int = 0
    exit_status: int | None = None
    _signals: list[int] = field(default_factory=list)
    _wake_r: int = -1
    _wake_w: int = -1
    _sel: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    _pipes: dict[int, tuple[str, SharedStream]] = field(default_factory=dict)
    _chunks: ChunkQueue = field(default_factory=ChunkQueue)
    _parser_thread: threading.Thread | None = None
    _watcher: TreeWatcher | None = None
    _next_scan: float = 0.0
    _tree_changed: float = 0.0
    _restart_at: float | None = None
    _stop_deadline: float | None = None
    _stop_signal: int | None = None
    _ready_flag: threading.Event = field(default_factory=threading.Event)
    _pending_restart: str | None = None  # reason, applied when no model runner is alive
    _sink_broken: bool = False
    _killed_after_grace: bool = False
    _answered_at: float | None = None  # when /api/version first answered in this start
    _fail_code: int | None = None
    _ready_version: str = ""
    version: str = ""

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Start Ollama and supervise it until it is stopped; returns our exit code."""
        # The parser thread is CPU-bound; with Python's default 5 ms GIL switch interval the pump waits up to 5 ms
        # per read and forwarding drops to ~70 MB/s. 0.5 ms keeps forwarding first (~200 MB/s on 2 cores).
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._install_signals()
        if self.line_sink is not None:
            self._parser_thread = threading.Thread(target=self._parse_lines, name="ollama-gpu-parser", daemon=True)
            self._parser_thread.start()
        if self.event_server is not None:
            self._sel.register(self.event_server.fileno(), selectors.EVENT_READ, "shim")
        if self.status_server is not None:
            self._sel.register(self.status_server.fileno(), selectors.EVENT_READ, "status")
        try:
            if not self._start():
                return self._finish()
            if self.after_start is not None:
                try:
                    self.after_start(self)
                except Exception as exc:  # our bug: Ollama runs on, observed less
                    self._internal_error("setup", exc)
            while self.state is not State.STOPPED:
                self._loop_once()
            return self._finish()
        finally:
            self._restore_signals()

    def _finish(self) -> int:
        self._chunks.close()
        if self._parser_thread is not None:
            self._parser_thread.join(timeout=5)
        self._emit(Event("supervisor", "stopped", now(), None, {
            "exit": self.exit_status or 0, "parser_skipped_bytes": self._chunks.skipped_bytes}))
        return self.exit_status if self.exit_status is not None else Exit.OK

    def _set_state(self, state: State, **why: Any) -> None:
        if state is self.state:
            return
        self._emit(Event("supervisor", "state", now(), None, {"from": self.state.value, "to": state.value, **why}))
        self.state = state

    def _start(self) -> bool:
        """Spawn Ollama; False when it cannot be started at all (exit code set)."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self.ollama = self.registry.spawn(self.plan.argv, self.plan.env, name="ollama", stdout=out_w,
                                              stderr=err_w, own_group=True)
        except SpawnError as exc:
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            self.log.error("ollama_not_started", argv0=self.plan.argv[0], error=exc.strerror,
                           hint="set OGPU_OLLAMA to the path of the ollama binary")
            self.exit_status = exc.exit_code
            self._set_state(State.STOPPED, reason="spawn failed")
            return False
        os.close(out_w)
        os.close(err_w)
        for fd, name, stream in ((out_r, "stdout", self.out), (err_r, "stderr", self.err)):
            os.set_blocking(fd, False)
            _grow_pipe(fd)
            self._pipes[fd] = (name, stream)
            self._sel.register(fd, selectors.EVENT_READ, "pipe")
        self._set_state(State.STARTING, pid=self.ollama.pid)
        self.log.info("ollama_started", pid=self.ollama.pid, argv=list(self.plan.argv), restarts=self.restarts,
                      shim=str(self.plan.shim) if self.plan.shim else None)
        # the operator's choices and what frames them (scheduler, CUDA's device order), None = unset
        intent = {key: self.plan.env.get(key) for key in (*INTENT_VARS, *SCHEDULER_VARS, "CUDA_DEVICE_ORDER")}
        self._emit(Event("supervisor", "ollama_started", now(), self.ollama.pid,
                         {"argv": list(self.plan.argv), "restarts": self.restarts, "env": intent}))
        self._watcher = self.make_watcher(os.getpid()) if self.make_watcher else None
        self._ready_flag.clear()
        threading.Thread(target=self._probe_ready, args=(self.ollama,), name="ollama-gpu-ready", daemon=True).start()
        return True

    def _probe_ready(self, child: Child) -> None:
        """Poll /api/version: every 10 ms for the first 2 s (a refused connect costs microseconds), then 100 ms."""
        start = time.monotonic()
        deadline = start + self.ready_timeout
        while not child.done.is_set() and time.monotonic() < deadline:
            version = probe_version(self.host, timeout=1.0)
            if version is not None and not child.done.is_set():
                self._ready_version = version  # read by the loop once _ready_flag is seen
                self._ready_flag.set()
                self._wake()
                return
            child.done.wait(0.01 if time.monotonic() - start < 2.0 else 0.1)

    # --- the loop ----------------------------------------------------------------------------------------------

    def _next_timeout(self) -> float:
        t = time.monotonic()
        candidates = [1.0]
        if self._answered_at is not None and self.state is State.STARTING:
            candidates.append(0.05)  # waiting on the ready gate
        if self._watcher is not None and self.state in (State.STARTING, State.RUNNING):
            candidates.append(self._next_scan - t)
        if self._restart_at is not None:
            candidates.append(self._restart_at - t)
        if self._stop_deadline is not None:
            candidates.append(self._stop_deadline - t)
        return max(0.0, min(candidates))

    def _loop_once(self) -> None:
        for key, _mask in self._sel.select(self._next_timeout()):
            if key.data == "wake":
                self._drain_wakeups()
            elif key.data == "pipe":
                self._pump(key.fd)
            elif key.data == "shim":
                self._shim_events()
            elif key.data == "status":
                self.status_server.handle()
        self._handle_signals()
        for child in self.registry.reap():
            if child is self.ollama:
                self._ollama_exited(child)
        t = time.monotonic()
        if self._ready_flag.is_set() and self.state is State.STARTING:
            self._ready_flag.clear()
            self._answered_at = t
            self.version = self._ready_version
            self.log.info("api_answering", pid=self.ollama.pid if self.ollama else None, ollama_version=self.version)
        if self._answered_at is not None and self.state is State.STARTING and self._gate_open(t):
            self._became_ready()
        if self._watcher is not None and t >= self._next_scan and self.state in (State.STARTING, State.RUNNING):
            busy = self.state is State.STARTING or t - self._tree_changed < BUSY_FOR
            self._next_scan = t + (SCAN_INTERVAL if busy else IDLE_SCAN_INTERVAL)
            self._scan()
        if self._restart_at is not None and t >= self._restart_at and self.state is State.BACKOFF:
            self._restart_at = None
            self.restarts += 1
            self._start()
        if self._stop_deadline is not None and t >= self._stop_deadline and self.state is State.STOPPING:
            self._kill_group("grace period over")
            self._killed_after_grace = True
            self._stop_deadline = t + 5.0  # reap deadline after KILL
            if self.ollama is None or self.ollama.done.is_set():
                self._set_state(State.STOPPED)
        if self.tick is not None and not self._sink_broken and self.state in (State.STARTING, State.RUNNING):
            try:
                self.tick(self)
            except Exception as exc:  # our bug: drop to observe, Ollama keeps running
                self._internal_error("policy", exc)

    def add_status_server(self, server: Any) -> None:
        """Serve `ollama-gpu status` from this loop (set up after the spawn)."""
        self.status_server = server
        self._sel.register(server.fileno(), selectors.EVENT_READ, "status")

    def _gate_open(self, t: float) -> bool:
        assert self._answered_at is not None
        if self.ready_gate is None:
            return True
        try:
            return bool(self.ready_gate(t - self._answered_at))
        except Exception as exc:  # our bug: never hold READY back for it
            self._internal_error("ready_gate", exc)
            return True

    def _became_ready(self) -> None:
        assert self.ollama is not None
        self._answered_at = None
        version = self.version
        self._set_state(State.RUNNING, version=version)
        self.log.info("ready", pid=self.ollama.pid, url=self.host.url("/api/version"), ollama_version=version)
        self._emit(Event("supervisor", "ready", now(), self.ollama.pid, {"version": version}))
        self.notifier.ready(f"ollama {version} ready on {self.host.netloc}")

    # --- output ------------------------------------------------------------------------------------------------

    def _pump(self, fd: int) -> None:
        """Forward first; then hand the same bytes to the parser's queue (never waiting for it)."""
        name, stream = self._pipes[fd]
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._sel.unregister(fd)
            os.close(fd)
            del self._pipes[fd]
            stream.end_of_input()
            return
        stream.forward(data)
        if self.line_sink is not None:
            self._chunks.offer(name, data)

    def _parse_lines(self) -> None:
        assert self.line_sink is not None
        for line in self._chunks.lines():
            if self._sink_broken:
                continue
            try:
                self.line_sink(line)
            except Exception as exc:  # our bug must not take Ollama down: drop to observe
                self._internal_error("parser", exc)

    def _drain_pipes(self, deadline: float) -> None:
        """After Ollama ended: forward what its pipes still hold (runners may keep them open; bounded wait)."""
        while self._pipes and time.monotonic() < deadline:
            ready = self._sel.select(max(0.0, deadline - time.monotonic()))
            for key, _mask in ready:
                if key.data == "pipe":
                    self._pump(key.fd)
                elif key.data == "wake":
                    self._drain_wakeups()
            self.registry.reap()
        for fd in list(self._pipes):  # a process outside the group still holds the pipe: stop reading it
            _name, stream = self._pipes.pop(fd)
            self._sel.unregister(fd)
            os.close(fd)
            stream.end_of_input()

    # --- events ------------------------------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        if self._sink_broken:
            return
        try:
            self.sink(event)
        except Exception as exc:
            self._internal_error("board", exc)

    def _internal_error(self, where: str, exc: Exception) -> None:
        if not self._sink_broken:
            self._sink_broken = True
            self.log.error("internal_error", where=where, error=type(exc).__name__, detail=str(exc)[:300],
                           action="dropping to observe; Ollama keeps running")

    def _shim_events(self) -> None:
        if self.event_server is None:
            return
        for event in self.event_server.poll(0):
            if event.kind == "hello":  # a new process under the shim: audit the tree now and keep looking closely
                self._tree_changed = self._next_scan = time.monotonic()
            self._emit(event)

    def _scan(self) -> None:
        self._scan_tree()
        if self._pending_restart is not None and not self._model_runner_alive():
            reason, self._pending_restart = self._pending_restart, None
            self._restart_now(reason)

    def _scan_tree(self) -> None:
        assert self._watcher is not None
        for event in self._watcher.scan():
            self._tree_changed = time.monotonic()
            if event.kind == "runner_env_missing":
                self.log.warning("runner_env_missing", pid=event.pid, cls=event.data.get("cls"),
                                 shim_in_env=event.data.get("shim_in_env"),
                                 shim_mapped=event.data.get("shim_mapped"))
            elif event.kind == "runner_started":
                self.log.debug("runner_started", pid=event.pid, cls=event.data.get("cls"))
            self._emit(event)

    def _model_runner_alive(self) -> bool:
        if self._watcher is None:
            return False
        return any(t.cls == "model_runner" for t in self._watcher._known.values())

    # --- signals -----------------------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._old_handlers = {}
        for signum in (*STOPPING, signal.SIGHUP, signal.SIGCHLD, *FORWARDED):
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(self._old_wakeup)
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGCHLD:
                continue  # reaping follows in the loop
            if signum in STOPPING:
                self.stop(signum)
            elif signum == signal.SIGHUP:
                self._on_hup()
            elif signum in FORWARDED and self.ollama is not None and not self.ollama.done.is_set():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.ollama.pid, signum)
                self.log.info("signal_forwarded", signal=signal.Signals(signum).name, pid=self.ollama.pid)

    def _on_hup(self) -> None:
        self.log.info("reload_requested")
        if self.reload is not None:
            try:
                plan = self.reload()
            except Exception as exc:  # a bad new config keeps the old one running
                self.log.error("reload_failed", error=str(exc)[:300], action="keeping the running configuration")
                return
            if plan is not None:
                self.plan = plan
        self.request_restart("configuration reloaded (SIGHUP)")

    # --- restarts and stops ------------------------------------------------------------------------------------

    def restart_with(self, plan: EnvPlan, reason: str, *, immediately: bool) -> None:
        """Adopt `plan` and restart: now (discovery-time, before READY) or once no model runner is alive."""
        self.plan = plan
        if immediately:
            if self.state in (State.STARTING, State.RUNNING):
                self._restart_now(reason)
            return
        self.request_restart(reason)

    def model_runner_alive(self) -> bool:
        """A model is loaded (a model runner process is alive): restarting now would cut a request."""
        if self._watcher is not None:
            self._scan_tree()
        return self._model_runner_alive()

    def request_restart(self, reason: str) -> None:
        """Restart Ollama with the current plan as soon as no model runner is alive (never mid-request)."""
        if self.state not in (State.STARTING, State.RUNNING):
            return
        if self._watcher is not None:
            self._scan_tree()  # decide on the tree as it is now, not as it was at the last scan
        if self._model_runner_alive():
            self._pending_restart = reason
            self.log.info("restart_deferred", reason=reason, until="no model is loaded")
            return
        self._restart_now(reason)

    def _restart_now(self, reason: str) -> None:
        if self.ollama is None or self.ollama.done.is_set():
            return
        self.log.info("restarting", reason=reason, pid=self.ollama.pid)
        self._signal_ollama(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        while not self.ollama.done.is_set() and time.monotonic() < deadline:
            self.registry.wait(self.ollama, timeout=0.05)
            self._forward_available()
        if not self.ollama.done.is_set():
            self._kill_group("restart: grace period over")
            self.registry.wait(self.ollama, timeout=5)
        self._kill_group("restart: leftover runners")
        self._drain_pipes(time.monotonic() + 0.5)
        self._emit(Event("supervisor", "restarted", now(), self.ollama.pid, {"reason": reason}))
        self.restarts += 1
        self._answered_at = None
        self._set_state(State.STARTING, reason=reason)
        self._start()

    def _forward_available(self) -> None:
        for key, _mask in self._sel.select(0):
            if key.data == "pipe":
                self._pump(key.fd)

    def fail(self, code: int) -> None:
        """Stop Ollama and exit with `code` (e.g. 4: OGPU_REQUIRE_GPU and no usable GPU)."""
        self._fail_code = code
        self.stop(signal.SIGTERM)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Begin a stop: the signal to Ollama, KILL of its group after the grace period."""
        if self.state in (State.STOPPING, State.STOPPED):
            return
        self._stop_signal = signum
        self.notifier.stopping()
        self.log.info("stopping", signal=signal.Signals(signum).name, grace_s=self.stop_grace)
        if self.state is State.BACKOFF or self.ollama is None or self.ollama.done.is_set():
            self.exit_status = self._fail_code if self._fail_code is not None else Exit.OK
            self._set_state(State.STOPPED, reason="stopped while Ollama was down")
            return
        self._set_state(State.STOPPING, signal=signum)
        self._signal_ollama(signum)
        self._stop_deadline = time.monotonic() + self.stop_grace

    def _signal_ollama(self, signum: int) -> None:
        if self.ollama is not None and not self.ollama.done.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.ollama.pid, signum)

    def _kill_group(self, why: str) -> None:
        """SIGKILL Ollama's process group (its runners share it) and any runner that escaped to us as orphan."""
        if self.ollama is None:
            return
        killed = False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.ollama.pid, signal.SIGKILL)
            killed = True
        if self._watcher is not None:
            for info in list(self._watcher.descendants()):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(info.pid, signal.SIGKILL)
                    killed = True
        if killed:
            self.log.info("killed_process_group", pgid=self.ollama.pid, reason=why)

    def _ollama_exited(self, child: Child) -> None:
        status = child.status if child.status is not None else 0
        code = exit_code(status)
        self._emit(Event("supervisor", "ollama_exited", now(), child.pid, describe_status(status)))
        # Runners have no parent-death signal: whatever is left of the group is orphaned. Kill it.
        self._kill_group("Ollama exited")
        self._drain_pipes(time.monotonic() + 1.0)
        self._reap_leftovers(time.monotonic() + 2.0)
        if self.state is State.STOPPING:
            self.exit_status = Exit.OK if code == 0 else code
            if self._fail_code is not None:
                self.exit_status = self._fail_code
            self.log.info("stopped", ollama_exit=code, killed_after_grace=self._killed_after_grace)
            self._set_state(State.STOPPED, ollama_exit=code)
            return
        self.log.warning("ollama_exited", pid=child.pid, **describe_status(status))
        if code == 0:
            self.exit_status = Exit.OK
            self._set_state(State.STOPPED, reason="Ollama exited by itself with 0")
            return
        if self.crash_budget.max_restarts == 0:
            self.exit_status = code
            self._set_state(State.STOPPED, reason="no restarts configured (OGPU_RESTART_MAX=0)")
            return
        delay = self.crash_budget.on_crash()
        if delay is None:
            self.log.error("crash_loop", restarts=self.crash_budget.recent, window_s=self.crash_budget.window,
                           action="giving up; systemd's Restart= takes over", exit=self.give_up_code)
            self.notifier.status("crash loop: gave up")
            self.exit_status = self.give_up_code
            self._set_state(State.STOPPED, reason="crash loop")
            return
        self.log.info("restart_scheduled", delay_s=delay, crashes=self.crash_budget.recent)
        self.notifier.status(f"Ollama exited ({code}); restarting in {delay:g}s")
        self._restart_at = time.monotonic() + delay
        self._set_state(State.BACKOFF, delay=delay)

    def _reap_leftovers(self, deadline: float) -> None:
        """Reap the killed group until none of Ollama's descendants is left (bounded)."""
        while time.monotonic() < deadline:
            self.registry.reap()
            if self._watcher is None or not list(self._watcher.descendants()):
                return
            time.sleep(0.02)

    def on_orphan(self, orphan: Orphan) -> None:
        """An adopted orphan was reaped (wired as the registry's callback)."""
        status = describe_status(orphan.status)
        self.log.debug("orphan_reaped", pid=orphan.pid, **status)
        self._emit(Event("supervisor", "orphan_reaped", now(), orphan.pid, status))
        if self._watcher is not None:
            for event in self._watcher.exited(orphan.pid, status):
                self._emit(event)


def _grow_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe (Linux F_SETPIPE_SZ): fewer wake-ups per MiB forwarded; the default 64 KiB is kept
    where the system limit says no."""
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, READ_SIZE)


def exec_off(argv: Sequence[str], env: dict[str, str], notifier: Notifier) -> None:
    """Mode off: become `ollama serve` (same pid, so systemd's main process stays right); READY=1 first."""
    notifier.ready("mode off: exec ollama serve")
    os.execvpe(argv[0], list(argv), env)
