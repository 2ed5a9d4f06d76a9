"""The process-tree watcher: finds Ollama's runners, classifies them by argv, audits their environ and maps.

Identity is (pid, start time): a reused pid is a new process. A process seen between fork and exec still has
Ollama's argv; when its argv changes it is classified again. Short-lived processes and permission races are
normal: a process that vanished mid-read is simply gone. Reads go through `proc_root` so tests use a fake /proc.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from launcher.events import Event, now
from launcher.generations import RUNNER_ROWS as GEN_RUNNER_ROWS

# Classification rows, first match wins: (class, basename of argv[0] or None, argv[1] or None, required flag,
# forbidden flag); the generation table keeps them with the generations that start each shape.
RUNNER_ROWS: Final[tuple[tuple[str, str | None, str | None, str | None, str | None], ...]] = tuple(
    row[:5] for row in GEN_RUNNER_ROWS)
# Classes whose CUDA use we audit; `other` (a shell, cc) and `server` are tracked but not audited as runners.
RUNNER_CLASSES: Final = frozenset({"model_runner", "discovery_runner", "mlx_runner", "gpu_discover"})
GPU_LIBS: Final = (("libcuda", re.compile(r"^libcuda\.so")), ("ggml_cuda", re.compile(r"^libggml-cuda")),
                   ("cudart", re.compile(r"^libcudart\.so")), ("cublas", re.compile(r"^libcublas")),
                   ("ggml_cpu", re.compile(r"^libggml-cpu")), ("nvml", re.compile(r"^libnvidia-ml\.so")))


EARLY_LOOKS: Final = 5  # scans an audit may wait for the loader; a static program never maps libc


def _loader_done(maps: set[str]) -> bool:
    """ld.so has mapped the program's libraries (preloads come before libc, so libc mapped means they are in)."""
    return any(os.path.basename(path).startswith("libc.so") for path in maps)


def classify(argv: Sequence[str]) -> str:
    """The process class of an argv, per RUNNER_ROWS."""
    if not argv:
        return "other"
    base = os.path.basename(argv[0])
    sub = argv[1] if len(argv) > 1 else None
    for cls, want_base, want_sub, required, forbidden in RUNNER_ROWS:
        if want_base is not None and base != want_base:
            continue
        if want_sub is not None and sub != want_sub:
            continue
        if required is not None and required not in argv:
            continue
        if forbidden is not None and forbidden in argv:
            continue
        return cls
    return "other"


class Gone(Exception):
    """The process ended while we looked at it."""


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """What /proc says of one process at one read."""

    pid: int
    ppid: int
    start_time: int  # clock ticks since boot (field 22 of stat)
    argv: tuple[str, ...]


class ProcFS:
    """Reads of /proc under `root`; Gone when the process vanished, PermissionError when not ours to read."""

    def __init__(self, root: Path = Path("/proc")) -> None:
        self.root = root

    def _read(self, pid: int, name: str) -> bytes:
        try:
            return (self.root / str(pid) / name).read_bytes()
        except (FileNotFoundError, ProcessLookupError) as exc:
            raise Gone(pid) from exc

    def info(self, pid: int) -> ProcInfo:
        """pid, ppid, start time and argv."""
        stat = self._read(pid, "stat").decode(errors="replace")
        # comm may hold spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) < 20:
            raise Gone(pid)
        argv = tuple(a.decode(errors="replace") for a in self._read(pid, "cmdline").split(b"\0") if a)
        return ProcInfo(pid=pid, ppid=int(fields[1]), start_time=int(fields[19]), argv=argv)

    def children(self, pid: int) -> list[int]:
        """Direct children via /proc/PID/task/*/children, or by a scan of every ppid where that file is missing."""
        task_dir = self.root / str(pid) / "task"
        found: list[int] = []
        try:
            tasks = list(task_dir.iterdir())
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
            return []
        have_children_file = False
        for task in tasks:
            try:
                text = (task / "children").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            have_children_file = True
            found.extend(int(x) for x in text.split())
        if have_children_file:
            return found
        return [p for p in self.all_pids() if self._ppid_or_none(p) == pid]

    def _ppid_or_none(self, pid: int) -> int | None:
        try:
            return self.info(pid).ppid
        except (Gone, PermissionError, ValueError):
            return None

    def all_pids(self) -> list[int]:
        """Every pid in /proc."""
        return [int(p.name) for p in self.root.iterdir() if p.name.isdigit()]

    def environ(self, pid: int) -> dict[str, str]:
        """The initial environment of the process."""
        out: dict[str, str] = {}
        for item in self._read(pid, "environ").split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep:
                out[key.decode(errors="replace")] = value.decode(errors="replace")
        return out

    def mapped_files(self, pid: int) -> set[str]:
        """Paths of the files mapped into the process."""
        paths: set[str] = set()
        for line in self._read(pid, "maps").decode(errors="replace").splitlines():
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                paths.add(parts[5].removesuffix(" (deleted)"))
        return paths


