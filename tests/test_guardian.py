"""The guardian kills Ollama's process group when the supervisor dies, and nothing after a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from launcher.children import ChildRegistry
from launcher.guardian import Guardian, GuardianKeeper


def _group(registry: ChildRegistry) -> tuple[int, int]:
    """A stand-in Ollama in its own group, with a child of its own (a runner)."""
    child = registry.spawn(["/bin/sh", "-c", "sleep 60 & wait"], dict(os.environ), name="ollama", own_group=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        kids = psutil.Process(child.pid).children()
        if kids:
            return child.pid, kids[0].pid
        time.sleep(0.01)
    raise AssertionError("the stand-in's child never started")


def _gone(pid: int, registry: ChildRegistry, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        registry.reap()
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False


class TestGuardian:
    def test_our_end_closing_kills_the_group(self) -> None:
        """End-of-file on the pipe (what our death looks like to it) kills the last group it was told."""
        registry = ChildRegistry()
        guardian = Guardian.start(registry)
        leader, runner = _group(registry)
        guardian.watch(leader)
        guardian.close()
        assert _gone(leader, registry) and _gone(runner, registry)
        assert registry.wait(guardian.child, timeout=2)
        assert guardian.child.returncode == 0

    def test_zero_after_a_clean_stop_kills_nothing(self) -> None:
        """Told 0 (the group is gone), it exits without killing: a reused pgid is never hit."""
        registry = ChildRegistry()
        guardian = Guardian.start(registry)
        leader, runner = _group(registry)
        guardian.watch(leader)
        guardian.watch(0)
        guardian.close()
        assert registry.wait(guardian.child, timeout=2)
        assert psutil.Process(runner).status() != psutil.STATUS_ZOMBIE
        os.killpg(leader, signal.SIGKILL)
        assert _gone(leader, registry)

    def test_sigkill_of_the_owner_kills_the_group(self) -> None:
        """A process that started a guardian and a group is SIGKILLed: the group dies with it."""
        code = ("import os, sys, time; from launcher.children import ChildRegistry; from launcher.guardian import "
                "Guardian; r = ChildRegistry(); g = Guardian.start(r); "
                "c = r.spawn(['/bin/sh', '-c', 'sleep 60 & wait'], dict(os.environ), name='ollama', own_group=True); "
                "g.watch(c.pid); print(c.pid, flush=True); time.sleep(60)")
        owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert owner.stdout is not None
        leader = int(owner.stdout.readline())
        time.sleep(0.1)
        members = [p.pid for p in psutil.process_iter() if _pgid(p.pid) == leader]
        assert leader in members
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 1.0
        left = members
        while left and time.monotonic() < deadline:
            left = [p for p in members if _running(p)]
            time.sleep(0.01)
        assert left == []


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class TestKeeper:
    def test_a_killed_guardian_is_replaced_at_the_next_watch(self) -> None:
        """Someone kills the guardian: the next watch starts a new one (one warning) that guards the group."""
        from tests.supervisor_fakes import RecordingLog

        registry, log = ChildRegistry(), RecordingLog()
        keeper = GuardianKeeper(registry, log)
        first = keeper.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert _gone(first, registry)
        leader, runner = _group(registry)
        keeper.watch(leader)
        assert keeper.pid not in (None, first)
        assert log.events() == ["guardian_replaced"]
        keeper.close()  # our end closes as at our death: the new guardian kills the group
        assert _gone(leader, registry) and _gone(runner, registry)
