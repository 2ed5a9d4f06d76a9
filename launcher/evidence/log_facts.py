"""The log handlers: how each log event changes the facts (discovery, problems, runners, configuration)."""

from __future__ import annotations

import re
from typing import Final

from launcher.events import Event
from launcher.evidence.facts import (
    GPU_LIBRARIES,
    HIDE_ALL_VALUES,
    RUNNER_CAP,
    Facts,
    Handler,
    Runner,
    _d,
    _push,
    event_cause,
)
from launcher.generations import MIN_COMPUTE
from launcher.vocabulary import FILTER_VARS

# --- handlers: (source, kind) → how an event changes the facts -----------------------------------------------------

def _on_generation(f: Facts, e: Event) -> None:
    f.generation = _d(e, "generation")
    f.generation_from = _d(e, "from")
    f.generation_basis = _d(e, "basis")
    if _d(e, "version") is not None:
        f.version = _d(e, "version")
        f.version_unknown = not _d(e, "known", True)


def _on_summary(f: Facts, e: Event) -> None:
    f.lines = int(_d(e, "lines", 0) or 0)
    if _d(e, "truncated"):
        f.note(f"{_d(e, 'truncated')} over-long line(s) were cut")


def _on_discovered(f: Facts, e: Event) -> None:
    _push(f.discovered, e)
    for p in f.problems:
        if p.stage in ("discovery", "config"):
            p.superseded = True


def _on_no_gpu(f: Facts, e: Event) -> None:
    _push(f.no_gpu, e)


def _on_problem(stage: str) -> Handler:
    def handle(f: Facts, e: Event) -> None:
        f.add_problem(event_cause(e), e, stage)
    return handle


def _on_cuda_init_failed(f: Facts, e: Event) -> None:
    if _d(e, "where") == "runner" and not f.discovery_mode:
        _push(f.runner.reports, e)
        f.add_problem(event_cause(e), e, "runner")
    else:
        f.add_problem(event_cause(e), e, "discovery")


LIBCUDA_PATH: Final = re.compile(r"(/[^\s\"]*/libcuda\.so[\d.]*)")
NATIVE_LIBCUDA: Final = re.compile(r"^/usr/lib(?:64|/x86_64-linux-gnu|/aarch64-linux-gnu)?/libcuda\.so\.\d{3}")


def _on_library_failed(f: Facts, e: Event) -> None:
    """A driver library that did not work, its cause from the error (or its code); a Linux driver package's
    versioned libcuda tried before WSL's own, which then fail, is WSL's libcuda shadowed (reference A.4's search
    order: the native one first)."""
    f.add_problem(event_cause(e), e, "discovery")
    named = LIBCUDA_PATH.search(str(_d(e, "text", "")))
    path = str(_d(e, "path", "") or (named[1] if named else ""))
    if NATIVE_LIBCUDA.match(path) and f.native_libcuda is None:
        f.native_libcuda = e
    elif "/usr/lib/wsl/" in path and f.native_libcuda is not None:
        f.add_problem("wsl_libcuda_path", f.native_libcuda, "discovery")


def _on_nvml_failed(f: Facts, e: Event) -> None:
    """`Failed to initialize NVML: <text>` (nvidia-smi's words, pasted beside Ollama's): the text's code names the
    cause; NVML's "Unknown Error" after a GPU was found in this log is a container that lost its devices."""
    cause = event_cause(e)
    if cause == "unknown" and f.discovered and "unknown error" in str(_d(e, "error", "")).lower():
        cause = "container_gpu_access_lost"
    f.add_problem(cause, e, "runner" if f.discovered else "discovery")


def _on_backend_failed(f: Facts, e: Event) -> None:
    if _d(e, "backend") is None:
        return  # a CPU variant that does not load is normal: ggml scores every variant
    if not f.discovery_mode:
        _push(f.runner.reports, e)
    f.add_problem(str(_d(e, "cause", "backend_load_failed")), e, "discovery" if f.discovery_mode else "runner")


def _on_report(f: Facts, e: Event) -> None:
    if f.discovery_mode:
        if e.kind == "runner_devices" and int(_d(e, "count", 0) or 0) > 0:
            _on_discovered(f, e)
        return
    runner = f.runner
    if e.kind in ("offload", "buffer", "weights") and any(r.kind in ("offload", "buffer", "weights")
                                                          for r in runner.reports) and _restarted(runner, e):
        _push(f.runners, Runner(), RUNNER_CAP)
        runner = f.runner
    _push(runner.reports, e)
    if e.kind == "runner_devices" and int(_d(e, "count", 0) or 0) > 0:
        _on_discovered(f, e)


def _on_layer(f: Facts, e: Event) -> None:
    if not f.discovery_mode:
        device = str(_d(e, "device", ""))
        f.runner.layers[device] = f.runner.layers.get(device, 0) + 1


