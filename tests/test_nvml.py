"""NVML behind one choke point: a fake pynvml module drives every path (no GPU here); absent NVML is a fact."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from launcher.nvml import (
    INIT_PID_NS_INODE,
    GpuProcess,
    MemoryReading,
    Nvml,
    NvmlSampler,
    NvmlState,
    cuda_version_text,
    pids_comparable,
)


class FakeNVMLError(Exception):
    """pynvml's NVMLError: the return code in `value`."""

    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class FakeNvml:
    """A pynvml stand-in: one H100 by default; `fail` maps a function name to an NVML return code."""

    NVMLError = FakeNVMLError

    def __init__(self, fail: dict[str, int] | None = None, procs: list[Any] | None = None, used: int = 500 << 20):
        self.fail = fail or {}
        self.procs = procs if procs is not None else []
        self.used = used
        self.shutdown = 0

    def _check(self, name: str) -> None:
        if name in self.fail:
            raise FakeNVMLError(self.fail[name])

    def nvmlInit(self) -> None:
        self._check("nvmlInit")

    def nvmlShutdown(self) -> None:
        self.shutdown += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.159.04"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 13000

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"h{index}"

    def nvmlDeviceGetName(self, handle: str) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, handle: str) -> str:
        return "GPU-5f1c"

    def nvmlDeviceGetPciInfo(self, handle: str) -> Any:
        return SimpleNamespace(busId=b"00000000:00:06.0")

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:
        self._check("nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(total=85899345920, used=self.used, free=85899345920 - self.used)

    def nvmlDeviceGetCudaComputeCapability(self, handle: str) -> tuple[int, int]:
        return (9, 0)

    def nvmlDeviceGetMigMode(self, handle: str) -> list[int]:
        self._check("nvmlDeviceGetMigMode")
        return [0, 0]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[Any]:
        self._check("nvmlDeviceGetComputeRunningProcesses")
        return self.procs

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: str) -> list[Any]:
        self._check("nvmlDeviceGetGraphicsRunningProcesses")
        return []


class TestOpen:
    def test_reads_the_gpu_driver_and_cuda_version(self) -> None:
        """Every field the issue asks for comes back typed, names decoded from bytes."""
        state = Nvml(FakeNvml()).open()
        assert state.available and state.driver_version == "580.159.04" and state.cuda_version == "13.0"
        (gpu,) = state.gpus
        assert (gpu.index, gpu.uuid, gpu.name, gpu.pci_bus_id) == (0, "GPU-5f1c", "NVIDIA H100 80GB HBM3",
                                                                    "00000000:00:06.0")
        assert (gpu.compute_capability, gpu.mig_mode, gpu.memory_total) == ("9.0", False, 85899345920)

    def test_missing_library_is_a_fact(self) -> None:
        """NVML_ERROR_LIBRARY_NOT_FOUND is `available=False` with a reason, not an exception."""
        state = Nvml(FakeNvml(fail={"nvmlInit": 12})).open()
        assert not state.available and "libnvidia-ml" in state.reason and state.cause is None

    def test_version_mismatch_is_the_driver_library_mismatch_cause(self) -> None:
        """NVML_ERROR_LIB_RM_VERSION_MISMATCH names the cause driver_library_mismatch."""
        state = Nvml(FakeNvml(fail={"nvmlInit": 18})).open()
        assert (state.available, state.cause, state.code) == (False, "driver_library_mismatch", 18)

    def test_unsupported_field_is_none(self) -> None:
        """A device that cannot answer one query (MIG on a consumer card) still gives the rest."""
        (gpu,) = Nvml(FakeNvml(fail={"nvmlDeviceGetMigMode": 3})).open().gpus
        assert gpu.mig_mode is None and gpu.uuid == "GPU-5f1c"

    def test_no_pynvml_module_is_a_fact(self) -> None:
        """Without the binding installed, open() reports it."""
        def missing() -> Any:
            raise ImportError("No module named 'pynvml'")
        state = Nvml(load=missing).open()
        assert not state.available and "pynvml" in state.reason

    def test_real_binding_never_raises(self) -> None:
        """The installed pynvml on this machine (no driver in CI; an H100 on the device): a state, never a traceback."""
        nvml = Nvml()
        state = nvml.open()
        nvml.close()
        assert isinstance(state, NvmlState)
        assert state.available or state.reason  # unavailable always says why


