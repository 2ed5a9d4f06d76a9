"""Ollama's process group dies with the supervisor, SIGKILL included.

A parent-death signal (PR_SET_PDEATHSIG) would reach Ollama alone: its runners are Ollama's children, started with
no death signal of their own (Go's exec.Cmd), so they would outlive both of us. A process-group kill reaches them all,
but a SIGKILLed supervisor cannot send it. So a guardian sends it: a `/bin/sh` in a process group of its own (a
terminal's Ctrl-C or `kill -- -PGID` of our group does not reach it) reads the group to kill from a pipe whose only
writer is us. When we die, however we die, the kernel closes our end; `read` sees end-of-file and the guardian kills
the last group it was told about, then exits. A clean stop tells it 0 (nothing to kill) before we exit.

The pipe's write end is close-on-exec, so neither Ollama nor any other child of ours keeps it open.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Final

from launcher.children import Child, ChildRegistry, SpawnError

# POSIX sh: the last number read before end-of-file is the group to kill; anything else means none.
SCRIPT: Final = ('pg=0; while read -r line; do pg=$line; done; '
                 'case $pg in ""|*[!0-9]*|0) exit 0;; esac; kill -s KILL -- "-$pg" 2>/dev/null; exit 0')
SHELL: Final = "/bin/sh"
NAME: Final = "ollama-gpu-guardian"


class Guardian:
    """The guardian process and our end of its pipe."""

    def __init__(self, child: Child, fd: int) -> None:
        self.child = child
        self._fd = fd
        self.pgid = 0

    @classmethod
    def start(cls, registry: ChildRegistry) -> Guardian:
        """Spawn the guardian (through the registry, so its exit is reaped like any child's); SpawnError/OSError
        when it cannot start."""
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            child = registry.spawn([SHELL, "-c", SCRIPT, NAME], {"PATH": "/usr/bin:/bin"}, name="guardian",
                                   stdin=read_end, stdout=devnull, stderr=devnull, own_group=True)
        except SpawnError:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
            os.close(devnull)
        os.set_blocking(write_end, False)
        return cls(child, write_end)

    def watch(self, pgid: int) -> bool:
        """From now on, kill group `pgid` if we die (0: nothing to kill); False when the guardian is gone."""
        if self._fd < 0:
            return False
        if pgid == self.pgid:
            return self.alive
        try:
            os.write(self._fd, f"{pgid}\n".encode())
        except OSError:  # the guardian is gone (killed by hand): the keeper replaces it
            return False
        self.pgid = pgid
        return True

    def close(self) -> None:
        """Close our end: the guardian kills what it was last told (0 after a clean stop: nothing) and exits.
        An exception that ends the supervisor with Ollama still up ends Ollama too, instead of orphaning it."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1

    @property
    def alive(self) -> bool:
        """The guardian has not been reaped."""
        return not self.child.done.is_set()


class GuardianKeeper:
    """Keeps one guardian: a guardian that died (killed by hand) is replaced at the next `watch`, with one line."""

    def __init__(self, registry: ChildRegistry, log: Any) -> None:
        self._registry = registry
        self._log = log
        self.guardian = self._start()

    def _start(self) -> Guardian | None:
        try:
            return Guardian.start(self._registry)
        except OSError as exc:
            self._log.warning("no_guardian", error=str(exc), shell=SHELL,
                              consequence="if ollama-gpu is SIGKILLed, Ollama outlives it")
            return None

    @property
    def pid(self) -> int | None:
        """The guardian's pid (ours, not Ollama's: never audited nor killed as a leftover)."""
        return self.guardian.child.pid if self.guardian is not None else None

    def watch(self, pgid: int) -> None:
        """Tell the guardian which group dies with us; replace it first if it is gone."""
        old = self.guardian
        if old is None or old.watch(pgid):
            return
        self._log.warning("guardian_replaced", pid=old.child.pid, problem="the guardian process is gone",
                          action="starting a new one")
        old.close()
        self.guardian = self._start()
        if self.guardian is not None:
            self.guardian.watch(pgid)

    def close(self, wait: float = 1.0) -> None:
        """Close our end (the guardian kills what it was last told, 0 after a clean stop) and reap it."""
        if self.guardian is not None:
            self.guardian.close()
            self._registry.wait(self.guardian.child, timeout=wait)
