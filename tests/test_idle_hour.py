"""Issue 16 acceptance: "a healthy resume/idle hour produces no remedy, no restart and no warning". An hour on a
fake clock: the NVML thread's work (a memory sample every second, a health check every 5 s, against the mock NVML
library) and a model runner on the GPU, fed to the real controller, with a healthy suspend/resume at minute 30
(BOOTTIME jumps 10 minutes, the CUDA probe says ok). Nothing but the first health reading and the resume's own
events may come out of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog

from launcher.events import Event
from launcher.nvml import Nvml, NvmlSampler
from launcher.resume import ResumeWatch
from tests.nvml_double import NvmlScript, mock_pynvml
from tests.test_controller import controller, view
from tests.test_evidence_live import cuda_ok, runner, started

HOUR = 3600
CHECK_EVERY = 5  # the default OGPU_HEALTH_INTERVAL


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NvmlScript:
    monkeypatch.setenv("MOCKNVML_STATE", str(tmp_path / "nvml.state"))
    s = NvmlScript(tmp_path / "nvml.state")
    s.set(count=1)
    return s


def test_a_healthy_hour_with_a_resume_does_nothing(tmp_path: Path, script: NvmlScript) -> None:
    clock, gap = Clock(), Clock()
    gap.t = 12.0
    probes: list[Event] = []

    def probe() -> Event:  # what resume_probe.cuda_probe_event gives on a healthy driver
        probes.append(Event("supervisor", "cuda_probe", clock(), None, {
            "after": "resume", "exit": 0, "ok": True, "cu_init": 0, "devices": 1, "cause": None, "error": None,
            "shim": None, "shim_cu_init": [0]}))
        return probes[-1]

    sampler = NvmlSampler(nvml=Nvml(mock_pynvml()), clock=clock, ns_inode=1, resume=ResumeWatch(gap),
                          cuda_probe=probe)
    c = controller(tmp_path)
    directives: list[Any] = []
    kinds: list[str] = []

    def feed(events: list[Event]) -> None:
        for e in events:
            kinds.append(e.kind)
            c.sink(e)

    with structlog.testing.capture_logs() as logs:
        feed([started(), *sampler.start(), *runner(200, 5000), *cuda_ok(200, 5000)])
        for second in range(HOUR):
            clock.t = float(second)
            if second == HOUR // 2:
                gap.t += 600.0  # the host slept ten minutes; CLOCK_MONOTONIC did not count them
            feed(sampler.sample())
            if second % CHECK_EVERY == 0:
                feed(sampler.health())
            directives += c.tick(view(), clock.t)
    sampler.close()
    assert directives == []
    assert kinds.count("memory") == HOUR
    assert kinds.count("gpu_health") == 2  # the first reading, and the one forced after the resume (both ok)
    assert kinds.count("resumed") == 1 and len(probes) == 1
    warned = [(entry["log_level"], entry["event"]) for entry in logs if entry["log_level"] in ("warning", "error")]
    warned += [(level, event) for level, event, _kw in c.log.lines if level in ("warning", "error")]
    assert warned == []
    status = c.status(view())
    assert status["gpu_health"]["state"] == "ok" and status["gpu_health"]["advice"] == []
    assert status["remedies"]["applied"] == [] and status["remedies"]["advised"] == []
    assert status["remedies"]["budget"]["used"] == 0
    # one source (the shim) shows the runner on the GPU: pending, never a fallback, however long the hour
    assert [(r["outcome"], r["cause"], r["signals"]) for r in status["runners"]] == [("unknown", "unknown",
                                                                                        ["shim:gpu"])]
