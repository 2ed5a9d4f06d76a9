"""Per-GPU health after start (issue 16): a cheap NVML check every few seconds and NVML's Xid/ECC events, as
`nvml` events that change only when a GPU's health does.

States: `ok`; `degraded` (a critical Xid or double-bit ECC errors: the GPU answers but should be looked at); `lost`
(`NVML_ERROR_GPU_IS_LOST`, Xid 79: fell off the bus); `driver_mismatch` (`NVML_ERROR_LIB_RM_VERSION_MISMATCH`: the
driver was upgraded underneath a loaded kernel module); `access_denied` (NVML "Unknown Error" or no permission: in a
container, the device cgroup revoked by a host `systemctl daemon-reload`); `absent` (the UUID seen at start is no
longer enumerated). Checks run in the NVML thread, never in the supervisor's loop; a healthy machine produces one
`gpu_health` event (the first reading) and nothing after it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from launcher.events import Event, now
from launcher.log import get as get_logger
from launcher.nvml import (
    ERROR_DRIVER_NOT_LOADED,
    ERROR_GPU_IS_LOST,
    ERROR_LIB_RM_VERSION_MISMATCH,
    ERROR_NO_PERMISSION,
    Gpu,
    Nvml,
    NvmlFailure,
)

log = get_logger(__name__)

OK: Final = "ok"
DEGRADED: Final = "degraded"
LOST: Final = "lost"
DRIVER_MISMATCH: Final = "driver_mismatch"
ACCESS_DENIED: Final = "access_denied"
ABSENT: Final = "absent"
STATES: Final = (OK, DEGRADED, LOST, DRIVER_MISMATCH, ACCESS_DENIED, ABSENT)

ERROR_NOT_FOUND: Final = 6
ERROR_TIMEOUT: Final = 10
ERROR_UNKNOWN: Final = 999

# The cause in the vocabulary that each unhealthy state points at (DESIGN.md, launcher/causes.py).
CAUSE: Final[Mapping[str, str]] = {LOST: "gpu_lost", DRIVER_MISMATCH: "driver_library_mismatch",
                                   ACCESS_DENIED: "container_gpu_access_lost", ABSENT: "gpu_lost"}

# NVML return code of a failed check → state.
BY_CODE: Final[Mapping[int, str]] = {
    ERROR_GPU_IS_LOST: LOST,
    ERROR_LIB_RM_VERSION_MISMATCH: DRIVER_MISMATCH,
    ERROR_UNKNOWN: ACCESS_DENIED,
    ERROR_NO_PERMISSION: ACCESS_DENIED,
    ERROR_NOT_FOUND: ABSENT,
    ERROR_DRIVER_NOT_LOADED: ABSENT,
}

# Xids that say the hardware (not the application) failed (NVIDIA's Xid catalogue): the GPU is degraded; 79 is lost.
# Application Xids (13, 31, 43, 45, …) are counted but change no state: a bad kernel is not a bad GPU.
CRITICAL_XIDS: Final = frozenset({48, 61, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120, 140})
LOST_XIDS: Final = frozenset({79})

EVENT_XID: Final = 0x8  # nvmlEventTypeXidCriticalError
EVENT_DBE: Final = 0x4  # nvmlEventTypeDoubleBitEccError
ECC_UNCORRECTED: Final = 1  # NVML_MEMORY_ERROR_TYPE_UNCORRECTED
ECC_VOLATILE: Final = 0  # NVML_VOLATILE_ECC: since the driver loaded

# The control node every CUDA and NVML client opens first. NVML keeps the descriptors it opened at start, so a
# device cgroup revoked later (a host `systemctl daemon-reload` under the systemd cgroup driver) or nodes taken away
# do not fail its calls; only a fresh open() shows what a new runner will meet. Opening the control node is what
# every `nvidia-smi` does; it starts no GPU and holds nothing (closed at once).
DEVICE_NODES: Final = ("/dev/nvidiactl",)
DENIED_ERRNOS: Final = frozenset({errno.EPERM, errno.EACCES})
GONE_ERRNOS: Final = frozenset({errno.ENOENT, errno.ENXIO, errno.ENODEV})


def open_errno(path: str) -> int:
    """0 when `path` opens read-write (closed at once), else the errno."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        return exc.errno or errno.EIO
    os.close(fd)
    return 0


def node_failure(nodes: Sequence[str], opener: Callable[[str], int]) -> NvmlFailure | None:
    """The first node that no longer opens, as the failure NVML would give a new client: denied → NVML's
    "Unknown Error" (what `nvidia-smi` prints in a container whose device access was revoked), gone → driver not
    loaded. Other errnos (EBUSY, EINTR…) say nothing about access and are ignored."""
    for path in nodes:
        code = opener(path)
        if code in DENIED_ERRNOS:
            return NvmlFailure(ERROR_UNKNOWN, f"open({path}): {os.strerror(code)}")
        if code in GONE_ERRNOS:
            return NvmlFailure(ERROR_DRIVER_NOT_LOADED, f"open({path}): {os.strerror(code)}")
    return None


