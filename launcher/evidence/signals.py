"""The live signals: what the log, the shim, /proc and NVML each say about one process."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Final

from launcher import error_codes
from launcher.events import Event
from launcher.evidence.facts import HIDE_ALL_VALUES, Evidence, Facts, Proc, Runner, Signal, _d, _lev, _rank
from launcher.evidence.live_facts import NVML_RISE_BYTES
from launcher.evidence.log_tier import _device_placement, _report_placement
from launcher.log_patterns import DLERROR_CAUSES, classify

# --- the live tier: two independent signals for `gpu`, a GPU seen by NVML or the shim for `cpu_fallback` -----------

# cuInit and context-creation results are CUresults: their causes come from the error-code table (error_codes.py).
# 100 (no device) depends on who set the device filter: _no_device_cause.
NO_DEVICE: Final = 100


def _code_cause(code: int) -> str:
    """The cause a CUresult implies ("unknown" when the table names none)."""
    return error_codes.code_cause("cu", code) or "unknown"


def _code_name(code: int) -> str:
    """`802 (CUDA_ERROR_SYSTEM_NOT_READY: system not yet initialized)`, or the number alone."""
    found = error_codes.lookup("cu", code) or error_codes.lookup("cudart", code)
    return f"{code} ({found.name}: {found.text})" if found is not None else str(code)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def _operator_value(f: Facts, key: str) -> str | None:
    """An operator variable (None: unset or not known): the supervisor's env or the server's shim hello first, then
    the log's `server config` line (where an empty value means unset)."""
    if key in f.live.operator_env:
        return f.live.operator_env[key]
    return f.env.get(key) or None


def _no_device_cause(f: Facts, p: Proc) -> str:
    """cuInit 100: the operator's filter hides every device (their choice), or a filter hides the GPU."""
    value = _operator_value(f, "CUDA_VISIBLE_DEVICES")
    if value is not None:
        return "operator_forced_cpu" if value.strip() in HIDE_ALL_VALUES or not value.strip() \
            else "device_filter_hides_gpu"
    if p.cvd is not None:
        return "device_filter_hides_gpu"  # Ollama's own filter for this runner
    return "unknown"


def _dlopen_superseded(p: Proc, failed: Event) -> bool:
    base = re.sub(r"\.so.*$", "", str(_d(failed, "name", "")).rsplit("/", 1)[-1])
    return any(base and base in str(_d(ok, "name", "")) for ok in p.dlopen_ok if ok.t >= failed.t) or \
        any(int(_d(c, "result", 1)) == 0 for c in p.cu_init)


# A runner that started up to this long before the health check saw the access denied met the same denial (the check
# runs every OGPU_HEALTH_INTERVAL seconds, 5 by default).
DENIAL_SLACK: Final = 10.0


def _while_denied(f: Facts, t: float) -> bool:
    """Whether `t` falls in a time the health check found the GPUs' device nodes denied (issue 16)."""
    return any(start is not None and start - DENIAL_SLACK <= t and (end is None or t <= end)
               for start, end in f.live.denials)


def _shim_causes(f: Facts, p: Proc) -> list[tuple[str, Event, str]]:
    """(cause, event, what it says) for every CUDA failure the shim saw in this process."""
    out: list[tuple[str, Event, str]] = []
    for e in p.cu_init[-1:]:
        code = int(_d(e, "result", 0))
        if code and _while_denied(f, e.t):  # revoked nodes: cuInit says 100 (EACCES) or 800/999, never a filter
            out.append(("container_gpu_access_lost", e, f"cuInit failed with {_code_name(code)} while the GPUs' "
                        "device nodes could not be opened (the health check)"))
        elif code == NO_DEVICE:
            out.append((_no_device_cause(f, p), e, "cuInit: no CUDA-capable device (100)"))
        elif code:
            out.append((_code_cause(code), e, f"cuInit failed with {_code_name(code)}"))
    for e in p.dlopen_failed:
        if not _dlopen_superseded(p, e):
            cause = classify(str(_d(e, "error", "")), DLERROR_CAUSES, "backend_load_failed")
            out.append((cause, e, f"dlopen {_d(e, 'name')} failed: {str(_d(e, 'error', ''))[:160]}"))
    failed = [e for e in p.ctx if int(_d(e, "result", 0))]
    if failed and not any(int(_d(e, "result", 1)) == 0 for e in p.ctx):
        code = int(_d(failed[-1], "result", 0))
        out.append((_code_cause(code), failed[-1], f"context creation failed with {_code_name(code)}"))
    return out


