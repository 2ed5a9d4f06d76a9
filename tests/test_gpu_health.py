"""Issue 16: per-GPU health after start, against the mock NVML library (healthy, lost and back, driver/library
mismatch, revoked container access, a GPU gone, double-bit ECC, Xids through NVML's event set), and the supervisor's
fold of it (status per GPU, advice, readiness inside a container)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from launcher.events import Event
from launcher.gpu_health import HealthChecker, XidWatcher, judge
from launcher.health_board import HealthBoard, in_container
from launcher.nvml import Nvml, NvmlFailure, NvmlSampler
from tests.nvml_double import NvmlScript, mock_pynvml
from tests.serve_helpers import wait_for

UUID0 = "GPU-6d6f636b-1000-2000-3000-000000400000"
UUID1 = "GPU-6d6f636c-1001-2000-3000-000000400001"


@pytest.fixture
def script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NvmlScript:
    """Two healthy GPUs until the test says otherwise."""
    path = tmp_path / "nvml.state"
    monkeypatch.setenv("MOCKNVML_STATE", str(path))
    s = NvmlScript(path)
    s.set(count=2)
    return s


@pytest.fixture
def sampler(script: NvmlScript) -> Any:
    s = NvmlSampler(nvml=Nvml(mock_pynvml()), clock=lambda: 1.0, ns_inode=1)
    assert [e.kind for e in s.start()] == ["gpus"]
    yield s
    s.close()


def states(events: list[Event]) -> list[str]:
    [health] = [e for e in events if e.kind == "gpu_health"]
    return [g["state"] for g in health.data["gpus"]]


class TestMockNvml:
    def test_the_mock_is_what_pynvml_reads(self, sampler: Any) -> None:
        """Two H100s with the mock libcuda's UUIDs, driver 580.65.06, through the real pynvml binding."""
        assert sampler.state.driver_version == "580.65.06"
        assert [g.uuid for g in sampler.state.gpus] == [UUID0, UUID1]

    def test_version_mismatch_at_init_is_the_existing_cause(self, script: NvmlScript) -> None:
        """init=18: NVML is unavailable with cause driver_library_mismatch (the row start-up already knows)."""
        script.set(init=18)
        state = Nvml(mock_pynvml()).open()
        assert not state.available and state.cause == "driver_library_mismatch" and state.code == 18


class TestHealthCheck:
    def test_a_healthy_idle_produces_one_event_then_nothing(self, sampler: Any) -> None:
        """The first check reports every GPU ok; a hundred more checks on a healthy machine produce nothing."""
        assert states(sampler.health()) == ["ok", "ok"]
        assert all(sampler.health() == [] for _ in range(100))

    def test_lost_then_back(self, script: NvmlScript, sampler: Any) -> None:
        """GPU 1 falls off the bus (NVML_ERROR_GPU_IS_LOST), memory sampling stops; it comes back and sampling
        resumes."""
        sampler.health()
        script.set(count=2, gpu1=15)
        assert states(sampler.health()) == ["ok", "lost"]
        assert [e.kind for e in sampler.sample()] == ["sample_failed"] and sampler.failed
        script.set(count=2)
        assert states(sampler.health()) == ["ok", "ok"]
        assert not sampler.failed and [e.kind for e in sampler.sample()] == ["memory"]

    @pytest.mark.parametrize(("keys", "expected"), [
        ({"all": 18}, ["driver_mismatch", "driver_mismatch"]),
        ({"all": 999}, ["access_denied", "access_denied"]),
        ({"absent1": 1}, ["ok", "absent"]),
        ({"ecc0": 2}, ["degraded", "ok"]),
    ])
    def test_each_failure_is_its_state(self, script: NvmlScript, sampler: Any, keys: dict[str, int],
                                       expected: list[str]) -> None:
        """Version mismatch (18), "Unknown Error" (999), a UUID no longer enumerated, double-bit ECC."""
        sampler.health()
        script.set(count=2, **keys)
        assert states(sampler.health()) == expected

    def test_an_application_xid_changes_nothing(self) -> None:
        """Xid 13 (a bad kernel) is not a bad GPU; Xid 48 degrades; Xid 79 is lost."""
        assert judge(0, UUID0, None, 0, [13]).state == "ok"
        assert judge(0, UUID0, None, 0, [13, 48]).state == "degraded"
        assert judge(0, UUID0, None, 0, [48, 79]).state == "lost"
        assert judge(0, UUID0, NvmlFailure(42, "odd"), None, []).state == "degraded"


