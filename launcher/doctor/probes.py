"""Doctor's `--probe` checks: the embedded probe scripts, run as subprocesses under the shim, and their rows."""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from launcher import error_codes
from launcher.doctor.context import Ctx, Row, _one_line
from launcher.doctor.host import resolve_shim
from launcher.doctor.install import cuda_variants, driver_runs
from launcher.events import Event, thaw
from launcher.log_patterns import CUDA_ERROR_CAUSES, DLERROR_CAUSES, classify
from launcher.remedy_text import advice
from launcher.shim_events import PROCESS_END, ShimEventServer

PROBE_TIMEOUT: Final = 60.0
EVENT_SETTLE: Final = 2.0  # seconds to drain the shim's queued messages after a probe exited

CU_DEVICE_ATTRIBUTE_CC_MAJOR: Final = 75
CU_DEVICE_ATTRIBUTE_CC_MINOR: Final = 76


# --- probes (--probe) ---------------------------------------------------------------------------------------------

# The driver probe: dlopen libcuda.so.1 by soname (as cudart and Ollama's gpu-discover do), cuInit, the devices,
# and a primary context per device (what exclusive-process mode or MIG may refuse). Prints one JSON line.
CUINIT_PROBE: Final = r"""
import ctypes, json, sys
out = {"stage": "dlopen"}
def done():
    print(json.dumps(out)); sys.exit(0)
def mapped(part):
    try:
        return sorted({l.split()[-1] for l in open("/proc/self/maps") if part in l.split()[-1]})
    except OSError:
        return []
try:
    cu = ctypes.CDLL("libcuda.so.1")
except OSError as exc:
    out["error"] = str(exc); done()
out["libcuda"] = mapped("libcuda")
def text(code):
    s = ctypes.c_char_p()
    for fn in ("cuGetErrorName", "cuGetErrorString"):
        try:
            if getattr(cu, fn)(code, ctypes.byref(s)) == 0 and s.value:
                return s.value.decode(errors="replace")
        except AttributeError:
            pass
    return ""
def call(fn, *args):
    try:
        return getattr(cu, fn)(*args)
    except AttributeError:
        return None
out["stage"] = "cuInit"
r = cu.cuInit(0)
out["cu_init"] = r
if r != 0:
    out["error"] = "cuInit returned %d %s" % (r, text(r)); done()
v = ctypes.c_int()
if call("cuDriverGetVersion", ctypes.byref(v)) == 0:
    out["driver_api"] = v.value
out["stage"] = "devices"
n = ctypes.c_int()
r = cu.cuDeviceGetCount(ctypes.byref(n))
if r != 0:
    out["error"] = "cuDeviceGetCount returned %d %s" % (r, text(r)); done()
devs = []
for i in range(n.value):
    d = ctypes.c_int()
    dev = {"ordinal": i, "get": cu.cuDeviceGet(ctypes.byref(d), i)}
    name = ctypes.create_string_buffer(256)
    if call("cuDeviceGetName", name, 256, d) == 0:
        dev["name"] = name.value.decode(errors="replace")
    mem = ctypes.c_size_t()
    if call("cuDeviceTotalMem_v2", ctypes.byref(mem), d) == 0:
        dev["total_mem"] = mem.value
    cc = [ctypes.c_int(), ctypes.c_int()]
    if call("cuDeviceGetAttribute", ctypes.byref(cc[0]), 75, d) == 0 and \
       call("cuDeviceGetAttribute", ctypes.byref(cc[1]), 76, d) == 0:
        dev["cc"] = "%d.%d" % (cc[0].value, cc[1].value)
    u = (ctypes.c_ubyte * 16)()
    if call("cuDeviceGetUuid", u, d) == 0:
        h = bytes(u).hex()
        dev["uuid"] = "GPU-%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])
    bus = ctypes.create_string_buffer(32)
    if call("cuDeviceGetPCIBusId", bus, 32, d) == 0:
        dev["pci_bus_id"] = bus.value.decode(errors="replace")
    ctx = ctypes.c_void_p()
    r = call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), d)
    dev["ctx"] = r
    if r == 0:
        call("cuCtxSetCurrent", ctx)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        if call("cuMemGetInfo_v2", ctypes.byref(free), ctypes.byref(total)) == 0:
            dev["free_mem"] = free.value
        call("cuCtxSetCurrent", None)
        if call("cuDevicePrimaryCtxRelease_v2", d) is None:
            call("cuDevicePrimaryCtxRelease", d)
    elif r is not None:
        dev["ctx_error"] = "cuDevicePrimaryCtxRetain returned %d %s" % (r, text(r))
    devs.append(dev)
out["devices"] = devs
out["stage"] = "done"
done()
"""