def _shim_initialised(p: Proc) -> list[Evidence]:
    ok_init = any(int(_d(e, "result", 1)) == 0 for e in p.cu_init)
    ev = [_lev(e, f"CUDA context on device {_d(e, 'device')}") for e in p.ctx if int(_d(e, "result", 1)) == 0]
    if ok_init or not p.cu_init:
        ev += [_lev(e, f"CUDA device {_d(e, 'ordinal')} {_d(e, 'name') or ''}".rstrip()) for e in p.devices[:2]]
    return ev


def _shim_signal(f: Facts, p: Proc, settled: bool) -> Signal | None:
    if p.hello is None and not (p.cu_init or p.devices or p.ctx or p.dlopen_ok or p.dlopen_failed or p.snapshot):
        return None
    launches = p.total("launches", "kernel", "kernel_ex", "cooperative", "graph")
    held = p.total("mem", "alloc_bytes") - p.total("mem", "free_bytes")
    strong: list[Evidence] = []
    if launches and p.snapshot is not None:
        strong.append(_lev(p.snapshot, f"{launches} kernel launches"))
    if held > 0 and p.snapshot is not None:
        strong.append(_lev(p.snapshot, f"{_mib(held)} of device memory allocated"))
    if strong:
        return Signal("shim", "gpu", "strong", tuple(strong))
    initialised = _shim_initialised(p)
    if initialised:
        return Signal("shim", "gpu", "medium", tuple(initialised))
    causes = _shim_causes(f, p)
    if causes:
        cause = min((c for c, _, _ in causes), key=_rank)
        return Signal("shim", "cpu", "strong", tuple(_lev(e, says) for _, e, says in causes[:3]), cause)
    if settled and p.hello is not None:
        return Signal("shim", "cpu", "silence", (_lev(p.hello, "the shim saw no CUDA device, memory or kernel"),))
    return None


def _proc_signal(p: Proc, settled: bool) -> Signal | None:
    if p.libs is None or p.libs_event is None:
        return None
    if "libcuda" in p.libs and p.libs & {"ggml_cuda", "cudart", "cublas"}:
        return Signal("proc", "gpu", "weak", (_lev(p.libs_event, "libcuda and the CUDA backend are mapped"),))
    if settled and "libcuda" not in p.libs and "ggml_cpu" in p.libs:
        # only once settled: GGML loads its CPU backend first, so a scan between two dlopens sees it alone
        return Signal("proc", "cpu", "medium", (_lev(p.libs_event, "backends loaded, libcuda never mapped"),))
    if settled and "libcuda" not in p.libs:
        return Signal("proc", "cpu", "silence", (_lev(p.libs_event, "libcuda is not mapped"),))
    return None


def _nvml_signal(f: Facts, p: Proc, settled: bool) -> Signal | None:
    nvml = f.live.nvml
    if nvml is None or nvml.kind != "gpus":
        return None
    if p.nvml_listed is not None:
        return Signal("nvml", "gpu", "strong", (_lev(p.nvml_listed, f"NVML: pid {p.pid} holds "
                                                                     f"{_mib(p.nvml_bytes)} of GPU memory"),))
    if p.rise >= NVML_RISE_BYTES and p.rise_event is not None and not p.rise_shared:
        # a rise while several runners were alive is not attributed (the runner's verdict says so)
        return Signal("nvml", "gpu", "strong", (_lev(p.rise_event, f"GPU memory rose by {_mib(p.rise)} while "
                                                                    "it was the only runner"),))
    late = p.nvml_last_seq > f.live.log_seq  # the latest sample came after the latest log line
    if settled and late and p.nvml_last_listed is False:
        return Signal("nvml", "cpu", "medium", (_lev(nvml, f"NVML lists no GPU memory for pid {p.pid}"),))
    if settled and late and p.baseline is not None and not p.rise_shared and p.nvml_last_listed is None:
        return Signal("nvml", "cpu", "silence", (_lev(nvml, f"GPU memory did not rise while pid {p.pid} ran"),))
    return None


def _runner_log(f: Facts, p: Proc) -> Runner | None:
    """The log's lines about this runner: the log's latest runner, only what came after the process appeared."""
    latest = f.runners[-1]
    if latest is p.log_runner:
        if len(latest.reports) <= p.log_reports and latest.ready is None:
            return None
        return replace(latest, reports=latest.reports[p.log_reports:])
    return latest


def _log_signal(f: Facts, r: Runner | None) -> Signal | None:
    if r is None:
        return None
    for judge_ in (_report_placement, _device_placement):
        place = judge_(f, r)
        if place is None or place.where is None:
            continue
        strength = "strong" if place.level == "report" else "medium"
        if place.where == "cpu":
            causes = [p.cause for p in f.problems if p.stage == "runner" or not p.superseded]
            return Signal("log", "cpu", strength, place.evidence, min(causes, key=_rank) if causes else None)
        return Signal("log", place.where, strength, place.evidence)
    return None