class TestXidEvents:
    def test_xid_79_through_the_event_set(self, script: NvmlScript, sampler: Any) -> None:
        """Xids registered through nvmlEventSetCreate/nvmlDeviceRegisterEvents arrive from nvmlEventSetWait_v2
        as `xid` events, and Xid 79 marks its GPU lost."""
        sampler.health()
        got: list[Event] = []
        watcher = XidWatcher(sampler.nvml, sampler.checker, got.append, wait_ms=20).start()
        try:
            script.set(count=2, xids="1:13,1:79")
            wait_for(lambda: len([e for e in got if e.kind == "xid"]) == 2, what="two xid events")
        finally:
            watcher.close()
        assert watcher.registered == 2
        assert [(e.data["index"], e.data["xid"]) for e in got if e.kind == "xid"] == [(1, 13), (1, 79)]
        assert states([e for e in got if e.kind == "gpu_health"][-1:]) == ["ok", "lost"]

    def test_events_not_supported_ends_quietly(self, script: NvmlScript, sampler: Any) -> None:
        """A GPU without event support: nothing registered, the thread ends, no event."""
        script.set(count=2, events=3)
        sampler.health()
        got: list[Event] = []
        watcher = XidWatcher(sampler.nvml, sampler.checker, got.append, wait_ms=20).start()
        wait_for(lambda: not watcher.alive, what="the watcher to end")
        assert watcher.registered == 0 and got == []


def health_event(*gpus: tuple[int, str, str]) -> Event:
    return Event("nvml", "gpu_health", 1.0, None, {"gpus": [
        {"index": i, "uuid": u, "state": s, "reason": "r", "code": None, "ecc_dbe": None, "xids": []}
        for i, u, s in gpus]})


class TestHealthBoard:
    def test_healthy_says_nothing(self) -> None:
        """All ok: no advice, not degraded, readiness unaffected even in a container."""
        board = HealthBoard(in_container=True)
        board.add(health_event((0, UUID0, "ok")))
        assert board.advice() == [] and board.readiness_failure() is None and board.to_dict()["degraded"] is False

    def test_a_lost_gpu_among_others_advises_excluding_it(self) -> None:
        """One GPU lost, one left: the advice names the lost one and says to exclude it."""
        board = HealthBoard()
        board.add(health_event((0, UUID0, "ok"), (1, UUID1, "lost")))
        [line] = board.advice()
        assert "GPU 1" in line and "CUDA_VISIBLE_DEVICES" in line and board.state == "lost"

    def test_driver_mismatch_advises_reboot_and_keeps_readiness(self) -> None:
        """driver_mismatch: advice to reboot or reload the modules, readiness stays up."""
        board = HealthBoard(in_container=True)
        board.add(health_event((0, UUID0, "driver_mismatch")))
        assert "reboot" in board.advice()[0] and board.readiness_failure() is None

    def test_revoked_access_fails_readiness_only_in_a_container(self) -> None:
        """access_denied: readiness fails with the reason inside a container; outside one it is advised only."""
        inside, outside = HealthBoard(in_container=True), HealthBoard(in_container=False)
        for board in (inside, outside):
            board.add(health_event((0, UUID0, "access_denied")))
        assert "restart the container" in (inside.readiness_failure() or "")
        assert outside.readiness_failure() is None and "container" in outside.advice()[0]

    def test_xids_are_counted_per_gpu(self) -> None:
        """Two Xid 79 on GPU 1 are one row with count 2."""
        board = HealthBoard()
        for _ in range(2):
            board.add(Event("nvml", "xid", 1.0, None, {"index": 1, "uuid": UUID1, "xid": 79, "critical": True}))
        assert board.to_dict()["xids"] == [{"gpu": 1, "xid": 79, "count": 2}]

    def test_bad_event_data_is_ignored(self) -> None:
        """A malformed health event never raises."""
        board = HealthBoard()
        assert board.add(Event("nvml", "gpu_health", 1.0, None, {"gpus": "nope"}))
        assert board.add(Event("nvml", "xid", 1.0, None, {"index": "x"}))
        assert board.state is None


