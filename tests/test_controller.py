"""The controller returns decisions as data and keeps bounded memory however long Ollama runs."""

from __future__ import annotations

from pathlib import Path

from launcher.config import load_settings
from launcher.controller import MAX_DECISIONS, MAX_RUNNERS, Controller
from launcher.directives import View
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
