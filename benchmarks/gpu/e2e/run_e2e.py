"""The whole chain on a real GPU (issue #8): a real llama.cpp CUDA runner under `ollama-gpu serve`, induced faults,
remedies, and the project's performance figures. Ends with one table.

    # on the device machine, after build_llama.sh (device.sh does both):
    python3 benchmarks/gpu/e2e/run_e2e.py --mode real --llama-bin /tmp/llama.cpp/build/bin \\
        --tiny /tmp/ogpu-e2e/models/tiny-f16.gguf --bench-model /tmp/ogpu-e2e/models/rand-1b-f16.gguf --out "$OUT"
    # here, without a GPU: the same script against tests/native's mock driver and the simulator's own llama-server
    python3 benchmarks/gpu/e2e/run_e2e.py --mode mock --out /tmp/ogpu-e2e-mock

The Ollama in front of the runner is the simulator of tests/ollama_sim in generation D (Ollama 0.30+): it runs the
real `llama-server` named by OLLAMA_SIM_LLAMA_SERVER with Ollama's argv and environment (LD_LIBRARY_PATH,
GGML_BACKEND_PATH=lib/ollama/cuda_v13/libggml-cuda.so, CUDA_VISIBLE_DEVICES), for discovery and for models.
Each scenario is asserted from `ollama-gpu status --json` and the OGPU_RECORD event stream (docs/gpu-validation.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent / "shim_overhead"))

import run as overhead  # noqa: E402  (benchmarks/shim_overhead/run.py: build_shim, timing_pairs, timing_inproc)
from stack import (  # noqa: E402
    LoaderView,
    Server,
    Stack,
    broken_backend,
    http_json,
    restore_backend,
    stub_dir,
    wait_for,
)

from launcher.driverlib import KNOWN_DIRS  # noqa: E402
from launcher.events import Event  # noqa: E402

SETTLED = ("gpu", "cpu_fallback", "cpu_expected", "partial_offload", "crash")
# A reaping stand-in for init (the device machine's pid 1 may not reap): what the kernel re-parents after a SIGKILL of
# the supervisor is reaped there, so psutil shows only what truly lives on.
REAPER = HERE.parent.parent.parent / "tests" / "programs" / "reaper.py"
READY_S = 90.0
VERDICT_S = 45.0


# --- results ------------------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    """One scenario's checks, what it observed and the figures it yields."""

    name: str
    proves: str
    expect: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    got: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str = ""
    skipped: str = ""

    def check(self, what: str, ok: bool, detail: object = "") -> bool:
        self.checks.append((what, bool(ok), str(detail)[:400]))
        return bool(ok)

    @property
    def result(self) -> str:
        if self.skipped:
            return "SKIP"
        if self.error:
            return "ERROR"
        return "PASS" if self.checks and all(ok for _, ok, _ in self.checks) else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "proves": self.proves, "expect": self.expect, "result": self.result,
                "got": self.got, "checks": [{"check": c, "ok": ok, "detail": d} for c, ok, d in self.checks],
                "metrics": self.metrics, "notes": self.notes, "error": self.error, "skipped": self.skipped}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scenario:
        return cls(d["name"], d["proves"], d["expect"], [(c["check"], c["ok"], c["detail"]) for c in d["checks"]],
                   d["got"], d["metrics"], d["notes"], d["error"], d["skipped"])


# --- reading the event stream -------------------------------------------------------------------------------------


def verdicts(events: list[Event], subject: str | None = None) -> list[Event]:
    """supervisor/verdict events (optionally of one subject: "discovery" or "runner <pid>")."""
    return [e for e in events if e.source == "supervisor" and e.kind == "verdict"
            and (subject is None or e.data.get("subject") == subject)]


def of_kind(events: list[Event], source: str, kind: str) -> list[Event]:
    return [e for e in events if e.source == source and e.kind == kind]


def vtext(e: Event | dict[str, Any] | None) -> str:
    if e is None:
        return "none"
    d = e.data if isinstance(e, Event) else e
    sig = ",".join(str(s) for s in d.get("signals") or [])
    return f"{d.get('outcome')}/{d.get('cause')}" + (f" [{sig}]" if sig else "")


def wait_verdict(srv: Server, subject: str, pred: Callable[[Event], bool], timeout: float = VERDICT_S,
                 after: float = 0.0) -> Event | None:
    """The first verdict of `subject` (recorded after monotonic time `after`) that satisfies `pred`."""
    def find() -> Event | None:
        for e in verdicts(srv.events(), subject):
            if e.t >= after and pred(e):
                return e
        if not srv.alive():
            return None
        return None
    return wait_for(find, timeout, 0.2)


def settled(e: Event) -> bool:
    return e.data.get("outcome") in SETTLED


def decided(e: Event) -> bool:
    """Settled, or a cause named while the outcome waits for a second source (no NVML: the mock stack)."""
    return settled(e) or e.data.get("cause") not in ("unknown", "none", None)


def fallback_ok(e: Event | None, cause: str, stack: Stack) -> bool:
    """`cpu_fallback/<cause>`; on the mock stack (no NVML, so no usable GPU is seen) `unknown/<cause>` too."""
    if e is None or e.data.get("cause") != cause:
        return False
    return e.data.get("outcome") == "cpu_fallback" or (stack.mode == "mock" and e.data.get("outcome") == "unknown")


def shim_of(events: list[Event], pid: int | None = None) -> list[Event]:
    return [e for e in events if e.source == "shim" and (pid is None or e.pid == pid)]


def loaded_runner(srv: Server, sc: Scenario, model: str, num_ctx: int = 2048) -> Any:
    """Load `model`; the model runner process, or None (with the reason in the scenario)."""
    t0 = time.monotonic()
    code, body = srv.load(model, num_ctx)
    sc.metrics.setdefault("load_s", round(time.monotonic() - t0, 2))
    sc.check("model load answered 200", code == 200, f"{code} {str(body)[:200]}")
    runners = wait_for(srv.model_runners, 10, 0.1) or []
    if not runners:
        sc.check("a model runner is alive", False, "none found")
        return None
    return runners[-1]


def nvml_per_gpu(pid: int, timeout: float = 10.0) -> dict[str, int] | None:
    """GPU memory NVML lists for `pid` on each GPU, by UUID (None without NVML)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None

    def read() -> dict[str, int] | None:
        out = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                if p.pid == pid:
                    out[uuid.decode() if isinstance(uuid, bytes) else str(uuid)] = int(p.usedGpuMemory or 0) or 1
        return out or None
    try:
        return wait_for(read, timeout, 0.2) or {}
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def nvml_used_by(pid: int, timeout: float = 10.0) -> int | None:
    """GPU memory NVML lists for `pid` (bytes, all GPUs), 0 when not listed, None without NVML."""
    per_gpu = nvml_per_gpu(pid, timeout)
    return None if per_gpu is None else sum(per_gpu.values())


def backend_to_verdict_ms(events: list[Event], pid: int) -> float | None:
    """From the runner's backend decision (the shim's dlopen of libggml-cuda.so succeeding in that process) to the
    supervisor's `gpu` verdict for it."""
    opened = [e for e in shim_of(events, pid) if e.kind == "dlopen" and e.data.get("ok")
              and "libggml-cuda" in str(e.data.get("name") or e.data.get("path"))]
    done = [e for e in verdicts(events, f"runner {pid}") if e.data.get("outcome") == "gpu"]
    if not opened or not done:
        return None
    return round((done[0].t - opened[0].t) * 1000, 1)


def check_auto_phase(srv: Server, sc: Scenario, stack: Stack, settled: Callable[[Event], bool], cause: str,
                     what: str) -> str | None:
    """The auto half of a proactive-remedy scenario: LD_LIBRARY_PATH changed before start for `cause`, discovery
    gpu/none, a model runner on the GPU. Returns that runner's LD_LIBRARY_PATH (None when no runner loaded)."""
    decisions = [e.data for e in of_kind(srv.events(), "supervisor", "decision") if e.data.get("cause") == cause]
    changes = [e for e in srv.our_lines() if e.get("event") in ("environment_change", "remedy")
               and "LD_LIBRARY_PATH" in json.dumps(e)]
    sc.check(what, bool(changes or decisions), (changes or decisions or ["none"])[0])
    dv = wait_verdict(srv, "discovery", settled)
    sc.got.append(f"auto: discovery {vtext(dv)}")
    sc.check("auto: discovery gpu/none", dv is not None and vtext(dv).startswith("gpu/none"), vtext(dv))
    runner = loaded_runner(srv, sc, stack.models["tiny"])
    if runner is None:
        return None
    check_gpu_runner(srv, sc, runner, stack)
    return str(Server.environ_of(runner).get("LD_LIBRARY_PATH", ""))


