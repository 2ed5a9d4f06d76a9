"""One child registry and one reaper: every subprocess we start is spawned and waited through here.

The reaper is the only caller of `waitpid(-1)`: it hands each exit status to the child's registered owner and
reports processes it did not start (orphans re-parented to us as subreaper or PID 1). Nothing else may wait,
so a short-lived `cc` can never have its status stolen.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

# Signals the supervisor handles; a child starts with their default action and an empty mask (as tini does).
HANDLED: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD, signal.SIGPIPE,
                  signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2)
PR_SET_CHILD_SUBREAPER: Final = 36
PR_GET_CHILD_SUBREAPER: Final = 37


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + signal."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def describe_status(status: int) -> dict[str, int]:
    """{'code': n} or {'signal': n}, for events."""
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    return {"code": os.WEXITSTATUS(status)}


@dataclass(slots=True)
class Child:
    """A process we started."""

    pid: int
    name: str
    argv: tuple[str, ...]
    own_group: bool
    started: float
    status: int | None = None  # raw wait status once reaped
    on_exit: Callable[[Child], None] | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def returncode(self) -> int | None:
        """Exit code (128 + signal for a signal), None while running."""
        return None if self.status is None else exit_code(self.status)


@dataclass(frozen=True, slots=True)
class Orphan:
    """A process we did not start, reaped by us."""

    pid: int
    status: int


class SpawnError(OSError):
    """The program could not be started; `exit_code` is 127 (not found) or 126 (not executable), as shells say."""

    def __init__(self, argv0: str, err: OSError) -> None:
        super().__init__(err.errno, f"cannot start {argv0}: {err.strerror}")
        self.exit_code = 127 if err.errno == errno.ENOENT else 126


def set_subreaper() -> bool:
    """Become the reaper of orphaned descendants (PR_SET_CHILD_SUBREAPER); True when it took effect."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            return False
        value = ctypes.c_int(0)
        libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0)
        return value.value == 1
    except (OSError, AttributeError):
        return False


class ChildRegistry:
    """Spawns children and is the single place where exit statuses are collected."""

    def __init__(self, on_orphan: Callable[[Orphan], None] | None = None) -> None:
        self._children: dict[int, Child] = {}
        self._lock = threading.Lock()
        self._on_orphan = on_orphan
        self.orphans_reaped = 0

    def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        name: str,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        own_group: bool = False,
        on_exit: Callable[[Child], None] | None = None,
    ) -> Child:
        """Start `argv` with `env`; fds given are dup'ed onto 0/1/2 (None: /dev/null for stdin, ours for the rest)."""
        actions: list[tuple[int, ...]] = []
        devnull = None
        if stdin is None:
            devnull = os.open(os.devnull, os.O_RDONLY)
            stdin = devnull
        actions.append((os.POSIX_SPAWN_DUP2, stdin, 0))
        if stdout is not None:
            actions.append((os.POSIX_SPAWN_DUP2, stdout, 1))
        if stderr is not None:
            actions.append((os.POSIX_SPAWN_DUP2, stderr, 2))
        with self._lock:  # registered before the reaper can see it exit
            try:
                if own_group:
                    pid = os.posix_spawnp(argv[0], list(argv), dict(env), file_actions=actions, setsigmask=(),
                                          setsigdef=HANDLED, setpgroup=0)
                else:
                    pid = os.posix_spawnp(argv[0], list(argv), dict(env), file_actions=actions, setsigmask=(),
                                          setsigdef=HANDLED)
            except OSError as err:
                raise SpawnError(argv[0], err) from None
            finally:
                if devnull is not None:
                    os.close(devnull)
            child = Child(pid=pid, name=name, argv=tuple(argv), own_group=own_group, started=time.monotonic(),
                          on_exit=on_exit)
            self._children[pid] = child
        return child

    def reap(self) -> list[Child]:
        """Collect every exited child (ours and orphans) without blocking; returns our children that ended."""
        ended: list[Child] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                break
            with self._lock:
                child = self._children.pop(pid, None)
            if child is None:
                self.orphans_reaped += 1
                if self._on_orphan is not None:
                    self._on_orphan(Orphan(pid, status))
                continue
            child.status = status
            child.done.set()
            ended.append(child)
            if child.on_exit is not None:
                child.on_exit(child)
        return ended

    def alive(self) -> list[Child]:
        """Children not yet reaped."""
        with self._lock:
            return list(self._children.values())

    def wait(self, child: Child, timeout: float | None = None, poll: float = 0.01) -> bool:
        """Reap until `child` has ended or `timeout` passes; True when it ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not child.done.is_set():
            self.reap()
            if child.done.is_set():
                break
            if deadline is not None and time.monotonic() >= deadline:
                return False
            child.done.wait(poll)
        return True

    def run(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, *, timeout: float = 60.0, name: str = ""
    ) -> tuple[int | None, str, str]:
        """Run to completion and return (exit code, stdout, stderr); code None: killed at `timeout`."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            child = self.spawn(argv, env if env is not None else os.environ, name=name or argv[0],
                               stdout=out_w, stderr=err_w)
        finally:
            os.close(out_w)
            os.close(err_w)
        chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
        open_fds = [out_r, err_r]
        deadline = time.monotonic() + timeout
        timed_out = False
        try:
            while open_fds:
                left = deadline - time.monotonic()
                if left <= 0:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, signal.SIGKILL)
                    timed_out = True
                    break
                ready, _, _ = select.select(open_fds, [], [], min(left, 0.5))
                for fd in ready:
                    data = os.read(fd, 65536)
                    if data:
                        chunks[fd].append(data)
                    else:
                        open_fds.remove(fd)
            self.wait(child)
        finally:
            os.close(out_r)
            os.close(err_r)
        code = None if timed_out else child.returncode
        return (code, b"".join(chunks[out_r]).decode(errors="replace"),
                b"".join(chunks[err_r]).decode(errors="replace"))
