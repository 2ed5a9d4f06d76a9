"""The supervisor's one seam to the OS: clock, spawn, signals, reaping, the readiness probe and the worker.

`OsSystem` is the real thing; tests pass a fake with a clock in milliseconds and pids that are plain numbers, so
every state transition is driven without a process or a sleep.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from launcher.children import Child, ChildRegistry, SpawnError
from launcher.environment import EnvPlan
from launcher.ollama_host import OllamaHost

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20

# The probe reports (pid, version, owner, holder): owner True when the answering port is our child's, False when
# another process holds it (holder: its pid where the kernel tells), None when that cannot be told.
ProbeReport = Callable[[int, str, "bool | None", "int | None"], None]


@dataclass(frozen=True, slots=True)
class Spawned:
    """A started Ollama and the read ends of its stdout/stderr pipes (None where the seam has none)."""

    child: Child
    stdout: int | None
    stderr: int | None


class System(Protocol):
    """What the supervisor asks of the OS."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""

    def spawn(self, plan: EnvPlan) -> Spawned:
        """Start Ollama in its own process group with its output on pipes; SpawnError when it cannot start."""

    def kill(self, pid: int, signum: int) -> bool:
        """Signal one process; False when it is gone."""

    def killpg(self, pgid: int, signum: int) -> bool:
        """Signal a process group; False when it is empty."""

    def reap(self) -> list[Child]:
        """Collect exited children without blocking; the statuses land on their `Child` whoever reaps."""

    def probe(self, child: Child, host: OllamaHost, timeout: float, report: ProbeReport) -> None:
        """Poll /api/version off the loop until it answers (then `report`), the child ends or `timeout` passes."""

    def submit(self, job: Callable[[], object], done: Callable[[object], None]) -> None:
        """Run `job` off the loop; `done` gets its result, or the exception it raised."""

    def guard(self, pgid: int) -> None:
        """The process group that must die with us (0: none now)."""

    def helpers(self) -> set[int]:
        """Pids of our own children that are not Ollama (the guardian, a compiler): never killed as leftovers."""


class OsSystem:
    """The real seam: the child registry, os.kill, a thread per probe and per job, the guardian."""

    def __init__(self, registry: ChildRegistry, wake: Callable[[], None],
                 guardian: Callable[[int], None] | None = None) -> None:
        self.registry = registry
        self._wake = wake
        self._guardian = guardian

    def monotonic(self) -> float:
        return time.monotonic()

    def spawn(self, plan: EnvPlan) -> Spawned:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            child = self.registry.spawn(plan.argv, plan.env, name="ollama", stdout=out_w, stderr=err_w,
                                        own_group=True)
        except SpawnError:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
            _grow_pipe(fd)
        return Spawned(child, out_r, err_r)

    def kill(self, pid: int, signum: int) -> bool:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def killpg(self, pgid: int, signum: int) -> bool:
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def reap(self) -> list[Child]:
        return self.registry.reap()

    def probe(self, child: Child, host: OllamaHost, timeout: float, report: ProbeReport) -> None:
        def run() -> None:
            probe_until_ready(child, host, timeout, report)
            self._wake()

        threading.Thread(target=run, name="ollama-gpu-ready", daemon=True).start()

    def submit(self, job: Callable[[], object], done: Callable[[object], None]) -> None:
        def run() -> None:
            try:
                result: object = job()
            except Exception as exc:  # handed to the loop, which logs it
                result = exc
            done(result)
            self._wake()

        threading.Thread(target=run, name="ollama-gpu-worker", daemon=True).start()

    def guard(self, pgid: int) -> None:
        if self._guardian is not None:
            self._guardian(pgid)

    def helpers(self) -> set[int]:
        return {child.pid for child in self.registry.alive() if child.name != "ollama"}


def probe_until_ready(child: Child, host: OllamaHost, timeout: float, report: ProbeReport,
                      clock: Callable[[], float] = time.monotonic) -> None:
    """Poll /api/version: every 10 ms for the first 2 s (a refused connect costs microseconds), then 100 ms. An
    answer from a port that another process holds is reported (owner False) and polling goes on: our child may
    still take the port over, and `ready` must never be said for someone else's server."""
    from launcher.port_owner import holder, listens_on
    from launcher.readiness import probe_version

    start = clock()
    deadline = start + timeout
    told_foreign = False
    while not child.done.is_set() and clock() < deadline:
        version = probe_version(host, timeout=1.0)
        if version is not None and not child.done.is_set():
            owner = listens_on(child.pid, host.port)
            if owner is not False:
                report(child.pid, version, owner, None)
                return
            if not told_foreign:
                told_foreign = True
                found = holder(host.port)
                report(child.pid, version, False, found.pid if found else None)
        child.done.wait(0.01 if clock() - start < 2.0 else 0.1)


def _grow_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe (Linux F_SETPIPE_SZ): fewer wake-ups per MiB forwarded; the default 64 KiB is kept
    where the system limit says no."""
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
