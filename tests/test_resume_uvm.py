"""Issue 16, the resume path's pure parts: cuInit before and after a resume (launcher.resume_cuda), when to reload
nvidia_uvm (launcher.uvm_policy), the reload itself with fake children and a fixture /proc and /sys
(launcher.uvm_reload), and the controller's decisions over time with a fake clock (no processes, no sleeps)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from launcher.config import Mode, load_settings
from launcher.controller import Controller
from launcher.directives import ReloadUvm, RestartWith, View
from launcher.events import Event
from launcher.health_board import HealthBoard
from launcher.lifecycle import State
from launcher.nvml import GpuProcess, MemoryReading, NvmlFailure
from launcher.restarts import RemedyBudget
from launcher.resume_cuda import ResumeCuda, break_advice, change
from launcher.uvm_policy import UvmStep, uvm_step
from launcher.uvm_reload import device_openers, holders, refcnt, reload_events
from tests.supervisor_fakes import PLAN, RecordingLog

COMMANDS = "sudo rmmod nvidia_uvm && sudo modprobe nvidia_uvm"


def cu_init(result: int, t: float = 1.0) -> Event:
    return Event("shim", "cu_init", t, 200, {"result": result})


def resumed(gap: float = 100.0, t: float = 2.0) -> Event:
    return Event("supervisor", "resumed", t, None, {"slept": 100.0, "gap": gap})


def probe(ok: bool, code: int | None, after: str = "resume", t: float = 3.0, **extra: Any) -> Event:
    return Event("supervisor", "cuda_probe", t, None, {
        "after": after, "ok": ok, "cu_init": code, "cause": None if ok else "uvm_not_loaded",
        "error": None if ok else f"cuInit returned {code} CUDA_ERROR_UNKNOWN", **extra})


class TestChange:
    @pytest.mark.parametrize(("before", "ok", "after", "text", "news"), [
        (0, True, 0, "ok→ok", False),
        (0, False, 999, "ok→999", True),
        (999, False, 999, "999→999", False),
        (999, True, 0, "999→ok", False),
        (None, False, 999, "unknown→999", True),
        (None, True, 0, "unknown→ok", False),
    ])
    def test_the_change_and_whether_it_is_news(self, before: int | None, ok: bool, after: int, text: str,
                                               news: bool) -> None:
        """Only a failure that was not there before the resume (or where nothing was known) is news."""
        assert change(before, ok, after) == (text, news)


class TestResumeCuda:
    def fold(self, *events: Event) -> ResumeCuda:
        state = ResumeCuda()
        for event in events:
            state.add(event)
        return state

    def test_a_healthy_resume_breaks_nothing(self) -> None:
        """Runners saw cuInit 0, the resume's probe too: no break, the probe shows ok→ok."""
        state = self.fold(cu_init(0), resumed(), probe(True, 0))
        assert state.broken is None and state.probe is not None and state.probe["change"] == "ok→ok"

    def test_ok_then_999_is_the_break_with_its_resume(self) -> None:
        """ok before, 999 after: the break carries the cause, the change and which resume (the sleep total)."""
        state = self.fold(cu_init(0), resumed(gap=3600.0), probe(False, 999))
        assert state.broken is not None
        assert (state.broken["cause"], state.broken["change"], state.broken["resume"]) == ("uvm_not_loaded",
                                                                                         "ok→999", "3600.0")

    def test_a_resume_without_the_sleep_total_is_named_by_its_time(self) -> None:
        """A resumed event without `gap` (another source, e.g. logind) still names its resume, by when it was seen."""
        state = self.fold(cu_init(0), Event("supervisor", "resumed", 42.4, None, {}), probe(False, 999, t=43.0))
        assert state.broken is not None and state.broken["resume"] == "t42"

    def test_an_old_failure_is_not_news_of_the_resume(self) -> None:
        """cuInit failed before the resume already: the probe's failure is no break (the verdicts say it)."""
        state = self.fold(cu_init(999), resumed(), probe(False, 999))
        assert state.broken is None and state.probe is not None and state.probe["news"] is False

    def test_the_baseline_is_taken_at_the_resume(self) -> None:
        """A runner that fails after the resume does not hide the change: the baseline is the one before it."""
        state = self.fold(cu_init(0), resumed(), cu_init(999, t=2.5), probe(False, 999))
        assert state.broken is not None and state.broken["change"] == "ok→999"

    def test_a_runner_between_the_wake_and_the_check_is_after(self) -> None:
        """A runner that got 999 after the previous check (`since`) but before the resume was noticed already saw
        the resume: the baseline is the result before `since`."""
        state = self.fold(cu_init(0, t=1.0), cu_init(999, t=3.0),
                          Event("supervisor", "resumed", 4.0, None, {"slept": 60.0, "gap": 60, "since": 2.0}),
                          probe(False, 999, t=4.5))
        assert state.broken is not None and state.broken["change"] == "ok→999"

    def test_a_success_between_the_check_and_the_notice_counts(self) -> None:
        """A runner that got cuInit 0 after the previous check: CUDA worked then, so ok is the baseline."""
        state = self.fold(cu_init(0, t=3.0),
                          Event("supervisor", "resumed", 4.0, None, {"slept": 60.0, "gap": 60, "since": 2.0}),
                          probe(True, 0, t=4.5))
        assert state.probe is not None and state.probe["change"] == "ok→ok"

    def test_nothing_before_is_unknown(self) -> None:
        """No cuInit seen before the resume (no shim): unknown→999 is still news."""
        state = self.fold(resumed(), probe(False, 999))
        assert state.broken is not None and state.broken["change"] == "unknown→999"

    def test_the_previous_probe_is_a_baseline(self) -> None:
        """No runner since: the probe after an earlier resume is what cuInit gave before the next one."""
        state = self.fold(resumed(gap=100.0, t=2.0), probe(True, 0, t=3.0), resumed(gap=200.0, t=10.0),
                          probe(False, 999, t=11.0))
        assert state.broken is not None and state.broken["change"] == "ok→999"

    def test_a_probe_that_could_not_run_judges_nothing(self) -> None:
        """The probe did not start (ok None): shown in status, no break, the baseline unchanged."""
        state = self.fold(cu_init(0), resumed(), Event("supervisor", "cuda_probe", 3.0, None, {
            "after": "resume", "ok": None, "error": "the probe could not run: [Errno 2] No such file"}))
        assert state.broken is None and state.probe is not None and state.probe["change"] == "unknown"
        assert state.last_init == 0

    def test_cuda_working_again_ends_the_break(self) -> None:
        """A runner's cuInit 0 after the break (an operator's reload, a new discovery) ends it."""
        state = self.fold(cu_init(0), resumed(), probe(False, 999), cu_init(0, t=9.0))
        assert state.broken is None

    def test_a_reload_that_worked_names_its_key(self) -> None:
        """The re-probe after a reload finds CUDA working: the break ends and the reload's key is remembered."""
        state = self.fold(cu_init(0), resumed(), probe(False, 999),
                          probe(True, 0, after="uvm_reload", t=5.0, key="boot@100"))
        assert state.broken is None and state.fixed_by_reload == "boot@100"

    def test_a_reload_that_did_not_help_keeps_the_break(self) -> None:
        """The re-probe still fails: the break stays, nothing is marked fixed."""
        state = self.fold(cu_init(0), resumed(), probe(False, 999),
                          probe(False, 999, after="uvm_reload", t=5.0, key="boot@100"))
        assert state.broken is not None and state.fixed_by_reload is None