class TestMemory:
    def test_processes_and_used_memory(self) -> None:
        """Per-GPU used bytes and compute processes with their memory (None when NVML does not say)."""
        procs = [SimpleNamespace(pid=4242, usedGpuMemory=1 << 30), SimpleNamespace(pid=4243, usedGpuMemory=None)]
        nvml = Nvml(FakeNvml(procs=procs, used=2 << 30))
        nvml.open()
        reading = nvml.read_memory()
        assert isinstance(reading, MemoryReading)
        assert reading.used == {0: 2 << 30}
        assert reading.processes == (GpuProcess(4242, 0, 1 << 30, "compute"), GpuProcess(4243, 0, None, "compute"))

    def test_graphics_list_not_supported_is_not_a_failure(self) -> None:
        """NOT_SUPPORTED for graphics processes (headless datacenter GPUs) leaves the compute list intact."""
        nvml = Nvml(FakeNvml(fail={"nvmlDeviceGetGraphicsRunningProcesses": 3},
                             procs=[SimpleNamespace(pid=1, usedGpuMemory=5)]))
        nvml.open()
        reading = nvml.read_memory()
        assert isinstance(reading, MemoryReading)
        assert reading.processes is not None and len(reading.processes) == 1


class TestPidNamespaces:
    def test_initial_namespace_pids_are_ours(self) -> None:
        """In the host's PID namespace NVML's pids are ours."""
        assert pids_comparable([], ns_inode=INIT_PID_NS_INODE)

    def test_container_namespace_pids_are_the_hosts(self) -> None:
        """In another PID namespace NVML reports host pids: attribute by per-GPU change instead."""
        assert not pids_comparable([GpuProcess(os.getpid(), 0, 1, "compute")], ns_inode=4026532999)

    def test_unreadable_namespace_falls_back_to_our_proc(self, tmp_path: Path) -> None:
        """When /proc/self/ns/pid cannot be read, pids that do not exist in our /proc are not ours."""
        (tmp_path / "4242").mkdir()
        assert pids_comparable([GpuProcess(4242, 0, 1, "compute")], proc_root=tmp_path)
        assert not pids_comparable([GpuProcess(4242, 0, 1, "compute"), GpuProcess(999999, 0, 1, "compute")],
                                   proc_root=tmp_path)


class TestSampler:
    def test_start_and_memory_events(self) -> None:
        """`gpus` at start, then `memory` samples with per-GPU used and per-process entries."""
        fake = FakeNvml(procs=[SimpleNamespace(pid=4242, usedGpuMemory=1 << 30)])
        sampler = NvmlSampler(Nvml(fake), clock=lambda: 7.0, ns_inode=INIT_PID_NS_INODE)
        (start,) = sampler.start()
        assert (start.source, start.kind, start.t) == ("nvml", "gpus", 7.0)
        assert start.data["gpus"][0]["uuid"] == "GPU-5f1c"
        (sample,) = sampler.sample()
        assert sample.kind == "memory" and sample.data["pids_comparable"] is True
        assert sample.data["processes"][0] == {"pid": 4242, "gpu": 0, "used": 1 << 30, "type": "compute"}
        sampler.close()
        assert fake.shutdown == 1

    def test_unavailable_nvml_gives_one_event_and_no_samples(self) -> None:
        """No libnvidia-ml: one `unavailable` event, then sampling is a no-op."""
        sampler = NvmlSampler(Nvml(FakeNvml(fail={"nvmlInit": 12})), clock=lambda: 1.0)
        (event,) = sampler.start()
        assert event.kind == "unavailable" and event.data["available"] is False
        assert sampler.sample() == []

    def test_lost_gpu_is_reported_once(self) -> None:
        """A GPU that falls off the bus mid-run: one `sample_failed`, then silence."""
        fake = FakeNvml()
        sampler = NvmlSampler(Nvml(fake), clock=lambda: 1.0, ns_inode=INIT_PID_NS_INODE)
        sampler.start()
        fake.fail["nvmlDeviceGetMemoryInfo"] = 15
        (event,) = sampler.sample()
        assert event.kind == "sample_failed"
        assert sampler.sample() == []

    def test_cuda_version_text(self) -> None:
        """NVML's 12040 is CUDA 12.4."""
        assert cuda_version_text(12040) == "12.4"
