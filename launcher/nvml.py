"""NVML behind one choke point: GPUs, driver, per-GPU and per-process memory; absent NVML is a fact, not an error.

Every pynvml call goes through `Nvml._call`, which turns `NVMLError` (and anything else the binding raises) into an
`NvmlFailure`. The pynvml module is injectable (`Nvml(lib=fake)`) so tests run without a GPU or libnvidia-ml.
In a container NVML reports host PIDs: `pids_comparable()` says whether NVML's pids are ours; when they are not, the
board attributes memory by per-GPU change instead of by pid.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from launcher.events import Event, now
from launcher.log import get as get_logger
from launcher.resume import ResumeWatch

if TYPE_CHECKING:
    from launcher.gpu_health import HealthChecker

log = get_logger(__name__)

# NVML return codes (nvml.h; the same numbers as pynvml's NVML_ERROR_*), the few we treat apart.
ERROR_NOT_SUPPORTED: Final = 3
ERROR_NO_PERMISSION: Final = 4
ERROR_DRIVER_NOT_LOADED: Final = 9
ERROR_LIBRARY_NOT_FOUND: Final = 12
ERROR_FUNCTION_NOT_FOUND: Final = 13
ERROR_GPU_IS_LOST: Final = 15
ERROR_LIB_RM_VERSION_MISMATCH: Final = 18

# Why NVML is unavailable, by return code: a stable reason label (the cause comes from the NVML error-code table).
UNAVAILABLE: Final[Mapping[int, str]] = {
    ERROR_LIBRARY_NOT_FOUND: "libnvidia-ml not found (no NVIDIA driver user-space libraries)",
    ERROR_DRIVER_NOT_LOADED: "the NVIDIA kernel driver is not loaded",
    ERROR_NO_PERMISSION: "no permission to open the NVIDIA device nodes",
    ERROR_LIB_RM_VERSION_MISMATCH: "Driver/library version mismatch: the driver was updated and the old kernel module "
                                   "is still loaded",
    ERROR_GPU_IS_LOST: "a GPU fell off the bus",
}


def unavailable(failure: NvmlFailure) -> tuple[str, str | None]:
    """(reason, cause) of an NVML failure: our label or NVML's own text, and the cause its code implies."""
    from launcher.error_codes import code_cause

    code = failure.code
    return UNAVAILABLE.get(code if code is not None else -1, failure.text), \
        code_cause("nvml", code) if code is not None else None


MIG_ENABLED: Final = 1  # NVML_DEVICE_MIG_ENABLE
INIT_PID_NS_INODE: Final = 0xEFFFFFFC  # PROC_PID_INIT_INO: the inode of the initial (host) PID namespace


@dataclass(frozen=True, slots=True)
class NvmlFailure:
    """An NVML call that did not answer: the NVML return code (None for a non-NVML exception) and its text."""

    code: int | None
    text: str


@dataclass(frozen=True, slots=True)
class Gpu:
    """One GPU as NVML sees it; a field NVML cannot give on this device is None."""

    index: int
    uuid: str | None
    name: str | None
    pci_bus_id: str | None
    memory_total: int | None
    memory_used: int | None
    compute_capability: str | None  # "9.0"
    mig_mode: bool | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {"index": self.index, "uuid": self.uuid, "name": self.name, "pci_bus_id": self.pci_bus_id,
                "memory_total": self.memory_total, "memory_used": self.memory_used,
                "compute_capability": self.compute_capability, "mig_mode": self.mig_mode}