@dataclass(frozen=True, slots=True)
class GpuHealth:
    """One GPU's health: state, why (NVML's text), the NVML code, double-bit ECC count, critical Xids seen."""

    index: int
    uuid: str
    state: str
    reason: str = ""
    code: int | None = None
    ecc_dbe: int | None = None
    xids: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (the `gpu_health` event, status)."""
        return {"index": self.index, "uuid": self.uuid, "state": self.state, "reason": self.reason,
                "code": self.code, "ecc_dbe": self.ecc_dbe, "xids": list(self.xids),
                "cause": CAUSE.get(self.state)}


def state_of_failure(failure: NvmlFailure) -> str:
    """The health state an NVML failure means; an unfamiliar failure is `degraded` (it answers, wrongly)."""
    return BY_CODE.get(failure.code if failure.code is not None else -1, DEGRADED)


def judge(index: int, uuid: str, failure: NvmlFailure | None, ecc_dbe: int | None,
          xids: Sequence[int]) -> GpuHealth:
    """Pure: one GPU's health from its check and the Xids seen so far."""
    critical = tuple(x for x in xids if x in CRITICAL_XIDS)
    if failure is not None:
        return GpuHealth(index, uuid, state_of_failure(failure), failure.text, failure.code, ecc_dbe, critical)
    if any(x in LOST_XIDS for x in critical):
        return GpuHealth(index, uuid, LOST, f"Xid {critical[-1]}", None, ecc_dbe, critical)
    if critical:
        return GpuHealth(index, uuid, DEGRADED, f"Xid {critical[-1]}", None, ecc_dbe, critical)
    if ecc_dbe:
        return GpuHealth(index, uuid, DEGRADED, f"{ecc_dbe} double-bit ECC error(s) since the driver loaded",
                         None, ecc_dbe, critical)
    return GpuHealth(index, uuid, OK, "", None, ecc_dbe, critical)


@dataclass
class HealthChecker:
    """The periodic check: each GPU seen at start looked up by UUID, its double-bit ECC count, and the driver.

    `check()` and `xid()` may be called from two threads (the sampler's and the event watcher's)."""

    nvml: Nvml
    gpus: Sequence[Gpu]
    clock: Callable[[], float] = now
    last: tuple[GpuHealth, ...] | None = None
    xids: dict[str, list[int]] = field(default_factory=dict)
    nodes: Sequence[str] | None = None  # the device nodes that opened at the first check (None: not yet looked)
    candidates: Sequence[str] = DEVICE_NODES
    opener: Callable[[str], int] = open_errno
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, force: bool = False) -> list[Event]:
        """Read every GPU; a `gpu_health` event when the reading differs from the last one (and the first time), or
        when `force`d (after a resume: status shows the reading taken after it)."""
        with self._lock:
            if force:
                self.last = None
            return self._publish(self._read())

    def xid(self, uuid: str, xid: int) -> list[Event]:
        """An Xid event from NVML for the GPU `uuid`: an `xid` event, and `gpu_health` if the state changes."""
        gpu = next((g for g in self.gpus if g.uuid == uuid), None)
        index = gpu.index if gpu is not None else -1
        log.warning("gpu_xid", gpu=index, uuid=uuid, xid=xid, critical=xid in CRITICAL_XIDS)
        with self._lock:
            self.xids.setdefault(uuid, []).append(xid)
            events = [Event("nvml", "xid", self.clock(), None, {"index": index, "uuid": uuid, "xid": xid,
                                                                  "critical": xid in CRITICAL_XIDS})]
            return events + self._publish(self._read())

    def _read(self) -> tuple[GpuHealth, ...]:
        if self.nodes is None:  # only nodes that opened at start are watched (a container may have none)
            self.nodes = tuple(n for n in self.candidates if self.opener(n) == 0)
        system: Any = node_failure(self.nodes, self.opener) or self.nvml.call("nvmlSystemGetDriverVersion")
        out = []
        for gpu in self.gpus:
            if gpu.uuid is None:
                continue
            seen = self.xids.get(gpu.uuid, ())
            if isinstance(system, NvmlFailure):
                out.append(judge(gpu.index, gpu.uuid, system, None, seen))
                continue
            handle = self.nvml.call("nvmlDeviceGetHandleByUUID", gpu.uuid)
            if isinstance(handle, NvmlFailure):
                out.append(judge(gpu.index, gpu.uuid, handle, None, seen))
                continue
            ecc = self.nvml.call("nvmlDeviceGetTotalEccErrors", handle, ECC_UNCORRECTED, ECC_VOLATILE)
            if isinstance(ecc, NvmlFailure) and ecc.code in BY_CODE:  # the GPU went between the two calls
                out.append(judge(gpu.index, gpu.uuid, ecc, None, seen))
                continue
            out.append(judge(gpu.index, gpu.uuid, None, None if isinstance(ecc, NvmlFailure) else int(ecc), seen))
        return tuple(out)

    def _publish(self, reading: tuple[GpuHealth, ...]) -> list[Event]:
        if reading == self.last:
            return []
        before = {h.uuid: h.state for h in self.last or ()}
        self.last = reading
        for h in reading:
            if h.state != before.get(h.uuid, OK):
                log.warning("gpu_health_changed", gpu=h.index, uuid=h.uuid, state=h.state,
                            was=before.get(h.uuid, OK), reason=h.reason, code=h.code)
        return [Event("nvml", "gpu_health", self.clock(), None, {"gpus": [h.to_dict() for h in reading]})]

    @property
    def healthy(self) -> bool:
        """Every GPU read ok the last time."""
        return self.last is not None and all(h.state == OK for h in self.last)