# The backend probe: what a runner does (ggml-backend-reg.cpp load_backend): dlopen(RTLD_NOW|RTLD_LOCAL), the
# optional ggml_backend_score, ggml_backend_init, then the registry's device count. The registry is
# `struct ggml_backend_reg { int api_version; struct ggml_backend_reg_i iface; void *context; }` with iface =
# {get_name, get_device_count, get_device, get_proc_address} (ggml-backend-impl.h); its pointers are only called
# when they point into executable memory, so a backend with another layout reports that instead of crashing.
BACKEND_PROBE: Final = r"""
import ctypes, json, os, sys
path = sys.argv[1]
out = {"stage": "dlopen", "backend": path}
def done():
    sys.stdout.flush(); sys.stderr.flush(); print(json.dumps(out)); sys.exit(0)
def executable(addr):
    try:
        for line in open("/proc/self/maps"):
            f = line.split()
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            if lo <= addr < hi:
                return "x" in f[1]
    except OSError:
        pass
    return False
try:
    lib = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
except OSError as exc:
    out["error"] = str(exc); done()
out["stage"] = "score"
try:
    score = lib.ggml_backend_score
    score.restype = ctypes.c_int
    out["score"] = score()
    if out["score"] == 0:
        out["error"] = "ggml_backend_score returned 0: not supported on this system"; done()
except AttributeError:
    out["score"] = None
out["stage"] = "init"
try:
    init = lib.ggml_backend_init
except AttributeError:
    out["error"] = "failed to find ggml_backend_init in %s" % path; done()
init.restype = ctypes.c_void_p
reg = init()
if not reg:
    out["error"] = "ggml_backend_init returned NULL"; done()
out["api_version"] = ctypes.c_int.from_address(reg).value
p = ctypes.sizeof(ctypes.c_void_p)
fns = [ctypes.c_void_p.from_address(reg + p * (1 + i)).value or 0 for i in range(2)]
out["registry_callable"] = all(executable(f) for f in fns)
if out["registry_callable"]:
    out["name"] = ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_void_p)(fns[0])(reg).decode(errors="replace")
    out["devices"] = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p)(fns[1])(reg)
out["stage"] = "done"
done()
"""

_FOUND_DEVICES = re.compile(r"ggml_cuda_init: found (\d+) CUDA devices")
_CUDA_FAILED = re.compile(r"ggml_cuda_init: failed to initialize CUDA: (.*)")


@dataclass(frozen=True, slots=True)
class ProbeRun:
    """A probe's JSON answer, its exit, its stderr, and what the shim reported from inside it."""

    result: Mapping[str, Any] | None
    returncode: int | None
    stderr: str
    events: tuple[Mapping[str, Any], ...]
    shim: str | None  # the shim that was preloaded, None when none could be


# Runs a probe's argv with an environment and a timeout: (exit code, stdout, stderr); code None when it timed out.
ProbeExec = Callable[[Sequence[str], Mapping[str, str], float], tuple[int | None, str, str]]


def shim_env(env: Mapping[str, str], shim: Path | None, socket_path: Path | None,
             extra_libs: Sequence[Path] = ()) -> dict[str, str]:
    """`env` (Ollama's) with the shim preloaded first and OGPU_EVENTS at `socket_path`; our other OGPU_ keys
    dropped; extra library dirs first."""
    out = {k: v for k, v in env.items() if not k.startswith("OGPU_")}
    if extra_libs:
        old = [p for p in out.get("LD_LIBRARY_PATH", "").split(":") if p]
        out["LD_LIBRARY_PATH"] = ":".join([*map(str, extra_libs), *old])
    if shim is not None:
        rest = [p for p in re.split(r"[ :]", out.get("LD_PRELOAD", "")) if p and Path(p) != shim]
        out["LD_PRELOAD"] = " ".join([str(shim), *rest])
        if socket_path is not None:
            out["OGPU_EVENTS"] = str(socket_path)
    return out


def probe_env(ctx: Ctx, shim: Path | None, socket_path: Path | None, extra_libs: Sequence[Path] = ()) -> dict[str, str]:
    """Ollama's environment with the shim preloaded and OGPU_EVENTS at our server; extra library dirs first."""
    return shim_env(ctx.env, shim, socket_path, extra_libs)


def run_under_shim(run: ProbeExec, python: str, env: Mapping[str, str], shim: Path | None, script: str,
                   args: Sequence[str] = (), extra_libs: Sequence[Path] = (),
                   timeout: float = PROBE_TIMEOUT) -> ProbeRun:
    """Run one probe script in a child under `shim` (None: without it) with a private event server, so what the
    shim reports from inside the probe is the probe's alone. Doctor and serve's resume check both come here."""
    with tempfile.TemporaryDirectory(prefix="ogpu-probe-") as tmp:
        sock = Path(tmp) / "events" / "probe.sock"
        server = _event_server(sock) if shim is not None else None
        try:
            code, stdout, stderr = run([python, "-I", "-S", "-c", script, *args],
                                       shim_env(env, shim, sock if server else None, extra_libs), timeout)
            events = drain(server) if server is not None else []
        finally:
            if server is not None:
                server.close()
    return ProbeRun(_last_json(stdout), code, stderr, tuple(_event_dict(e) for e in events),
                    str(shim) if shim else None)


