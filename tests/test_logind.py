"""Issue 16, item 2: logind's PrepareForSleep through a child `gdbus monitor` (or `dbus-monitor`): the tool's lines,
the backoff of a dying listener, the resume it signals (reported once per sleep, with the clock gap), and no listener
process left behind, even when the supervisor is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.children import ChildRegistry
from launcher.logind import (
    BACKOFF_MAX,
    GIVE_UP_AFTER,
    MAX_LINE,
    STEADY,
    Backoff,
    SleepListener,
    SleepParser,
    bus_path,
    find_tool,
    start_listener,
    tool_env,
)
from launcher.resume import SAME_SLEEP, THRESHOLD, ResumeWatch
from tests.cli_helpers import REPO
from tests.logind_double import GDBUS, MONITOR, FakeTool
from tests.serve_helpers import wait_for


@pytest.fixture(autouse=True)
def _every_level_logged(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever level an earlier test configured (launcher.log keeps it, and structlog's filtering wrapper), these
    tests see every line, debug included; the configuration is restored after."""
    import logging

    import structlog

    import launcher.log

    monkeypatch.setattr(launcher.log, "_level", logging.NOTSET)
    old = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    yield
    structlog.configure(**old)


class TestFindTool:
    def test_no_bus_socket_no_listener(self, tmp_path: Path) -> None:
        """A machine without the system bus socket: no tool is even looked for."""
        tool = FakeTool(tmp_path, bus=False)
        assert find_tool(tool.env()) == f"no system bus socket at {tool.bus}"

    def test_gdbus_is_preferred_and_its_argv_follows_logind(self, tmp_path: Path) -> None:
        """Both tools installed: gdbus, monitoring logind's manager object on the system bus."""
        gdbus, monitor = FakeTool(tmp_path / "a", "gdbus"), FakeTool(tmp_path / "b", "dbus-monitor")
        env = gdbus.env()
        env["PATH"] = f"{gdbus.dir}:{monitor.dir}"
        assert find_tool(env) == (str(gdbus.path), "monitor", "--system", "--dest", "org.freedesktop.login1",
                                  "--object-path", "/org/freedesktop/login1")

    def test_dbus_monitor_when_gdbus_is_missing(self, tmp_path: Path) -> None:
        """Only dbus-monitor: a match rule for PrepareForSleep alone."""
        tool = FakeTool(tmp_path, "dbus-monitor")
        env = tool.env()
        env["PATH"] = str(tool.dir)
        found = find_tool(env)
        assert isinstance(found, tuple) and found[0] == str(tool.path) and "member='PrepareForSleep'" in found[-1]

    def test_no_tool(self, tmp_path: Path) -> None:
        """A bus but neither tool: the reason names both."""
        tool = FakeTool(tmp_path)
        env = tool.env()
        env["PATH"] = str(tmp_path / "empty")
        assert find_tool(env) == "neither gdbus nor dbus-monitor is installed"

    def test_bus_address(self) -> None:
        """The default socket, a unix:path= address (first of a list), and an address only the tool can try."""
        assert bus_path({}) == Path("/run/dbus/system_bus_socket")
        assert bus_path({"DBUS_SYSTEM_BUS_ADDRESS": "unix:guid=x,path=/x/bus;tcp:host=h"}) == Path("/x/bus")
        assert bus_path({"DBUS_SYSTEM_BUS_ADDRESS": "tcp:host=localhost,port=1"}) is None

    def test_the_tool_gets_no_environment_of_ours(self) -> None:
        """PATH, the bus address and the C locale; never LD_PRELOAD nor our keys."""
        env = tool_env({"PATH": "/bin", "LD_PRELOAD": "/shim.so", "OGPU_EVENTS": "/s", "LANG": "de_DE.UTF-8",
                        "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/b"})
        assert env == {"PATH": "/bin", "LC_ALL": "C", "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/b"}

    def test_a_dbus_less_machine_logs_one_debug_line(self, tmp_path: Path) -> None:
        """No bus socket: start_listener returns None after one debug line, and never runs the tool."""
        import structlog

        tool = FakeTool(tmp_path, bus=False)
        with structlog.testing.capture_logs() as logs:
            assert start_listener(tool.env(), ChildRegistry(), lambda: None) is None
        assert [(e["event"], e["log_level"]) for e in logs] == [("logind_not_followed", "debug")]
        assert tool.argv() == []


