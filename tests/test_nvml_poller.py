"""NVML is sampled in its own thread: its events reach the sink, and a call that hangs in the driver holds only
that thread (close() returns, NVML is left to the process exit)."""

from __future__ import annotations

import threading
from typing import Any, cast

from launcher.events import Event
from launcher.nvml_poller import NvmlPoller
from tests.serve_helpers import wait_for


class FakeSampler:
    def __init__(self, hang: threading.Event | None = None, fail: bool = False) -> None:
        self.state: Any = None
        self.samples = 0
        self.closed = False
        self.hang = hang
        self.fail = fail

    def start(self) -> list[Event]:
        self.state = "open"
        return [Event("nvml", "gpus", 0.0, None, {"gpus": []})]

    def sample(self) -> list[Event]:
        self.samples += 1
        if self.fail:
            raise RuntimeError("NVML_ERROR_UNKNOWN")
        if self.hang is not None:
            self.hang.wait()
        return [Event("nvml", "memory", 0.0, None, {"gpus": []})]

    def close(self) -> None:
        self.closed = True


class TestNvmlPoller:
    def test_events_reach_the_sink_and_close_shuts_nvml(self) -> None:
        """The machine's GPUs first, then a memory sample per interval; close() stops and shuts NVML down."""
        sampler, got = FakeSampler(), []
        poller = NvmlPoller(cast(Any, sampler), got.append, interval=0.01).start()
        wait_for(lambda: len(got) >= 3, what="samples")
        poller.close()
        assert [e.kind for e in got[:3]] == ["gpus", "memory", "memory"]
        assert sampler.closed and poller.state == "open"

    def test_a_hung_call_does_not_hold_close(self) -> None:
        """A sample stuck in the driver: close() returns after its timeout and leaves NVML alone (no shutdown
        under a call in flight)."""
        hang = threading.Event()
        sampler = FakeSampler(hang=hang)
        poller = NvmlPoller(cast(Any, sampler), lambda _e: None, interval=0.01).start()
        wait_for(lambda: sampler.samples >= 1, what="the hung sample")
        poller.close(timeout=0.1)
        assert not sampler.closed
        hang.set()

    def test_a_failing_sampler_is_logged_not_raised(self) -> None:
        """Our bug in sampling ends the sampling, nothing else."""
        sampler, got = FakeSampler(fail=True), []
        poller = NvmlPoller(cast(Any, sampler), got.append, interval=0.01).start()
        wait_for(lambda: sampler.samples >= 1, what="the failing sample")
        poller.close()
        assert [e.kind for e in got] == ["gpus"] and sampler.closed


class HealthSampler(FakeSampler):
    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    def health(self) -> list[Event]:
        self.checks += 1
        return [Event("nvml", "gpu_health", 0.0, None, {"gpus": []})] if self.checks == 1 else []


class TestHealthChecks:
    def test_health_runs_every_n_samples_in_the_thread(self) -> None:
        """Issue 16: one check right after NVML opens, then one every `health_every` samples; only changes are
        handed on."""
        sampler, got = HealthSampler(), []
        poller = NvmlPoller(cast(Any, sampler), got.append, interval=0.01, health_every=3).start()
        wait_for(lambda: sampler.samples >= 9, what="nine samples")
        poller.close()
        assert sampler.checks >= 3 and sampler.checks <= sampler.samples // 3 + 2
        assert [e.kind for e in got].count("gpu_health") == 1

    def test_no_health_checks_unless_asked(self) -> None:
        """health_every=0 (the default): the sampler's health() is never called."""
        sampler = HealthSampler()
        poller = NvmlPoller(cast(Any, sampler), lambda _e: None, interval=0.01).start()
        wait_for(lambda: sampler.samples >= 3, what="three samples")
        poller.close()
        assert sampler.checks == 0


class BrokenHealth(FakeSampler):
    def health(self) -> list[Event]:
        raise RuntimeError("bug in the health check")


def test_a_broken_health_check_leaves_memory_sampling_alone() -> None:
    """Our bug in the health check stops health checks, not the memory samples."""
    sampler, got = BrokenHealth(), []
    poller = NvmlPoller(cast(Any, sampler), got.append, interval=0.01, health_every=1).start()
    wait_for(lambda: sampler.samples >= 5, what="samples after the broken check")
    poller.close()
    assert [e.kind for e in got].count("memory") >= 4


class ReloadingSampler(FakeSampler):
    """A sampler whose nvidia_uvm reload records the key and the thread it ran in."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.reloads: list[tuple[str, str]] = []
        self.reload_fails = fail

    def reload_uvm(self, key: str) -> list[Event]:
        self.reloads.append((key, threading.current_thread().name))
        if self.reload_fails:
            raise RuntimeError("our bug")
        return [Event("supervisor", "uvm_reload", 0.0, None, {"key": key, "outcome": "held"})]


class TestUvmReloadRequest:
    def test_a_request_runs_once_in_the_nvml_thread(self) -> None:
        """request_uvm_reload from another thread: the reload runs once, in the NVML thread, its events reach the
        sink."""
        sampler, got = ReloadingSampler(), []
        poller = NvmlPoller(cast(Any, sampler), got.append, interval=0.01).start()
        poller.request_uvm_reload("boot@100")
        wait_for(lambda: [e for e in got if e.kind == "uvm_reload"], what="the reload's event")
        wait_for(lambda: sampler.samples >= 5, what="more ticks")
        poller.close()
        assert sampler.reloads == [("boot@100", "ollama-gpu-nvml")]

    def test_our_bug_in_a_reload_ends_only_the_reload(self) -> None:
        """A reload that raises is logged; sampling goes on."""
        sampler = ReloadingSampler(fail=True)
        poller = NvmlPoller(cast(Any, sampler), lambda _e: None, interval=0.01).start()
        poller.request_uvm_reload("k")
        wait_for(lambda: sampler.reloads, what="the reload")
        before = sampler.samples
        wait_for(lambda: sampler.samples >= before + 3, what="sampling after the failure")
        poller.close()
