"""Healthy runs log no warning (issue 15 item 6): a verdict that is only "no evidence yet" is `pending` at debug level,
and warnings are kept for findings. Checked on `serve` in front of the simulator (GPU mock and CPU-only), on the real
fixtures' logs through `explain`, and on the same logs replayed through the serve path's controller."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from launcher import controller as controller_module
from launcher.config import load_settings
from launcher.controller import Controller
from launcher.directives import Directive, View
from launcher.environment import EnvPlan
from launcher.events import Event
from launcher.evidence import Verdict
from launcher.ollama_logs import parse_stream
from launcher.replaced import ReplacedFilter
from launcher.restarts import RemedyBudget
from launcher.supervisor import State
from launcher.verdict_log import is_pending
from tests.cli_helpers import REPO, assert_no_traceback, clean_env, run_cli
from tests.ollama_sim import native
from tests.test_evidence_live import nvml_gpus
from tests.test_serve_remedies import Run, discovery

FIXTURES = REPO.parent / "shared" / "fixtures"
HEALTHY_LOGS = {
    "ollama-real-gpu/healthy.server.log": "gpu",
    "ollama-real-cpu/cpu-basic.server.log": "cpu_expected",
}
LOUD = ("warning", "error", "critical")


def loud(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if str(e.get("level", "")).lower() in LOUD]


class TestServeOnTheSimulator:
    @pytest.mark.parametrize("generation", ["B", "C", "D"])
    def test_healthy_gpu_run_logs_no_warning(self, tmp_path: Path, libs: native.NativeLibs, cache_dir: Path,
                                             generation: str) -> None:
        """Start, discovery, a model runner on the GPU and a stop: not one warning; the early verdicts are
        `pending` at debug level."""
        run = Run(tmp_path, libs, cache_dir, generation=generation, OGPU_LOG_LEVEL="debug")
        try:
            run.ready()
            assert run.generate()["done"] is True
            run.wait_status(lambda s: discovery(s) == ("gpu", "none") and s["runners"]
                            and all(r["outcome"] == "gpu" for r in s["runners"]), "gpu runner")
        finally:
            assert run.stop() == 0
        events = run.serve.events()
        assert loud(events) == [], loud(events)
        pending = [e for e in events if e.get("event") == "verdict" and e.get("outcome") == "pending"]
        assert pending and all(e["level"] == "debug" for e in pending)

    def test_healthy_cpu_only_run_logs_no_warning(self, tmp_path: Path, libs: native.NativeLibs,
                                                  cache_dir: Path) -> None:
        """No driver and no device node anywhere: cpu_expected, and a model on the CPU, without a warning."""
        run = Run(tmp_path, libs, cache_dir, ld_library_path="")
        try:
            run.ready()
            assert run.generate()["done"] is True
            run.wait_status(lambda s: discovery(s) == ("cpu_expected", "none") and s["runners"]
                            and all(r["outcome"] == "cpu_expected" for r in s["runners"]), "cpu runner")
        finally:
            assert run.stop() == 0
        assert loud(run.serve.events()) == [], loud(run.serve.events())


@pytest.mark.parametrize("name", sorted(HEALTHY_LOGS))
def test_real_fixture_through_explain_is_quiet(tmp_path: Path, name: str) -> None:
    """`explain` of the real healthy logs: the right outcome, and no warning on stderr."""
    proc = run_cli(["--log-format", "json", "explain", str(FIXTURES / name), "--json"], clean_env(tmp_path))
    assert_no_traceback(proc.stderr)
    assert json.loads(proc.stdout)["outcome"] == HEALTHY_LOGS[name]
    lines = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
    assert loud(lines) == [] and "warning" not in proc.stderr.lower()


@dataclass
class Logged:
    """A structlog-like logger that keeps (level, event, fields)."""

    lines: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.lines.append((level, event, kw))


@pytest.mark.parametrize("name", sorted(HEALTHY_LOGS))
def test_real_fixture_replayed_through_the_controller_is_quiet(tmp_path: Path, name: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The real log, line by line, through the controller `serve` uses (board, verdicts, policy): pending first,
    then the healthy verdict, nothing logged at warning, and nothing restarts."""
    monkeypatch.setattr(controller_module, "JUDGE_INTERVAL", 0.0)  # judge after every line, as a slow stream is
    settings = load_settings(clean_env(tmp_path), [])
    logged = Logged()
    controller = Controller(settings=settings, budget=RemedyBudget(tmp_path / "state.json", 3), log=logged)
    view = View(state=State.RUNNING, plan=EnvPlan(argv=("ollama", "serve"), env={}), ollama_pid=100, version="",
                restarts=0, crash_recent=0, crash_max=5, runner_alive=False)
    directives: list[Directive] = []
    gpu = HEALTHY_LOGS[name] == "gpu"
    controller.sink(Event("supervisor", "machine", 0.0, None, {
        "device_nodes": ["nvidia0", "nvidiactl", "nvidia-uvm"] if gpu else [],
        "driver_dir": "/usr/lib/x86_64-linux-gnu" if gpu else None, "loader_path": None}))
    controller.sink(Event("supervisor", "ollama_started", 0.0, 100, {}))
    if gpu:  # NVML's reading of the H100 the log was recorded on: the live tier's second source
        controller.sink(nvml_gpus())
    with open(FIXTURES / name, "rb") as stream:
        for event in parse_stream(stream):
            controller.sink(event)
            directives += controller.tick(view, event.t)
    assert [x for x in logged.lines if x[0] in LOUD] == []
    assert directives == []  # no restart, no failure
    verdicts = [kw for level, event, kw in logged.lines if event == "verdict"]
    assert verdicts[0]["outcome"] == "pending" and verdicts[-1]["outcome"] == HEALTHY_LOGS[name]


