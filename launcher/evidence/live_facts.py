"""The live handlers: shim, /proc, NVML and supervisor events → per-process facts."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Final

from launcher import devices, error_codes
from launcher.events import Event
from launcher.evidence.facts import Facts, Handler, Proc, _d, _push
from launcher.evidence.log_facts import _on_config
from launcher.generations import generation_of
from launcher.proctree import classify as classify_argv
from launcher.vocabulary import FILTER_VARS, INTENT_VARS, SCHEDULER_VARS

# --- live handlers: shim, /proc, NVML and supervisor events → per-process facts ------------------------------------

DISCOVERY_CLASSES: Final = frozenset({"server", "discovery_runner", "gpu_discover"})
MODEL_CLASSES: Final = frozenset({"model_runner", "mlx_runner"})
PROC_CAP: Final = 64  # processes remembered; the oldest ended ones go first
# dlopen names whose failure matters: CPU variants and ggml's libnvidia-ml probes fail on healthy systems.
GPU_DLOPEN: Final = re.compile(r"(?:^|/)lib(?:ggml-cuda|cuda\.so|cudart|cublas)")
NVML_RISE_BYTES: Final = 128 << 20  # less than one CUDA context: below this a per-GPU rise proves nothing
UNKNOWN_ERROR: Final = 999  # NVML_ERROR_UNKNOWN ("Unknown Error")


def _live_key(f: Facts, e: Event) -> Proc | None:
    """The process an event is about: (pid, start time), or the latest process with that pid when none is given."""
    if e.pid is None:
        return None
    live = f.live
    st = _d(e, "start_time")
    st = st if isinstance(st, int) and not isinstance(st, bool) else None
    found = live.procs.get((e.pid, st))
    if found is not None:
        return found
    if st is None:
        same = [p for p in live.procs.values() if p.pid == e.pid]
        if same:
            return max(same, key=lambda p: p.seq)
    else:
        loose = live.procs.pop((e.pid, None), None)
        if loose is not None:  # first seen without a start time (the shim's peer vanished before accept)
            loose.start_time = st
            live.procs[loose.key] = loose
            return loose
    runner = f.runner
    p = Proc(e.pid, st, live.seq, baseline=dict(live.gpu_used) if live.gpu_used is not None else None,
             log_runner=runner, log_reports=len(runner.reports))
    if live.server_pid == e.pid:
        p.cls = "server"
    live.procs[p.key] = p
    if len(live.procs) > PROC_CAP:
        ended = [q for q in live.procs.values() if q.ended is not None] or list(live.procs.values())
        del live.procs[min(ended, key=lambda q: q.seq).key]
    return p


def _on_proc_event(update: Callable[[Facts, Proc, Event], None]) -> Handler:
    def handle(f: Facts, e: Event) -> None:
        p = _live_key(f, e)
        if p is not None:
            update(f, p, e)
    return handle


def _hello(f: Facts, p: Proc, e: Event) -> None:
    p.hello = e
    p.cvd = _d(e, "cuda_visible_devices")
    if p.cls == "unknown":
        p.cls = classify_argv([str(a) for a in _d(e, "argv", ()) or ()])
    if p.cls == "server" or p.pid == f.live.server_pid:
        f.live.operator_env.setdefault("CUDA_VISIBLE_DEVICES", p.cvd)  # the server's own env is the operator's


def _dlopen(f: Facts, p: Proc, e: Event) -> None:
    name = str(_d(e, "name", ""))
    if not GPU_DLOPEN.search(name):
        return
    _push(p.dlopen_ok if _d(e, "ok") else p.dlopen_failed, e)


def _started(f: Facts, p: Proc, e: Event) -> None:
    cls = str(_d(e, "cls", "unknown"))
    if p.cls in ("unknown", "other") or cls != "other":
        p.cls = cls


def _libs(f: Facts, p: Proc, e: Event) -> None:
    p.libs = frozenset(str(x) for x in _d(e, "libs", ()) or ())
    p.libs_event = e


def _env_missing(f: Facts, p: Proc, e: Event) -> None:
    why = _d(e, "audit") or "LD_PRELOAD/OGPU_EVENTS not as planned"
    f.finding(f"runner_env_missing: {p.cls} pid {p.pid} runs without the shim ({why})")


def _ended(f: Facts, p: Proc, e: Event) -> None:
    if p.ended is None:
        p.ended = e


def _on_ollama_started(f: Facts, e: Event) -> None:
    f.live.server_pid = e.pid
    env = _d(e, "env")
    if isinstance(env, Mapping):
        for key in (*INTENT_VARS, *SCHEDULER_VARS, devices.ORDER_VAR):
            f.live.operator_env[key] = None if env.get(key) is None else str(env.get(key))
        set_env = {k: str(v) for k, v in env.items() if v is not None}
        _on_config(f, Event("supervisor", "ollama_started", e.t, e.pid, {"env": set_env}))
        for key in FILTER_VARS:  # an empty filter hides every device (reference fixtures: CUDA_VISIBLE_DEVICES=)
            if set_env.get(key) == "":
                f.add_problem("operator_forced_cpu", e, "config")


def _on_ready(f: Facts, e: Event) -> None:
    f.live.ready = True
    version = _d(e, "version")
    if version and f.version is None:
        f.version = str(version)
        f.generation = f.generation or generation_of(str(version))
        f.generation_from = f.generation_from or "supervisor"


def _nvml_code_cause(e: Event) -> str | None:
    """The cause of an NVML event: its own, else its return code's (error_codes)."""
    cause = _d(e, "cause")
    code = _d(e, "code")
    if not cause and isinstance(code, int):
        cause = error_codes.code_cause("nvml", code)
    return str(cause) if cause else None