class TestAdvice:
    def broken(self, **reload: Any) -> ResumeCuda:
        state = ResumeCuda()
        for event in (cu_init(0), resumed(), probe(False, 999)):
            state.add(event)
        if reload:
            state.add(Event("supervisor", "uvm_reload", 4.0, None, {"key": "k", **reload}))
        return state

    def test_commands_and_how_to_allow_the_reload(self) -> None:
        """Without the setting: the exact commands and the setting that lets ollama-gpu do it."""
        line = break_advice(self.broken(), False, "")
        assert line is not None and COMMANDS in line and "ok→999" in line and "OGPU_MAY_RELOAD_UVM=1" in line

    def test_with_the_setting_it_says_when(self) -> None:
        """With the setting, before the reload: when it will happen."""
        line = break_advice(self.broken(), True, "")
        assert line is not None and "once Ollama is idle" in line and "OGPU_MAY_RELOAD_UVM=1" not in line

    def test_a_holder_is_named(self) -> None:
        """The reload refused: the holder's pid and name, and the commands still."""
        line = break_advice(self.broken(outcome="held", holders=[{"pid": 4242, "name": "python3"}], refcnt=1),
                            True, "")
        assert line is not None and "pid 4242 (python3)" in line and COMMANDS in line

    def test_a_failed_reload_shows_modprobe_stderr(self) -> None:
        """modprobe failed: its step, exit and stderr, and that it is not retried."""
        line = break_advice(self.broken(outcome="failed", step="modprobe -r nvidia_uvm", exit=1,
                                        stderr="modprobe: FATAL: Module nvidia_uvm is in use."), True, "")
        assert line is not None and "Module nvidia_uvm is in use" in line and "not retried" in line

    def test_the_health_board_shows_it_once(self) -> None:
        """The board's advice carries the line; status says degraded."""
        board = HealthBoard(may_reload_uvm=False)
        for event in (cu_init(0), resumed(), probe(False, 999)):
            board.add(event)
        [line] = board.advice()
        assert COMMANDS in line and board.to_dict()["degraded"] is True and board.to_dict()["resume_break"]


