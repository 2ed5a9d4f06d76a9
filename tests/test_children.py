"""The child registry and the one reaper: statuses reach their owners, orphans are reaped and reported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from launcher.children import ChildRegistry, SpawnError, exit_code


class TestRegistry:
    def test_run_collects_output_and_code(self) -> None:
        """run() returns the exit code and both streams."""
        code, out, err = ChildRegistry().run(["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (code, out, err) == (3, "out\n", "err\n")

    def test_failed_compiler_is_reported_failed_while_reaper_runs(self) -> None:
        """A reaper looping in another thread cannot steal a failing child's status from its owner."""
        registry = ChildRegistry()
        stop = threading.Event()

        def reaper() -> None:
            while not stop.is_set():
                registry.reap()
                time.sleep(0.0005)

        thread = threading.Thread(target=reaper)
        thread.start()
        try:
            results = [registry.run(["sh", "-c", "exit 1"])[0] for _ in range(30)]
        finally:
            stop.set()
            thread.join()
        assert results == [1] * 30

    def test_signal_death_is_128_plus_n(self) -> None:
        """A child killed by a signal reports 128 + n, as a shell does."""
        code, _, _ = ChildRegistry().run(["sh", "-c", "kill -TERM $$"])
        assert code == 128 + signal.SIGTERM

    def test_timeout_kills(self) -> None:
        """A child past its timeout is killed and reported as timed out (None)."""
        code, _, _ = ChildRegistry().run(["sleep", "30"], timeout=0.3)
        assert code is None

    @pytest.mark.parametrize(("argv0", "expected"), [("/nonexistent/prog", 127), ("/etc/hostname", 126)])
    def test_spawn_errors_map_like_a_shell(self, argv0: str, expected: int) -> None:
        """Not found is 127, not executable is 126."""
        with pytest.raises(SpawnError) as info:
            ChildRegistry().spawn([argv0], os.environ, name="x")
        assert info.value.exit_code == expected

    def test_own_group_and_default_signals(self) -> None:
        """own_group puts the child in its own process group; handled signals are default in the child."""
        registry = ChildRegistry()
        old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        try:
            r, w = os.pipe()
            # cat changes no signal disposition, so its /proc status shows what it inherited from us
            child = registry.spawn(["cat", "/proc/self/stat", "/proc/self/status"], os.environ, name="probe",
                                   stdout=w, own_group=True)
            os.close(w)
            registry.wait(child, timeout=10)
            text = os.read(r, 100000).decode()
            os.close(r)
        finally:
            signal.signal(signal.SIGPIPE, old)
        stat = text.splitlines()[0]
        pgrp = int(stat[stat.rfind(")") + 2 :].split()[2])
        ignored = int(next(line for line in text.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
        assert pgrp == child.pid
        assert not ignored & (1 << (signal.SIGPIPE - 1)), "SIGPIPE must not stay ignored in Ollama"

    def test_orphans_reaped_and_reported(self) -> None:
        """As subreaper, a grandchild whose parent died is reaped by us and reported as an orphan."""
        code = """
import os, sys
pid = os.fork()
if pid == 0:
    import time; time.sleep(0.3); os._exit(7)
print(pid, flush=True)
"""
        script = (
            "import ctypes,subprocess,sys,time,os\n"
            "from launcher.children import ChildRegistry, set_subreaper\n"
            "assert set_subreaper()\n"
            "seen=[]\n"
            "r=ChildRegistry(on_orphan=seen.append)\n"
            f"c,out,err=r.run([sys.executable,'-c',{code!r}])\n"
            "gp=int(out.split()[0])\n"
            "deadline=time.monotonic()+10\n"
            "while not seen and time.monotonic()<deadline:\n"
            "    r.reap(); time.sleep(0.02)\n"
            "print(gp, seen[0].pid, os.waitstatus_to_exitcode(seen[0].status), r.orphans_reaped, len(r.alive()))\n"
        )
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
        assert proc.returncode == 0, proc.stderr
        grandchild, reaped, status, counted, registered = proc.stdout.split()
        assert grandchild == reaped
        assert status == "7"
        assert counted == "1"  # reported once, as an orphan: never mistaken for a child of ours
        assert registered == "0"  # and our own child (the forking script) was reaped as ours

    def test_subreaper_can_be_set(self) -> None:
        """PR_SET_CHILD_SUBREAPER works on this kernel (checked in a child so the test process is unchanged)."""
        proc = subprocess.run([sys.executable, "-c", "from launcher.children import set_subreaper as s; print(s())"],
                              capture_output=True, text=True, timeout=30, check=False)
        assert proc.stdout.strip() == "True"
        assert exit_code(0) == 0