def check_gpu_runner(srv: Server, sc: Scenario, runner: Any, stack: Stack) -> None:
    """The model runner is on the GPU: verdict `gpu`, the shim's launches and memory, NVML lists its pid."""
    rv = wait_verdict(srv, f"runner {runner.pid}", lambda e: e.data.get("outcome") == "gpu")
    if rv is None:
        last = verdicts(srv.events(), f"runner {runner.pid}")
        sc.check("runner verdict gpu", False, vtext(last[-1] if last else None))
        return
    sc.got.append(f"runner {vtext(rv)}")
    sc.check("runner verdict gpu/none", rv.data.get("cause") == "none", vtext(rv))
    def launched() -> tuple[list[Event], int, dict[str, Any]] | None:
        events = srv.events()
        snaps = [e for e in shim_of(events, runner.pid) if e.kind == "snapshot"]
        n = sum(int(v or 0) for v in (snaps[-1].data.get("launches") or {}).values()) if snaps else 0
        got = (events, n, (snaps[-1].data.get("mem") or {}) if snaps else {})
        return got if n or stack.mode != "real" else None

    # The shim sends a snapshot from inside a hooked call, at most every 250 ms: after the load the runner is idle
    # and its last counts (the warm-up's launches) stay unsent. Two short requests, 300 ms apart, flush them.
    port = Server.port_of(runner)
    if stack.mode == "real" and port:
        for _ in range(2):
            with contextlib.suppress(Exception):
                completion(port, "Hello, my name is", 8)
            time.sleep(0.3)
    events, launches, mem = wait_for(launched, 5, 0.25) or (srv.events(), 0, {})
    shim = shim_of(events, runner.pid)
    sc.check("shim: the runner said hello and cuInit returned 0",
             any(e.kind == "hello" for e in shim) and any(e.kind == "cu_init" and e.data.get("result") == 0
                                                            for e in shim))
    if stack.mode == "real":  # tests/native's fake backend launches nothing
        sc.check("shim: kernels launched and device memory allocated in the runner",
                 launches > 0 and int(mem.get("alloc_bytes", 0)) > 0,
                 f"launches {launches}, alloc_bytes {mem.get('alloc_bytes')}")
        sc.got.append(f"shim: {launches} launches, {int(mem.get('alloc_bytes', 0)) / 2**20:.0f} MiB allocated")
    if stack.mode == "real":
        used = nvml_used_by(runner.pid)
        sc.check("NVML lists the runner's pid with GPU memory", bool(used), f"{(used or 0) / 2**20:.0f} MiB")
        sc.got.append(f"NVML: pid {runner.pid} holds {(used or 0) / 2**20:.0f} MiB")
    ms = backend_to_verdict_ms(events, runner.pid)
    if ms is not None:
        sc.metrics["backend_to_verdict_ms"] = ms
    if stack.mode == "real":  # the verdict's signals grow after it is first reported: status has the current ones
        want = {"log:gpu", "shim:gpu", "nvml:gpu"}

        def signals() -> set[str] | None:
            st = srv.status() or {}
            rows = [r for r in st.get("runners") or [] if r.get("pid") == runner.pid]
            got = set(rows[-1].get("signals") or []) if rows else set()
            return got if want <= got else None
        got = wait_for(signals, 8, 1.0)
        sc.check("status: the runner's gpu verdict rests on the log, the shim and NVML", got is not None,
                 sorted(got or []))


def check_status(srv: Server, sc: Scenario, discovery: str | None, runner_pid: int | None = None,
                 runner: str | None = None) -> dict[str, Any] | None:
    """`ollama-gpu status --json` agrees with the event stream."""
    st = srv.status()
    if st is None:
        sc.check("ollama-gpu status --json answers", False, "no answer")
        return None
    d = st.get("discovery") or {}
    if discovery is not None:
        sc.check(f"status: discovery {discovery}", f"{d.get('outcome')}/{d.get('cause')}" == discovery, vtext(d))
    if runner_pid is not None and runner is not None:
        rows = [r for r in st.get("runners") or [] if r.get("pid") == runner_pid]
        got = vtext(rows[-1]) if rows else "runner missing"
        sc.check(f"status: runner {runner}", bool(rows) and f"{rows[-1].get('outcome')}/{rows[-1].get('cause')}"
                 == runner, got)
    return st


def advice_lines(srv: Server) -> list[dict[str, Any]]:
    return [e for e in srv.our_lines() if e.get("event") == "advice"]


# --- scenarios ----------------------------------------------------------------------------------------------------


def healthy(stack: Stack, sc: Scenario) -> None:
    srv = Server(stack, "healthy")
    try:
        sc.check("ready", srv.wait_ready(READY_S))
        dv = wait_verdict(srv, "discovery", settled)
        sc.got.append(f"discovery {vtext(dv)}")
        sc.check("discovery verdict gpu/none", dv is not None and vtext(dv).startswith("gpu/none"), vtext(dv))
        runner = loaded_runner(srv, sc, stack.models["tiny"])
        if runner is not None:
            check_gpu_runner(srv, sc, runner, stack)
            check_status(srv, sc, "gpu/none", runner.pid, "gpu/none")
        check_no_false_alarm(srv, sc, "healthy")
        sc.check("no restart", not of_kind(srv.events(), "supervisor", "restarted"))
    finally:
        srv.stop()


def driver_unreachable(stack: Stack, sc: Scenario) -> None:
    view = LoaderView.hide_libcuda(stack, stack.work / "fault-driver")
    sc.notes += view.notes
    extra: dict[str, str | None] = {"LD_LIBRARY_PATH": view.ld_library_path}
    if str(stack.driver_dir) not in KNOWN_DIRS:  # the mock driver lives where no driver normally does
        extra["OGPU_DRIVER_LIB_DIRS"] = str(stack.driver_dir)
        sc.notes.append(f"{stack.driver_dir} is not a known driver directory: named in OGPU_DRIVER_LIB_DIRS")
    try:
        srv = Server(stack, "driver-unreachable-advise", {**extra, "OGPU_MODE": "advise"}, prefix=view.prefix)
        try:
            sc.check("advise: ready", srv.wait_ready(READY_S))
            dv = wait_verdict(srv, "discovery", decided)
            sc.got.append(f"advise: discovery {vtext(dv)}")
            sc.check("advise: discovery cpu_fallback/libcuda_not_found", fallback_ok(dv, "libcuda_not_found", stack),
                     vtext(dv))
            fails = [e for e in shim_of(srv.events()) if e.kind == "dlopen" and not e.data.get("ok")]
            text = next((str(e.data.get("error")) for e in fails if "libcuda.so.1" in str(e.data.get("error"))), "")
            sc.check("shim: dlopen failure carries the loader's text about libcuda.so.1", bool(text), text[:200])
            adv = advice_lines(srv)
            sc.check("advise: the fix is reported (LD_LIBRARY_PATH), nothing restarted",
                     any("LD_LIBRARY_PATH" in json.dumps(a) for a in adv)
                     and not of_kind(srv.events(), "supervisor", "restarted"), f"{len(adv)} advice lines")
            runner = loaded_runner(srv, sc, stack.models["tiny"])
            if runner is not None:
                rv = wait_verdict(srv, f"runner {runner.pid}", decided)
                sc.got.append(f"advise: runner {vtext(rv)}")
                sc.check("advise: runner cpu_fallback/libcuda_not_found", fallback_ok(rv, "libcuda_not_found", stack),
                         vtext(rv))
        finally:
            srv.stop()
        srv = Server(stack, "driver-unreachable-auto", extra, prefix=view.prefix)
        try:
            sc.check("auto: ready", srv.wait_ready(READY_S))
            ld = check_auto_phase(srv, sc, stack, settled, "libcuda_not_found",
                                  "auto: the driver directory is added before Ollama starts (proactive remedy)")
            if ld is not None:
                sc.check("auto: the runner's LD_LIBRARY_PATH names the driver directory",
                         str(stack.driver_dir) in ld.split(":"), ld[:200])
        finally:
            srv.stop()
    finally:
        view.restore()


def filter_operator(stack: Stack, sc: Scenario) -> None:
    srv = Server(stack, "filter-operator", {"CUDA_VISIBLE_DEVICES": "-1"})
    try:
        sc.check("ready", srv.wait_ready(READY_S))
        dv = wait_verdict(srv, "discovery", settled)
        sc.got.append(f"discovery {vtext(dv)}")
        sc.check("discovery cpu_expected/operator_forced_cpu",
                 dv is not None and vtext(dv).startswith("cpu_expected/operator_forced_cpu"), vtext(dv))
        runner = loaded_runner(srv, sc, stack.models["tiny"])
        if runner is not None:
            rv = wait_verdict(srv, f"runner {runner.pid}", settled)
            sc.got.append(f"runner {vtext(rv)}")
            sc.check("runner cpu_expected/operator_forced_cpu",
                     rv is not None and vtext(rv).startswith("cpu_expected/operator_forced_cpu"), vtext(rv))
            cvd = Server.environ_of(runner).get("CUDA_VISIBLE_DEVICES")
            sc.check("the operator's CUDA_VISIBLE_DEVICES=-1 reached the runner unchanged", cvd == "-1", cvd)
            check_status(srv, sc, "cpu_expected/operator_forced_cpu", runner.pid, "cpu_expected/operator_forced_cpu")
        applied = [e.data for e in of_kind(srv.events(), "supervisor", "decision")
                   if e.data.get("action") in ("apply_now", "apply_when_idle")]
        sc.check("left alone: no remedy applied, no restart",
                 not applied and not of_kind(srv.events(), "supervisor", "restarted"), applied[:1])
    finally:
        srv.stop()


