"""The controller returns decisions as data and keeps bounded memory however long Ollama runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.config import load_settings
from launcher.controller import MAX_DECISIONS, MAX_RUNNERS, Controller
from launcher.directives import RestartWith, View
from launcher.events import Event
from launcher.lifecycle import State
from launcher.restarts import RemedyBudget
from tests.supervisor_fakes import PLAN, RecordingLog
from tests.test_evidence_live import cuda_ok, nvml_gpus, runner, started


def controller(tmp_path: Path) -> Controller:
    settings = load_settings({"HOME": str(tmp_path), "OGPU_SYSTEM_CONFIG": str(tmp_path / "none")}, uid=1000)
    return Controller(settings=settings, budget=RemedyBudget(tmp_path / "state.json", 3), log=RecordingLog())


def view() -> View:
    return View(state=State.RUNNING, plan=PLAN, ollama_pid=100, version="0.32.15", restarts=0, crash_recent=0,
                crash_max=5, runner_alive=False)


class TestBounds:
    def test_a_hundred_runners_keep_the_maps_small(self, tmp_path: Path) -> None:
        """A long-lived server loads 100 models one after another: per-runner entries, decisions and the status
        list stay within their bounds, and the newest runner is still judged."""
        c = controller(tmp_path)
        for event in (started(), nvml_gpus()):
            c.sink(event)
        t = 0.0
        for i in range(100):
            pid = 1000 + i
            for event in (*runner(pid, 10_000 + i), *cuda_ok(pid, 10_000 + i)):
                c.sink(event)
            t += 1.0
            c.tick(view(), t)
        assert len(c._seen) <= MAX_RUNNERS + 1 and len(c._decided) <= MAX_RUNNERS + 1
        assert len(c.decisions) <= MAX_DECISIONS
        assert "runner 1099" in c._seen
        status = c.status(view())
        assert len(status["runners"]) <= MAX_RUNNERS
        assert status["runners"][-1]["pid"] == 1099

    def test_decisions_come_back_as_data(self, tmp_path: Path) -> None:
        """tick() returns directives and calls nothing on the supervisor (it has none to call)."""
        c = controller(tmp_path)
        for event in (started(), nvml_gpus(), *runner(200, 5000), *cuda_ok(200, 5000)):
            c.sink(event)
        assert c.tick(view(), 1.0) == []  # a healthy GPU run: nothing to do
        assert c.verdicts is not None and c.verdicts.discovery.outcome in ("gpu", "unknown")


class TestLateGpu:
    """Issue 16, boot race after start: Ollama discovered no GPU, NVML lists healthy GPUs later."""

    def events(self, appeared: bool = True) -> list[Event]:
        from tests.test_evidence_live import fixture_log, nvml_absent

        out = [started(), nvml_absent(), *fixture_log("ollama-real-cpu/cpu-basic.server.log")]
        if appeared:
            out += [nvml_gpus(), Event("nvml", "gpu_health", 1.0, None, {"gpus": [
                {"index": 0, "uuid": "GPU-a", "state": "ok"}]})]
        return out

    def run(self, c: Controller, events: list[Event]) -> list[Any]:
        out: list[Any] = []
        t = 0.0
        for event in events:
            c.sink(event)
            t += 10.0
            out += c.tick(view(), t)
        return out

    def test_restart_once_when_idle(self, tmp_path: Path) -> None:
        """One restart when idle, recorded in the budget; more health events change nothing."""
        c = controller(tmp_path)
        c.boot_id = "boot-1"
        restarts = [d for d in self.run(c, self.events()) if isinstance(d, RestartWith)]
        assert [(d.immediately, d.plan) for d in restarts] == [(False, PLAN)]
        assert c.budget.summary()["used"] == 1
        assert self.run(c, [Event("nvml", "gpu_health", 9.0, None, {"gpus": [{"index": 0, "uuid": "GPU-a",
                                                                               "state": "ok"}]})]) == []

    def test_not_again_in_the_same_boot(self, tmp_path: Path) -> None:
        """A new supervisor (systemd restart) in the same boot, same state file: no second restart."""
        first = controller(tmp_path)
        first.boot_id = "boot-1"
        self.run(first, self.events())
        again = controller(tmp_path)
        again.budget = RemedyBudget.load(tmp_path / "state.json", 3)
        again.boot_id = "boot-1"
        assert not [d for d in self.run(again, self.events()) if isinstance(d, RestartWith)]

    def test_nothing_when_nvml_was_there_from_the_start(self, tmp_path: Path) -> None:
        """A CPU discovery with NVML available from the start is not a late GPU."""
        from tests.test_evidence_live import fixture_log

        c = controller(tmp_path)
        events = [started(), nvml_gpus(), *fixture_log("ollama-real-cpu/cpu-basic.server.log")]
        reasons = [d.reason for d in self.run(c, events) if isinstance(d, RestartWith)]
        assert not [r for r in reasons if "became available" in r] and not c.health.gpus_appeared

    def test_advise_mode_advises(self, tmp_path: Path) -> None:
        """OGPU_MODE=advise: the advice, never a restart."""
        settings = load_settings({"HOME": str(tmp_path), "OGPU_SYSTEM_CONFIG": str(tmp_path / "none"),
                                  "OGPU_MODE": "advise"}, uid=1000)
        c = Controller(settings=settings, budget=RemedyBudget(tmp_path / "s.json", 3), log=RecordingLog())
        assert not [d for d in self.run(c, self.events()) if isinstance(d, RestartWith)]
        assert ("discovery", "gpu_appeared") in c.advised