class TestSleepParser:
    def test_gdbus_lines(self) -> None:
        """The banner and other logind signals are not ours; true is going to sleep, false is the resume."""
        parser = SleepParser(gdbus=True)
        said = [parser.feed(line) for line in (
            "Monitoring signals on object /org/freedesktop/login1 owned by org.freedesktop.login1",
            "The name org.freedesktop.login1 is owned by :1.3",
            "/org/freedesktop/login1: org.freedesktop.login1.Manager.SessionNew ('3', objectpath '/o/s/_33')",
            GDBUS.format("true").rstrip("\n"), GDBUS.format("false").rstrip("\n"))]
        assert said == [None, None, None, True, False] and parser.bad == 0

    def test_an_unreadable_prepare_for_sleep_line_is_counted(self) -> None:
        """A PrepareForSleep line whose argument is not a boolean: counted, ignored."""
        parser = SleepParser(gdbus=True)
        assert parser.feed("/org/freedesktop/login1: org.freedesktop.login1.Manager.PrepareForSleep (1,)") is None
        assert parser.bad == 1

    def test_dbus_monitor_lines(self) -> None:
        """A header line, then the boolean on the next; NameAcquired and its string argument are not ours."""
        parser = SleepParser(gdbus=False)
        text = ("signal time=1.0 sender=org.freedesktop.DBus -> destination=:1.42 serial=2 path=/org/freedesktop/"
                "DBus; interface=org.freedesktop.DBus; member=NameAcquired\n   string \":1.42\"\n"
                + MONITOR.format("true") + MONITOR.format("false"))
        said = [parser.feed(line) for line in text.splitlines()]
        assert [s for s in said if s is not None] == [True, False] and parser.bad == 0

    def test_a_dbus_monitor_header_without_its_boolean_is_counted(self) -> None:
        """A header followed by something else: counted; the next good pair still reads."""
        parser = SleepParser(gdbus=False)
        header, arg = MONITOR.format("false").splitlines()
        assert [parser.feed(line) for line in (header, "   string \"x\"", header, arg)] == [None, None, None, False]
        assert parser.bad == 1

    def test_the_last_other_line_is_kept_for_the_exit_message(self) -> None:
        """The tool's own error line (said when it exits) is remembered, truncated."""
        parser = SleepParser(gdbus=True)
        parser.feed("Error connecting: Could not connect: Permission denied" + "x" * 300)
        assert parser.last_other.startswith("Error connecting") and len(parser.last_other) == 200


class TestBackoff:
    def test_doubling_then_giving_up_after_quick_failures(self) -> None:
        """1, 2, 4, 8 s after quick exits; the fifth quick exit in a row gives up."""
        backoff = Backoff()
        delays = [backoff.after_exit(0.1) for _ in range(GIVE_UP_AFTER)]
        assert delays == [1.0, 2.0, 4.0, 8.0, None]

    def test_a_child_that_ran_steadily_starts_afresh(self) -> None:
        """A listener that worked for a minute and then died (the bus restarted): back to 1 s."""
        backoff = Backoff()
        backoff.after_exit(0.1)
        backoff.after_exit(0.1)
        assert backoff.after_exit(STEADY) == 1.0 and backoff.quick == 0

    def test_the_delay_is_capped(self) -> None:
        """The delay never exceeds the cap, however the limits are tuned."""
        backoff = Backoff(quick=-20)
        assert all(backoff.after_exit(0.1) <= BACKOFF_MAX for _ in range(10))  # type: ignore[operator]