@dataclass(slots=True)
class _Tracked:
    info: ProcInfo
    cls: str
    libs: frozenset[str] = frozenset()
    audited: bool = False
    early_looks: int = 0  # audits postponed because the loader had not mapped the preloads yet


@dataclass(slots=True)
class TreeWatcher:
    """Follows the descendants of `root_pid`; `scan()` returns the events of what changed since the last scan."""

    root_pid: int
    shim: Path | None
    events_socket: Path | None
    proc: ProcFS = field(default_factory=ProcFS)
    ignore: Callable[[int], bool] = lambda _pid: False  # e.g. our own cc and probes
    _known: dict[tuple[int, int], _Tracked] = field(default_factory=dict)
    denied: int = 0

    def descendants(self) -> Iterable[ProcInfo]:
        """Every live descendant of the root (orphans re-parented to us included), read once each."""
        stack = list(self.proc.children(self.root_pid))
        seen: set[int] = set()
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                info = self.proc.info(pid)
            except (Gone, ValueError):
                continue
            except PermissionError:
                self.denied += 1
                continue
            yield info
            stack.extend(self.proc.children(pid))

    def scan(self) -> list[Event]:
        """One pass over the tree: runner_started / runner_env_ok / runner_env_missing / runner_libs / runner_exited."""
        events: list[Event] = []
        live: set[tuple[int, int]] = set()
        for info in self.descendants():
            if self.ignore(info.pid):
                continue
            key = (info.pid, info.start_time)
            live.add(key)
            tracked = self._known.get(key)
            if tracked is None or tracked.info.argv != info.argv:
                cls = classify(info.argv)
                tracked = _Tracked(info=info, cls=cls)
                self._known[key] = tracked
                events.append(self._event("runner_started" if cls in RUNNER_CLASSES else "process_started",
                                          info, cls=cls, argv=list(info.argv), ppid=info.ppid))
            if tracked.cls in RUNNER_CLASSES:
                events.extend(self._audit(tracked))
        for key in [k for k in self._known if k not in live]:
            tracked = self._known.pop(key)
            if tracked.cls in RUNNER_CLASSES:
                events.append(self._event("runner_exited", tracked.info, cls=tracked.cls))
        return events

    def has_alive(self, cls: str) -> bool:
        """A process of class `cls` was alive at the last scan."""
        return any(t.cls == cls for t in self._known.values())

    def exited(self, pid: int, status: dict[str, int]) -> list[Event]:
        """A tracked process was reaped by us (an orphan): report it with its status."""
        for key in [k for k in self._known if k[0] == pid]:
            tracked = self._known.pop(key)
            return [self._event("runner_exited" if tracked.cls in RUNNER_CLASSES else "process_exited",
                                tracked.info, cls=tracked.cls, **status)]
        return []

    def _audit(self, tracked: _Tracked) -> list[Event]:
        events: list[Event] = []
        info = tracked.info
        try:
            if not tracked.audited:
                env = self.proc.environ(info.pid)
                maps = self.proc.mapped_files(info.pid)
                if not maps:  # a zombie (exited, not yet reaped by Ollama) reads empty environ and maps: no audit
                    return events
                preload = env.get("LD_PRELOAD", "")
                shim_in_env = self.shim is not None and str(self.shim) in preload.replace(":", " ").split()
                if shim_in_env and not _loader_done(maps) and tracked.early_looks < EARLY_LOOKS:
                    # Just after exec, before ld.so mapped the preloads: look again at the next scan.
                    tracked.early_looks += 1
                    return events
                tracked.audited = True
                facts = {
                    "cls": tracked.cls,
                    "ld_preload": preload,
                    "shim_in_env": shim_in_env,
                    "events_var_ok": self.events_socket is not None
                    and env.get("OGPU_EVENTS") == str(self.events_socket),
                    "shim_mapped": self.shim is not None and os.path.realpath(self.shim) in maps,
                    "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
                    "ld_library_path": env.get("LD_LIBRARY_PATH"),
                    "ggml_backend_path": env.get("GGML_BACKEND_PATH"),
                }
                ok = facts["shim_in_env"] and facts["events_var_ok"] and facts["shim_mapped"]
                events.append(self._event("runner_env_ok" if ok else "runner_env_missing", info, **facts))
            else:
                maps = self.proc.mapped_files(info.pid)
                if not maps:  # exiting: its libraries did not change
                    return events
        except Gone:
            return events
        except PermissionError:
            self.denied += 1
            tracked.audited = True
            events.append(self._event("runner_env_missing", info, cls=tracked.cls, audit="permission denied"))
            return events
        libs = frozenset(name for name, pattern in GPU_LIBS for path in maps if pattern.match(os.path.basename(path)))
        if libs != tracked.libs:
            paths = sorted(p for p in maps for _, pattern in GPU_LIBS if pattern.match(os.path.basename(p)))
            tracked.libs = libs
            events.append(self._event("runner_libs", info, cls=tracked.cls, libs=sorted(libs), paths=paths))
        return events

    @staticmethod
    def _event(kind: str, info: ProcInfo, **data: object) -> Event:
        return Event("proc", kind, now(), info.pid, {"start_time": info.start_time, **data})