def run_probe(ctx: Ctx, script: str, args: Sequence[str], extra_libs: Sequence[Path] = ()) -> ProbeRun:
    """Run one probe script under the shim (when it passed its preflight) with a private event server."""
    resolved, _why = resolve_shim(ctx)
    shim = resolved.path if resolved is not None and resolved.ok else None

    def run(argv: Sequence[str], env: Mapping[str, str], timeout: float) -> tuple[int | None, str, str]:
        done = ctx.runner(argv, env=env, timeout=timeout)
        return done.returncode, done.stdout, done.stderr

    return run_under_shim(run, ctx.python, ctx.env, shim, script, args, extra_libs)


def _event_server(sock: Path) -> ShimEventServer | None:
    """A private event server for one probe; None (the probe runs without events) when it cannot listen."""
    try:
        return ShimEventServer(sock).start()
    except OSError:  # ShimEventsError (path too long) or a socket error
        return None


def drain(server: ShimEventServer, settle: float = EVENT_SETTLE, quiet: float = 0.3) -> list[Event]:
    """Everything the (already exited) probe sent: its connections are queued in the kernel, so poll until each
    one has ended, nothing came for `quiet` seconds, or `settle` passes."""
    events: list[Event] = []
    start = last = time.monotonic()
    while (now := time.monotonic()) < start + settle:
        batch = server.poll(0.05)
        events.extend(batch)
        if batch:
            last = now
            continue
        opened = {e.data.get("conn") for e in events if e.kind != PROCESS_END}
        ended = {e.data.get("conn") for e in events if e.kind == PROCESS_END}
        if (events and opened <= ended) or now - last >= quiet:
            break
    return [e for e in events if e.kind != PROCESS_END]


# Per-message bookkeeping, and the probe's argv (our own script, not evidence).
_BOOKKEEPING: Final = frozenset({"pid", "seq", "t_ns", "start_time", "conn", "v", "ev", "argv"})


def _event_dict(e: Event) -> dict[str, Any]:
    return {"kind": e.kind, **{k: thaw(v) for k, v in e.data.items() if k not in _BOOKKEEPING}}