def filter_override(stack: Stack, sc: Scenario) -> None:
    srv = Server(stack, "filter-override", {"CUDA_VISIBLE_DEVICES": "-1", "OGPU_MAY_OVERRIDE": "CUDA_VISIBLE_DEVICES"})
    try:
        first = wait_verdict(srv, "discovery", lambda e: settled(e) and e.data.get("outcome") != "gpu", READY_S)
        sc.got.append(f"before: discovery {vtext(first)}")
        sc.check("before: discovery names the filter",
                 first is not None and first.data.get("cause") in ("operator_forced_cpu", "device_filter_hides_gpu"),
                 vtext(first))
        restarted = wait_for(lambda: of_kind(srv.events(), "supervisor", "restarted"), 20, 0.2)
        sc.check("remedy applied: Ollama restarted", bool(restarted))
        decisions = [e.data for e in of_kind(srv.events(), "supervisor", "decision")
                     if e.data.get("action") == "apply_now"]
        sc.check("the patch unsets CUDA_VISIBLE_DEVICES", any((d.get("patch") or {}).get("CUDA_VISIBLE_DEVICES", 1)
                                                              is None for d in decisions), decisions[:1])
        after = restarted[0].t if restarted else 0.0
        dv = wait_verdict(srv, "discovery", lambda e: e.data.get("outcome") == "gpu", VERDICT_S, after=after)
        sc.got.append(f"after: discovery {vtext(dv)}")
        sc.check("after the restart: discovery gpu/none", dv is not None and vtext(dv).startswith("gpu/none"),
                 vtext(dv))
        if first is not None and dv is not None:
            sc.metrics["fallback_to_recovered_ms"] = round((dv.t - first.t) * 1000, 1)
        sc.check("ready", srv.wait_ready(READY_S))
        runner = loaded_runner(srv, sc, stack.models["tiny"])
        if runner is not None:
            check_gpu_runner(srv, sc, runner, stack)
            cvd = Server.environ_of(runner).get("CUDA_VISIBLE_DEVICES")
            sc.check("the runner no longer gets CUDA_VISIBLE_DEVICES=-1", cvd != "-1", cvd)
            if first is not None:
                rv = wait_verdict(srv, f"runner {runner.pid}", lambda e: e.data.get("outcome") == "gpu", 5)
                if rv is not None:
                    sc.metrics["fallback_to_runner_gpu_ms"] = round((rv.t - first.t) * 1000, 1)
            st = check_status(srv, sc, "gpu/none", runner.pid, "gpu/none")
            if st is not None:
                sc.check("status: one remedy applied, one restart",
                         len((st.get("remedies") or {}).get("applied") or []) == 1 and st.get("restarts") == 1,
                         {"applied": (st.get("remedies") or {}).get("applied"), "restarts": st.get("restarts")})
    finally:
        srv.stop()


def backend_unloadable(stack: Stack, sc: Scenario) -> None:
    with broken_backend(stack) as how:
        sc.notes.append(how)
        srv = Server(stack, "backend-unloadable")
        try:
            sc.check("ready", srv.wait_ready(READY_S))
            dv = wait_verdict(srv, "discovery", decided)
            sc.got.append(f"discovery {vtext(dv)}")
            sc.check("discovery cpu_fallback/backend_load_failed", fallback_ok(dv, "backend_load_failed", stack),
                     vtext(dv))
            fails = [e for e in shim_of(srv.events()) if e.kind == "dlopen" and not e.data.get("ok")
                     and "libggml-cuda" in str(e.data.get("name"))]
            text = str(fails[0].data.get("error") or "") if fails else ""
            sc.check("shim: the failed dlopen of libggml-cuda.so carries the loader's text", bool(text), text[:200])
            log = (srv.dir / "stderr.log").read_text(errors="replace")
            sc.notes.append("Ollama's log also has the loader's text (GGML_BACKEND_PATH is loaded loudly)"
                            if text and text.split(": ")[-1] in log else "Ollama's log does not have the loader's text")
            sc.check("advised (no environment change fixes this), not restarted",
                     bool(advice_lines(srv)) and not of_kind(srv.events(), "supervisor", "restarted"))
            # The operator follows the advice: reinstall the backend, SIGHUP; the restart is verified.
            restore_backend(stack)
            t_fix = time.monotonic()
            os.kill(srv.proc.pid, signal.SIGHUP)
            restarted = wait_for(lambda: [e for e in of_kind(srv.events(), "supervisor", "restarted") if e.t >= t_fix],
                                 30, 0.2)
            sc.check("after the operator's fix and SIGHUP: restarted", bool(restarted))
            after = restarted[0].t if restarted else t_fix
            dv2 = wait_verdict(srv, "discovery", lambda e: e.data.get("outcome") == "gpu", VERDICT_S, after=after)
            sc.got.append(f"after fix: discovery {vtext(dv2)}")
            sc.check("after the fix: discovery gpu/none", dv2 is not None and vtext(dv2).startswith("gpu/none"),
                     vtext(dv2))
        finally:
            srv.stop()


def stub_first(stack: Stack, sc: Scenario) -> None:
    d, how = stub_dir(stack, stack.work / "fault-stub")
    sc.notes.append(how)
    ld = f"{d}:{stack.base_ld_path}" if stack.base_ld_path else str(d)
    srv = Server(stack, "stub-advise", {"LD_LIBRARY_PATH": ld, "OGPU_MODE": "advise"})
    try:
        sc.check("advise: ready", srv.wait_ready(READY_S))
        dv = wait_verdict(srv, "discovery", decided)
        sc.got.append(f"advise: discovery {vtext(dv)}")
        sc.check("advise: discovery cpu_fallback/stub_library", fallback_ok(dv, "stub_library", stack), vtext(dv))
        shim = shim_of(srv.events())
        inits = sorted({int(e.data.get("result", 0)) for e in shim if e.kind == "cu_init"})
        stub_open = [e for e in shim if e.kind == "dlopen" and "stubs" in str(e.data.get("path") or "")]
        sc.got.append(f"shim cu_init results {inits}")
        sc.check("shim: cuInit returned 34 (stub) or the stub was loaded", 34 in inits or bool(stub_open), inits)
        sc.check("advise: nothing restarted", not of_kind(srv.events(), "supervisor", "restarted"))
    finally:
        srv.stop()
    srv = Server(stack, "stub-auto", {"LD_LIBRARY_PATH": ld})
    try:
        sc.check("auto: ready", srv.wait_ready(READY_S))
        ld_runner = check_auto_phase(srv, sc, stack, settled, "stub_library",
                                     "auto: the stubs directory is dropped before Ollama starts (proactive remedy)")
        if ld_runner is not None:
            sc.check("auto: no stubs directory in the runner's LD_LIBRARY_PATH", "stubs" not in ld_runner,
                     ld_runner[:200])
    finally:
        srv.stop()


# --- several GPUs (issue #9) ----------------------------------------------------------------------------------------

STALE_UUID = "GPU-deadbeef-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class Card:
    """One physical GPU as NVML (real) or the mock driver's defaults (mock) number it."""

    index: int
    uuid: str
    pci: str


def cards(stack: Stack) -> list[Card]:
    """The machine's GPUs in NVML order (PCI bus order); in mock mode the mock driver's two default devices."""
    if stack.mode == "mock":
        return [Card(i, f"GPU-{0x6d6f636b + i:08x}-{0x1000 + i:04x}-2000-3000-{0x400000 + i:012x}",
                     f"0000:{1 + i:02X}:00.0") for i in range(2)]
    import pynvml

    pynvml.nvmlInit()
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid, pci = pynvml.nvmlDeviceGetUUID(h), pynvml.nvmlDeviceGetPciInfo(h).busId
            out.append(Card(i, uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                            pci.decode() if isinstance(pci, bytes) else str(pci)))
        return out
    finally:
        pynvml.nvmlShutdown()


def multi_env(stack: Stack, extra: dict[str, str | None]) -> dict[str, str | None]:
    """The scenario's variables; the mock driver is told to show two GPUs."""
    return {**extra, "MOCKCUDA_DEVICE_COUNT": "2"} if stack.mode == "mock" else extra


def two_cards(stack: Stack, sc: Scenario) -> list[Card] | None:
    found = cards(stack)
    sc.notes.append("GPUs (NVML order): " + ", ".join(f"{c.index}={c.uuid} {c.pci}" for c in found))
    if len(found) < 2:
        sc.skipped = f"needs 2 GPUs, this machine has {len(found)}"
        return None
    return found[:2]


def runner_devices(srv: Server, pid: int, outcome: str, timeout: float = 20.0) -> dict[str, Any] | None:
    """The runner's row in `status --json` once it has `outcome` and names the GPUs it used."""
    def row() -> dict[str, Any] | None:
        st = srv.status() or {}
        rows = [r for r in st.get("runners") or [] if r.get("pid") == pid]
        if rows and rows[-1].get("outcome") == outcome and any(d.get("state") == "used"
                                                                for d in rows[-1].get("devices") or []):
            return rows[-1]
        return None
    return wait_for(row, timeout, 1.0)


