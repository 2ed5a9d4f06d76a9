"""Is a process one of ours? Its parent chain, read from /proc (through `proc_root`, so tests use a fake one)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from launcher.proctree import Gone, ProcFS

MAX_DEPTH: Final = 64  # deeper than any Ollama tree; a loop in a fake /proc ends here too


def descends_from(pid: int, ancestor: int, proc: ProcFS | None = None) -> bool | None:
    """True when `ancestor` is `pid`'s parent, grandparent, ... (or `pid` itself); False when the chain reaches
    init without it; None when it cannot be told (a process in the chain vanished or is not readable)."""
    fs = proc if proc is not None else ProcFS(Path("/proc"))
    current = pid
    for _ in range(MAX_DEPTH):
        if current == ancestor:
            return True
        if current <= 1:
            return False
        try:
            current = fs.info(current).ppid
        except (Gone, PermissionError, ValueError):
            return None
    return False