@dataclass(frozen=True, slots=True)
class NvmlState:
    """What NVML says of this machine at start: available or why not, driver and CUDA versions, the GPUs."""

    available: bool
    reason: str = ""
    cause: str | None = None  # a vocabulary cause when the failure is one (driver_library_mismatch)
    code: int | None = None
    driver_version: str | None = None
    cuda_version: str | None = None  # the CUDA driver API version the driver supports, "13.0"
    gpus: tuple[Gpu, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (the `gpus` / `unavailable` event and `doctor --json`)."""
        return {"available": self.available, "reason": self.reason, "cause": self.cause, "code": self.code,
                "driver_version": self.driver_version, "cuda_version": self.cuda_version,
                "gpus": [g.to_dict() for g in self.gpus]}


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """A process holding GPU memory: its pid as NVML reports it (host pid in a container), GPU, bytes, type."""

    pid: int
    gpu: int
    used: int | None  # None: NVML does not say (no permission, some MIG and container setups)
    type: str  # "compute" | "graphics"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {"pid": self.pid, "gpu": self.gpu, "used": self.used, "type": self.type}


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """One sample: used bytes per GPU index and the processes NVML lists (None: the list could not be read)."""

    used: Mapping[int, int]
    processes: tuple[GpuProcess, ...] | None
    failures: tuple[str, ...] = ()


def cuda_version_text(value: int) -> str:
    """NVML's CUDA driver version integer (13000) as "13.0"."""
    return f"{value // 1000}.{(value % 1000) // 10}"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _import_pynvml() -> Any:
    return importlib.import_module("pynvml")


class Nvml:
    """The one place that calls pynvml. `open()` never raises; a missing library or driver is an NvmlState."""

    def __init__(self, lib: Any | None = None, *, load: Callable[[], Any] = _import_pynvml) -> None:
        self._lib = lib
        self._load = load
        self._open = False
        self.handles: list[Any] = []

    def _call(self, name: str, *args: Any) -> Any:
        """Call `lib.<name>(*args)`; an NvmlFailure instead of any exception (the choke point)."""
        lib = self._lib
        try:
            return getattr(lib, name)(*args)
        except Exception as exc:  # the binding raises NVMLError subclasses, OSError, AttributeError, …
            error_type = getattr(lib, "NVMLError", None)
            if isinstance(error_type, type) and isinstance(exc, error_type):
                code = getattr(exc, "value", None)
                return NvmlFailure(code if isinstance(code, int) else None, _safe_str(exc))
            return NvmlFailure(None, f"{type(exc).__name__}: {exc}")

    def call(self, name: str, *args: Any) -> Any:
        """The choke point for other NVML readers (the health check): the result, or an NvmlFailure."""
        if not self._open:
            return NvmlFailure(None, "NVML is not open")
        return self._call(name, *args)

    def open(self) -> NvmlState:
        """Initialise NVML and read the machine: driver, CUDA version, every GPU."""
        if self._lib is None:
            try:
                self._lib = self._load()
            except ImportError as exc:
                return NvmlState(False, reason=f"pynvml is not installed ({exc})")
        result = self._call("nvmlInit")
        if isinstance(result, NvmlFailure):
            reason, cause = unavailable(result)
            return NvmlState(False, reason=reason, cause=cause, code=result.code)
        self._open = True
        driver = self._call("nvmlSystemGetDriverVersion")
        cuda = self._call("nvmlSystemGetCudaDriverVersion")
        count = self._call("nvmlDeviceGetCount")
        if isinstance(count, NvmlFailure):
            reason, cause = unavailable(count)
            return NvmlState(False, reason=f"GPU count unreadable: {reason}", cause=cause, code=count.code)
        gpus: list[Gpu] = []
        self.handles = []
        for index in range(int(count)):
            handle = self._call("nvmlDeviceGetHandleByIndex", index)
            if isinstance(handle, NvmlFailure):
                log.warning("nvml_gpu_unreadable", index=index, code=handle.code, error=handle.text)
                continue
            self.handles.append((index, handle))
            gpus.append(self._gpu(index, handle))
        return NvmlState(True, driver_version=None if isinstance(driver, NvmlFailure) else _text(driver),
                         cuda_version=None if isinstance(cuda, NvmlFailure) else cuda_version_text(int(cuda)),
                         gpus=tuple(gpus))

    def _gpu(self, index: int, handle: Any) -> Gpu:
        def ok(value: Any) -> Any:
            return None if isinstance(value, NvmlFailure) else value

        mem = ok(self._call("nvmlDeviceGetMemoryInfo", handle))
        pci = ok(self._call("nvmlDeviceGetPciInfo", handle))
        cc = ok(self._call("nvmlDeviceGetCudaComputeCapability", handle))
        mig = ok(self._call("nvmlDeviceGetMigMode", handle))
        name, uuid = ok(self._call("nvmlDeviceGetName", handle)), ok(self._call("nvmlDeviceGetUUID", handle))
        bus = getattr(pci, "busId", None) if pci is not None else None
        return Gpu(
            index=index,
            uuid=_text(uuid) if uuid is not None else None,
            name=_text(name) if name is not None else None,
            pci_bus_id=_text(bus) if bus is not None else None,
            memory_total=int(mem.total) if mem is not None else None,
            memory_used=int(mem.used) if mem is not None else None,
            compute_capability=f"{cc[0]}.{cc[1]}" if cc is not None else None,
            mig_mode=(int(mig[0]) == MIG_ENABLED) if mig is not None else None,
        )

    def read_memory(self) -> MemoryReading | NvmlFailure:
        """Used memory per GPU and the compute and graphics processes of each; a failure when NVML stopped working."""
        if not self._open:
            return NvmlFailure(None, "NVML is not open")
        used: dict[int, int] = {}
        procs: list[GpuProcess] | None = []
        failures: list[str] = []
        for index, handle in self.handles:
            mem = self._call("nvmlDeviceGetMemoryInfo", handle)
            if isinstance(mem, NvmlFailure):
                if mem.code == ERROR_GPU_IS_LOST:
                    return mem
                failures.append(f"gpu {index} memory: {mem.text}")
                continue
            used[index] = int(mem.used)
            for fn, kind in (("nvmlDeviceGetComputeRunningProcesses", "compute"),
                             ("nvmlDeviceGetGraphicsRunningProcesses", "graphics")):
                listed = self._call(fn, handle)
                if isinstance(listed, NvmlFailure):
                    if listed.code != ERROR_NOT_SUPPORTED:
                        failures.append(f"gpu {index} {kind} processes: {listed.text}")
                        procs = None
                    continue
                if procs is not None:
                    procs.extend(_processes(listed, index, kind))
        return MemoryReading(used=used, processes=tuple(procs) if procs is not None else None,
                             failures=tuple(failures))

    def close(self) -> None:
        """Shut NVML down (idempotent)."""
        if self._open:
            self._call("nvmlShutdown")
            self._open = False


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # pynvml's __str__ calls into NVML, which may be gone
        return type(exc).__name__


def _processes(listed: Iterable[Any], gpu: int, kind: str) -> list[GpuProcess]:
    out = []
    for p in listed:
        pid = getattr(p, "pid", None)
        if not isinstance(pid, int):
            continue
        used = getattr(p, "usedGpuMemory", None)
        out.append(GpuProcess(pid=pid, gpu=gpu, used=int(used) if isinstance(used, int) else None, type=kind))
    return out


# --- PID namespaces ----------------------------------------------------------------------------------------------


def pid_namespace_inode(proc_root: Path = Path("/proc")) -> int | None:
    """The inode of our PID namespace (`pid:[4026531836]`), or None when /proc does not say."""
    try:
        link = os.readlink(proc_root / "self" / "ns" / "pid")
    except OSError:
        return None
    digits = link.partition("[")[2].rstrip("]")
    return int(digits) if digits.isdigit() else None


def pids_comparable(processes: Iterable[GpuProcess], proc_root: Path = Path("/proc"),
                    ns_inode: int | None = None) -> bool:
    """Whether NVML's pids are pids in our namespace: yes in the initial PID namespace; in another one, NVML
    reports host pids; when the namespace cannot be read, only if every listed pid exists in our /proc."""
    inode = pid_namespace_inode(proc_root) if ns_inode is None else ns_inode
    if inode is not None:
        return inode == INIT_PID_NS_INODE
    pids = {p.pid for p in processes}
    return bool(pids) and all((proc_root / str(pid)).exists() for pid in pids)


# --- the sampler: readings → Events ------------------------------------------------------------------------------


@dataclass
class NvmlSampler:
    """Turns NVML readings into `Event(source="nvml")`: `start()` gives `gpus` or `unavailable`, `sample()` a
    `memory` event (or `sample_failed`, once, when NVML stops answering)."""

    nvml: Nvml = field(default_factory=Nvml)
    proc_root: Path = Path("/proc")
    clock: Callable[[], float] = now
    ns_inode: int | None = None  # tests pin the namespace; None reads /proc
    state: NvmlState | None = None
    failed: bool = False
    checker: HealthChecker | None = None  # set by the first health check
    reopen: bool = False  # NVML unavailable at start on a machine with NVIDIA hardware: try again at each check
    resume: ResumeWatch = field(default_factory=ResumeWatch)  # the BOOTTIME − MONOTONIC seam (tests fake it)
    cuda_probe: Callable[[], Event] | None = None  # after a resume: cuInit in a child (launcher.resume_probe)
    checked_at: float | None = None  # when the last health check ran (a resume happened after it)
    # OGPU_MAY_RELOAD_UVM: reload nvidia_uvm for a resume key, given NVML's process lists (launcher.uvm_reload)
    uvm_reload: Callable[[str, MemoryReading | NvmlFailure], list[Event]] | None = None

    def start(self) -> list[Event]:
        """Open NVML and describe the machine."""
        self.state = self.nvml.open()
        data = self.state.to_dict()
        if not self.state.available:
            log.info("nvml_unavailable", reason=self.state.reason, cause=self.state.cause, code=self.state.code)
            return [Event("nvml", "unavailable", self.clock(), None, data)]
        log.info("nvml_gpus", count=len(self.state.gpus), driver=self.state.driver_version,
                 cuda=self.state.cuda_version)
        return [Event("nvml", "gpus", self.clock(), None, data)]

    def sample(self) -> list[Event]:
        """One memory sample; nothing when NVML is unavailable or already failed."""
        if self.state is None or not self.state.available or self.failed:
            return []
        reading = self.nvml.read_memory()
        if isinstance(reading, NvmlFailure):
            self.failed = True
            reason, cause = unavailable(reading)
            log.warning("nvml_sample_failed", reason=reason, code=reading.code)
            return [Event("nvml", "sample_failed", self.clock(), None,
                          {"reason": reason, "cause": cause, "code": reading.code})]
        processes = reading.processes or ()
        comparable = pids_comparable(processes, self.proc_root, self.ns_inode) if reading.processes is not None \
            else False
        return [Event("nvml", "memory", self.clock(), None, {
            "gpus": [{"index": i, "used": u} for i, u in sorted(reading.used.items())],
            "processes": [p.to_dict() for p in processes] if reading.processes is not None else None,
            "pids_comparable": comparable,
            "failures": list(reading.failures),
        })]

    def health(self) -> list[Event]:
        """The periodic health check (launcher.gpu_health): a `gpu_health` event when a GPU's health changed.
        Memory sampling that stopped when NVML failed resumes once every GPU reads ok again."""
        if self.state is None:
            return []
        since, self.checked_at = self.checked_at, self.clock()
        slept = self.resume.check()
        if slept is not None:
            log.info("host_resumed", slept=round(slept, 1), via=self.resume.via, action="checking the GPUs again")
            gap = self.resume.last  # names this resume within the boot (a once-per-resume remedy keys on it)
            # `since`: the previous check, before which the host had not slept yet (what cuInit gave up to then is
            # the "before" the probe is compared with)
            resumed = Event("supervisor", "resumed", self.checked_at, None, {
                "slept": round(slept, 3), "via": self.resume.via, "gap": round(gap, 1) if gap is not None else None,
                "since": since})
            health = self._health(force=True)
            probed = [self.cuda_probe()] if self.cuda_probe is not None and self.state.available else []
            return [resumed, *health, *probed]
        return self._health()

    def _health(self, force: bool = False) -> list[Event]:
        assert self.state is not None
        if not self.state.available:
            if not self.reopen:
                return []
            opened = self.nvml.open()
            if not opened.available:
                return []
            self.state = opened
            log.info("nvml_available_now", count=len(opened.gpus), driver=opened.driver_version)
            return [Event("nvml", "gpus", self.clock(), None, opened.to_dict()), *self._health()]
        if self.checker is None:
            from launcher.gpu_health import HealthChecker

            self.checker = HealthChecker(self.nvml, self.state.gpus, clock=self.clock)
        events = self.checker.check(force=force)
        if self.failed and self.checker.healthy:
            self.failed = False
            log.info("nvml_sampling_resumed")
        return events

    def reload_uvm(self, key: str) -> list[Event]:
        """The controller asked for nvidia_uvm to be reloaded after the resume `key`: with NVML's process lists (a
        failure when NVML cannot give them, and then nothing is unloaded)."""
        if self.uvm_reload is None:
            return []
        reading = self.nvml.read_memory() if self.state is not None and self.state.available else \
            NvmlFailure(None, "NVML is unavailable")
        return self.uvm_reload(key, reading)

    def close(self) -> None:
        """Shut NVML down."""
        self.nvml.close()
