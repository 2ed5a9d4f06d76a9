"""Doctor's table of checks, running them, the verdict rules, and the text and JSON output."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from launcher.doctor.context import Ctx, Row
from launcher.doctor.host import (
    check_avx,
    check_device_nodes,
    check_filters,
    check_libcuda,
    check_nvml,
    check_persistence,
    check_shim,
    check_tmp,
    check_uvm,
)
from launcher.doctor.install import check_ollama, check_ollama_libs
from launcher.doctor.probes import check_probe_backend, check_probe_cuinit
from launcher.remedy_text import advice

# --- the table of checks, running them, the verdict ---------------------------------------------------------------

Check = Callable[[Ctx], Row]

CHECKS: Final[tuple[tuple[str, Check], ...]] = (
    ("nvml", check_nvml),
    ("libcuda", check_libcuda),
    ("device_nodes", check_device_nodes),
    ("nvidia_uvm", check_uvm),
    ("persistence", check_persistence),
    ("device_filters", check_filters),
    ("ollama", check_ollama),
    ("ollama_libs", check_ollama_libs),
    ("cpu_avx", check_avx),
    ("tmp_exec", check_tmp),
    ("shim", check_shim),
)
PROBES: Final[tuple[tuple[str, Check], ...]] = (
    ("probe_cuinit", check_probe_cuinit),
    ("probe_backend", check_probe_backend),
)


def run_checks(ctx: Ctx, checks: Sequence[tuple[str, Check]] | None = None) -> list[Row]:
    """Every check in order (the probes too with ctx.probe); a check that raises is that check's failure."""
    table = list(checks if checks is not None else (*CHECKS, *(PROBES if ctx.probe else ())))
    rows = []
    for name, check in table:
        try:
            rows.append(check(ctx))
        except Exception as exc:  # one broken check must not hide the others
            rows.append(Row(name, "fail", f"the check itself failed: {type(exc).__name__}: {exc}",
                            "please report this with `ollama-gpu doctor --json` output"))
    return rows


@dataclass(frozen=True, slots=True)
class Verdict:
    """What Ollama would do on this host, in the project's vocabulary."""

    outcome: str
    cause: str
    says: str
    proven: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"outcome": self.outcome, "cause": self.cause, "says": self.says, "proven": self.proven,
                "advice": advice(self.outcome, self.cause)}


VerdictRule = Callable[[Ctx, Sequence[Row]], "Verdict | None"]


def _forced_cpu(ctx: Ctx, rows: Sequence[Row]) -> Verdict | None:
    if any(r.cause == "operator_forced_cpu" for r in rows):
        return Verdict("cpu_expected", "operator_forced_cpu", "the configuration chooses the CPU", False)
    return None


def _no_gpu(ctx: Ctx, rows: Sequence[Row]) -> Verdict | None:
    if ctx.gpu_seen or any(r.cause == "driver_library_mismatch" for r in rows):
        return None
    return Verdict("cpu_expected", "none", "no NVIDIA GPU or driver on this host: Ollama runs on the CPU", False)


def _blocked(ctx: Ctx, rows: Sequence[Row]) -> Verdict | None:
    row = next((r for r in rows if r.cause and r.status in ("fail", "warn")), None)
    if row is None:
        return None
    return Verdict("cpu_fallback", row.cause or "unknown", f"a GPU is present but {row.name}: {row.found}",
                   row.name.startswith("probe_"))


def _proven(ctx: Ctx, rows: Sequence[Row]) -> Verdict | None:
    probes = [r for r in rows if r.name.startswith("probe_") and r.status != "info"]
    if probes and all(r.status == "ok" for r in probes):
        return Verdict("gpu", "none", "the probes initialised CUDA and the GGML backend registered the GPU", True)
    return None


def _expected(ctx: Ctx, rows: Sequence[Row]) -> Verdict | None:
    return Verdict("gpu", "none", "nothing stands in the way of the GPU (not proven: run with --probe)", False)


VERDICT_RULES: Final[tuple[VerdictRule, ...]] = (_forced_cpu, _no_gpu, _blocked, _proven, _expected)


def verdict(ctx: Ctx, rows: Sequence[Row]) -> Verdict:
    """The first rule that decides."""
    for rule in VERDICT_RULES:
        v = rule(ctx, rows)
        if v is not None:
            return v
    raise AssertionError("the last verdict rule always decides")


def exit_code(rows: Sequence[Row]) -> int:
    """0 when no check failed, 1 when one did."""
    return 1 if any(r.status == "fail" for r in rows) else 0


# --- output -------------------------------------------------------------------------------------------------------

MARKS: Final = {"ok": "✓", "warn": "!", "fail": "✗", "info": "·"}
ASCII_MARKS: Final = {"ok": "ok", "warn": "!", "fail": "X", "info": "-"}


def marks_for(encoding: str | None) -> Mapping[str, str]:
    """Unicode marks when the output can carry them, ASCII otherwise."""
    try:
        "".join(MARKS.values()).encode(encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return ASCII_MARKS
    return MARKS


def render_text(rows: Sequence[Row], v: Verdict, user: str, marks: Mapping[str, str] = MARKS) -> str:
    """The table an operator reads: a mark, the check, what was found, and the fix under each failed check."""
    width = max(len(r.name) for r in rows) if rows else 8
    out = [f"ollama-gpu doctor (service user: {user})"]
    for r in rows:
        out.append(f"{marks[r.status]:>2} {r.name:<{width}}  {r.found}")
        if r.fix and r.status in ("fail", "warn"):
            out.append(f"   {'':<{width}}  fix: {r.fix}")
    out.append("")
    out.append(f"verdict: {v.outcome} (cause: {v.cause}) — {v.says}")
    if v.cause != "none":
        out.append(f"what to do: {advice(v.outcome, v.cause)}")
    return "\n".join(out) + "\n"


def render_json(rows: Sequence[Row], v: Verdict, ctx: Ctx) -> str:
    """One JSON object."""
    obj = {"user": ctx.user, "probe": ctx.probe, "checks": [r.to_dict() for r in rows], "verdict": v.to_dict(),
           "exit_code": exit_code(rows)}
    return json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n"