class TestProbeEvent:
    def test_a_probe_that_cannot_start_is_an_event_not_a_traceback(self, tmp_path: Path) -> None:
        """The child cannot be spawned: a cuda_probe event with ok None and the reason."""
        from launcher.resume_probe import cuda_probe_event

        def cannot(argv: Sequence[str], env: Mapping[str, str], timeout: float) -> tuple[int | None, str, str]:
            raise FileNotFoundError(2, "No such file or directory", argv[0])

        event = cuda_probe_event(cannot, {"PATH": "/usr/bin"}, None, clock=lambda: 5.0)
        assert (event.kind, event.data["ok"], event.t) == ("cuda_probe", None, 5.0)
        assert "could not run" in event.data["error"]


class TestUvmStep:
    KW: Mapping[str, Any] = {"may_reload": True, "mode": Mode.AUTO, "generation": "D", "root": True,
                             "budget": (True, ""), "runner_alive": False}

    @pytest.mark.parametrize(("change_", "step"), [
        ({}, UvmStep.RELOAD),
        ({"may_reload": False}, UvmStep.ADVISE),
        ({"mode": Mode.ADVISE}, UvmStep.ADVISE),
        ({"mode": Mode.OBSERVE}, UvmStep.ADVISE),
        ({"generation": None}, UvmStep.ADVISE),
        ({"root": False}, UvmStep.ADVISE),
        ({"budget": (False, "remedy budget spent (3/3)")}, UvmStep.ADVISE),
        ({"runner_alive": True}, UvmStep.WAIT),
    ])
    def test_each_term_of_the_contract(self, change_: dict[str, Any], step: UvmStep) -> None:
        """The reload only with the setting, in auto mode, for a known generation, as root, within budget, idle."""
        got, why = uvm_step(**{**self.KW, **change_})
        assert got is step and why


def reading(*pids: int, listed: bool = True) -> MemoryReading:
    procs = tuple(GpuProcess(pid=p, gpu=0, used=1 << 30, type="compute") for p in pids)
    return MemoryReading(used={0: 1 << 30}, processes=procs if listed else None,
                         failures=() if listed else ("gpu 0 compute processes: Unknown Error",))


def fake_proc(root: Path, pid: int, name: str, fds: Sequence[str] = ()) -> None:
    (root / str(pid) / "fd").mkdir(parents=True)
    (root / str(pid) / "comm").write_text(name + "\n")
    for i, target in enumerate(fds):
        os.symlink(target, root / str(pid) / "fd" / str(i))


class FakeChildren:
    """The child runner as reload_events calls it: records argv, answers from a script."""

    def __init__(self, answers: Sequence[tuple[int | None, str, str]] = ((0, "", ""), (0, "", ""))) -> None:
        self.calls: list[list[str]] = []
        self.answers = list(answers)

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], timeout: float) -> tuple[int | None, str, str]:
        self.calls.append(list(argv[1:]))
        return self.answers.pop(0)