class FakeGap:
    def __init__(self) -> None:
        self.value = 5.0

    def __call__(self) -> float:
        return self.value


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class TestResumeWatchSignal:
    def test_a_signal_reports_a_resume_the_gap_did_not_show(self) -> None:
        """logind says resumed but the clocks moved less than THRESHOLD (a short sleep): reported once, via logind."""
        gap, clock = FakeGap(), FakeClock()
        watch = ResumeWatch(gap, clock=clock)
        assert watch.check() is None
        gap.value += THRESHOLD / 4
        watch.signal()
        assert watch.check() == pytest.approx(THRESHOLD / 4) and watch.via == "logind"
        assert watch.check() is None

    def test_signal_and_gap_of_one_sleep_are_one_resume(self) -> None:
        """The signal wakes the check that also sees the gap: one report, via logind; the next check sees nothing."""
        gap, clock = FakeGap(), FakeClock()
        watch = ResumeWatch(gap, clock=clock)
        watch.check()
        gap.value += 600
        watch.signal()
        assert watch.check() == 600 and watch.via == "logind"
        clock.t += 5
        assert watch.check() is None

    def test_a_signal_right_after_the_gap_reported_the_sleep_is_not_news(self) -> None:
        """The periodic check saw the gap first; logind's signal a second later is the same sleep: not reported."""
        gap, clock = FakeGap(), FakeClock()
        watch = ResumeWatch(gap, clock=clock)
        watch.check()
        gap.value += 600
        assert watch.check() == 600 and watch.via == "clock"
        clock.t += 1
        watch.signal()
        assert watch.check() is None

    def test_a_signal_long_after_is_a_new_resume(self) -> None:
        """SAME_SLEEP seconds awake later, a signal is a new resume even when the gap did not grow."""
        gap, clock = FakeGap(), FakeClock()
        watch = ResumeWatch(gap, clock=clock)
        watch.check()
        gap.value += 600
        watch.check()
        clock.t += SAME_SLEEP
        watch.signal()
        assert watch.check() == 0.0 and watch.via == "logind"


def listen(tool: FakeTool, registry: ChildRegistry) -> tuple[SleepListener, list[str]]:
    calls: list[str] = []
    found = find_tool(tool.env(alone=True))
    assert isinstance(found, tuple)
    listener = SleepListener(found, tool_env(tool.env(alone=True)), registry, on_resume=lambda: calls.append("resume"),
                             on_sleep=lambda: calls.append("sleep")).start()
    wait_for(lambda: tool.pids(), what="the tool started")
    return listener, calls


