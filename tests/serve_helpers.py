"""Drive `ollama-gpu serve` as a real process in tests: free ports, waiting on conditions, process-tree checks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import psutil

from tests.cli_helpers import REPO

FAKE_SERVER = REPO / "tests" / "programs" / "fake_server.py"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `condition` until it is truthy; fail the test after `timeout` seconds (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def start_serve(
    args: Sequence[str], env: Mapping[str, str], *, stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.PIPE, preexec: Callable[[], None] | None = None,
    prefix: Sequence[str] = (),
    command: Sequence[str] = (sys.executable, "-m", "launcher.cli"),
) -> subprocess.Popen[bytes]:
    """Start `ollama-gpu [ARGS]` (ARGS include `serve`) as its own process."""
    return subprocess.Popen(
        [*prefix, *command, *args], env=dict(env), stdin=subprocess.DEVNULL,
        stdout=stdout, stderr=stderr, cwd=str(REPO), preexec_fn=preexec,
    )


class Serve:
    """A running `ollama-gpu serve` whose output is collected in the background, so tests can await log events."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], **kwargs: object) -> None:
        self.proc = start_serve(args, env, **kwargs)  # type: ignore[arg-type]
        self.pid = self.proc.pid
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._threads = [threading.Thread(target=self._drain, args=(stream, sink), daemon=True)
                         for stream, sink in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))
                         if stream is not None]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _drain(stream: IO[bytes], sink: list[bytes]) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
            sink.append(chunk)

    @property
    def err(self) -> str:
        """stderr so far."""
        return b"".join(self._err).decode(errors="replace")

    @property
    def out(self) -> str:
        """stdout so far."""
        return b"".join(self._out).decode(errors="replace")

    def events(self) -> list[dict[str, object]]:
        """Our JSON log lines so far."""
        return json_events(self.err)

    def wait_event(self, name: str, timeout: float = 30.0, **fields: object) -> dict[str, object]:
        """Wait for our log event `name` (with these field values, if given); fails with the output so far when the
        process ends first."""
        def found() -> dict[str, object] | None:
            hit = next((e for e in self.events() if e.get("event") == name
                        and all(e.get(k) == v for k, v in fields.items())), None)
            if hit is None and self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode} before {name}:\n{self.err[-3000:]}")
            return hit

        return wait_for(found, timeout, what=f"event {name}")  # type: ignore[return-value]

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal and wait; returns the exit code (output stays readable)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signum)
        return self.wait(timeout)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for exit and for the output to be drained."""
        code = self.proc.wait(timeout)
        for thread in self._threads:
            thread.join(timeout)
        return code


def json_events(text: str) -> list[dict[str, object]]:
    """Our JSON log lines in a stream (Ollama's lines in between are skipped)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def descendants(pid: int) -> list[psutil.Process]:
    """Live descendants of `pid` (zombies excluded)."""
    try:
        procs = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in procs if _alive(p)]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def no_process_left(pids: Sequence[int]) -> bool:
    """True when none of `pids` is alive (zombies count as gone only once reaped)."""
    return not any(psutil.pid_exists(p) and _exists_not_reaped(p) for p in pids)


def _exists_not_reaped(pid: int) -> bool:
    try:
        psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return False
    return True


def stop(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM, timeout: float = 30.0) -> tuple[int, str, str]:
    """Signal the supervisor and collect its exit code and output."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace")


def marker(path: Path) -> Callable[[], bool]:
    """A condition: the file exists and is non-empty."""
    return lambda: path.exists() and path.stat().st_size > 0


def command_for_nobody() -> list[str]:
    """`ollama-gpu` as uid 65534 may run it: the venv's interpreter may live under root's 0700 home, so the system's
    python of the same minor version (same ABI) runs with the venv's site-packages added as a site directory."""
    import sysconfig

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}", sys.executable):
        real = Path(candidate).resolve()
        if real.exists() and all(p.stat().st_mode & 0o005 == 0o005 for p in real.parents if p != Path("/")):
            boot = ("import runpy, site, sys; site.addsitedir(sys.argv.pop(1)); "
                    "runpy.run_module('launcher.cli', run_name='__main__')")
            return [candidate, "-c", boot, sysconfig.get_paths()["purelib"]]
    raise AssertionError(f"no python{version} that an unprivileged user can run: install Debian's python{version}")


def as_nobody() -> None:
    """preexec_fn: drop to uid/gid 65534 with no supplementary groups."""
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
