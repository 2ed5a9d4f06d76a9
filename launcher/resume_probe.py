"""After a resume (issue 16): the CUDA init probe that `doctor --probe` runs, the same script under the shim with a
private event socket, judged by the same row (launcher.doctor.probes), in a child process with Ollama's environment
(its LD_LIBRARY_PATH finds the same libcuda), never in the supervisor. NVML can read a GPU whose `nvidia_uvm` the
suspend broke; only cuInit says so (999, `uvm_not_loaded`).

The probe's shim talks to its own socket, so its events never reach the board as a process that is not Ollama's;
its `cu_init` results travel in the `cuda_probe` event instead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from launcher.events import Event, now

# Runs argv with env, within timeout: (exit code or None when killed at the timeout, stdout, stderr).
Runner = Callable[[Sequence[str], Mapping[str, str], float], tuple[int | None, str, str]]
PROBE_TIMEOUT = 30.0
HEALTHY = ("ok", "warn")  # doctor's row: cuInit 0 and devices (warn: a context was refused, CUDA itself works)


def cuda_probe_event(run: Runner, env: Mapping[str, str], shim: Path | None, after: str = "resume",
                     clock: Callable[[], float] = now, python: str = sys.executable) -> Event:
    """Run doctor's cuInit probe under `shim`; a `cuda_probe` event: whether CUDA works (None: the probe could not
    run), cuInit's code, the device count, the cause and doctor's finding when it does not, and what the shim saw
    cuInit return inside the probe."""
    from launcher.doctor.probes import CUINIT_PROBE, _cuinit_row, run_under_shim

    try:
        probe = run_under_shim(run, python, env, shim, CUINIT_PROBE, timeout=PROBE_TIMEOUT)
    except OSError as exc:  # it could not start (no temporary directory, no interpreter): says nothing of CUDA
        return Event("supervisor", "cuda_probe", clock(), None, {
            "after": after, "exit": None, "ok": None, "cu_init": None, "devices": 0, "cause": None,
            "error": f"the probe could not run: {exc}"[:300], "shim": str(shim) if shim else None,
            "shim_cu_init": []})
    row = _cuinit_row(probe)
    result = probe.result or {}
    shim_inits = [e.get("result") for e in probe.events if e.get("kind") == "cu_init"]
    code = result.get("cu_init")
    if not isinstance(code, int):
        code = next((c for c in reversed(shim_inits) if isinstance(c, int)), None)
    ok = row.status in HEALTHY
    data: dict[str, Any] = {"after": after, "exit": probe.returncode, "ok": ok, "cu_init": code,
                            "devices": len(result.get("devices") or []), "cause": None if ok else row.cause,
                            "error": None if ok else str(result.get("error") or row.found)[:300],
                            "shim": probe.shim, "shim_cu_init": shim_inits}
    return Event("supervisor", "cuda_probe", clock(), None, data)