def _address(handle: Any) -> int | None:
    """A ctypes device handle's pointer value (the same GPU's handles compare equal); None for anything else."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return None


class XidWatcher:
    """NVML's event set in its own thread: critical Xids and double-bit ECC for every GPU, handed to the checker.

    Where NVML does not support events (consumer GPUs, some containers), it says so once and ends."""

    def __init__(self, nvml: Nvml, checker: HealthChecker, sink: Callable[[Event], None],
                 wait_ms: int = 1000) -> None:
        self._nvml = nvml
        self._checker = checker
        self._sink = sink
        self._wait_ms = wait_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ollama-gpu-xid", daemon=True)
        self.registered = 0

    def start(self) -> XidWatcher:
        """Register and start waiting, in the thread."""
        self._thread.start()
        return self

    def _register(self) -> Any:
        event_set = self._nvml.call("nvmlEventSetCreate")
        if isinstance(event_set, NvmlFailure):
            log.info("nvml_events_unavailable", code=event_set.code, reason=event_set.text)
            return None
        for gpu, handle in self._nvml.handles:
            supported = self._nvml.call("nvmlDeviceGetSupportedEventTypes", handle)
            wanted = EVENT_XID | EVENT_DBE  # a GPU without ECC refuses the whole mask if it names DBE
            types = wanted if isinstance(supported, NvmlFailure) else int(supported) & wanted
            if not types:
                log.info("nvml_events_unavailable", gpu=gpu, reason="no Xid or ECC events on this GPU")
                continue
            done = self._nvml.call("nvmlDeviceRegisterEvents", handle, types, event_set)
            if isinstance(done, NvmlFailure):
                log.info("nvml_events_unavailable", gpu=gpu, code=done.code, reason=done.text)
                continue
            self.registered += 1
        return event_set if self.registered else None

    def _run(self) -> None:
        try:
            event_set = self._register()
            if event_set is None:
                return
            while not self._stop.is_set():
                data = self._nvml.call("nvmlEventSetWait_v2", event_set, self._wait_ms)
                if isinstance(data, NvmlFailure):
                    if data.code == ERROR_TIMEOUT:
                        continue
                    log.info("nvml_events_ended", code=data.code, reason=data.text)
                    return
                self._deliver(data)
        except Exception as exc:  # our bug: Xids are no longer watched, nothing else changes
            log.error("internal_error", where="nvml_events", error=type(exc).__name__, detail=str(exc)[:300],
                      action="Xid events no longer watched; Ollama keeps running")

    def _deliver(self, data: Any) -> None:
        """One event; its GPU is found by handle (a GPU that fell off the bus no longer answers for its UUID)."""
        index = next((i for i, h in self._nvml.handles if _address(h) == _address(data.device)), None)
        text = next((g.uuid for g in self._checker.gpus if g.index == index and g.uuid), None)
        if text is None:
            log.info("nvml_event_unattributed", event_type=int(data.eventType), data=int(data.eventData))
            return
        xid = int(data.eventData) if int(data.eventType) & EVENT_XID else 48  # a DBE event is Xid 48's fact
        for event in self._checker.xid(text, xid):
            if self._stop.is_set():
                return
            self._sink(event)

    @property
    def alive(self) -> bool:
        """Whether the thread is still in (or waiting on) NVML."""
        return self._thread.is_alive()

    def close(self, timeout: float = 2.0) -> None:
        """Stop waiting (within one wait)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
