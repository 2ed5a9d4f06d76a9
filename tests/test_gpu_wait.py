"""Issue 16, boot race: wait for the NVIDIA driver before starting Ollama, on a fake clock; never on a CPU-only host,
never when the driver is already there, never when OGPU_GPU_WAIT=0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from launcher.gpu_wait import Presence, presence, wait_for_gpu

HARDWARE = Presence(pci=("0000:01:00.0",))
LOADED = Presence(pci=("0000:01:00.0",), nodes=True, driver=True)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def never() -> bool:
    raise AssertionError("NVML must not be probed")


class TestWaitForGpu:
    def test_a_cpu_only_host_is_not_delayed(self) -> None:
        """No NVIDIA PCI function, no nodes, no driver: no wait, no sleep, no NVML."""
        clock = FakeClock()
        result = wait_for_gpu(30, Presence, never, clock, clock.sleep)
        assert not result.ready and result.waited == 0 and clock.sleeps == [] and "no NVIDIA" in result.skipped

    def test_a_ready_driver_costs_no_wait_and_no_nvml(self) -> None:
        """Driver loaded, nodes present: ready at once, NVML not opened."""
        clock = FakeClock()
        result = wait_for_gpu(30, lambda: LOADED, never, clock, clock.sleep)
        assert result.ready and clock.sleeps == []

    def test_zero_means_no_wait(self) -> None:
        """OGPU_GPU_WAIT=0 with hardware but no driver: start at once."""
        clock = FakeClock()
        assert wait_for_gpu(0, lambda: HARDWARE, never, clock, clock.sleep).skipped == "OGPU_GPU_WAIT=0"
        assert clock.sleeps == []

    def test_the_driver_arrives_during_the_wait(self) -> None:
        """Hardware first, the driver 3 s later, NVML answering a second after that: ready after 4 s."""
        clock = FakeClock()
        start = clock.t

        def look() -> Presence:
            return LOADED if clock.t - start >= 3 else HARDWARE

        seen: list[Presence] = []
        result = wait_for_gpu(30, look, lambda: clock.t - start >= 4, clock, clock.sleep, on_wait=seen.append)
        assert result.ready and result.waited == 4.0 and seen == [HARDWARE]

    def test_the_wait_is_bounded(self) -> None:
        """A driver that never comes: give up after the timeout, not a poll later."""
        clock = FakeClock()
        result = wait_for_gpu(2.2, lambda: HARDWARE, never, clock, clock.sleep)
        assert not result.ready and abs(result.waited - 2.2) < 1e-9 and max(clock.sleeps) <= 0.5


class TestPresence:
    def test_reads_pci_nodes_and_driver(self, tmp_path: Path) -> None:
        """An NVIDIA 3D controller, an Intel VGA and an NVIDIA audio function: only the first counts."""
        for name, vendor, klass in (("0000:01:00.0", "0x10de", "0x030200"), ("0000:00:02.0", "0x8086", "0x030000"),
                                    ("0000:01:00.1", "0x10de", "0x040300")):
            d = tmp_path / "sys" / "bus" / "pci" / "devices" / name
            d.mkdir(parents=True)
            (d / "vendor").write_text(vendor + "\n")
            (d / "class").write_text(klass + "\n")
        assert presence(tmp_path) == Presence(pci=("0000:01:00.0",))
        (tmp_path / "dev").mkdir()
        (tmp_path / "dev" / "nvidiactl").touch()
        assert presence(tmp_path) == Presence(pci=("0000:01:00.0",), nodes=True)  # the driver is still missing
        (tmp_path / "proc" / "driver" / "nvidia").mkdir(parents=True)
        (tmp_path / "proc" / "driver" / "nvidia" / "version").write_text("NVRM version: 580.65.06\n")
        assert presence(tmp_path) == Presence(nodes=True, driver=True)  # loaded: no PCI scan

    def test_a_loaded_driver_costs_stat_calls_only(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Driver and nodes there: /sys/bus/pci is never listed nor read, whatever it holds (the fast path of
        every start and of every health check that looks)."""
        d = tmp_path / "sys" / "bus" / "pci" / "devices" / "0000:01:00.0"
        d.mkdir(parents=True)
        (d / "vendor").write_text("0x10de\n")
        (d / "class").write_text("0x030200\n")
        (tmp_path / "dev").mkdir()
        (tmp_path / "dev" / "nvidia0").touch()
        (tmp_path / "proc" / "driver" / "nvidia").mkdir(parents=True)
        (tmp_path / "proc" / "driver" / "nvidia" / "version").touch()
        listed: list[Path] = []
        iterdir = Path.iterdir

        def spy(self: Path) -> Any:
            listed.append(self)
            return iterdir(self)

        monkeypatch.setattr(Path, "iterdir", spy)
        monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: pytest.fail(f"read {self}"))
        assert presence(tmp_path) == Presence(nodes=True, driver=True) and listed == []
        assert presence(tmp_path).any

    def test_in_a_container_the_hosts_pci_devices_do_not_count(self, tmp_path: Path) -> None:
        """A container without the GPU runtime sees the host's GPU on PCI: no reason to wait."""
        d = tmp_path / "sys" / "bus" / "pci" / "devices" / "0000:01:00.0"
        d.mkdir(parents=True)
        (d / "vendor").write_text("0x10de\n")
        (d / "class").write_text("0x030200\n")
        assert not presence(tmp_path, container=True).any

    def test_an_empty_root_is_nothing(self, tmp_path: Path) -> None:
        """Nothing readable: no evidence, no exception."""
        assert presence(tmp_path / "missing") == Presence()
