"""NVML off the supervisor's loop: a daemon thread opens NVML once, then samples every `interval` seconds and hands
the events to the board's sink (thread-safe); every `health_every` samples it also runs the per-GPU health check
(launcher.gpu_health), and once NVML is open a second thread waits on NVML's Xid/ECC event set. `host_resumed()`
(logind's PrepareForSleep, from its listener's thread) wakes the thread for a health check at once.
An NVML call that hangs in the driver then holds these threads only: forwarding, status, signals and the systemd
watchdog go on."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from launcher.events import Event
from launcher.log import get as get_logger
from launcher.nvml import NvmlSampler

log = get_logger(__name__)


class NvmlPoller:
    """Runs an NvmlSampler in its own thread."""

    def __init__(self, sampler: NvmlSampler, sink: Callable[[Event], None], interval: float = 1.0,
                 health_every: int = 0, xids: bool = False) -> None:
        self.sampler = sampler
        self._sink = sink
        self._interval = interval
        self._health_every = health_every  # 0: no health checks
        self._xids = xids
        self._watcher: Any = None
        self._reload: str | None = None  # a resume key whose nvidia_uvm reload the controller asked for
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by close() and host_resumed()
        self._resumed = False
        self._thread = threading.Thread(target=self._run, name="ollama-gpu-nvml", daemon=True)

    def start(self) -> NvmlPoller:
        """Open NVML and start sampling, in the thread."""
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._hand(self.sampler.start())
            if self._health_every:
                self._health()
                if self._xids:
                    self._start_watcher()
            ticks = 0
            while True:
                self._wake.wait(self._interval)
                self._wake.clear()
                if self._stop.is_set():
                    break
                if self._resumed:  # the sampler's resume watch holds the signal: this check reports the resume
                    self._resumed = False
                    if self._health_every:
                        self._health()
                    continue
                self._hand(self.sampler.sample())
                ticks += 1
                if self._health_every and ticks % self._health_every == 0:
                    self._health()
                self._reload_if_asked()
        except Exception as exc:  # our bug: NVML stops being sampled, nothing else does
            log.error("internal_error", where="nvml", error=type(exc).__name__, detail=str(exc)[:300],
                      action="NVML no longer sampled; Ollama keeps running")

    def _health(self) -> None:
        """One health check; our bug in it ends health checks only, never memory sampling."""
        try:
            self._hand(self.sampler.health())
        except Exception as exc:
            self._health_every = 0
            log.error("internal_error", where="gpu_health", error=type(exc).__name__, detail=str(exc)[:300],
                      action="GPU health no longer checked; Ollama keeps running")

    def request_uvm_reload(self, key: str) -> None:
        """Any thread: reload nvidia_uvm for the resume `key` at the next tick, in this thread (launcher.uvm_reload)."""
        with self._reload_lock:
            self._reload = key

    def _reload_if_asked(self) -> None:
        with self._reload_lock:
            key, self._reload = self._reload, None
        if key is None:
            return
        try:
            self._hand(self.sampler.reload_uvm(key))
        except Exception as exc:  # our bug: the reload is advised instead, nothing else changes
            log.error("internal_error", where="uvm_reload", error=type(exc).__name__, detail=str(exc)[:300],
                      action="nvidia_uvm not reloaded; the advice stands")

    def _start_watcher(self) -> None:
        checker = getattr(self.sampler, "checker", None)
        if checker is None or self._stop.is_set():
            return
        from launcher.gpu_health import XidWatcher

        self._watcher = XidWatcher(self.sampler.nvml, checker, self._sink).start()

    def host_resumed(self) -> None:
        """The host resumed now (logind said so; any thread): check the GPUs at once, in the NVML thread."""
        self.sampler.resume.signal()
        self._resumed = True
        self._wake.set()

    def _hand(self, events: list[Event]) -> None:
        for event in events:
            if self._stop.is_set():
                return
            self._sink(event)

    def close(self, timeout: float = 2.0) -> None:
        """Stop sampling; shut NVML down once the thread is out of it (a hung call leaves it to the process exit)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._watcher is not None:  # it leaves its wait within a second; the process exit need not wait for it
            self._watcher.close(min(timeout, 0.1))
        if not self._thread.is_alive() and (self._watcher is None or not self._watcher.alive):
            self.sampler.close()

    @property
    def state(self) -> Any:
        """The sampler's NvmlState (None until NVML was opened)."""
        return self.sampler.state