def _last_json(stdout: str) -> Mapping[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                return obj
    return None


def _probe_failure(name: str, run: ProbeRun, data: dict[str, Any]) -> Row:
    """A probe that printed no answer: it crashed, timed out or could not start."""
    if run.returncode is None:
        what = f"did not finish within {PROBE_TIMEOUT:g} s"
    elif run.returncode > 128:
        what = f"was killed by signal {run.returncode - 128}"
    else:
        what = f"exited {run.returncode}"
    return Row(name, "fail", f"the probe {what}: {_one_line(run.stderr)[-400:]}",
               "rerun `ollama-gpu doctor --probe` with OGPU_LOG_LEVEL=debug; check dmesg for the driver's "
               "messages", cause="unknown", data=data)


def check_probe_cuinit(ctx: Ctx) -> Row:
    """Live: cuInit and the device list through the driver API, under the shim."""
    gpu = ctx.gpu_seen
    run = run_probe(ctx, CUINIT_PROBE, [])
    row = _cuinit_row(run, gpu_expected=gpu)
    ctx.probes[row.name] = row
    return row


def _cuinit_row(run: ProbeRun, *, gpu_expected: bool = True) -> Row:
    name = "probe_cuinit"
    res = run.result
    data: dict[str, Any] = {"result": res, "shim": run.shim, "shim_events": list(run.events)}
    if res is None:
        return _probe_failure(name, run, data)
    if res.get("stage") == "dlopen":
        err = str(res.get("error", ""))
        if not gpu_expected:  # no GPU and no driver: nothing to load is the expected answer
            return Row(name, "info", f"dlopen(libcuda.so.1) failed: {err} (no NVIDIA GPU or driver here)", data=data)
        return Row(name, "fail", f"dlopen(libcuda.so.1) failed: {err}", advice("cpu_fallback", "libcuda_not_found"),
                   cause=classify(err, DLERROR_CAUSES, "libcuda_not_found"), data=data)
    if res.get("error"):
        err = str(res["error"])
        cause = error_codes.cause_of(err, "cu") or classify(err, CUDA_ERROR_CAUSES)
        return Row(name, "fail", f"{err} (libcuda: {', '.join(res.get('libcuda') or []) or '?'})",
                   advice("cpu_fallback", cause), cause=cause, data=data)
    devs = res.get("devices") or []
    data["devices"] = len(devs)
    refused = [d for d in devs if d.get("ctx_error")]
    listing = "; ".join(f"{d.get('ordinal')}: {d.get('name', '?')} (cc {d.get('cc', '?')}, "
                        f"{d.get('pci_bus_id', '?')})" for d in devs)
    if not devs:
        return Row(name, "fail", "cuInit succeeded but no device is visible", advice("cpu_fallback",
                   "device_filter_hides_gpu"), cause="device_filter_hides_gpu", data=data)
    if refused:
        errs = "; ".join(str(d["ctx_error"]) for d in refused)
        return Row(name, "warn", f"cuInit 0, {len(devs)} device(s): {listing}; context refused: {errs} "
                   "(exclusive-process mode or MIG?)", "nvidia-smi -q -d COMPUTE (compute mode); a busy "
                   "exclusive-process GPU refuses a second context", data=data)
    return Row(name, "ok", f"cuInit 0, driver API {res.get('driver_api')}, {len(devs)} device(s): {listing}",
               data=data)


def backend_to_probe(ctx: Ctx) -> Path | None:
    """--backend, else the newest shipped libggml-cuda.so this driver can run (the newest when unknown)."""
    if ctx.backend is not None:
        return ctx.backend
    inst = ctx.ollama
    if inst.libdir is None:
        return None
    variants = [v for v in cuda_variants(inst.libdir, inst.generation) if v.backend is not None]
    usable = [v for v in variants if driver_runs(ctx.driver, v) is not False]
    pick = (usable or variants)[-1:] if variants else []
    return pick[0].backend if pick else None


def check_probe_backend(ctx: Ctx) -> Row:
    """Live: load the installation's GGML CUDA backend and register it as a runner would, under the shim."""
    backend = backend_to_probe(ctx)
    if backend is None:
        return Row("probe_backend", "info", "no libggml-cuda.so to probe (pass --backend PATH)")
    extra = [d for d in (backend.parent.parent, backend.parent) if any(d.glob("libggml-base.so*"))]
    extra = extra or [backend.parent]
    run = run_probe(ctx, BACKEND_PROBE, [str(backend)], extra)
    return _backend_row(run, backend, gpu_expected=ctx.gpu_seen)


def _backend_row(run: ProbeRun, backend: Path, *, gpu_expected: bool = True) -> Row:
    name = "probe_backend"
    res = run.result
    data: dict[str, Any] = {"backend": str(backend), "result": res, "shim": run.shim,
                            "shim_events": list(run.events), "log": _ggml_lines(run.stderr)}
    if res is None:
        return _probe_failure(name, run, data)
    err = str(res.get("error", ""))
    if res.get("stage") == "dlopen":
        cause = classify(err, DLERROR_CAUSES, "backend_load_failed")
        if cause == "libcuda_not_found" and not gpu_expected:
            return Row(name, "info", f"dlopen({backend}) failed: {err} (no NVIDIA GPU or driver here)", data=data)
        return Row(name, "fail", f"dlopen({backend}) failed: {err}", advice("cpu_fallback", cause), cause=cause,
                   data=data)
    if err:
        return Row(name, "fail", f"{backend}: {err}", advice("cpu_fallback", "backend_load_failed"),
                   cause="backend_load_failed", data=data)
    count, how = _device_count(res, run.stderr)
    data["devices"] = count
    failed = _CUDA_FAILED.search(run.stderr)
    if not count:
        why = failed[1] if failed else "no device registered"
        cause = error_codes.cause_of(why, "cudart") or classify(why, CUDA_ERROR_CAUSES)
        return Row(name, "fail", f"{backend} loaded and registered (api {res.get('api_version')}) with 0 devices: "
                   f"ggml_cuda_init: {why}", advice("cpu_fallback", cause), cause=cause, data=data)
    return Row(name, "ok", f"{backend}: registered, {count} CUDA device(s) ({how}); "
               + "; ".join(ln.strip() for ln in data["log"] if "Device" in ln), data=data)


def _device_count(res: Mapping[str, Any], stderr: str) -> tuple[int | None, str]:
    if res.get("registry_callable") and isinstance(res.get("devices"), int):
        return int(res["devices"]), "ggml_backend_reg_dev_count"
    m = _FOUND_DEVICES.search(stderr)
    if m:
        return int(m[1]), "from ggml_cuda_init's line"
    return (0 if _CUDA_FAILED.search(stderr) else None), "from ggml_cuda_init's line"


def _ggml_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "ggml" in ln or ln.startswith("  Device")][:20]