def _restarted(runner: Runner, e: Event) -> bool:
    """A second load's lines without a start line between them (partial pastes): a new offload line after buffers."""
    return e.kind == "offload" and any(r.kind == "offload" for r in runner.reports)


def _on_plan(f: Facts, e: Event) -> None:
    runner = f.runner
    if runner.reports or runner.failures or runner.ready:
        _push(f.runners, Runner(), RUNNER_CAP)
        runner = f.runner
    _push(runner.plans, e)


def _on_start(f: Facts, e: Event) -> None:
    if _d(e, "role") == "discovery":
        f.discovery_mode = True
        return
    f.discovery_mode = False
    runner = f.runner
    if runner.start is not None or runner.reports or runner.failures or runner.ready:
        _push(f.runners, Runner(start=e), RUNNER_CAP)
    else:
        runner.start = e
    if _d(e, "gpu_layers") == 0 and f.generation == "D":
        f.add_problem("operator_forced_cpu", e, "config")  # gen D passes -ngl only when num_gpu is set


def _on_failure(f: Facts, e: Event) -> None:
    if f.discovery_mode and e.kind == "runner_crash":
        f.add_problem(event_cause(e), e, "discovery")
        return
    _push(f.runner.failures, e)


def _on_exited(f: Facts, e: Event) -> None:
    _push(f.runner.failures, e)
    f.finding(f"runner exited: {_d(e, 'status', '')} (line {_d(e, 'line')})")


def _on_runner_ready(f: Facts, e: Event) -> None:
    if f.runner.ready is None:
        f.runner.ready = e


def _on_config(f: Facts, e: Event) -> None:
    env = _d(e, "env", {}) or {}
    f.env.update({str(k): str(v) for k, v in env.items()})
    f.env_event = e
    for var in FILTER_VARS:
        value = f.env.get(var, "")
        if value in HIDE_ALL_VALUES:
            f.add_problem("operator_forced_cpu", e, "config")
        elif value:
            f.add_problem("device_filter_hides_gpu", e, "config")
    library = f.env.get("OLLAMA_LLM_LIBRARY", "")
    if library.startswith("cpu"):
        f.add_problem("operator_forced_cpu", e, "config")


def _on_filter(f: Facts, e: Event) -> None:
    value = str(_d(e, "value") or "")
    f.add_problem("operator_forced_cpu" if value in HIDE_ALL_VALUES else "device_filter_hides_gpu", e, "config")


def _on_override(f: Facts, e: Event) -> None:
    if str(_d(e, "value", "")).startswith("cpu"):
        f.add_problem("operator_forced_cpu", e, "config")


def _on_runners(f: Facts, e: Event) -> None:
    runners = [str(r) for r in _d(e, "runners", ()) or ()]
    if runners and not any(r.split("_")[0] in GPU_LIBRARIES or r.startswith(("cuda", "rocm")) for r in runners):
        f.add_problem("missing_gpu_runners", e, "install")


def _on_gpu_libraries(f: Facts, e: Event) -> None:
    _push(f.gpu_libraries, e)
    paths = [str(p) for p in _d(e, "paths", ()) or ()]
    if paths and "/stubs/" in paths[0]:
        f.add_problem("stub_library", e, "discovery")
    # WSL's own libraries live in /usr/lib/wsl/lib; /usr/lib/wsl/drivers is the driver store, whose libcuda is not
    # meant to be loaded directly, so a native path before it is no shadowing (a container's toolkit mount, e.g.)
    wsl = [p for p in paths if "/usr/lib/wsl/lib/" in p]
    native = [p for p in paths if "/usr/lib/wsl/" not in p and p.startswith("/")]
    if wsl and native and paths.index(native[0]) < paths.index(wsl[0]):
        f.add_problem("wsl_libcuda_path", e, "discovery")  # a native Linux driver library shadows WSL's own


def _on_amd(f: Facts, e: Event) -> None:
    _push(f.amd_targets, e)


def _below_minimum(f: Facts, e: Event) -> bool:
    """A CUDA device whose compute capability is below the generation's minimum."""
    try:
        compute = float(str(_d(e, "compute", "")))
    except ValueError:
        return False
    return compute < MIN_COMPUTE.get(f.generation or "", min(MIN_COMPUTE.values()))


def _on_device(f: Facts, e: Event) -> None:
    if not f.discovery_mode:
        _push(f.runner.reports, e)
    if _below_minimum(f, e):
        f.add_problem("unsupported_compute_capability", e, "runner")


def _on_selected(f: Facts, e: Event) -> None:
    _push(f.selected, e)
    _on_plan(f, e)


def _on_verbosity(f: Facts, e: Event) -> None:
    f.verbosity = _d(e, "level")


def _on_finding(text: str) -> Handler:
    def handle(f: Facts, e: Event) -> None:
        f.finding(f"{text} (line {_d(e, 'line')})")
    return handle


def _on_note(text: str) -> Handler:
    def handle(f: Facts, e: Event) -> None:
        f.note(text)
    return handle
