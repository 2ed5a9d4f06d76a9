"""Issue 17 in `serve`: memory accounts from Ollama's live output, NVML's holders, one advice line per partial load,
the `memory` block of `status`, and the `memory_account` event that metrics read.

Fed from the parser thread (`feed`) and the event sink (`observe`, for NVML's per-process memory); read from the
loop's thread (`reports`). One lock guards what both sides touch. The line tables are imported on the first line, in
the parser thread, so that `serve` starts Ollama without waiting for them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from launcher.events import Event, now

if TYPE_CHECKING:
    from launcher.memory_account import MemoryAccount, MemoryTracker

# Facts after which a load's account is worth publishing: the estimate line is whole at once; llama.cpp's loads end
# with the compute buffers; the Ollama engine with its compute graph line. (`offloaded N/M` comes before the buffers
# that size the advice, so it settles nothing.)
SETTLING: Final = frozenset({"offload", "buffer.graph", "layout.graph"})
MAX_KEPT: Final = 16
GENERIC_WHAT_TO_DO: Final = "see the verdict's evidence"  # the controller's line when no remedy was advised


def _comm(pid: int, proc_root: Path) -> str:
    try:
        return (proc_root / str(pid) / "comm").read_text(encoding="utf-8", errors="replace").strip() or "?"
    except OSError:
        return "?"


class MemoryWatch:
    """Accounts of the live Ollama; `feed` returns the events to hand to the board/metrics sink."""

    def __init__(self, log: Any, own_pids: Callable[[], Iterable[int]] = tuple,
                 proc_root: Path = Path("/proc")) -> None:
        self.log = log
        self.own_pids = own_pids
        self.proc_root = proc_root
        self._tracker: MemoryTracker | None = None
        self._lock = threading.Lock()
        self._published: dict[int, dict[str, Any]] = {}  # the account's serial → report
        self._advised: set[int] = set()
        self._processes: list[dict[str, Any]] = []

    def observe(self, event: Event) -> None:
        """NVML's per-process memory (when the pids are ours to read): who else holds VRAM."""
        if event.source != "nvml" or event.kind != "memory" or not event.data.get("pids_comparable"):
            return
        procs = event.data.get("processes")
        if not isinstance(procs, list | tuple):  # events hold lists as tuples
            return
        rows = [p for p in procs if isinstance(p, Mapping) and isinstance(p.get("pid"), int)
                and isinstance(p.get("used"), int)]
        with self._lock:
            self._processes = [dict(p) for p in rows]

    @property
    def tracker(self) -> MemoryTracker:
        """The line tracker, built on first use."""
        if self._tracker is None:
            from launcher.memory_account import MemoryTracker

            self._tracker = MemoryTracker()
        return self._tracker

    def feed(self, number: int, text: str) -> list[Event]:
        """One cleaned line of Ollama's output; the `memory_account` event when a load's account settles."""
        prev = self.tracker.accounts[-1] if self.tracker.accounts else None
        before = set(prev.lines) if prev is not None else set()
        acc = self.tracker.feed(number, text)
        if acc is None:
            return []
        if acc.layers_total is None and not (acc.release_line == "layout" and acc.off_gpu):
            return []  # a full load is published too (its metrics replace a partial one's), once its layers show
        new = set(acc.lines) - before if acc is prev else set(acc.lines)
        if not new & SETTLING:
            return []
        return [self._publish(acc)]

    def _publish(self, acc: MemoryAccount) -> Event:
        from launcher.fit_advice import advise, summary
        from launcher.memory_account import attach_holders
        from launcher.memory_report import report

        with self._lock:
            processes = list(self._processes)
        if processes:
            own = set(self.own_pids())
            named = [{**p, "name": _comm(int(p["pid"]), self.proc_root)} for p in processes]
            attach_holders(acc, named, own)
        data = report(acc)
        key = acc.serial
        with self._lock:
            self._published[key] = data
            while len(self._published) > MAX_KEPT:
                del self._published[next(iter(self._published))]
        if acc.partial and key not in self._advised:
            self._advised.add(key)
            candidates, _note = advise(acc)
            best = next((c for c in candidates if c.fits), None)
            self.log.warning("partial_offload_advice", model=acc.model, layers_gpu=acc.layers_gpu,
                             layers_total=acc.layers_total, shortfall_bytes=acc.shortfall,
                             change=best.setting if best else None,
                             margin_bytes=best.margin if best else None, advice=summary(acc, candidates),
                             applied=False)
        return Event("log", "memory_account", now(), None, data)

    def reports(self) -> list[dict[str, Any]]:
        """The published accounts, oldest first."""
        with self._lock:
            return list(self._published.values())


def runner_model(pid: object, proc_root: Path = Path("/proc")) -> str | None:
    """The `--model` path of a runner, from its command line (None when unreadable)."""
    if not isinstance(pid, int):
        return None
    try:
        argv = (proc_root / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for i, arg in enumerate(argv[:-1]):
        if arg in (b"--model", b"-m"):
            return argv[i + 1].decode(errors="replace")
    return None


def add_memory(status: dict[str, Any], reports: list[dict[str, Any]],
               model_of: Callable[[object], str | None] = runner_model) -> dict[str, Any]:
    """`status` with a `memory` list, and on each runner the account of its model's newest load."""
    if not reports:
        return status
    status["memory"] = reports
    for runner in status.get("runners") or []:
        model = model_of(runner.get("pid"))
        mine = [r for r in reports if model and r.get("model") == model]
        if not mine and runner.get("outcome") == "partial_offload":
            mine = reports[-1:]
        if mine:
            runner["memory"] = mine[-1]
            generic = str(status.get("what_to_do", "")).startswith(GENERIC_WHAT_TO_DO)
            if generic and runner.get("outcome") == "partial_offload" and mine[-1].get("summary"):
                status["what_to_do"] = f"{mine[-1]['summary']} (advised, not applied)"
    return status
