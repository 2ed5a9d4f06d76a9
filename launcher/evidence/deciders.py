"""What would decide an undecided cause (issue 13 item 8): from what the log lacks, the lines or settings that would
settle it, each said once, instead of one fixed "rerun with OLLAMA_DEBUG=1"."""

from __future__ import annotations

from typing import Final

from launcher import error_codes
from launcher.evidence.facts import Facts, Runner, Verdict, _d
from launcher.operator_vars import FILTER_VARS

BOOTSTRAP_GENERATIONS: Final = frozenset({"C", "D"})  # discovery runs in runners whose output INFO hides
IN_PROCESS_GENERATIONS: Final = frozenset({"0", "A", "B"})
CPU_OUTCOMES: Final = frozenset({"cpu_fallback", "cpu_expected", "unknown"})


def _config_vars(f: Facts) -> str:
    """The settings the `server config` line would show, AMD's first where the log shows an AMD GPU."""
    amd = bool(f.amd_targets) or any(str(_d(e, "library", "")).lower() == "rocm" for e in f.discovered)
    names = [*FILTER_VARS, "OLLAMA_LLM_LIBRARY"]
    if amd:
        names = ["ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "HSA_OVERRIDE_GFX_VERSION",
                 *[n for n in names if n not in ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")]]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _runner_lines(f: Facts) -> Runner | None:
    """The last model load the log shows (started or reporting)."""
    return next((r for r in reversed(f.runners) if r.start is not None or r.reports or r.plans), None)


def _debug_level(f: Facts) -> int:
    """OLLAMA_DEBUG as the `server config` line shows it: 0 off or unknown, 1 DEBUG, 2 TRACE."""
    value = f.env.get("OLLAMA_DEBUG", "").strip().lower()
    if value in ("1", "true", "debug"):
        return 1
    return 2 if value in ("2", "trace") else 0


def _discovery_why(f: Facts) -> str:
    """Where the reason for finding no GPU is printed in this generation, and whether the setting that prints it is
    already in force (then the lines are missing from the paste, not from the log)."""
    level = _debug_level(f)
    if f.generation in BOOTSTRAP_GENERATIONS:
        lines = ("the discovery runner's own lines (`ggml_cuda_init: failed to initialize CUDA: …` or "
                 "`load_backend: failed to load …`)")
        if level >= 2:
            return f"OLLAMA_DEBUG=2 is set: {lines}, printed around `running … for discovery`, would name why no GPU " \
                   "was found"
        return f"with OLLAMA_DEBUG=2 (TRACE), {lines}, discarded below TRACE from 0.12 on, would name why no GPU " \
               "was found"
    lines = "discovery's `cuInit err: <code>` and `library … load err: …` lines"
    if f.generation in IN_PROCESS_GENERATIONS:
        if level >= 1:
            return f"OLLAMA_DEBUG is set: {lines}, printed after `looking for compatible GPUs`, would name why no " \
                   "GPU was found"
        return f"with OLLAMA_DEBUG=1, {lines} would name why no GPU was found"
    return ("discovery's error lines (`cuInit err: <code>` with OLLAMA_DEBUG=1 before 0.12; from 0.12 on the "
            "discovery runner's `ggml_cuda_init: failed to initialize CUDA: …` with OLLAMA_DEBUG=2) would name why "
            "no GPU was found")


def _runner_failure_says(r: Runner) -> str:
    """Why the discovered GPU was not used: the runner's failure line if it is there (its code names no cause by
    itself), else the lines that would show it."""
    failed = [e for e in r.reports if e.kind in ("cuda_init_failed", "backend_failed")]
    if not failed:
        return ("the runner's `ggml_cuda_init: failed to initialize …` or `load_backend: failed to load …` line "
                "would show why the discovered GPU was not used")
    row = error_codes.find(str(_d(failed[-1], "text", "")))
    said = f"{row.name} ({row.text})" if row is not None else f"`{str(_d(failed[-1], 'error', ''))[:80]}`"
    return (f"the runner's own error, {said}, names no cause by itself: the device filters in the `server config` "
            "line, and the device nodes the service user can open (`ollama-gpu doctor`), would")


def deciding_lines(f: Facts, v: Verdict) -> tuple[str, ...]:
    """For a verdict whose cause (or outcome) is not decided: what would decide it, computed from what is missing."""
    unexplained_no_gpu = v.outcome == "cpu_expected" and v.cause == "none" and bool(f.no_gpu) and not f.discovered
    if v.cause != "unknown" and v.outcome != "unknown" and not unexplained_no_gpu:
        return ()
    out: list[str] = []
    if unexplained_no_gpu:  # "no GPU" is an answer on a machine without one; with one, its reason is missing
        if f.env_event is None:
            out.append(f"if this machine has a GPU: the `server config` line, printed at start, would show "
                       f"{_config_vars(f)}: a device filter hides it")
        out.append("if this machine has a GPU: " + _discovery_why(f))
        return tuple("to decide: " + line for line in out)
    r = _runner_lines(f)
    cpu_side = v.outcome in CPU_OUTCOMES or v.outcome == "crash"
    if f.version is None:
        out.append("the `Listening on … (version …)` line, printed at start, would name the Ollama version and so "
                   "which lines to expect")
    if f.env_event is None and cpu_side:
        out.append(f"the `server config` line, printed at start, would show {_config_vars(f)}: a device filter or "
                   "a forced library explains a CPU run")
    if not f.discovered and not f.no_gpu:
        out.append("the discovery lines (`inference compute …`), printed at start, would show which GPUs Ollama "
                   "found")
    elif not f.discovered and cpu_side:
        out.append(_discovery_why(f))
    if v.outcome == "crash":
        out.append("the lines just before the runner's exit (`CUDA error …`, `GGML_ASSERT`, a signal and its stack) "
                   "would name what failed")
    elif r is None and f.discovered:
        out.append("a model load (`ollama run <model>`) would print the runner's lines: `offloaded N/M layers to "
                   "GPU` and the `model buffer size` lines show where the weights went")
    elif r is not None and not r.reports:
        out.append("a line from `ggml_cuda_init` or the runner's load (`offloaded N/M layers to GPU`, `CUDA0 model "
                   "buffer size`) would show whether the GPU was used")
    elif r is not None and v.outcome in CPU_OUTCOMES and f.discovered:
        out.append(_runner_failure_says(r))
    return tuple("to decide: " + line for line in out)
