"""The boot race (issue 16): at boot, Ollama can start before the NVIDIA driver is ready, find no GPU, and stay on
the CPU for its whole life. Before starting Ollama, wait up to OGPU_GPU_WAIT seconds for NVML to list a GPU — but
only on a machine that has NVIDIA hardware or a driver (an NVIDIA display/3D PCI function, /dev/nvidia* or
/proc/driver/nvidia): a CPU-only host is never delayed, and a machine whose GPU is ready is not delayed either.

Inside a container only the device nodes and /proc/driver/nvidia count (a container without the GPU runtime sees the
host's PCI devices and would wait for nothing). Reads, the NVML probe, the clock and the sleep are injected, so the
tests run on a fake clock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

NVIDIA_VENDOR: Final = "0x10de"
DISPLAY_CLASSES: Final = ("0x0300", "0x0302")  # VGA-compatible and 3D controllers (datacenter GPUs are 3D)
POLL: Final = 0.5


@dataclass(frozen=True, slots=True)
class Presence:
    """What says this machine has an NVIDIA GPU, whatever the driver's state."""

    pci: tuple[str, ...] = ()  # NVIDIA display/3D PCI functions (0000:01:00.0)
    nodes: bool = False  # /dev/nvidiactl or /dev/nvidia0
    driver: bool = False  # /proc/driver/nvidia/version

    @property
    def any(self) -> bool:
        """True when waiting for the driver can help."""
        return bool(self.pci) or self.nodes or self.driver


def presence(root: Path = Path("/"), container: bool = False) -> Presence:
    """Read /dev, /proc and /sys under `root`; unreadable entries are absent. A loaded driver with its device nodes
    costs three stat calls: the PCI scan, which only matters while the driver is missing, is skipped (`pci` is then
    empty). In a container the host's PCI devices are no evidence (a container without the GPU runtime sees them and
    never gets a driver): nodes and driver only."""
    nodes = (root / "dev" / "nvidiactl").exists() or (root / "dev" / "nvidia0").exists()
    driver = (root / "proc" / "driver" / "nvidia" / "version").exists()
    if (nodes and driver) or container:
        return Presence((), nodes, driver)
    return Presence(nvidia_functions(root), nodes, driver)


def nvidia_functions(root: Path = Path("/")) -> tuple[str, ...]:
    """The NVIDIA display/3D PCI functions under `root`/sys/bus/pci/devices (0000:01:00.0, ...)."""
    try:
        devices = sorted((root / "sys" / "bus" / "pci" / "devices").iterdir())
    except OSError:
        return ()
    pci = []
    for dev in devices:
        try:
            vendor = (dev / "vendor").read_text().strip()
            klass = (dev / "class").read_text().strip()
        except OSError:
            continue
        if vendor == NVIDIA_VENDOR and klass[:6] in DISPLAY_CLASSES:
            pci.append(dev.name)
    return tuple(pci)


@dataclass(frozen=True, slots=True)
class WaitResult:
    """How the wait went: `waited` seconds; `ready` when the driver is there; `skipped` says why no wait was needed."""

    ready: bool
    waited: float
    skipped: str = ""


def wait_for_gpu(timeout: float, look: Callable[[], Presence], nvml_ready: Callable[[], bool],
                 clock: Callable[[], float], sleep: Callable[[float], None],
                 on_wait: Callable[[Presence], None] = lambda _p: None) -> WaitResult:
    """Wait until the driver is loaded and its device nodes exist (then, only if we had to wait, until NVML lists a
    GPU), at most `timeout` seconds; `on_wait` hears what was seen when a wait begins. A machine that is ready at
    once costs a few stat calls and no NVML; one with no NVIDIA hardware or driver, or OGPU_GPU_WAIT=0, is not
    delayed at all."""
    first = look()
    if first.driver and first.nodes:
        return WaitResult(True, 0.0, "the driver is loaded")
    if timeout <= 0:
        return WaitResult(False, 0.0, "OGPU_GPU_WAIT=0")
    if not first.any:
        return WaitResult(False, 0.0, "no NVIDIA hardware or driver on this machine")
    on_wait(first)
    start = clock()
    while True:
        now = look()
        if now.driver and now.nodes and nvml_ready():
            return WaitResult(True, clock() - start)
        left = timeout - (clock() - start)
        if left <= 0:
            return WaitResult(False, clock() - start)
        sleep(min(POLL, left))


def nvml_probe(limit: float = 5.0) -> Callable[[], bool]:
    """Whether NVML lists a GPU, opened in a thread (a call stuck in the driver costs `limit` seconds, not the
    start)."""
    def probe() -> bool:
        answer: list[bool] = []

        def run() -> None:
            from launcher.nvml import Nvml

            nvml = Nvml()
            try:
                state = nvml.open()
                answer.append(state.available and bool(state.gpus))
            finally:
                nvml.close()

        thread = threading.Thread(target=run, name="ollama-gpu-wait", daemon=True)
        thread.start()
        thread.join(limit)
        return bool(answer and answer[0])

    return probe