def used_uuids(row: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {str(d.get("uuid")): d for d in (row or {}).get("devices") or [] if d.get("state") == "used"}


def check_no_false_alarm(srv: Server, sc: Scenario, label: str) -> None:
    """On a healthy GPU path no verdict, however early, may say cpu_fallback (and no advice may be printed)."""
    alarms = [vtext(e) for e in verdicts(srv.events()) if e.data.get("outcome") == "cpu_fallback"]
    sc.check(f"{label}: no cpu_fallback verdict reported at any time, no advice", not alarms and not advice_lines(srv),
             alarms[:2] or [a.get("subject") for a in advice_lines(srv)][:2])


def check_runner_on(srv: Server, sc: Scenario, stack: Stack, model: str, want: set[str], label: str) -> Any:
    """Load `model`; its runner is gpu/none on exactly the GPUs `want` (UUIDs): status, shim and NVML agree."""
    runner = loaded_runner(srv, sc, model)
    if runner is None:
        return None
    row = runner_devices(srv, runner.pid, "gpu")
    got = used_uuids(row)
    sc.got.append(f"{label}: runner {vtext(row)} on " + ", ".join(
        f"{d.get('device')}={u[:12]}… {d.get('weights_mib') or 0:.0f} MiB weights"
        + (f", {d['layers']} layers" if d.get("layers") else "")
        for u, d in sorted(got.items(), key=lambda x: str(x[1].get("device")))))
    sc.check(f"{label}: runner verdict gpu/none", row is not None and row.get("cause") == "none", vtext(row))
    sc.check(f"{label}: the verdict's used GPUs are exactly {sorted(u[:12] for u in want)}", set(got) == want,
             sorted(got))
    sc.check(f"{label}: each used GPU holds model weights (log buffers) or NVML memory",
             bool(got) and all((d.get("weights_mib") or 0) > 0 or (d.get("nvml_bytes") or 0) > 0
                               for d in got.values()), {u[:12]: d.get("weights_mib") for u, d in got.items()})
    shim = {str(e.data["uuid"]) for e in shim_of(srv.events(), runner.pid) if e.kind == "device"
            and e.data.get("uuid")}
    sc.check(f"{label}: the shim saw exactly these GPUs in the runner", shim == want, sorted(shim))
    if stack.mode == "real":
        held = nvml_per_gpu(runner.pid) or {}
        sc.check(f"{label}: NVML lists the runner's pid on exactly these GPUs", set(held) == want,
                 {u[:12]: f"{b / 2**20:.0f} MiB" for u, b in held.items()})
    hidden = [d for d in (row or {}).get("devices") or [] if d.get("state") == "hidden"]
    if hidden:
        sc.got.append(f"{label}: hidden " + ", ".join(f"{d.get('uuid')} ({d.get('hidden_by')})" for d in hidden))
    cvd = Server.environ_of(runner).get("CUDA_VISIBLE_DEVICES")
    sc.notes.append(f"{label}: runner CUDA_VISIBLE_DEVICES={cvd}")
    return runner


def multi_split(stack: Stack, sc: Scenario) -> None:
    """Two GPUs, OLLAMA_SCHED_SPREAD=1: the runner gets both and llama.cpp splits the layers (-sm layer, its
    default); verdict gpu/none naming both GPUs by UUID."""
    two = two_cards(stack, sc)
    if two is None:
        return
    srv = Server(stack, "multi-split", multi_env(stack, {"OLLAMA_SCHED_SPREAD": "1"}))
    try:
        sc.check("ready", srv.wait_ready(READY_S))
        dv = wait_verdict(srv, "discovery", settled)
        sc.got.append(f"discovery {vtext(dv)}")
        sc.check("discovery gpu/none", dv is not None and vtext(dv).startswith("gpu/none"), vtext(dv))
        st = srv.status() or {}
        found = {str(d.get("uuid")) for d in (st.get("discovery") or {}).get("devices") or []}
        sc.check("status: discovery names both GPUs by UUID", {c.uuid for c in two} <= found, sorted(found))
        model = stack.models.get("bench") or stack.models["tiny"]
        check_runner_on(srv, sc, stack, model, {c.uuid for c in two}, "split")
        check_no_false_alarm(srv, sc, "split")
        sc.check("no restart", not of_kind(srv.events(), "supervisor", "restarted"))
    finally:
        srv.stop()


def multi_filter_operator(stack: Stack, sc: Scenario) -> None:
    """The operator hides one GPU (by UUID; by index with CUDA_DEVICE_ORDER=PCI_BUS_ID; by index without it): the
    runner uses the other, the verdict is gpu/none and says it is the operator's choice; nothing is changed."""
    two = two_cards(stack, sc)
    if two is None:
        return
    for label, extra, want in (
            ("uuid", {"CUDA_VISIBLE_DEVICES": two[1].uuid}, two[1].uuid),
            ("index+pci-order", {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, two[1].uuid),
            ("index", {"CUDA_VISIBLE_DEVICES": "1"}, None)):
        srv = Server(stack, f"multi-filter-{label}", multi_env(stack, extra))
        try:
            sc.check(f"{label}: ready", srv.wait_ready(READY_S))
            dv = wait_verdict(srv, "discovery", settled)
            sc.got.append(f"{label}: discovery {vtext(dv)}")
            sc.check(f"{label}: discovery gpu/none", dv is not None and vtext(dv).startswith("gpu/none"), vtext(dv))
            d = (srv.status() or {}).get("discovery") or {}
            notes = [str(n) for n in d.get("notes") or []]
            sc.check(f"{label}: discovery says the filter is the operator's choice",
                     any("operator's choice" in n for n in notes), notes[-2:])
            seen = [str(x.get("uuid")) for x in d.get("devices") or [] if x.get("state") != "hidden"]
            hidden = [x for x in d.get("devices") or [] if x.get("state") == "hidden"]
            sc.check(f"{label}: discovery shows one GPU", len(seen) == 1, seen)
            if want is None:  # CUDA's default order (FASTEST_FIRST): which GPU index 1 is, is CUDA's to say
                want = seen[0] if seen else two[1].uuid
                sc.notes.append(f"index without CUDA_DEVICE_ORDER: CUDA's device 1 is {want} "
                                f"(NVML index {next((c.index for c in two if c.uuid == want), '?')})")
            sc.check(f"{label}: discovery's GPU is {want[:12]}…", seen == [want], seen)
            if stack.mode == "real":
                sc.check(f"{label}: NVML's other GPU is listed hidden by the operator",
                         [str(x.get("uuid")) for x in hidden] == [c.uuid for c in two if c.uuid != want]
                         and all(str(x.get("hidden_by", "")).startswith("operator") for x in hidden),
                         [(x.get("uuid"), x.get("hidden_by")) for x in hidden])
            check_runner_on(srv, sc, stack, stack.models["tiny"], {want}, label)
            check_no_false_alarm(srv, sc, label)
            applied = [e.data for e in of_kind(srv.events(), "supervisor", "decision")
                       if e.data.get("action") in ("apply_now", "apply_when_idle")]
            sc.check(f"{label}: left alone: no remedy applied, no restart",
                     not applied and not of_kind(srv.events(), "supervisor", "restarted"), applied[:1])
        finally:
            srv.stop()


def multi_stale(stack: Stack, sc: Scenario) -> None:
    """CUDA_VISIBLE_DEVICES=<GPU0>,<stale UUID>,<GPU1>: CUDA stops at the stale entry, so GPU1 is hidden although the
    operator listed it. With OGPU_MAY_OVERRIDE=CUDA_VISIBLE_DEVICES the stale entry alone is dropped before READY
    (one restart) and the model is split across both; under a Slurm allocation the same filter is only advised."""
    two = two_cards(stack, sc)
    if two is None:
        return
    value = f"{two[0].uuid},{STALE_UUID},{two[1].uuid}"
    both = {c.uuid for c in two}
    srv = Server(stack, "multi-stale", multi_env(stack, {
        "CUDA_VISIBLE_DEVICES": value, "OGPU_MAY_OVERRIDE": "CUDA_VISIBLE_DEVICES", "OLLAMA_SCHED_SPREAD": "1"}))
    try:
        sc.check("ready", srv.wait_ready(READY_S))
        acted = [e.t for e in of_kind(srv.events(), "supervisor", "decision") if e.data.get("action") == "apply_now"]
        before = [e for e in verdicts(srv.events(), "discovery") if acted and e.t <= acted[0]]
        first = before[-1] if before else None
        sc.got.append(f"before: discovery {vtext(first)}")
        sc.check("before: discovery (what the remedy acted on) gpu/device_filter_hides_gpu",
                 first is not None and first.data.get("cause") == "device_filter_hides_gpu"
                 and first.data.get("outcome") in ("gpu", "unknown" if stack.mode == "mock" else "gpu"), vtext(first))
        lines = [str(e.get("event")) for e in srv.our_lines() if e.get("event") in ("remedy", "restarting", "ready")]
        sc.check("remedy, restart, then READY (no client saw the narrowed GPU set)",
                 lines[:3] == ["remedy", "restarting", "ready"], lines)
        st = srv.status() or {}
        applied = (st.get("remedies") or {}).get("applied") or []
        want = f"SET CUDA_VISIBLE_DEVICES={two[0].uuid},{two[1].uuid}"
        sc.check("the stale entry alone is dropped", bool(applied) and applied[0].get("changes") == [want],
                 applied[:1])
        sc.check("one restart", st.get("restarts") == 1, st.get("restarts"))
        dv = (st.get("discovery") or {})
        sc.got.append(f"after: discovery {vtext(dv)}")
        found = {str(d.get("uuid")) for d in dv.get("devices") or [] if d.get("state") != "hidden"}
        sc.check("after: discovery gpu/none with both GPUs", vtext(dv).startswith("gpu/none") and both <= found,
                 (vtext(dv), sorted(found)))
        model = stack.models.get("bench") or stack.models["tiny"]
        check_runner_on(srv, sc, stack, model, both, "after")
        sc.check("no cpu_fallback verdict at any time", not [e for e in verdicts(srv.events())
                                                             if e.data.get("outcome") == "cpu_fallback"])
    finally:
        srv.stop()
    # The same filter inside a Slurm allocation: reported and advised, never changed, even when listed.
    srv = Server(stack, "multi-stale-slurm", multi_env(stack, {
        "CUDA_VISIBLE_DEVICES": value, "OGPU_MAY_OVERRIDE": "CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS": "0,1"}))
    try:
        sc.check("slurm: ready", srv.wait_ready(READY_S))
        dv = wait_verdict(srv, "discovery", lambda e: e.data.get("cause") == "device_filter_hides_gpu")
        sc.got.append(f"slurm: discovery {vtext(dv)}")
        st = srv.status() or {}
        advised = (st.get("remedies") or {}).get("advised") or []
        sc.check("slurm: advised as a scheduler allocation, not applied, no restart",
                 any("scheduler" in str(a.get("reason")) for a in advised)
                 and not (st.get("remedies") or {}).get("applied") and not st.get("restarts"), advised[:1])
        runner = loaded_runner(srv, sc, stack.models["tiny"])
        if runner is not None:
            row = runner_devices(srv, runner.pid, "gpu")
            sc.check("slurm: the runner uses only the GPU CUDA shows", set(used_uuids(row)) == {two[0].uuid},
                     sorted(used_uuids(row)))
            servers = [k for k in psutil.Process(srv.proc.pid).children(recursive=True)
                       if k.pid != runner.pid and "serve" in " ".join(k.cmdline()[1:2])]
            cvd = Server.environ_of(servers[0]).get("CUDA_VISIBLE_DEVICES") if servers else None
            sc.check("slurm: Ollama runs with the allocation's CUDA_VISIBLE_DEVICES unchanged", cvd == value, cvd)
    finally:
        srv.stop()


def sigkill(stack: Stack, sc: Scenario) -> None:
    """Issue 14: the supervisor is SIGKILLed while a real llama.cpp runner holds a model on the GPU; within 1 s no
    process of its tree is left (the guardian kills Ollama's group), and the GPU memory is given back."""
    srv = Server(stack, "sigkill", prefix=[sys.executable, str(REAPER)])
    try:
        sc.check("ready", srv.wait_ready(READY_S))
        runner = loaded_runner(srv, sc, stack.models["tiny"])
        if runner is None:
            return
        used = nvml_used_by(runner.pid)
        sc.got.append(f"runner {runner.pid} holds {used} bytes per NVML")
        supervisor = psutil.Process(srv.proc.pid).children()[0]
        tree = [supervisor.pid, *(p.pid for p in supervisor.children(recursive=True))]
        sc.check("the real runner is in the supervisor's tree", runner.pid in tree, tree)
        t0 = time.monotonic()
        os.kill(supervisor.pid, signal.SIGKILL)
        left = tree
        while left and time.monotonic() - t0 < 1.0:
            left = [pid for pid in tree if _running(pid)]
            time.sleep(0.005)
        sc.metrics["tree_gone_ms"] = round((time.monotonic() - t0) * 1000, 1)
        names = []
        for pid in left:
            with contextlib.suppress(psutil.Error):
                names.append(" ".join(psutil.Process(pid).cmdline())[:120])
        sc.check("no process of the tree 1 s after SIGKILL (psutil)", not left, names)
        # The driver frees a dead process's memory as it tears its context down, a little after the exit: poll
        # until NVML no longer lists the pid (nvml_used_by waits for presence, so each read here is a single one).
        still = nvml_used_by(runner.pid, timeout=0.0)
        while still and time.monotonic() - t0 < 1.0 + RELEASE_S:
            time.sleep(0.05)
            still = nvml_used_by(runner.pid, timeout=0.0)
        sc.metrics["vram_released_ms"] = None if still else round((time.monotonic() - t0) * 1000, 1)
        sc.check(f"NVML lists no memory for the dead runner within {RELEASE_S:.0f} s more", not still, still)
    finally:
        srv.stop()


RELEASE_S = 5.0  # seconds after the 1 s budget for the driver to release a killed runner's memory


# --- issue 16: GPU health after start on the real driver ------------------------------------------------------------

# Covers every /dev/nvidia* character node, in the calling mount namespace only, with the same device number made on
# a `nodev` tmpfs: open() then fails with EACCES, as it fails (EPERM) for a container whose device cgroup a host
# `systemctl daemon-reload` revoked. The GPU, its settings and the modules are untouched; the namespace is private.
COVER = r"""
d=$(mktemp -d /tmp/ogpu-revoke.XXXXXX) || exit 1
mount -t tmpfs -o nodev,size=64k ogpu-revoke "$d" || exit 1
n=0
for f in /dev/nvidia*; do
  [ -c "$f" ] || continue
  b=${f##*/}
  mknod "$d/$b" c $((0x$(stat -c %t "$f"))) $((0x$(stat -c %T "$f"))) && mount --bind "$d/$b" "$f" && n=$((n+1))
done
echo "covered $n"
"""
UNCOVER = r"""for f in /dev/nvidia*; do umount "$f" 2>/dev/null; done; echo uncovered"""

# In a private mount namespace: a long-lived NVML session (opened before the nodes are covered, as the supervisor's
# is), read again after covering them, against a fresh open() of the control node and a fresh `nvidia-smi`.
NVML_UNDER_COVER = r"""
import json, subprocess, sys
from launcher.gpu_health import HealthChecker
from launcher.nvml import Nvml
nvml = Nvml(); state = nvml.open()
def states(c):
    ev = c.check(force=True)
    return [(g["state"], g["reason"]) for g in ev[0].data["gpus"]] if ev else None
nvml_only = HealthChecker(nvml, state.gpus, candidates=())
with_nodes = HealthChecker(nvml, state.gpus)
out = {"before": {"nvml_only": states(nvml_only), "with_nodes": states(with_nodes), "watched": with_nodes.nodes}}
out["cover"] = subprocess.run(["sh", "-c", sys.argv[1]], capture_output=True, text=True).stdout.strip()
smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
out["after"] = {"nvml_only": states(nvml_only), "with_nodes": states(with_nodes),
                "nvidia_smi": [smi.returncode, (smi.stdout + smi.stderr).strip()[:300]]}
nvml.close()
print(json.dumps(out))
"""


def health_nvml(stack: Stack, sc: Scenario) -> None:
    """The health check and NVML's Xid/ECC event set against the real driver: what registers, what one check and
    one memory sample cost in CPU, what the event wait costs while nothing happens; then, in a private mount
    namespace, whether a long-lived NVML session notices device nodes taken away (and whether our open() does)."""
    from launcher.gpu_health import HealthChecker, XidWatcher
    from launcher.nvml import Nvml, NvmlFailure, NvmlSampler

    sampler = NvmlSampler(nvml=Nvml())
    sampler.start()
    state = sampler.state
    if not sc.check("NVML opens on the real driver", state is not None and state.available,
                    getattr(state, "reason", None)):
        sampler.close()
        return
    assert state is not None
    sc.got.append(f"driver {state.driver_version}, {len(state.gpus)} GPU(s)")
    checker = HealthChecker(sampler.nvml, state.gpus)
    first = checker.check()
    got = [g["state"] for g in first[0].data["gpus"]] if first else []
    sc.check("first check: every GPU ok, the control node watched", got and set(got) == {"ok"}
             and checker.nodes == ("/dev/nvidiactl",), f"{got} nodes={checker.nodes}")
    masks = []
    for index, handle in sampler.nvml.handles:
        supported = sampler.nvml.call("nvmlDeviceGetSupportedEventTypes", handle)
        masks.append(f"GPU{index}: {supported if isinstance(supported, NvmlFailure) else hex(int(supported))}")
    sc.got.append("supported event types " + ", ".join(masks))
    events: list[Event] = []
    watcher = XidWatcher(sampler.nvml, checker, events.append).start()
    wait_for(lambda: watcher.registered or not watcher.alive, 10, 0.05)
    sc.check("the Xid/ECC event set registers on every GPU", watcher.registered == len(state.gpus),
             f"registered {watcher.registered}/{len(state.gpus)}")
    n = 200
    c0 = time.thread_time()
    for _ in range(n):
        checker.check()
    per_check = (time.thread_time() - c0) / n
    c0 = time.thread_time()
    for _ in range(n):
        sampler.sample()
    per_sample = (time.thread_time() - c0) / n
    p0, w0 = time.process_time(), time.monotonic()
    time.sleep(10)  # the watcher waits in nvmlEventSetWait_v2 (1 s at a time); nothing else runs in this process
    idle = (time.process_time() - p0) / (time.monotonic() - w0)
    watcher.close()
    sampler.close()
    sc.metrics.update(check_us=round(per_check * 1e6, 1), sample_us=round(per_sample * 1e6, 1),
                      check_pct_core_5s=round(per_check / 5 * 100, 4),
                      check_cpu_s_per_hour_5s=round(per_check * 3600 / 5, 3),
                      event_wait_pct_core=round(idle * 100, 4))
    sc.check("no health change and no Xid while idle", not [e for e in events if e.kind in ("gpu_health", "xid")],
             [e.kind for e in events])
    sc.check("health checks at the default 5 s cost under 0.05 % of a core", per_check / 5 < 0.0005,
             f"{per_check * 1e6:.0f} us per check")
    if shutil.which("unshare") is None:
        sc.notes.append("unshare missing: the covered-node part did not run")
        return
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", NVML_UNDER_COVER,
                           COVER], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    try:
        cover = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        sc.check("covered-node run printed its result", False, (done.stderr or done.stdout)[-400:])
        return
    sc.got.append(f"covered: {json.dumps(cover)[:600]}")
    after = cover["after"]
    sc.check("with the nodes covered, the fresh open() makes every GPU access_denied",
             after["with_nodes"] and {s for s, _ in after["with_nodes"]} == {"access_denied"}, after["with_nodes"])
    sc.check("a fresh nvidia-smi fails there too (what a new runner meets)", after["nvidia_smi"][0] != 0,
             after["nvidia_smi"])
    sc.notes.append("long-lived NVML session alone after covering: "
                    f"{after['nvml_only']} (the reason the check also opens /dev/nvidiactl)")


def supervisor_cpu(srv: Server, seconds: float) -> float:
    """% of one core the supervisor process used over `seconds` of wall time."""
    proc = psutil.Process(srv.proc.pid)
    t0, c0 = time.monotonic(), sum(proc.cpu_times()[:2])
    time.sleep(seconds)
    return (sum(proc.cpu_times()[:2]) - c0) / (time.monotonic() - t0) * 100


def health_idle(stack: Stack, sc: Scenario) -> None:
    """A healthy run with health checks on (the defaults: every 5 s, Xid events) and a model on the GPU, idle: one
    gpu_health event (ok), no health warning, no restart; the supervisor's idle CPU, with checks on and off."""
    idle_s = float(os.environ.get("HEALTH_IDLE_S", "45"))
    for label, extra in (("on", {}), ("off", {"OGPU_HEALTH_INTERVAL": "0"})):
        srv = Server(stack, f"health-idle-{label}", extra)
        try:
            sc.check(f"{label}: ready", srv.wait_ready(READY_S))
            if label == "on":
                runner = loaded_runner(srv, sc, stack.models["tiny"])
                if runner is not None:
                    rv = wait_verdict(srv, f"runner {runner.pid}", settled)
                    sc.check("on: the runner is on the GPU", rv is not None and vtext(rv).startswith("gpu/"), vtext(rv))
                time.sleep(3)
            sc.metrics[f"idle_cpu_pct_{label}"] = round(supervisor_cpu(srv, idle_s), 3)
            sc.metrics[f"rss_mib_{label}"] = round(psutil.Process(srv.proc.pid).memory_info().rss / 2**20, 1)
            if label != "on":
                continue
            health = [e for e in srv.events() if e.kind == "gpu_health"]
            sc.got.append(f"gpu_health events: {[[g['state'] for g in e.data['gpus']] for e in health]}")
            sc.check("on: exactly one gpu_health event, every GPU ok", len(health) == 1
                     and {g["state"] for g in health[0].data["gpus"]} == {"ok"}, len(health))
            lines = srv.our_lines()
            warned = [e.get("event") for e in lines if e.get("level") in ("warning", "error")]
            sc.check("on: no warning or error line", not warned, warned)
            events = {e.get("event") for e in lines}
            sc.got.append("nvml events: " + ("unavailable" if "nvml_events_unavailable" in events else "registered"))
            sc.check("on: no restart", not of_kind(srv.events(), "supervisor", "restarted"))
            st = srv.status() or {}
            sc.check("on: status gpu_health ok, no advice", (st.get("gpu_health") or {}).get("state") == "ok"
                     and not (st.get("gpu_health") or {}).get("advice"), st.get("gpu_health"))
        finally:
            srv.stop()
    on = sc.metrics.get("idle_cpu_pct_on")
    sc.check("idle supervisor CPU with health checks on <= 0.5 % of a core", on is not None and on <= 0.5, on)


def ready_exit(srv: Server) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "status", "--ready"], env=srv.env,
                          capture_output=True, text=True, timeout=20, check=False, cwd=srv.dir)
    return done.returncode, (done.stdout + done.stderr).strip()