class TestReload:
    @pytest.fixture
    def roots(self, tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
        proc, sys_root, sbin = tmp_path / "proc", tmp_path / "sys", tmp_path / "bin"
        proc.mkdir()
        (sys_root / "module" / "nvidia_uvm").mkdir(parents=True)
        (sys_root / "module" / "nvidia_uvm" / "refcnt").write_text("0\n")
        sbin.mkdir()
        (sbin / "modprobe").write_text("#!/bin/sh\n")
        (sbin / "modprobe").chmod(0o755)
        return proc, sys_root, {"PATH": str(sbin)}

    def reload(self, roots: tuple[Path, Path, dict[str, str]], read: MemoryReading | NvmlFailure,
               children: FakeChildren, probed: bool = True) -> list[Event]:
        proc, sys_root, env = roots
        return reload_events("boot@100", read, children, env,
                             lambda: probe(probed, 0 if probed else 999, after="uvm_reload"),
                             clock=lambda: 7.0, proc_root=proc, sys_root=sys_root)

    def test_nothing_holds_it_two_modprobes_then_the_probe(self, roots: Any) -> None:
        """No process, refcnt 0: `-r nvidia_uvm`, then `nvidia_uvm`, then the re-probe, which carries the key."""
        children = FakeChildren()
        events = self.reload(roots, reading(), children)
        assert children.calls == [["-r", "nvidia_uvm"], ["nvidia_uvm"]]
        assert [(e.kind, e.data.get("outcome"), e.data.get("key")) for e in events] == [
            ("uvm_reload", "reloaded", "boot@100"), ("cuda_probe", None, "boot@100")]

    def test_an_nvml_process_holds_it(self, roots: Any) -> None:
        """NVML lists a compute process: no modprobe at all, the holder named with its name."""
        proc = roots[0]
        fake_proc(proc, 4242, "python3")
        children = FakeChildren()
        [event] = self.reload(roots, reading(4242), children)
        assert children.calls == [] and event.data["outcome"] == "held"
        assert [(h["pid"], h["name"]) for h in event.data["holders"]] == [(4242, "python3")]

    def test_an_open_device_holds_it(self, roots: Any) -> None:
        """NVML lists nobody, but a process has /dev/nvidia-uvm open: held, that process named."""
        proc = roots[0]
        fake_proc(proc, 77, "trainer", ["/dev/null", "/dev/nvidia-uvm"])
        fake_proc(proc, 78, "bash", ["/dev/null"])
        assert device_openers(proc) == [77]
        children = FakeChildren()
        [event] = self.reload(roots, reading(), children)
        assert children.calls == [] and [h["pid"] for h in event.data["holders"]] == [77]

    def test_a_refcount_above_zero_holds_it(self, roots: Any) -> None:
        """Nobody named, refcnt 2: held (a module in use is never unloaded)."""
        (roots[1] / "module" / "nvidia_uvm" / "refcnt").write_text("2\n")
        assert refcnt(roots[1]) == 2
        children = FakeChildren()
        [event] = self.reload(roots, reading(), children)
        assert children.calls == [] and (event.data["outcome"], event.data["refcnt"]) == ("held", 2)

    def test_unlisted_processes_mean_no_reload(self, roots: Any) -> None:
        """NVML cannot list the processes (or is gone): nothing is unloaded, the reason says why."""
        children = FakeChildren()
        [event] = self.reload(roots, reading(listed=False), children)
        [again] = self.reload(roots, NvmlFailure(15, "GPU is lost"), children)
        assert children.calls == [] and event.data["outcome"] == again.data["outcome"] == "unverified"
        assert "Unknown Error" in event.data["reason"] and "GPU is lost" in again.data["reason"]

    def test_a_failed_unload_stops_with_its_stderr(self, roots: Any) -> None:
        """`modprobe -r` fails: its stderr is reported, the load is not tried, no probe."""
        children = FakeChildren([(1, "", "modprobe: FATAL: Module nvidia_uvm is in use.\n")])
        [event] = self.reload(roots, reading(), children)
        assert children.calls == [["-r", "nvidia_uvm"]]
        assert (event.data["outcome"], event.data["step"], event.data["exit"]) == ("failed",
                                                                                 "modprobe -r nvidia_uvm", 1)
        assert event.data["stderr"] == "modprobe: FATAL: Module nvidia_uvm is in use."

    def test_a_hung_modprobe_is_reported_as_timed_out(self, roots: Any) -> None:
        """The child killed at its timeout (code None): failed, 'timed out'."""
        children = FakeChildren([(0, "", ""), (None, "", "")])
        [event] = self.reload(roots, reading(), children)
        assert (event.data["step"], event.data["stderr"]) == ("modprobe nvidia_uvm", "timed out")

    def test_no_modprobe_anywhere(self, roots: Any, tmp_path: Path) -> None:
        """modprobe on neither PATH nor the sbin directories: failed, said so, nothing run."""
        proc, sys_root, _env = roots
        children = FakeChildren()
        import launcher.uvm_reload as module

        saved = module.SBIN
        module.SBIN = (str(tmp_path / "none"),)  # type: ignore[misc]
        try:
            [event] = reload_events("k", reading(), children, {"PATH": str(tmp_path / "empty")},
                                    lambda: probe(True, 0), proc_root=proc, sys_root=sys_root)
        finally:
            module.SBIN = saved  # type: ignore[misc]
        assert children.calls == [] and event.data["outcome"] == "failed" and "not found" in event.data["stderr"]

    def test_holders_without_sys(self, tmp_path: Path) -> None:
        """No /sys/module/nvidia_uvm (module not loaded, or not readable): refcnt unknown, not a holder."""
        assert refcnt(tmp_path) is None
        assert holders(reading(), tmp_path, tmp_path) == ([], None, None)


class Clock:
    """Fake monotonic time for the controller's ticks."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self, step: float = 1.0) -> float:
        self.t += step
        return self.t


def settings(tmp_path: Path, **env: str) -> Any:
    return load_settings({"HOME": str(tmp_path), "OGPU_SYSTEM_CONFIG": str(tmp_path / "none"), **env}, uid=1000)


def view(runner_alive: bool = False) -> View:
    return View(state=State.RUNNING, plan=PLAN, ollama_pid=100, version="0.12.6", restarts=0, crash_recent=0,
                crash_max=5, runner_alive=runner_alive)


class TestController:
    """The controller over a resume: advice once, the reload when idle, one restart once CUDA works again."""

    def make(self, tmp_path: Path, root: bool = True, **env: str) -> Controller:
        c = Controller(settings=settings(tmp_path, **env), budget=RemedyBudget.load(tmp_path / "state.json", 3),
                       log=RecordingLog())
        c.boot_id, c.root = "boot-1", root
        return c

    def feed(self, c: Controller, clock: Clock, events: Sequence[Event], alive: bool = False) -> list[Any]:
        out: list[Any] = []
        for event in events:
            c.sink(event)
            out += c.tick(view(alive), clock())
        return out

    def broken(self) -> list[Event]:
        return [Event("supervisor", "ready", 0.5, None, {"version": "0.12.6"}), cu_init(0), resumed(),
                probe(False, 999)]

    def warnings(self, c: Controller) -> list[tuple[str, Any]]:
        return [(event, kw.get("cause")) for level, event, kw in c.log.lines if level == "warning"]

    def test_a_healthy_resume_says_nothing(self, tmp_path: Path) -> None:
        """ok→ok: no directive, no warning, no advice."""
        c = self.make(tmp_path, OGPU_MAY_RELOAD_UVM="1")
        out = self.feed(c, Clock(), [Event("supervisor", "ready", 0.5, None, {"version": "0.12.6"}), cu_init(0),
                                     resumed(), probe(True, 0)])
        assert out == [] and self.warnings(c) == [] and c.advised == {}

    def test_without_the_setting_advice_once_and_nothing_else(self, tmp_path: Path) -> None:
        """The break: one advice warning with the commands; more events add nothing."""
        c = self.make(tmp_path)
        clock = Clock()
        out = self.feed(c, clock, self.broken())
        out += self.feed(c, clock, [Event("nvml", "memory", 5.0, None, {"gpus": []})] * 3)
        assert out == [] and self.warnings(c) == [("advice", "uvm_not_loaded")]
        assert COMMANDS in c.status(view())["what_to_do"]

    def test_reload_waits_for_idle_then_restarts_once(self, tmp_path: Path) -> None:
        """A runner alive: advice, no reload; idle: ReloadUvm; the re-probe ok: one RestartWith when idle."""
        c = self.make(tmp_path, OGPU_MAY_RELOAD_UVM="1")
        clock = Clock()
        assert self.feed(c, clock, self.broken(), alive=True) == []
        assert self.feed(c, clock, [Event("proc", "runner_exited", 4.0, 300, {})], alive=False) == \
            [ReloadUvm("boot-1@100.0")]
        assert c.budget.summary()["used"] == 1
        out = self.feed(c, clock, [Event("supervisor", "uvm_reload", 5.0, None, {"key": "boot-1@100.0",
                                                                                 "outcome": "reloaded"}),
                                   probe(True, 0, after="uvm_reload", t=5.1, key="boot-1@100.0")])
        assert [(type(d), d.immediately) for d in out] == [(RestartWith, False)]
        assert self.feed(c, clock, [cu_init(0, t=9.0)] * 2) == []  # never a second restart
        assert ("resume", "uvm_not_loaded") not in c.advised

    def test_a_held_gpu_ends_it_without_restart(self, tmp_path: Path) -> None:
        """The reload refused (held): no restart, no second reload."""
        c = self.make(tmp_path, OGPU_MAY_RELOAD_UVM="1")
        clock = Clock()
        assert self.feed(c, clock, self.broken()) == [ReloadUvm("boot-1@100.0")]
        out = self.feed(c, clock, [Event("supervisor", "uvm_reload", 5.0, None, {
            "key": "boot-1@100.0", "outcome": "held", "holders": [{"pid": 4242, "name": "sleep"}]})] * 2)
        assert out == [] and "pid 4242 (sleep)" in c.status(view())["gpu_health"]["advice"][0]

    def test_not_as_root_or_in_advise_mode(self, tmp_path: Path) -> None:
        """Not root, or mode advise: the advice only, never ReloadUvm."""
        for c in (self.make(tmp_path / "a", root=False, OGPU_MAY_RELOAD_UVM="1"),
                  self.make(tmp_path / "b", OGPU_MAY_RELOAD_UVM="1", OGPU_MODE="advise")):
            assert self.feed(c, Clock(), self.broken()) == []
            assert self.warnings(c) == [("advice", "uvm_not_loaded")]

    def test_once_per_resume_across_supervisors(self, tmp_path: Path) -> None:
        """A new supervisor in the same boot sees the same resume's break: the budget says it was tried."""
        first = self.make(tmp_path, OGPU_MAY_RELOAD_UVM="1")
        assert self.feed(first, Clock(), self.broken()) == [ReloadUvm("boot-1@100.0")]
        again = self.make(tmp_path, OGPU_MAY_RELOAD_UVM="1")
        assert self.feed(again, Clock(), self.broken()) == []
        assert "already tried" in again.advised[("resume", "uvm_not_loaded")]["reason"]

    def test_a_second_resume_is_a_new_chance(self, tmp_path: Path) -> None:
        """A later resume (another sleep total) that breaks it again may be reloaded again."""
        c = self.make(tmp_path, OGPU_MAY_RELOAD_UVM="1")
        clock = Clock()
        assert self.feed(c, clock, self.broken()) == [ReloadUvm("boot-1@100.0")]
        self.feed(c, clock, [Event("supervisor", "uvm_reload", 5.0, None, {"key": "boot-1@100.0",
                                                                           "outcome": "reloaded"}),
                             probe(True, 0, after="uvm_reload", t=5.1, key="boot-1@100.0")])
        out = self.feed(c, clock, [resumed(gap=900.0, t=20.0), probe(False, 999, t=21.0)])
        assert out == [ReloadUvm("boot-1@900.0")]


class TestControllerSlot:
    def test_a_reload_goes_to_the_nvml_thread_and_the_rest_to_the_supervisor(self) -> None:
        """serve's slot hands ReloadUvm to the NVML poller and passes every other directive on."""
        from launcher.commands.serve import ControllerSlot

        class Deciding:
            def tick(self, _view: View, _now: float) -> list[Any]:
                return [ReloadUvm("boot-1@100.0"), RestartWith(PLAN, "a remedy", immediately=False)]

        slot, asked = ControllerSlot(), []
        slot.controller = Deciding()  # type: ignore[assignment]
        slot.reload_uvm = asked.append
        out = slot.tick(view(), 1.0)
        assert asked == ["boot-1@100.0"] and [type(d) for d in out] == [RestartWith]