def _on_nvml_state(f: Facts, e: Event) -> None:
    f.live.nvml = e
    cause = _nvml_code_cause(e)
    if cause:
        f.add_problem(cause, e, "install")


def _on_nvml_failed(f: Facts, e: Event) -> None:
    """NVML stopped answering: a code that names a cause (15: the GPU is lost) is a problem; NVML's "Unknown Error"
    (999) after it had listed GPUs is a running container whose device access was revoked."""
    f.live.nvml_failed = e
    f.note(f"NVML stopped answering: {_d(e, 'reason')}")
    cause = _nvml_code_cause(e)
    had_gpus = f.live.nvml is not None and f.live.nvml.kind == "gpus" and bool(_d(f.live.nvml, "gpus"))
    if cause is None and _d(e, "code") == UNKNOWN_ERROR and had_gpus:
        cause = "container_gpu_access_lost"
    if cause:
        f.add_problem(cause, e, "runner")


MAX_DENIALS: Final = 8


def _on_gpu_health(f: Facts, e: Event) -> None:
    """The health check's reading: every GPU `access_denied` opens a denial, anything else closes it (a runner's
    cuInit failure inside one is the revoked access, not a filter: launcher.evidence.signals)."""
    gpus = [g for g in _d(e, "gpus", ()) or () if isinstance(g, Mapping)]
    denied = bool(gpus) and all(g.get("state") == "access_denied" for g in gpus)
    open_ = bool(f.live.denials) and f.live.denials[-1][1] is None
    if denied and not open_:
        f.live.denials = [*f.live.denials[-(MAX_DENIALS - 1):], [e.t, None]]
    elif not denied and open_:
        f.live.denials[-1][1] = e.t