def revoked_access(stack: Stack, sc: Scenario) -> None:
    """A container (KUBERNETES_SERVICE_HOST) whose device access is taken away while a runner is on the GPU: serve
    runs in its own mount namespace, where the /dev/nvidia* nodes are then covered (nodev). The health check says
    access_denied, `status --ready` fails naming the container restart, a new runner falls back to the CPU; with
    the nodes back, health is ok and ready again. Nothing on the GPU or the host is changed."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        sc.check("unshare and nsenter present", False)
        return
    srv = Server(stack, "revoked-access", {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "OGPU_HEALTH_INTERVAL": "1"},
                 prefix=["unshare", "--mount", "--propagation", "private"])
    covered = False
    try:
        sc.check("ready", srv.wait_ready(READY_S))
        runner = loaded_runner(srv, sc, stack.models["tiny"])
        if runner is not None:
            rv = wait_verdict(srv, f"runner {runner.pid}", settled)
            sc.check("the first runner is on the GPU", rv is not None and vtext(rv).startswith("gpu/"), vtext(rv))
        sc.check("ready before", ready_exit(srv)[0] == 0)
        cover = subprocess.run(["nsenter", "--target", str(srv.proc.pid), "--mount", "sh", "-c", COVER],
                               capture_output=True, text=True, timeout=30, check=False)
        covered = cover.returncode == 0
        sc.got.append(f"cover: {(cover.stdout + cover.stderr).strip()[:200]}")
        if not sc.check("device nodes covered in serve's namespace", covered and "covered 0" not in cover.stdout,
                        cover.stderr[-300:]):
            return
        t0 = time.monotonic()

        def denied() -> dict[str, Any] | None:
            st = srv.status() or {}
            return st if (st.get("gpu_health") or {}).get("state") == "access_denied" else None
        st = wait_for(denied, 15, 0.2)
        sc.metrics["access_denied_after_s"] = round(time.monotonic() - t0, 2) if st else -1
        sc.check("status: access_denied, cause container_gpu_access_lost", st is not None and
                 {g.get("cause") for g in st["gpu_health"]["gpus"]} == {"container_gpu_access_lost"},
                 (st or {}).get("gpu_health"))
        code, text = ready_exit(srv)
        sc.got.append(f"status --ready: {code} {text[:200]}")
        sc.check("status --ready exits 1 naming the container restart", code == 1 and "restart the container" in text,
                 text)
        if runner is not None:  # the simulator keeps a loaded runner: end it so that the next load starts one
            first_pid = runner.pid
            runner.terminate()
            with contextlib.suppress(psutil.Error):
                runner.wait(10)
        else:
            first_pid = None
        second = loaded_runner(srv, sc, stack.models["tiny"])
        if second is not None:
            sc.check("a new runner started with the nodes covered", second.pid != first_pid, second.pid)
        if second is not None:
            rv = wait_verdict(srv, f"runner {second.pid}", decided)
            sc.got.append(f"new runner {vtext(rv)}")
            inits = [e.data for e in shim_of(srv.events(), second.pid) if e.kind == "cu_init"]
            sc.got.append(f"new runner cuInit: {inits[:2]}")
            sc.check("the new runner is not on the GPU", rv is not None and not vtext(rv).startswith("gpu/"),
                     vtext(rv))
        sc.check("no restart by us", not of_kind(srv.events(), "supervisor", "restarted"))
        undo = subprocess.run(["nsenter", "--target", str(srv.proc.pid), "--mount", "sh", "-c", UNCOVER],
                              capture_output=True, text=True, timeout=30, check=False)
        covered = undo.returncode != 0
        back = wait_for(lambda: (srv.status() or {}).get("gpu_health", {}).get("state") == "ok", 15, 0.2)
        sc.check("nodes back: health ok and ready again", bool(back) and ready_exit(srv)[0] == 0)
    finally:
        if covered and srv.alive():
            subprocess.run(["nsenter", "--target", str(srv.proc.pid), "--mount", "sh", "-c", UNCOVER],
                           capture_output=True, timeout=30, check=False)
        srv.stop()


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


SCENARIOS: list[tuple[str, Callable[[Stack, Scenario], None], str, str]] = [
    ("healthy", healthy, "verdict gpu from real log lines + real shim launches + runner VRAM per NVML",
     "gpu/none, no restart"),
    ("filter-override", filter_override, "CUDA_VISIBLE_DEVICES=-1 listed in OGPU_MAY_OVERRIDE is fixed",
     "fallback -> unset -> restart -> gpu"),
    ("filter-operator", filter_operator, "CUDA_VISIBLE_DEVICES=-1 as the operator's choice is left alone",
     "cpu_expected/operator_forced_cpu"),
    ("driver-unreachable", driver_unreachable, "libcuda.so.1 unreachable for the runner: cause, then the fix",
     "libcuda_not_found; auto: dir added, gpu"),
    ("stub-first", stub_first, "the toolkit's stub libcuda first on the path: cause, then the fix",
     "stub_library; auto: stubs dropped, gpu"),
    ("backend-unloadable", backend_unloadable, "a broken libggml-cuda.so: the shim carries the loader's text",
     "backend_load_failed, advised; fixed+HUP: gpu"),
    ("multi-split", multi_split, "2 GPUs: a model split across both (-sm layer) under OLLAMA_SCHED_SPREAD=1",
     "gpu/none naming both UUIDs"),
    ("multi-filter-op", multi_filter_operator, "2 GPUs: the operator hides one (UUID / index+PCI order / index)",
     "gpu/none on the other, operator's choice, no restart"),
    ("multi-stale", multi_stale, "2 GPUs: a stale UUID hides GPU1; listed: dropped, both used; Slurm: advised",
     "device_filter_hides_gpu -> 1 restart -> both"),
    ("sigkill", sigkill, "the supervisor SIGKILLed with a real runner loaded: its tree is gone within 1 s",
     "0 processes left, GPU memory released"),
    ("health-nvml", health_nvml, "issue 16: health check + Xid event set on the real driver; covered nodes",
     "registered, cheap; access_denied via open()"),
    ("health-idle", health_idle, "issue 16: a healthy idle run with health checks on: one ok event, idle CPU",
     "1 gpu_health (ok), no warning, <=0.5 % core"),
    ("revoked-access", revoked_access, "issue 16: device nodes taken away in serve's namespace (a container)",
     "access_denied, --ready fails, back: ok"),
]
# The order of a run: the scenarios of several GPUs (skipped on one), the healthy case and the speed pairs, then the
# faults, then the cheap figures.
ORDER = ("multi-split", "multi-filter-op", "multi-stale", "healthy", "bench-tg", "bench-control", "filter-override",
         "driver-unreachable", "stub-first", "backend-unloadable", "filter-operator", "sigkill", "health-nvml",
         "health-idle", "revoked-access", "llama-bench", "launch")
NEED_S = {"bench-tg": 60, "bench-control": 60, "llama-bench": 45, "launch": 30, "multi-filter-op": 80,
          "multi-stale": 70, "health-nvml": 40, "health-idle": 130,
          "revoked-access": 80}  # seconds a step needs to be started (others: 45)


# --- benchmarks ---------------------------------------------------------------------------------------------------


def spread(values: list[float]) -> str:
    return f"{min(values):.4g}..{max(values):.4g}" if values else "-"


def completion(port: int, prompt: list[int] | str, n: int) -> dict[str, float]:
    """One /completion on the runner; llama-server's own timings (the simulator's runner: wall time)."""
    t0 = time.monotonic()
    code, body = http_json(f"http://127.0.0.1:{port}/completion",
                           {"prompt": prompt, "n_predict": n, "ignore_eos": True, "cache_prompt": False,
                            "temperature": 0.0, "stream": False}, timeout=300)
    wall = time.monotonic() - t0
    if code != 200:
        raise RuntimeError(f"/completion answered {code}: {str(body)[:300]}")
    if isinstance(body, dict) and body.get("timings"):
        t = body["timings"]
        return {"pp_tps": float(t["prompt_per_second"]), "tg_tps": float(t["predicted_per_second"]),
                "pp_n": float(t["prompt_n"]), "tg_n": float(t["predicted_n"])}
    last = body[-1] if isinstance(body, list) and body else {}
    n_out = float(last.get("tokens_predicted", n))
    return {"pp_tps": 0.0, "tg_tps": n_out / wall if wall else 0.0, "pp_n": 0.0, "tg_n": n_out}


def bench_pairs(stack: Stack, pairs: int, model_role: str, results: dict[str, Any],
                control: bool = False) -> Scenario:
    """tg128 (and pp512) of the same model, bare `ollama serve` vs `ollama-gpu serve` + shim, both servers up at
    once on the same GPU and asked in alternating order (A B, B A, ...), so drift hits both sides alike.
    `control`: the second server is bare too, so the ratio shows what the method itself resolves."""
    sc = Scenario("bench-control", "the pairs method, bare vs bare: its noise floor", "ratio ~ 1") if control \
        else Scenario("bench-tg", "generation speed bare vs under ollama-gpu serve + shim", "ratio >= 0.995")
    bare = Server(stack, "bench-bare", supervised=False)
    sup: Server | None = None
    try:
        sc.check("bare ready", bare.wait_ready(READY_S))
        sup = Server(stack, "bench-bare-b" if control else "bench-ogpu", supervised=not control)
        sc.check("second server ready", sup.wait_ready(READY_S))
        ports = {}
        for name, srv in (("bare", bare), ("ogpu", sup)):
            runner = loaded_runner(srv, sc, stack.models[model_role], 4096)
            if runner is None:
                return sc
            ports[name] = Server.port_of(runner)
            pre = Server.environ_of(runner).get("LD_PRELOAD", "")
            shimmed = name == "ogpu" and not control
            sc.check(f"{name}: shim {'in' if shimmed else 'not in'} the runner", ("ollama_gpu_shim" in pre) == shimmed,
                     pre[:120])
            if shimmed:
                check_gpu_runner(srv, sc, runner, stack)
        rng = random.Random(8)
        prompt: list[int] | str = [rng.randrange(100, 30000) for _ in range(512)] if stack.mode == "real" \
            else "hello " * 64
        for port in ports.values():  # warm-up, not counted
            completion(port, prompt, 16)
        rows = []
        for i in range(pairs):
            order = ("bare", "ogpu") if i % 2 == 0 else ("ogpu", "bare")
            got = {name: completion(ports[name], prompt, 128) for name in order}
            rows.append(got)
        tg_b = [r["bare"]["tg_tps"] for r in rows]
        tg_s = [r["ogpu"]["tg_tps"] for r in rows]
        pp_b = [r["bare"]["pp_tps"] for r in rows]
        pp_s = [r["ogpu"]["pp_tps"] for r in rows]
        ratios = [s / b for s, b in zip(tg_s, tg_b, strict=True) if b]
        pp_ratios = [s / b for s, b in zip(pp_s, pp_b, strict=True) if b]
        results["tg_pairs_control" if control else "tg_pairs"] = {
                               "rows": rows, "model": stack.models[model_role], "pairs": pairs,
                               "tg_median_bare": statistics.median(tg_b), "tg_median_ogpu": statistics.median(tg_s),
                               "tg_ratio_median": statistics.median(ratios) if ratios else None,
                               "tg_ratios": ratios, "pp_median_bare": statistics.median(pp_b),
                               "pp_median_ogpu": statistics.median(pp_s),
                               "pp_ratio_median": statistics.median(pp_ratios) if pp_ratios else None,
                               "pp_ratios": pp_ratios, "tg_n": rows[0]["bare"]["tg_n"], "pp_n": rows[0]["bare"]["pp_n"]}
        if control:
            sc.check("pairs measured", len(rows) == pairs, f"tg ratio {statistics.median(ratios):.4f}")
        elif stack.mode == "real":
            sc.check("tg128 ratio (median of pairs) >= 0.995", bool(ratios) and statistics.median(ratios) >= 0.995,
                     f"{statistics.median(ratios):.4f}" if ratios else "-")
        else:
            sc.check("pairs measured (mock: figures meaningless)", len(rows) == pairs)
    finally:
        bare.stop()
        if sup is not None:
            sup.stop()
    return sc


def launch_timing(stack: Stack, pairs: int, results: dict[str, Any]) -> None:
    """Host time per cuLaunchKernel with and without the shim (benchmarks/shim_overhead/launch_timing.c)."""
    work = stack.work / "launch-timing"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shim = overhead.build_shim(work)
    tb = work / "launch_timing"
    subprocess.run([*overhead.cc(), "-O2", "-o", str(tb), str(HERE.parent.parent / "shim_overhead" /
                                                               "launch_timing.c"), "-ldl"], check=True)
    lib_dir = None if stack.mode == "real" else stack.driver_dir
    t = overhead.timing_pairs(tb, lib_dir, shim, pairs, work)
    ip = overhead.timing_inproc(tb, lib_dir, shim, work)
    results["launch"] = {"process_pairs": t, "same_process": ip}


def llama_bench(stack: Stack, model: Path, results: dict[str, Any]) -> None:
    """GPU vs pure CPU tokens/s of the same model (what a silent fallback costs): llama-bench -ngl 99 vs -dev none."""
    assert stack.llama_bin is not None
    cwd = stack.work / "bench-cwd"
    cwd.mkdir(exist_ok=True)
    out: dict[str, Any] = {}
    for name, args in (("gpu", ["-ngl", "99", "-r", "3"]), ("cpu", ["-dev", "none", "-ngl", "0", "-r", "2"])):
        done = subprocess.run([str(stack.llama_bin / "llama-bench"), "-m", str(model), "-p", "512", "-n", "128",
                               *args, "-o", "json"], capture_output=True, text=True, cwd=cwd, timeout=240,
                              check=False)
        try:
            rows = json.loads(done.stdout)
        except ValueError:
            out[name] = {"error": done.stderr[-500:], "rc": done.returncode}
            continue
        out[name] = {("pp" if r.get("n_prompt") else "tg"): {"avg_ts": r.get("avg_ts"), "stddev_ts": r.get("stddev_ts"),
                                                           "n": r.get("n_prompt") or r.get("n_gen")} for r in rows}
        out[name]["args"] = " ".join(args)
    results["llama_bench"] = out


# --- the table ----------------------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
            "cpu": platform.processor() or platform.machine()}
    for key in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH"):
        info[key] = os.environ.get(key, "<unset>")
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        line = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20, check=False).stdout.splitlines()[0]
        info["gpu"], info["driver"], info["gpu_memory"] = (x.strip() for x in line.split(","))
    return info


def fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}{unit}" if abs(v) >= 10 else f"{v:.3g}{unit}"
    return f"{v}{unit}"


def table(results: dict[str, Any], scenarios: list[Scenario]) -> str:
    m = results["machine"]
    lines = [f"ollama-gpu end-to-end, {results['mode']} stack: {m.get('gpu', 'no GPU (mock driver)')}, "
             f"driver {m.get('driver', '-')}, llama.cpp {results.get('llama_version', '-')}, {m['date']}",
             f"environment: NVIDIA_VISIBLE_DEVICES={m.get('NVIDIA_VISIBLE_DEVICES', '?')} "
             f"LD_LIBRARY_PATH={m.get('LD_LIBRARY_PATH', '?')}",
             "", f"{'scenario':<20} {'result':<6} {'observed'}"]
    for sc in scenarios:
        got = "; ".join(sc.got) or sc.skipped or sc.error.splitlines()[0] if (sc.got or sc.skipped or sc.error) else "-"
        lines.append(f"{sc.name:<20} {sc.result:<6} {got[:150]}")
        for what, ok, detail in sc.checks:
            if not ok:
                lines.append(f"{'':<20} {'':<6} failed: {what}: {detail[:110]}")
    lines += ["", f"{'figure':<58} {'bare':>14} {'ollama-gpu':>14} {'ratio / spread':>22}"]
    for key, what in (("tg_pairs", ""), ("tg_pairs_control", "control bare/bare, ")):
        tp = results.get(key)
        if not tp:
            continue
        n = tp["pairs"]
        label = f"tg{int(tp['tg_n'])} tokens/s, {what}{tp['model']}, {n} interleaved pairs (median)"
        lines.append(f"{label:<58} "
                     f"{tp['tg_median_bare']:>14.1f} {tp['tg_median_ogpu']:>14.1f} "
                     f"{fmt(tp['tg_ratio_median']):>8} ({spread(tp['tg_ratios'])})")
        label = f"pp{int(tp['pp_n'])} tokens/s, {what}same requests (median)"
        if tp["pp_n"]:
            lines.append(f"{label:<58} "
                         f"{tp['pp_median_bare']:>14.1f} {tp['pp_median_ogpu']:>14.1f} "
                         f"{fmt(tp['pp_ratio_median']):>8} ({spread(tp['pp_ratios'])})")
    la = results.get("launch")
    if la:
        t, ip = la["process_pairs"], la["same_process"]
        diffs = [s - a for a, s in t["pairs"]]
        label = f"host ns per cuLaunchKernel, {len(t['pairs'])} process pairs (median)"
        lines.append(f"{label:<58} "
                     f"{t['median_bare_ns']:>14.1f} {t['median_shim_ns']:>14.1f} "
                     f"{t['median_added_ns']:>+8.1f} ns ({spread(diffs)})")
        s = ip["shim"]
        label = f"same process, {s['pairs']} burst pairs: driver vs shim wrapper"
        lines.append(f"{label:<58} "
                     f"{s['driver_median_ns']:>14.1f} {s['wrapper_median_ns']:>14.1f} "
                     f"{s['median_added_ns']:>+8.1f} ns (p10 {s['p10_added_ns']:.1f}, p90 {s['p90_added_ns']:.1f}; "
                     f"control {ip['control']['median_added_ns']:+.1f})")
    dec = [(sc.name, sc.metrics["backend_to_verdict_ms"]) for sc in scenarios if "backend_to_verdict_ms" in sc.metrics]
    if dec:
        vals = [v for _, v in dec]
        label = f"runner backend loaded -> verdict gpu, ms ({len(vals)} runners, median)"
        lines.append(f"{label:<58} "
                     f"{'':>14} {statistics.median(vals):>14.1f} {'':>8} ({spread(vals)})")
    rec = [sc.metrics[k] for sc in scenarios for k in ("fallback_to_recovered_ms",) if k in sc.metrics]
    if rec:
        lines.append(f"{'fallback verdict -> restart -> verified gpu (discovery), ms':<58} {'':>14} "
                     f"{statistics.median(rec):>14.1f}")
    rec2 = [sc.metrics["fallback_to_runner_gpu_ms"] for sc in scenarios if "fallback_to_runner_gpu_ms" in sc.metrics]
    if rec2:
        lines.append(f"{'fallback verdict -> verified gpu model runner (incl. load), ms':<58} {'':>14} "
                     f"{statistics.median(rec2):>14.1f}")
    lb = results.get("llama_bench")
    if lb and "gpu" in lb and "cpu" in lb and "tg" in lb["gpu"] and "tg" in lb["cpu"]:
        for key, label in (("tg", "tg128"), ("pp", "pp512")):
            g, c = lb["gpu"].get(key) or {}, lb["cpu"].get(key) or {}
            if g.get("avg_ts") and c.get("avg_ts"):
                text = f"{label} tokens/s, llama-bench, GPU (-ngl 99) vs CPU (-dev none)"
                cpu, gpu = f"CPU {c['avg_ts']:.1f}", f"GPU {g['avg_ts']:.1f}"
                lines.append(f"{text:<58} {cpu:>14} {gpu:>14} "
                             f"{g['avg_ts'] / c['avg_ts']:>7.1f}x (sd {c['stddev_ts']:.1f} / {g['stddev_ts']:.1f})")
    for k, v in (results.get("skipped") or {}).items():
        lines.append(f"{k:<58} skipped: {v}")
    passed = sum(sc.result == "PASS" for sc in scenarios)
    lines += ["", f"scenarios: {passed}/{len(scenarios)} passed"]
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--mode", choices=("real", "mock"), default="real")
    ap.add_argument("--llama-bin", type=Path, default=Path("/tmp/llama.cpp/build/bin"))
    ap.add_argument("--tiny", type=Path, help="small GGUF for the scenarios (real mode)")
    ap.add_argument("--bench-model", type=Path, help="GGUF for the tg/pp pairs and llama-bench (real mode)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "/tmp/ogpu-e2e-out"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/ogpu-e2e/work"))
    ap.add_argument("--pairs", type=int, default=6, help="interleaved bare/ollama-gpu pairs (at least 5)")
    ap.add_argument("--launch-pairs", type=int, default=10)
    ap.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated: scenarios, or bench-tg, launch, llama-bench")
    ap.add_argument("--deadline", type=float, default=0.0, help="seconds: skip what would start after this")
    ap.add_argument("--merge", type=Path, help="results of an earlier call on this machine: what this run does not "
                    "redo is taken from there, so the table covers both")
    a = ap.parse_args()
    t0 = time.monotonic()
    a.out.mkdir(parents=True, exist_ok=True)

    def left() -> float:
        return a.deadline - (time.monotonic() - t0) if a.deadline else 1e9

    results: dict[str, Any] = {"mode": a.mode, "machine": machine(), "command": " ".join(sys.argv), "skipped": {}}
    models: dict[str, Path] = {}
    if a.mode == "real":
        for role, path in (("tiny", a.tiny), ("bench", a.bench_model)):
            if path is not None and path.is_file():
                models[role] = path
            elif path is not None:
                results["skipped"][f"model {role}"] = f"{path} does not exist"
        try:  # absent while the build still runs: scenarios that need no runner (health-nvml) go on
            ver = subprocess.run([str(a.llama_bin / "llama-server"), "--version"], capture_output=True, text=True,
                                 check=False, timeout=30)
            text = (ver.stdout + ver.stderr).strip()
        except (subprocess.TimeoutExpired, OSError):
            text = ""
        results["llama_version"] = text.splitlines()[0] if text else "?"
    stack = Stack.build(a.mode, a.work, a.llama_bin if a.mode == "real" else None, models)
    print(f"[e2e] stack ready in {time.monotonic() - t0:.1f}s: {stack.inst.prefix}, runner "
          f"{stack.llama_server or 'simulated'}, driver {stack.driver_dir}", flush=True)

    only = {x for x in a.only.split(",") if x}
    skip = {x for x in a.skip.split(",") if x}
    scenarios: list[Scenario] = []
    by_name = {name: (fn, proves, expect) for name, fn, proves, expect in SCENARIOS}

    def save() -> str:
        """Results and table after every step, so a run cut off by the call's limit still leaves them."""
        results["scenarios"] = [sc.to_dict() for sc in scenarios]
        results["seconds"] = round(time.monotonic() - t0, 1)
        text = table(results, scenarios)
        (a.out / "e2e_results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        (a.out / "e2e_table.txt").write_text(text + "\n")
        return text

    for name in ORDER:
        selected = not ((only and name not in only) or name in skip)
        need = NEED_S.get(name, 45)
        t1 = time.monotonic()
        if name in by_name:
            fn, proves, expect = by_name[name]
            sc = Scenario(name, proves, expect)
            scenarios.append(sc)
            if not selected:
                sc.skipped = "not selected"
                continue
            if left() < need:
                sc.skipped = "deadline"
                continue
            try:
                fn(stack, sc)
            except Exception as exc:
                sc.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}"
            sc.metrics["scenario_s"] = round(time.monotonic() - t1, 1)
            print(f"[e2e] {name}: {sc.result} in {sc.metrics['scenario_s']}s; {'; '.join(sc.got)}", flush=True)
            for what, ok, detail in sc.checks:
                print(f"[e2e]    {'ok  ' if ok else 'FAIL'} {what}: {detail[:200]}", flush=True)
            if sc.error:
                print(f"[e2e]    ERROR {sc.error}", flush=True)
            save()
            continue
        if not selected:
            continue
        if left() < need:
            results["skipped"][name] = "deadline"
            continue
        try:
            if name in ("bench-tg", "bench-control"):
                role = "bench" if "bench" in stack.models else "tiny"
                scenarios.append(bench_pairs(stack, max(5, a.pairs), role, results, name == "bench-control"))
            elif name == "launch":
                launch_timing(stack, a.launch_pairs, results)
            elif name == "llama-bench":
                if a.mode != "real" or "bench" not in models:
                    results["skipped"][name] = "real mode with --bench-model only"
                    continue
                llama_bench(stack, models["bench"], results)
        except Exception as exc:
            results["skipped"][name] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
            print(f"[e2e] {name} failed: {traceback.format_exc()[-1500:]}", flush=True)
        print(f"[e2e] {name} done in {time.monotonic() - t1:.1f}s", flush=True)
        save()

    if a.merge is not None and a.merge.is_file():
        earlier = json.loads(a.merge.read_text())
        ran = {sc.name for sc in scenarios if sc.result != "SKIP"}
        kept = [Scenario.from_dict(d) for d in earlier.get("scenarios", []) if d["name"] not in ran
                and d["result"] != "SKIP"]
        scenarios[:] = [*kept, *[sc for sc in scenarios if sc.name in ran or sc.name not in {k.name for k in kept}]]
        for key in ("tg_pairs", "tg_pairs_control", "launch", "llama_bench"):
            if key not in results and key in earlier:
                results[key] = earlier[key]
                results["skipped"].pop(key.replace("_", "-").replace("tg-pairs", "bench-tg"), None)
        results["merged_from"] = str(a.merge)
    text = save()
    print("\n" + text, flush=True)
    return 0 if all(sc.result in ("PASS", "SKIP") for sc in scenarios) else 1


if __name__ == "__main__":
    sys.exit(main())
