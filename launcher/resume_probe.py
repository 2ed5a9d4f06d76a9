"""After a resume (issue 16): the CUDA init probe that `doctor --probe` runs, in a child process with Ollama's
environment (its LD_LIBRARY_PATH finds the same libcuda), never in the supervisor. NVML can read a GPU whose
`nvidia_uvm` the suspend broke; only cuInit says so (999, `uvm_not_loaded`).

The shim is not preloaded into the probe: its events would reach the board as a process that is not Ollama's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from launcher import error_codes
from launcher.events import Event, now

Runner = Callable[[Sequence[str], Mapping[str, str]], tuple[int | None, str, str]]
PROBE_TIMEOUT = 30.0
DROP = ("LD_PRELOAD", "OGPU_EVENTS")


def probe_env(env: Mapping[str, str]) -> dict[str, str]:
    """Ollama's environment without the shim and our event socket."""
    return {k: v for k, v in env.items() if k not in DROP}


def cuda_probe_event(run: Runner, env: Mapping[str, str], clock: Callable[[], float] = now) -> Event:
    """Run the probe; a `cuda_probe` event: cuInit's answer, the device count, and the cause when it failed."""
    from launcher.doctor.probes import CUINIT_PROBE, _last_json

    code, stdout, stderr = run([sys.executable, "-I", "-S", "-c", CUINIT_PROBE], probe_env(env))
    result = _last_json(stdout)
    data: dict[str, Any] = {"after": "resume", "exit": code}
    if result is None:
        data.update(ok=False, error=(stderr.strip().splitlines() or ["the probe printed nothing"])[-1][:300],
                    cause=None)
    elif result.get("error"):
        error = str(result["error"])[:300]
        data.update(ok=False, error=error, cause=error_codes.cause_of(error, "cu"))
    else:
        data.update(ok=True, devices=len(result.get("devices") or []), cause=None)
    return Event("supervisor", "cuda_probe", clock(), None, data)