def _on_nvml_memory(f: Facts, e: Event) -> None:
    live = f.live
    used = {int(g["index"]): int(g["used"]) for g in _d(e, "gpus", ()) or ()
            if isinstance(g, Mapping) and isinstance(g.get("index"), int) and isinstance(g.get("used"), int)}
    alive = [p for p in live.procs.values() if p.ended is None]
    models = [p for p in alive if p.cls in MODEL_CLASSES]
    listed = _d(e, "processes")
    if listed is not None and _d(e, "pids_comparable"):
        held: dict[int, int] = {}
        per_gpu: dict[int, dict[int, int]] = {}
        for entry in listed:
            pid = entry.get("pid") if isinstance(entry, Mapping) else None
            if isinstance(pid, int):
                held[pid] = held.get(pid, 0) + int(entry.get("used") or 0)
                if isinstance(entry.get("gpu"), int):
                    gpu = per_gpu.setdefault(pid, {})
                    gpu[entry["gpu"]] = gpu.get(entry["gpu"], 0) + int(entry.get("used") or 0) or 1
        for p in alive:
            p.nvml_last_listed = p.pid in held
            p.nvml_last_seq = live.seq
            if p.pid in held:
                p.nvml_listed = e
                p.nvml_bytes = max(p.nvml_bytes, held[p.pid])
                for index, n in per_gpu.get(p.pid, {}).items():
                    p.held[index] = max(p.held.get(index, 0), n)
    for p in models:
        if p.baseline is None:
            continue
        rise = sum(u - p.baseline.get(i, u) for i, u in used.items())
        p.nvml_last_seq = max(p.nvml_last_seq, live.seq)
        p.rise_shared = p.rise_shared or len(models) > 1
        if rise > p.rise:
            p.rise, p.rise_event = rise, e
        if not p.rise_shared and p.nvml_listed is None:
            for i, u in used.items():
                if u - p.baseline.get(i, u) >= NVML_RISE_BYTES:
                    p.held[i] = max(p.held.get(i, 0), u - p.baseline.get(i, u))
    live.gpu_used = used


LIVE_HANDLERS: Final[Mapping[tuple[str, str], Handler]] = {
    ("shim", "hello"): _on_proc_event(_hello),
    ("shim", "dlopen"): _on_proc_event(_dlopen),
    ("shim", "cu_init"): _on_proc_event(lambda f, p, e: _push(p.cu_init, e)),
    ("shim", "device"): _on_proc_event(lambda f, p, e: _push(p.devices, e)),
    ("shim", "ctx"): _on_proc_event(lambda f, p, e: _push(p.ctx, e)),
    ("shim", "cuda_error"): _on_proc_event(lambda f, p, e: _push(p.cuda_errors, e)),
    ("shim", "snapshot"): _on_proc_event(lambda f, p, e: setattr(p, "snapshot", e)),
    ("shim", "bye"): _on_proc_event(lambda f, p, e: None),
    ("shim", "process_end"): _on_proc_event(_ended),
    ("proc", "runner_started"): _on_proc_event(_started),
    ("proc", "process_started"): _on_proc_event(_started),
    ("proc", "runner_env_ok"): _on_proc_event(lambda f, p, e: None),
    ("proc", "runner_env_missing"): _on_proc_event(_env_missing),
    ("proc", "runner_libs"): _on_proc_event(_libs),
    ("proc", "runner_exited"): _on_proc_event(_ended),
    ("proc", "process_exited"): _on_proc_event(_ended),
    ("nvml", "gpus"): _on_nvml_state,
    ("nvml", "unavailable"): _on_nvml_state,
    ("nvml", "sample_failed"): _on_nvml_failed,
    ("nvml", "memory"): _on_nvml_memory,
    ("nvml", "gpu_health"): _on_gpu_health,
    ("supervisor", "ollama_started"): _on_ollama_started,
    ("supervisor", "ready"): _on_ready,
    ("supervisor", "restarted"): lambda f, e: None,
    ("supervisor", "ollama_exited"): lambda f, e: None,
    ("supervisor", "decision"): lambda f, e: None,
    ("supervisor", "state"): lambda f, e: None,
}


def _on_machine(f: Facts, e: Event) -> None:
    f.live.machine = e
