"""The live decision: the signals about one subject combined into a verdict (two sources for gpu)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from launcher.evidence.facts import (
    EXPECTED_CPU_CAUSES,
    Evidence,
    Facts,
    Ruling,
    Signal,
    Verdict,
    _d,
    _lev,
    _rank,
    settle,
)
from launcher.evidence.signals import _shim_initialised


def _gpu_seen(f: Facts) -> list[Evidence]:
    """A usable GPU seen by NVML or the shim (DESIGN principle 2: the condition for `cpu_fallback`)."""
    nvml = f.live.nvml
    if nvml is not None and nvml.kind == "gpus" and _d(nvml, "gpus"):
        return [_lev(nvml, f"NVML sees {len(_d(nvml, 'gpus'))} GPU(s)")]
    for p in f.live.procs.values():
        seen = _shim_initialised(p)
        if seen:
            return seen[:1]
    return []


def _no_nvidia_here(f: Facts) -> bool:
    """The machine shows no NVIDIA GPU at all: no device node, no driver library anywhere, NVML unavailable (the
    supervisor's `machine` event). Then a CPU run is what the machine can do, whatever the log's loader errors."""
    m = f.live.machine
    if m is None:
        return False
    nvml = f.live.nvml
    return (not _d(m, "device_nodes") and not _d(m, "driver_dir") and not _d(m, "loader_path")
            and not (nvml is not None and nvml.kind == "gpus" and _d(nvml, "gpus")))


def _decide(f: Facts, subject: str, signals: list[Signal], base: Mapping[str, Any], stages: frozenset[str],
            degraded: str | None = None, notes: Sequence[str] = ()) -> Verdict:
    """The verdict of the signals, with the handlers' notes, the caller's and the rule's own (facts unchanged)."""
    v, own = _rule(f, subject, signals, base, stages, degraded)
    return settle(f, (v, (*notes, *own)))


def _rule(f: Facts, subject: str, signals: list[Signal], base: Mapping[str, Any], stages: frozenset[str],
          degraded: str | None = None) -> Ruling:
    """Combine the signals: disagreement is said; `gpu` needs two sources; a fallback needs a GPU seen and an
    explicit negative (silence alone never restarts a server)."""
    pos = [s for s in signals if s.says in ("gpu", "partial")]
    neg = [s for s in signals if s.says == "cpu"]
    firm_pos = [s for s in pos if s.strength != "weak"]
    said = tuple(f"{s.source}:{s.says}" + ("" if s.strength in ("strong", "medium") else f"({s.strength})")
                 for s in signals)
    ev = tuple(e for s in signals for e in s.evidence)
    kw = {**base, "subject": subject, "signals": said, "tier": "live"}
    found = tuple(f.findings)
    if not signals:
        return (Verdict("unknown", "unknown", (), (), found, visible=False, **kw),
                ("no source has said anything about this yet",))
    if firm_pos and neg:
        lines = tuple(f"{s.source} says {s.says}: " + "; ".join(e.says for e in s.evidence[:2]) for s in pos + neg)
        said_so = ("the sources disagree: " + " / ".join(lines),)
        firm_sources = {s.source for s in firm_pos}  # a weak signal (libraries mapped) never outvotes a source
        if len(firm_sources) >= 2 and any(s.strength == "strong" for s in pos):
            outcome = "partial_offload" if any(s.says == "partial" for s in pos) else "gpu"
            cause = "insufficient_vram" if outcome == "partial_offload" else "none"
            return Verdict(outcome, cause, ev, (), found, disagreement=lines, **kw), said_so
        return Verdict("unknown", "unknown", ev, (), found, disagreement=lines, **kw), said_so
    if any(s.says == "partial" for s in pos):
        return Verdict("partial_offload", "insufficient_vram", ev, (), found, **kw), ()
    if len({s.source for s in pos}) >= 2 and firm_pos:
        return Verdict("gpu", degraded or "none", ev, (), found, **kw), ()
    if pos and not neg:
        return (Verdict("unknown", "unknown", ev, (), found, **kw),
                (f"only {pos[0].source} shows GPU use: a gpu verdict needs a second, independent signal",))
    return _decide_cpu(f, neg, ev, kw, stages)


def _decide_cpu(f: Facts, neg: list[Signal], ev: tuple[Evidence, ...], kw: Mapping[str, Any],
                stages: frozenset[str]) -> Ruling:
    explicit = [s for s in neg if s.strength != "silence"]
    candidates = [s.cause for s in neg if s.cause]
    candidates += [p.cause for p in f.problems if p.stage in stages and (not p.superseded or p.stage == "runner")]
    cause = min(candidates, key=_rank) if candidates else "unknown"
    seen = _gpu_seen(f)
    found = tuple(f.findings)
    if cause in EXPECTED_CPU_CAUSES and cause != "none":
        return Verdict("cpu_expected", cause, ev, (), found, **kw), ()
    if not seen:
        if cause in ("none", "unknown") and explicit:
            return (Verdict("cpu_expected", "none", ev, (), found, **kw),
                    ("neither NVML nor the shim saw a usable GPU",))
        if _no_nvidia_here(f):
            return (Verdict("cpu_expected", "none", ev, (), found, **kw),
                    (f"no NVIDIA device node, driver library or NVML on this machine: {cause} only says that the "
                     "GPU backend cannot run here",))
        return (Verdict("unknown", cause, ev, (), found, **kw),
                (f"no usable GPU seen by NVML or the shim, so this is not called a fallback; if a GPU is there, "
                 f"the cause is {cause}",))
    if not explicit:
        return (Verdict("unknown", cause if cause != "none" else "unknown", ev + tuple(seen), (), found, **kw),
                ("no source shows GPU use, but none shows a failure either: not called a fallback",))
    return Verdict("cpu_fallback", cause, ev + tuple(seen), (), found, **kw), ()
