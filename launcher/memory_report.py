"""The memory account and its advice as operators read them: `explain`'s table, `status`'s block, JSON, a tee.

Kept apart from the verdict code: `explain` and `serve` call it at one place each.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from launcher.fit_advice import Candidate, advise, fully_offloaded, kv_per_token, summary
from launcher.memory_account import MemoryAccount, MemoryTracker

RELEASE_LINES = {"estimate": "Ollama's own estimate: the offload line", "layout": "the Ollama engine's layout lines",
                 "llama-server": "llama-server's fit",
                 "runner": "the runner's own lines; no estimate or fit lines in the log"}
NOT = "not in the log"


def size(n: int | float | None) -> str:
    """A size as the table shows it; None is 'not in the log'."""
    if n is None:
        return NOT
    v = float(n)
    sign = "-" if v < 0 else ""
    v = abs(v)
    if v >= 1 << 30:
        return f"{sign}{v / (1 << 30):.1f} GiB"
    if v >= 1 << 20:
        return f"{sign}{v / (1 << 20):.0f} MiB"
    if v >= 1 << 10:
        return f"{sign}{v / (1 << 10):.0f} KiB"
    return f"{sign}{int(v)} B"


class MemoryTee:
    """The memory facts of the records the log parser reads, in the same pass: `parse_chunks(chunks, tap=tee)`.

    Records, not physical lines: a pasted log's wrapped lines come rejoined and its glued ones split, numbered as the
    parser numbers them, with the quiet lines that size a load (which the parser skips) rejoined the same way."""

    def __init__(self) -> None:
        self.tracker = MemoryTracker()
        self.quiet: re.Pattern[bytes] = self.tracker.quiet  # the quiet lines it reads too (`ollama_logs.RecordTap`)
        self.feed: Callable[[int, str], object] = self.tracker.feed  # one record of the parser's

    def accounts(self) -> list[MemoryAccount]:
        """The loads whose memory the log sizes."""
        return [a for a in self.tracker.accounts if a.release_line is not None or a.layers_total is not None]


def relevant(accounts: list[MemoryAccount], outcome: str, cause: str = "") -> list[MemoryAccount]:
    """The accounts worth showing: loads with some layers on the GPU and some not; loads with none when memory is
    the verdict's cause (a CPU fallback for another reason is not a memory question); else the last load of a log
    judged partial."""
    memory = cause == "insufficient_vram" or outcome == "partial_offload"
    shown = [a for a in accounts if a.partial and ((a.layers_gpu or 0) > 0 or memory or _short_on_gpu(a))]
    if not shown and outcome == "partial_offload" and accounts:
        shown = [accounts[-1]]
    return shown


def _short_on_gpu(a: MemoryAccount) -> bool:
    """No layer on a GPU, and the load's own figures for a GPU (CUDA/ROCm) say it is short: a memory question."""
    return a.minimum is not None and a.vram_available is not None and (a.shortfall or 0) > 0


def _need_parts(a: MemoryAccount) -> str:
    parts = []
    if a.weights_repeating is not None or a.weights_nonrepeating is not None:
        rep = f"{size(a.weights_repeating)} repeating" + (" (incl. KV)" if a.repeating_includes_kv else "")
        parts.append(f"weights {rep} + {size(a.weights_nonrepeating)} non-repeating")
    else:
        parts.append(f"weights {size(a.weights_total)}")
    ctx = f" at ctx {a.ctx_total}" if a.ctx_total else ""
    kv = f", {a.kv_type}" if a.kv_type else ""
    per = kv_per_token(a)
    how = f" ({size(per[0])} a token: {per[1]})" if per else ""
    parts.append(f"KV cache {size(a.kv)}{ctx}{kv}{how}")
    graph = size(a.graph)
    if a.graph_partial is not None and a.graph_partial != a.graph:
        graph += f" (partial {size(a.graph_partial)})"
    parts.append(f"graph {graph}")
    if a.projector_weights or a.projector_graph:
        parts.append(f"projector {size(a.projector_weights)} + graph {size(a.projector_graph)}")
    elif a.release_line == "estimate":
        parts.append("projector none")
    parts.append(f"OLLAMA_GPU_OVERHEAD {size(a.gpu_overhead)}")
    if a.release_line == "llama-server":
        parts.append(f"fit target {size(a.fit_margin)}")
    return ", ".join(parts)


def table(a: MemoryAccount, candidates: list[Candidate], note: str) -> list[str]:
    """The short table of `explain` and `status`."""
    where = f"line {a.first_line}" if a.first_line else "the log"
    layers = f"{a.layers_gpu}/{a.layers_total}" if a.layers_total is not None else NOT
    out = [f"memory of the load at {where} ({RELEASE_LINES.get(a.release_line or '', 'release line unknown')}):",
           f"  layers on GPU        {layers}"]
    gpus = f" over {a.gpus} GPUs" if a.gpus > 1 else ""
    out.append(f"  VRAM total           {size(a.vram_total)}{gpus}")
    out.append(f"  VRAM free at load    {size(a.vram_free)}")
    if a.vram_available is not None:
        out.append(f"  VRAM available       {size(a.vram_available)} (as Ollama counted it)")
    if a.holders:
        held = ", ".join(f"{h.name} pid {h.pid} {size(h.used)}" for h in a.holders[:4])
        out.append(f"  held by others       {held}")
    else:
        out.append(f"  held by others       {NOT if a.holders == [] else ''}".rstrip())
    out.append(f"  full offload needs   {size(a.need_full)}: {_need_parts(a)}")
    if a.on_gpu or a.off_gpu:
        on = ", ".join(f"{k} {size(v)}" for k, v in sorted(a.on_gpu.items())) or "nothing"
        off = ", ".join(f"{k} {size(v)}" for k, v in sorted(a.off_gpu.items())) or "nothing"
        out.append(f"  placed on GPU        {on}; on the host: {off}")
    short = size(a.shortfall) if a.shortfall is None or a.shortfall > 0 else f"none ({size(-a.shortfall)} to spare)"
    out.append(f"  short by             {short}")
    out.extend(f"  note: {n}" for n in a.notes)
    out.append("changes that would fit it (advised, never applied):")
    if note:
        out.append(f"  ({note})")
    for c in candidates:
        lay = f"{c.layers}/{c.layers_total}" if c.layers is not None else "?"
        margin = size(c.margin) if c.margin is not None else ""
        fits = "fits" if c.fits else ("still partial" if c.fits is False else "not sized")
        extra = "" if c.note == note else c.note
        out.append(f"  {c.setting:<44} {lay:>7}  {fits:<13} {margin:>9}  {extra}".rstrip())
    return out


def report(a: MemoryAccount) -> dict[str, Any]:
    """The account with its advice, as JSON."""
    candidates, note = ([], "every layer is on the GPU") if fully_offloaded(a) else advise(a)
    return {**a.to_dict(), "advice": [c.to_dict() for c in candidates], "advice_note": note,
            "summary": summary(a, candidates)}


def render(accounts: list[MemoryAccount]) -> list[str]:
    """Every account's table."""
    out: list[str] = []
    for a in accounts:
        candidates, note = advise(a)
        out.extend(table(a, candidates, note))
    return out
