"""Reloading `nvidia_uvm` after a resume broke it (issue 16, `OGPU_MAY_RELOAD_UVM=1`): only when nothing holds the
GPU (NVML lists no compute process on any GPU, `/sys/module/nvidia_uvm/refcnt` is 0 where readable, no process has
`/dev/nvidia-uvm` open), `modprobe -r nvidia_uvm` then `modprobe nvidia_uvm` in children with a timeout, then the
CUDA init probe again. Never a module in use: a holder is named and the reload is not done.

Runs in the NVML thread (it reads NVML's process lists, and the children take seconds), never in the supervisor's
loop; the controller asks for it (a `ReloadUvm` directive) and judges the events it returns.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from launcher.events import Event, now
from launcher.log import get as get_logger
from launcher.nvml import MemoryReading, NvmlFailure

log = get_logger(__name__)

MODULE: Final = "nvidia_uvm"
DEVICE: Final = "/dev/nvidia-uvm"
MODPROBE_TIMEOUT: Final = 30.0
SBIN: Final = ("/usr/sbin", "/sbin")  # modprobe's home, often missing from a service's PATH
MAX_STDERR: Final = 500

Run = Callable[[Sequence[str], Mapping[str, str], float], tuple[int | None, str, str]]


def refcnt(sys_root: Path = Path("/sys")) -> int | None:
    """nvidia_uvm's reference count (open handles), None where the module or the file cannot be read."""
    try:
        text = (sys_root / "module" / MODULE / "refcnt").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def name_of(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """A process's name (comm), None when it is gone or not ours to read (a host pid seen from a container)."""
    try:
        return (proc_root / str(pid) / "comm").read_text().strip() or None
    except OSError:
        return None


def device_openers(proc_root: Path = Path("/proc")) -> list[int]:
    """Pids with /dev/nvidia-uvm open (a process gone or unreadable mid-scan is skipped)."""
    pids = []
    try:
        entries = [p for p in proc_root.iterdir() if p.name.isdigit()]
    except OSError:
        return []
    for entry in entries:
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == DEVICE:
                    pids.append(int(entry.name))
                    break
            except OSError:
                continue
    return sorted(pids)


def holders(reading: MemoryReading | NvmlFailure, proc_root: Path = Path("/proc"),
            sys_root: Path = Path("/sys")) -> tuple[list[dict[str, Any]], int | None, str | None]:
    """(who holds the GPU or nvidia_uvm, the module's refcnt, why that cannot be known). NVML's compute processes on
    every GPU and the openers of /dev/nvidia-uvm are named; a refcnt above 0 holds it even when nobody is named."""
    if isinstance(reading, NvmlFailure) or reading.processes is None:
        why = reading.text if isinstance(reading, NvmlFailure) else "; ".join(reading.failures)
        return [], None, f"NVML cannot list the processes on the GPUs ({why or 'no answer'})"
    found: dict[int, dict[str, Any]] = {}
    for p in reading.processes:
        if p.type == "compute":
            found.setdefault(p.pid, {"pid": p.pid, "name": name_of(p.pid, proc_root), "via": f"NVML, GPU {p.gpu}"})
    for pid in device_openers(proc_root):
        found.setdefault(pid, {"pid": pid, "name": name_of(pid, proc_root), "via": DEVICE})
    return sorted(found.values(), key=lambda h: int(h["pid"])), refcnt(sys_root), None


def find_modprobe(env: Mapping[str, str]) -> str | None:
    """modprobe on PATH, else in /usr/sbin or /sbin."""
    path = os.pathsep.join([p for p in env.get("PATH", "").split(os.pathsep) if p] + list(SBIN))
    return shutil.which("modprobe", path=path)


def reload_events(key: str, reading: MemoryReading | NvmlFailure, run: Run, env: Mapping[str, str],
                  probe: Callable[[], Event], clock: Callable[[], float] = now, proc_root: Path = Path("/proc"),
                  sys_root: Path = Path("/sys")) -> list[Event]:
    """One reload attempt for the resume `key`: a `uvm_reload` event (held, unverified, failed or reloaded) and,
    after a reload, the re-probe's `cuda_probe` event (after="uvm_reload", with the key)."""

    def outcome(what: str, **data: Any) -> Event:
        return Event("supervisor", "uvm_reload", clock(), None, {"key": key, "outcome": what, **data})

    found, count, unknown = holders(reading, proc_root, sys_root)
    if unknown is not None:
        log.warning("uvm_reload_skipped", reason=unknown, action="reload nvidia_uvm by hand (see status)")
        return [outcome("unverified", reason=unknown)]
    if found or (count or 0) > 0:
        log.warning("uvm_reload_skipped", holders=[h["pid"] for h in found], refcnt=count,
                    reason="something holds the GPU; a module in use is never unloaded")
        return [outcome("held", holders=found, refcnt=count)]
    modprobe = find_modprobe(env)
    if modprobe is None:
        log.warning("uvm_reload_failed", step="modprobe", error="modprobe not found")
        return [outcome("failed", step="modprobe", exit=None, stderr="modprobe not found on PATH, /usr/sbin or /sbin")]
    for args in (("-r", MODULE), (MODULE,)):
        step = " ".join(("modprobe", *args))
        try:
            code, _out, err = run([modprobe, *args], env, MODPROBE_TIMEOUT)
        except OSError as exc:  # SpawnError: it could not be started
            code, err = 127, str(exc)
        if code != 0:
            stderr = err.strip()[-MAX_STDERR:] or ("timed out" if code is None else "")
            log.warning("uvm_reload_failed", step=step, exit=code, stderr=stderr, action="not retried; see status")
            return [outcome("failed", step=step, exit=code, stderr=stderr)]
    probed = probe()
    ok = probed.data.get("ok") is True
    log.info("uvm_reloaded", cuda_ok=ok, cu_init=probed.data.get("cu_init"))
    return [outcome("reloaded", refcnt=count),
            Event(probed.source, probed.kind, probed.t, probed.pid, {**probed.data, "key": key})]