class TestSleepListener:
    @pytest.mark.parametrize("name", ["gdbus", "dbus-monitor"])
    def test_sleep_and_resume_reach_their_callbacks(self, tmp_path: Path, name: str) -> None:
        """The fake tool prints PrepareForSleep true then false in its real format: sleep, then resume."""
        tool, registry = FakeTool(tmp_path, name), ChildRegistry()
        listener, calls = listen(tool, registry)
        try:
            tool.sleep_and_resume()
            wait_for(lambda: calls == ["sleep", "resume"], what="sleep and resume")
            assert listener.bad == 0
        finally:
            listener.close()
        assert tool.alive() == [] and registry.alive() == []

    def test_bad_lines_are_counted_and_ignored(self, tmp_path: Path) -> None:
        """An unreadable PrepareForSleep line and an overlong line: counted; the good line after them works."""
        tool = FakeTool(tmp_path)
        listener, calls = listen(tool, ChildRegistry())
        try:
            tool.say("/org/freedesktop/login1: org.freedesktop.login1.Manager.PrepareForSleep (maybe,)\n"
                     + "y" * (3 * MAX_LINE) + "\n" + GDBUS.format("false"))
            wait_for(lambda: calls == ["resume"], what="the resume after the bad lines")
            assert listener.bad == 2
        finally:
            listener.close()

    def test_a_dead_tool_is_started_again(self, tmp_path: Path) -> None:
        """The tool exits (the bus restarted): one info line, a new tool after the backoff, which still works."""
        import structlog

        tool = FakeTool(tmp_path)
        with structlog.testing.capture_logs() as logs:
            listener, calls = listen(tool, ChildRegistry())
            try:
                tool.die()
                wait_for(lambda: len(tool.pids()) == 2, timeout=10, what="a second tool")
                tool.sleep_and_resume()
                wait_for(lambda: calls == ["sleep", "resume"], what="resume through the new tool")
            finally:
                listener.close()
        exited = [e for e in logs if e["event"] == "logind_listener_exited"]
        assert len(exited) == 1 and exited[0]["exit"] == 3 and exited[0]["retry_in"] == 1.0
        assert "the bus went away" in exited[0]["said"]
        assert tool.alive() == []

    def test_a_tool_that_keeps_failing_is_given_up_and_said_so(self, tmp_path: Path) -> None:
        """A tool that exits at once every time (no bus access): restarted, then one given_up line and state after
        GIVE_UP_AFTER runs. (The delays, 1 + 2 + 4 + 8 s, are TestBackoff's; here they are zero.)"""
        import structlog

        tool = FakeTool(tmp_path)
        tool.path.write_text('#!/bin/sh\necho $$ >> "${0%/*}/pids"\n'
                             'echo "Error connecting: Could not connect: Permission denied" >&2\nexit 1\n')
        states: list[str] = []
        found = find_tool(tool.env(alone=True))
        assert isinstance(found, tuple)
        with structlog.testing.capture_logs() as logs:
            listener = SleepListener(found, tool_env(tool.env(alone=True)), ChildRegistry(), lambda: None,
                                     on_state=states.append, backoff=Backoff(first=0.0)).start()
            try:
                wait_for(lambda: "given_up" in states, what="given up")
            finally:
                listener.close()
        assert states == ["listening", "given_up"] and len(tool.pids()) == GIVE_UP_AFTER
        assert [e["event"] for e in logs if e["event"].startswith("logind_listener")] == \
            ["logind_listener_exited"] * (GIVE_UP_AFTER - 1) + ["logind_listener_given_up"]
        assert "Permission denied" in logs[-1]["said"] and tool.alive() == []

    def test_no_descriptor_is_left_behind(self, tmp_path: Path) -> None:
        """A listener whose tool died and was restarted, then closed: the process has the descriptors it had."""
        tool = FakeTool(tmp_path)
        before = len(os.listdir("/proc/self/fd"))
        listener, calls = listen(tool, ChildRegistry())
        tool.die()
        wait_for(lambda: len(tool.pids()) == 2, timeout=10, what="a second tool")
        listener.close()
        assert len(os.listdir("/proc/self/fd")) == before and tool.alive() == [] and calls == []

    def test_no_listener_outlives_a_killed_supervisor(self, tmp_path: Path) -> None:
        """SIGKILL the process that runs the listener: the wrapper sees its pipe close and ends the tool."""
        tool = FakeTool(tmp_path)
        program = textwrap.dedent(f"""
            import time
            from launcher.children import ChildRegistry
            from launcher.logind import start_listener
            env = {tool.env(alone=True)!r}
            listener = start_listener(env, ChildRegistry(), lambda: None)
            assert listener is not None
            time.sleep(600)
        """)
        proc = subprocess.Popen([sys.executable, "-c", program], cwd=str(REPO), env={**os.environ,
                                "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: tool.alive(), what="the tool started")
            pid = tool.alive()[0]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            wait_for(lambda: tool.alive() == [], timeout=10, what=f"tool {pid} gone")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


class WakeSampler:
    """A sampler whose health check the poller runs; its resume watch is the real one on a fake gap."""

    def __init__(self) -> None:
        self.resume = ResumeWatch(FakeGap(), clock=FakeClock())
        self.reported: list[float] = []
        self.state = "open"

    def start(self) -> list[object]:
        return []

    def sample(self) -> list[object]:
        return []

    def health(self) -> list[object]:
        slept = self.resume.check()
        if slept is not None:
            self.reported.append(slept)
        return []

    def close(self) -> None:
        return None


class TestPollerWake:
    def test_host_resumed_runs_the_check_at_once_and_once(self) -> None:
        """With an hour between samples, host_resumed() still has the NVML thread check at once; one report."""
        from typing import Any, cast

        from launcher.nvml_poller import NvmlPoller

        sampler = WakeSampler()
        poller = NvmlPoller(cast(Any, sampler), lambda _e: None, interval=3600, health_every=1).start()
        try:
            wait_for(lambda: sampler.resume.last is not None, what="the first check")
            poller.host_resumed()
            wait_for(lambda: sampler.reported, timeout=5, what="the check after the signal")
            assert sampler.reported == [0.0] and sampler.resume.via == "logind"
        finally:
            poller.close()
