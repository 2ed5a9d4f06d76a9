"""The server's children: spawned with an exact argv and env, output forwarded line by line, killed on shutdown.

Like Ollama's `exec.Cmd` on Linux: no new process group, no parent-death signal, so children outlive a SIGKILLed
server. A clean stop (SIGTERM/SIGINT) SIGKILLs every child that is still alive and waits for it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence

from tests.ollama_sim import slog

LineHook = Callable[[str], None]


def free_port() -> int:
    """Listen on localhost:0, read the port, close (Ollama's race-prone trick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """One child process and the threads that read its output."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], *, forward: bool,
                 hook: LineHook | None = None) -> None:
        self.argv = list(argv)
        self.lines: list[str] = []
        self.hook = hook
        self.forward = forward
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(self.argv, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, close_fds=True)
        self.readers = [threading.Thread(target=self._read, args=(s,), daemon=True)
                        for s in (self.proc.stdout, self.proc.stderr)]
        for t in self.readers:
            t.start()

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self.proc.pid

    def _read(self, stream: object) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            line = raw.decode(errors="replace").rstrip("\n")
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
            if self.hook:
                self.hook(line)
            if self.forward:
                slog.write_raw(line)

    def wait_line(self, predicate: Callable[[str], bool], timeout: float) -> bool:
        """Wait until an output line satisfies `predicate` or the child's output ends."""
        def done() -> bool:
            return any(predicate(x) for x in self.lines) or self.proc.poll() is not None
        with self.cond:
            self.cond.wait_for(done, timeout=timeout)
            return any(predicate(x) for x in self.lines)

    def output(self, timeout: float) -> str:
        """All output once the child has exited (killing it after `timeout`)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        for t in self.readers:
            t.join(timeout=2)
        return "\n".join(self.lines)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def status_text(self) -> str:
        """Go's ProcessState.String(): `exit status 1` or `signal: killed`."""
        rc = self.proc.returncode
        if rc is None:
            return "running"
        if rc < 0:
            names = {signal.SIGKILL: "killed", signal.SIGABRT: "aborted", signal.SIGSEGV: "segmentation fault",
                     signal.SIGTERM: "terminated"}
            return f"signal: {names.get(signal.Signals(-rc), signal.Signals(-rc).name)}"
        return f"exit status {rc}"


class Registry:
    """Every live child of the server, so a clean stop leaves none behind."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.lock = threading.Lock()

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], *, forward: bool,
              hook: LineHook | None = None) -> Child:
        """Start a child and remember it."""
        child = Child(argv, env, forward=forward, hook=hook)
        with self.lock:
            self.children = [c for c in self.children if c.proc.poll() is None] + [child]
        return child

    def kill_all(self) -> None:
        """SIGKILL every child still alive and reap it (Ollama's unload-on-shutdown)."""
        with self.lock:
            children = list(self.children)
        for c in children:
            c.kill()