def test_pending_is_only_for_no_evidence_yet() -> None:
    """unknown/unknown without a finding is pending; a disagreement or a named cause is not."""
    assert is_pending(Verdict("unknown", "unknown", visible=False))
    assert not is_pending(Verdict("unknown", "unknown", disagreement=("log says gpu / shim says cpu",)))
    assert not is_pending(Verdict("unknown", "libcuda_not_found"))
    assert not is_pending(Verdict("gpu", "none"))


class TestReplacedOllama:
    def test_messages_sent_before_the_current_start_are_dropped(self) -> None:
        """A shim message sent (t_ns) before the current Ollama started is from a replaced one: dropped, and its
        connection's end too; messages sent after, and every other source, pass."""
        f = ReplacedFilter()
        old = Event("shim", "cu_init", 10.5, 300, {"t_ns": 9_000_000_000, "conn": 7, "result": 100})
        assert f.keep(old)  # no Ollama start seen yet: nothing to compare with
        assert f.keep(Event("supervisor", "ollama_started", 10.0, 100, {}))
        assert not f.keep(old)
        assert not f.keep(Event("shim", "process_end", 10.6, 300, {"conn": 7}))
        assert f.keep(Event("shim", "cu_init", 10.7, 301, {"t_ns": 10_100_000_000, "conn": 8, "result": 0}))
        assert f.keep(Event("shim", "process_end", 10.8, 301, {"conn": 8}))
        assert f.keep(Event("log", "offload", 10.9, None, {}))
        assert f.dropped == 2

    def test_remedy_restart_gives_no_transient_advice(self, tmp_path: Path, libs: native.NativeLibs,
                                                      cache_dir: Path) -> None:
        """CUDA_VISIBLE_DEVICES=-1 listed in OGPU_MAY_OVERRIDE: the only warning is the remedy itself; the old
        Ollama's late shim messages raise no `device_filter_hides_gpu` verdict or advice after the restart."""
        run = Run(tmp_path, libs, cache_dir, flags=("--may-override", "CUDA_VISIBLE_DEVICES"),
                  CUDA_VISIBLE_DEVICES="-1")
        try:
            run.ready()
            run.wait_status(lambda s: discovery(s) == ("gpu", "none") and s["restarts"] == 1, "gpu after remedy")
            assert run.generate()["done"] is True
            run.wait_status(lambda s: s["runners"] and s["runners"][-1]["outcome"] == "gpu", "gpu runner")
        finally:
            assert run.stop() == 0
        events = run.serve.events()
        assert [e["event"] for e in loud(events)] == ["remedy"], loud(events)
        assert not [e for e in events if e.get("cause") == "device_filter_hides_gpu"]