class TestInContainer:
    @pytest.mark.parametrize("marker", [".dockerenv", "run/.containerenv"])
    def test_marker_files(self, tmp_path: Path, marker: str) -> None:
        """Docker's and Podman's marker files."""
        (tmp_path / marker).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / marker).touch()
        assert in_container({}, str(tmp_path))

    def test_kubernetes_and_cgroup(self, tmp_path: Path) -> None:
        """KUBERNETES_SERVICE_HOST, or a runtime in PID 1's cgroup; a bare host is not a container."""
        assert not in_container({}, str(tmp_path))
        assert in_container({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, str(tmp_path))
        (tmp_path / "proc" / "1").mkdir(parents=True)
        (tmp_path / "proc" / "1" / "cgroup").write_text("0::/system.slice/docker-abc.scope\n")
        assert in_container({}, str(tmp_path))


def test_checker_skips_a_gpu_without_uuid() -> None:
    """A GPU NVML could not name is not checked (nothing to look it up by)."""
    from launcher.nvml import Gpu

    checker = HealthChecker(Nvml(object()), [Gpu(0, None, None, None, None, None, None, None)])
    assert states(checker.check()) == []


class TestReopen:
    def test_nvml_that_comes_up_late_is_opened_at_a_health_check(self, script: NvmlScript) -> None:
        """Driver not loaded at start (9): with reopen (NVIDIA hardware present) the health check opens NVML once it
        answers, hands the machine's GPUs and their health; without reopen it stays closed."""
        script.set(init=9)
        late = NvmlSampler(nvml=Nvml(mock_pynvml()), clock=lambda: 1.0, ns_inode=1, reopen=True)
        never = NvmlSampler(nvml=Nvml(mock_pynvml()), clock=lambda: 1.0, ns_inode=1)
        assert [e.kind for e in late.start()] == ["unavailable"] and never.start()[0].kind == "unavailable"
        assert late.health() == [] and never.health() == []
        script.set(count=2)
        assert [e.kind for e in late.health()] == ["gpus", "gpu_health"]
        assert late.health() == [] and never.health() == []
        late.close()


class FakeGap:
    """BOOTTIME − MONOTONIC, moved by the test (a suspend adds the time slept)."""

    def __init__(self) -> None:
        self.value = 12.0

    def __call__(self) -> float:
        return self.value


class TestResume:
    def test_the_watch_reports_a_jump_once(self) -> None:
        """The first read only reads; 0.5 s of drift is noise; an hour asleep is reported once."""
        from launcher.resume import ResumeWatch

        gap = FakeGap()
        watch = ResumeWatch(gap)
        assert watch.check() is None
        gap.value += 0.5
        assert watch.check() is None
        gap.value += 3600
        assert watch.check() == 3600 and watch.check() is None

    def test_a_healthy_resume_rechecks_and_warns_of_nothing(self, script: NvmlScript) -> None:
        """After a resume: a `resumed` event and a fresh health reading (all ok), no warning logged."""
        import structlog

        from launcher.resume import ResumeWatch

        gap = FakeGap()
        s = NvmlSampler(nvml=Nvml(mock_pynvml()), clock=lambda: 1.0, ns_inode=1, resume=ResumeWatch(gap))
        s.start()
        s.health()
        gap.value += 600
        with structlog.testing.capture_logs() as logs:
            events = s.health()
        assert [e.kind for e in events] == ["resumed", "gpu_health"] and states(events) == ["ok", "ok"]
        assert [entry["event"] for entry in logs if entry["log_level"] == "warning"] == []
        assert s.health() == []
        s.close()

    def test_the_resume_says_since_when_and_which(self, script: NvmlScript) -> None:
        """The resumed event carries the previous check's time (the host slept after it) and the sleep total that
        names this resume within the boot; it comes before the probe's event."""
        from launcher.resume import ResumeWatch

        gap, clock = FakeGap(), FakeGap()
        s = NvmlSampler(nvml=Nvml(mock_pynvml()), clock=clock, ns_inode=1, resume=ResumeWatch(gap),
                        cuda_probe=lambda: Event("supervisor", "cuda_probe", 30.0, None, {"ok": True}))
        s.start()
        clock.value = 10.0
        s.health()
        gap.value += 600
        clock.value = 20.0
        events = s.health()
        resumed = events[0]
        assert [e.kind for e in events] == ["resumed", "gpu_health", "cuda_probe"]
        assert (resumed.t, resumed.data["since"], resumed.data["gap"]) == (20.0, 10.0, 612)
        s.close()

    def test_a_resume_that_broke_the_gpu_is_seen_at_once(self, script: NvmlScript) -> None:
        """The resume's fresh reading shows a GPU lost while the host slept."""
        from launcher.resume import ResumeWatch

        gap = FakeGap()
        s = NvmlSampler(nvml=Nvml(mock_pynvml()), clock=lambda: 1.0, ns_inode=1, resume=ResumeWatch(gap))
        s.start()
        s.health()
        script.set(count=2, gpu0=15)
        gap.value += 600
        assert states(s.health()) == ["lost", "ok"]
        s.close()

    def test_status_keeps_the_newest_resumes(self) -> None:
        """The board keeps the last five resumes for status."""
        board = HealthBoard()
        for i in range(7):
            board.add(Event("supervisor", "resumed", float(i), None, {"slept": 60.0}))
        assert [r["t"] for r in board.to_dict()["resumes"]] == [2.0, 3.0, 4.0, 5.0, 6.0]


class TestResumeProbe:
    """After a resume, doctor's CUDA init probe in a child under the shim, against the mock driver."""

    def probe(self, libs: Any, short_dir: Path, **env: str) -> tuple[Event, list[Event]]:
        """The probe with Ollama's environment (the shim preloaded, OGPU_EVENTS at Ollama's socket, served here)."""
        from launcher.children import ChildRegistry
        from launcher.resume_probe import cuda_probe_event
        from launcher.shim_events import ShimEventServer
        from tests.native.build import native_build

        shim = native_build().shim
        ollamas = ShimEventServer(short_dir / "ollama.sock").start()
        registry = ChildRegistry()
        full = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(libs.driver_dir), "LD_PRELOAD": str(shim),
                "OGPU_EVENTS": str(short_dir / "ollama.sock"), **env}
        try:
            event = cuda_probe_event(lambda argv, e, timeout: registry.run(argv, e, timeout=timeout,
                                                                           name="cuda-probe"), full, shim)
            return event, ollamas.poll(0.2)
        finally:
            ollamas.close()

    def test_a_healthy_driver(self, libs: Any, short_dir: Path) -> None:
        """cuInit 0 and the mock's device: ok, no cause; the shim inside the probe saw cuInit 0, and told its own
        socket, not Ollama's."""
        event, heard = self.probe(libs, short_dir)
        data = event.data
        assert data["ok"] is True and data["devices"] == 1 and data["cause"] is None and data["cu_init"] == 0
        assert list(data["shim_cu_init"]) == [0] and data["shim"] and heard == []

    def test_cuinit_999_after_resume_is_uvm_not_loaded(self, libs: Any, short_dir: Path, tmp_path: Path) -> None:
        """The mock driver's state file says 999 (nvidia_uvm broken by the suspend): uvm_not_loaded, and the advice
        gives the exact commands; readiness is not touched."""
        state = tmp_path / "cuda.state"
        state.write_text("init_error=999\n")
        event, _heard = self.probe(libs, short_dir, MOCKCUDA_STATE=str(state))
        assert event.data["ok"] is False and event.data["cause"] == "uvm_not_loaded"
        assert event.data["cu_init"] == 999 and list(event.data["shim_cu_init"]) == [999]
        board = HealthBoard(in_container=True)
        board.add(health_event((0, UUID0, "ok")))
        board.add(event)
        [line] = board.advice()
        assert "rmmod nvidia_uvm && sudo modprobe nvidia_uvm" in line and board.to_dict()["degraded"] is True
        assert "OGPU_MAY_RELOAD_UVM=1" in line
        assert board.readiness_failure() is None

    def test_the_state_file_is_read_at_each_cuinit(self, libs: Any, short_dir: Path, tmp_path: Path) -> None:
        """The same environment, the file rewritten between two probes: 999, then ok again (a reload)."""
        state = tmp_path / "cuda.state"
        state.write_text("init_error=999\n")
        assert self.probe(libs, short_dir, MOCKCUDA_STATE=str(state))[0].data["cu_init"] == 999
        state.write_text("init_error=0\n")
        assert self.probe(libs, short_dir, MOCKCUDA_STATE=str(state))[0].data["ok"] is True

    def test_the_probe_runs_only_after_a_resume(self, script: NvmlScript) -> None:
        """The sampler calls the probe on a resume, never on an ordinary health check."""
        from launcher.resume import ResumeWatch

        calls: list[int] = []

        def probe() -> Event:
            calls.append(1)
            return Event("supervisor", "cuda_probe", 1.0, None, {"ok": True, "cause": None})

        gap = FakeGap()
        s = NvmlSampler(nvml=Nvml(mock_pynvml()), clock=lambda: 1.0, ns_inode=1, resume=ResumeWatch(gap),
                        cuda_probe=probe)
        s.start()
        for _ in range(5):
            s.health()
        assert calls == []
        gap.value += 600
        assert [e.kind for e in s.health()] == ["resumed", "gpu_health", "cuda_probe"] and calls == [1]
        s.close()
