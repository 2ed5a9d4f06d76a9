"""Run a program with and without the shim and collect what it reported, per connection (tests of issue #4).

The receiver is the real server (`launcher.shim_events`). To know that every connection of a finished program has
been read, the harness connects once itself after the program exited: connections are accepted in order, so once
the server has seen ours end, every earlier one has been accepted, and we wait until all of them have ended.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.events import Event
from launcher.shim_events import PROCESS_END, ShimEventServer
from tests.native.build import NativeBuild
from tests.shim_server_thread import ServerThread

TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Run:
    """One run of a program: its outputs, and the messages of each of its processes (one list per connection)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    connections: tuple[tuple[Event, ...], ...] = ()
    dropped: Mapping[str, int] = field(default_factory=dict)

    @property
    def outputs(self) -> tuple[int, str, str]:
        """What must not change under the shim."""
        return (self.returncode, self.stdout, self.stderr)

    def only(self) -> tuple[Event, ...]:
        """The messages of the one process that connected."""
        assert len(self.connections) == 1, [[e.kind for e in c] for c in self.connections]
        return self.connections[0]


def kinds(events: Sequence[Event], *, snapshots: bool = False) -> list[str]:
    """The kinds in order, without snapshots unless asked (their number depends on timing)."""
    return [e.kind for e in events if snapshots or e.kind != "snapshot"]


def data(event: Event) -> dict[str, Any]:
    """An event's data without the per-message bookkeeping."""
    return {k: v for k, v in event.data.items() if k not in ("pid", "seq", "t_ns", "start_time", "conn")}


def plain(value: Any) -> Any:
    """Frozen event data back to plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value


def last_snapshot(events: Sequence[Event]) -> dict[str, Any]:
    """The cumulative totals of the last snapshot."""
    snaps = [e for e in events if e.kind == "snapshot"]
    assert snaps, kinds(events, snapshots=True)
    return plain(data(snaps[-1]))


class Harness:
    """Runs probes from a NativeBuild under a fresh event server."""

    def __init__(self, build: NativeBuild, server: ServerThread, sock: Path) -> None:
        self.build = build
        self.server = server
        self.sock = sock

    def env(self, *, shim: bool = True, events: str | None = "server", libcuda: Path | None = None,
            preload_after: Sequence[Path] = (), **extra: str) -> dict[str, str]:
        """A clean environment: the mock driver on LD_LIBRARY_PATH (or `libcuda`'s dir, or none with a Path('')),
        the shim preloaded or not, OGPU_EVENTS at our server ("server"), elsewhere (a path), or unset (None)."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OGPU_", "MOCKCUDA_", "MOCKGGML_", "LD_")) and k != "CUDA_VISIBLE_DEVICES"}
        lib_dir = self.build.mock_dir if libcuda is None else libcuda
        if str(lib_dir) not in ("", "."):
            env["LD_LIBRARY_PATH"] = str(lib_dir)
        preload = ([str(self.build.shim)] if shim else []) + [str(p) for p in preload_after]
        if preload:
            env["LD_PRELOAD"] = " ".join(preload)
        if events == "server":
            env["OGPU_EVENTS"] = str(self.sock)
        elif events is not None:
            env["OGPU_EVENTS"] = events
        env.update(extra)
        return env

    def run(self, argv: Sequence[str | Path], env: Mapping[str, str], *, collect: bool = True) -> Run:
        """Run to completion; with `collect`, wait until every connection it made has been read and ended."""
        before = len(self.server.events())
        done = subprocess.run([str(a) for a in argv], env=dict(env), capture_output=True, text=True,
                              errors="surrogateescape", timeout=TIMEOUT, check=False, stdin=subprocess.DEVNULL)
        run = Run(tuple(str(a) for a in argv), done.returncode, done.stdout, done.stderr)
        if not collect:
            return run
        events = self._settle()[before:]
        mine = os.getpid()
        by_conn: dict[int, list[Event]] = {}
        for e in events:
            if e.pid == mine:  # the sentinel
                continue
            by_conn.setdefault(int(e.data["conn"]), []).append(e)
        conns = tuple(tuple(e for e in evs if e.kind != PROCESS_END) for _, evs in sorted(by_conn.items()))
        return Run(run.argv, run.returncode, run.stdout, run.stderr, conns, dict(self.server.stats().dropped))

    def _settle(self) -> list[Event]:
        mine = os.getpid()
        seen = sum(1 for e in self.server.events() if e.kind == PROCESS_END and e.pid == mine)
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.connect(str(self.sock))

        def settled(events: list[Event], stats: Any) -> bool:
            ends = sum(1 for e in events if e.kind == PROCESS_END and e.pid == mine)
            return ends > seen and stats.connections_open == 0

        return self.server.wait_for(settled, timeout=TIMEOUT)


@contextmanager
def harness(build: NativeBuild) -> Iterator[Harness]:
    """A fresh server on a short socket path (sun_path is 108 bytes) for one test."""
    d = Path(tempfile.mkdtemp(prefix="ogpu-t-"))
    sock = d / "events.sock"
    try:
        with ServerThread(ShimEventServer(sock)) as st:
            yield Harness(build, st, sock)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def nm_dynamic(path: Path) -> list[str]:
    """Defined dynamic symbols of a shared object."""
    out = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True, check=True)
    return [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]


def needed(path: Path) -> list[str]:
    """DT_NEEDED entries."""
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]
