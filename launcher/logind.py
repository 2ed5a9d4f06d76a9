"""logind's PrepareForSleep signal (issue 16, item 2): where the system bus and a D-Bus command-line tool are there,
the host's resume is known the moment logind announces it, not at the next BOOTTIME − MONOTONIC check.

No D-Bus library: a child `gdbus monitor` (GLib; one line per signal, an ordinary signal subscription that needs no
privilege) or, failing that, `dbus-monitor` (libdbus; a header line and a `boolean` line). The child runs under a
small `sh` that reads a pipe whose only writer is us: when we go, however we go, the pipe closes and the shell kills
the tool, so no listener outlives the supervisor. Lines are read in a thread of ours; a dead child is started again
with backoff and given up after repeated quick failures. Without a bus socket or a tool: one debug line, nothing else
(launcher.resume's clock gap is the mechanism that works everywhere).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from launcher.children import Child, ChildRegistry, SpawnError
from launcher.log import get as get_logger

log = get_logger(__name__)

DEFAULT_BUS: Final = "/run/dbus/system_bus_socket"
LOGIND: Final = ("org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager")
# the tools in order of preference: argv after the tool's name, and its output format
TOOLS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("gdbus", ("monitor", "--system", "--dest", LOGIND[0], "--object-path", LOGIND[1])),
    ("dbus-monitor", ("--system", f"type='signal',sender='{LOGIND[0]}',interface='{LOGIND[2]}',"
                                  "member='PrepareForSleep'")),
)
# POSIX sh: the tool in the background (its stdin is /dev/null), our pipe on the shell's stdin; the shell gives up its
# stdout and stderr so the tool's end alone keeps our reader open. End-of-file on the pipe (our stop or death) kills it.
WRAPPER: Final = '"$@" & p=$!; exec >/dev/null 2>&1; while read -r _; do :; done; kill "$p" 2>/dev/null; wait "$p"'
MAX_LINE: Final = 4096
# gdbus: `/org/freedesktop/login1: org.freedesktop.login1.Manager.PrepareForSleep (true,)` (g_variant_print)
GDBUS_LINE: Final = re.compile(r"/org/freedesktop/login1: org\.freedesktop\.login1\.Manager\.PrepareForSleep "
                               r"\((true|false),\)")
# dbus-monitor: `signal time=… sender=:1.3 -> destination=(null destination) serial=… path=/org/freedesktop/login1;
# interface=org.freedesktop.login1.Manager; member=PrepareForSleep`, then `   boolean true`
MONITOR_HEADER: Final = re.compile(r"^signal .*interface=org\.freedesktop\.login1\.Manager; member=PrepareForSleep\b")
MONITOR_ARG: Final = re.compile(r"^\s+boolean (true|false)$")
BACKOFF_FIRST: Final = 1.0
BACKOFF_MAX: Final = 60.0
STEADY: Final = 60.0  # a child that ran this long was working: the next failure starts the backoff afresh
GIVE_UP_AFTER: Final = 5  # quick failures in a row (no bus access, a broken tool): the clock gap is enough


def bus_path(env: Mapping[str, str]) -> Path | None:
    """The system bus socket the tools will use (DBUS_SYSTEM_BUS_ADDRESS's `unix:path=`, else the default); None
    when the address is of another kind, which only the tool can try."""
    address = env.get("DBUS_SYSTEM_BUS_ADDRESS", "").strip()
    if not address:
        return Path(DEFAULT_BUS)
    first = address.split(";")[0]
    if first.startswith("unix:"):
        for part in first[len("unix:"):].split(","):
            key, _, value = part.partition("=")
            if key == "path" and value:
                return Path(value)
    return None


def tool_env(env: Mapping[str, str]) -> dict[str, str]:
    """The tool's environment: PATH, the bus address if set, the C locale (its lines are parsed); nothing of ours,
    no LD_PRELOAD."""
    out = {"PATH": env.get("PATH") or os.defpath, "LC_ALL": "C"}
    if env.get("DBUS_SYSTEM_BUS_ADDRESS"):
        out["DBUS_SYSTEM_BUS_ADDRESS"] = env["DBUS_SYSTEM_BUS_ADDRESS"]
    return out


def find_tool(env: Mapping[str, str], which: Callable[..., str | None] = shutil.which) -> tuple[str, ...] | str:
    """The listener's argv (the first tool found on PATH), or why there is none."""
    path = bus_path(env)
    if path is not None and not path.exists():
        return f"no system bus socket at {path}"
    for name, args in TOOLS:
        found = which(name, path=env.get("PATH") or os.defpath)
        if found:
            return (found, *args)
    return "neither gdbus nor dbus-monitor is installed"


@dataclass
class SleepParser:
    """Reads the tool's lines: True (going to sleep), False (resumed) or None; a PrepareForSleep line it cannot read
    is counted in `bad` and ignored. Every other line (the tool's banner, other logind signals) is not ours."""

    gdbus: bool
    bad: int = 0
    _header: bool = False  # dbus-monitor: the last line was a PrepareForSleep header
    last_other: str = ""  # the newest line that was not a signal of ours (the tool's error, when it exits)

    def feed(self, line: str) -> bool | None:
        """One line (without its newline)."""
        if self.gdbus:
            match = GDBUS_LINE.fullmatch(line)
            if match is None:
                self._other(line)
                return None
            return match[1] == "true"
        if self._header:
            self._header = False
            arg = MONITOR_ARG.match(line)
            if arg is None:
                self.bad += 1
                return None
            return arg[1] == "true"
        if MONITOR_HEADER.match(line):
            self._header = True
        elif line.strip() and not line.startswith(" "):
            self._other(line)
        return None

    def _other(self, line: str) -> None:
        if "PrepareForSleep" in line:
            self.bad += 1
        elif line.strip():
            self.last_other = line.strip()[:200]


@dataclass
class Backoff:
    """When to start a dead listener again: 1 s, doubling up to a minute; None (give up) after GIVE_UP_AFTER quick
    failures in a row. A child that ran STEADY seconds resets the count."""

    first: float = BACKOFF_FIRST
    quick: int = 0

    def after_exit(self, lived: float) -> float | None:
        """The delay before the next start, or None to stop trying."""
        self.quick = 0 if lived >= STEADY else self.quick + 1
        if self.quick >= GIVE_UP_AFTER:
            return None
        return float(min(self.first * 2 ** max(self.quick - 1, 0), BACKOFF_MAX))


@dataclass
class SleepListener:
    """The listener thread: spawn the tool through the child registry, read its lines, call `on_sleep` /
    `on_resume`, restart with backoff. `close()` ends the tool and the thread."""

    argv: Sequence[str]
    env: Mapping[str, str]
    registry: ChildRegistry
    on_resume: Callable[[], None]
    on_sleep: Callable[[], None] = lambda: None
    on_state: Callable[[str], None] = lambda _state: None  # "listening" at the first start, "given_up" at the end
    clock: Callable[[], float] = time.monotonic
    backoff: Backoff = field(default_factory=Backoff)
    bad: int = 0  # unreadable PrepareForSleep lines, over every child
    starts: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _child: Child | None = None
    _control: int = -1
    _thread: threading.Thread | None = None

    @property
    def tool(self) -> str:
        """The tool's name."""
        return os.path.basename(self.argv[0])

    def start(self) -> SleepListener:
        """Start listening, in a thread."""
        self._thread = threading.Thread(target=self._run, name="ollama-gpu-logind", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        backoff = self.backoff
        try:
            while not self._stop.is_set():
                started = self.clock()
                code, last = self._once()
                if self._stop.is_set():
                    return
                delay = backoff.after_exit(self.clock() - started)
                if delay is None:
                    self.on_state("given_up")
                    log.info("logind_listener_given_up", tool=self.tool, exit=code, said=last, failures=backoff.quick,
                             consequence="resumes are found by the clock gap alone, at the next health check")
                    return
                log.info("logind_listener_exited", tool=self.tool, exit=code, said=last, retry_in=delay)
                self._stop.wait(delay)
        except Exception as exc:  # our bug: the listener ends, the clock gap still finds resumes
            log.error("internal_error", where="logind", error=type(exc).__name__, detail=str(exc)[:300],
                      action="logind's PrepareForSleep no longer followed; resumes are found by the clock gap")

    def _once(self) -> tuple[int | None, str]:
        """Run the tool until its output ends; (its exit code, the last line it said that was not a signal)."""
        data_r, data_w = os.pipe2(os.O_CLOEXEC)
        control_r, control_w = os.pipe2(os.O_CLOEXEC)
        spawned = False
        try:
            with self._lock:
                if self._stop.is_set():
                    return None, ""
                try:
                    child = self.registry.spawn(["/bin/sh", "-c", WRAPPER, "ollama-gpu-logind", *self.argv],
                                                self.env, name="logind-listener", stdin=control_r, stdout=data_w,
                                                stderr=data_w, own_group=True)
                except SpawnError as exc:
                    return exc.exit_code, str(exc)
                self._child, self._control = child, control_w
                control_w = -1
                self.starts += 1
                spawned = True
        finally:
            if not spawned:  # nothing will read it
                os.close(data_r)
            for fd in (data_w, control_r, control_w):
                if fd >= 0:
                    os.close(fd)
        if self.starts == 1:
            log.info("logind_listening", tool=self.tool, signal="PrepareForSleep",
                     meaning="a resume is checked the moment logind announces it")
            self.on_state("listening")
        parser = SleepParser(gdbus=self.tool == "gdbus")
        with os.fdopen(data_r, "rb") as stream:
            self._read(stream, parser)
        self._end_child()
        return child.returncode, parser.last_other

    def _read(self, stream: IO[bytes], parser: SleepParser) -> None:
        skipping = False
        for raw in iter(lambda: stream.readline(MAX_LINE), b""):
            if not raw.endswith(b"\n") and len(raw) >= MAX_LINE:  # an overlong line: counted, the rest skipped
                if not skipping:
                    self.bad += 1
                skipping = True
                continue
            if skipping:
                skipping = False
                continue
            before = parser.bad
            said = parser.feed(raw.decode(errors="replace").rstrip("\r\n"))
            self.bad += parser.bad - before
            if said is True:
                log.info("host_going_to_sleep", via="logind")
                self.on_sleep()
            elif said is False:
                self.on_resume()

    def _end_child(self) -> None:
        """Close our end of the control pipe: the shell kills the tool, waits for it and exits; reap the shell (so
        the tool is gone too). A tool that ignores SIGTERM gets SIGKILL with its group after a second."""
        with self._lock:
            child, control = self._child, self._control
            self._child, self._control = None, -1
        if control >= 0:
            os.close(control)
        if child is None:
            return
        if not self.registry.wait(child, timeout=1.0):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            self.registry.wait(child, timeout=1.0)

    def close(self, timeout: float = 2.0) -> None:
        """Stop: end the tool (above), then the thread, which sees the tool's output end."""
        self._stop.set()
        self._end_child()
        if self._thread is not None:
            self._thread.join(timeout)
        self._end_child()
        if self.bad:
            log.debug("logind_lines_ignored", count=self.bad)


def start_listener(env: Mapping[str, str], registry: ChildRegistry, on_resume: Callable[[], None],
                   on_state: Callable[[str, str], None] = lambda _state, _tool: None,
                   which: Callable[..., str | None] = shutil.which) -> SleepListener | None:
    """Listen for PrepareForSleep where a system bus and a tool are there; else one debug line and None.
    `on_state(state, tool)` hears "listening" once the tool first runs and "given_up" if it stops trying."""
    found = find_tool(env, which)
    if isinstance(found, str):
        log.debug("logind_not_followed", reason=found, fallback="resumes are found by the clock gap")
        return None
    tool = os.path.basename(found[0])
    return SleepListener(found, tool_env(env), registry, on_resume,
                         on_state=lambda state: on_state(state, tool)).start()

