"""Is a process one of ours: the parent chain through a fake /proc, and against this very process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from launcher.lineage import descends_from
from launcher.proctree import ProcFS


def fake_proc(root: Path, parents: dict[int, int]) -> ProcFS:
    for pid, ppid in parents.items():
        d = root / str(pid)
        d.mkdir(parents=True)
        fields = ["S", str(ppid)] + ["0"] * 20
        (d / "stat").write_text(f"{pid} (proc) {' '.join(fields)}\n")
        (d / "cmdline").write_bytes(b"x\0")
    return ProcFS(root)


class TestDescendsFrom:
    def test_chain_through_a_fake_proc(self, tmp_path: Path) -> None:
        """A grandchild descends; a sibling tree does not; a vanished link cannot be told (None)."""
        proc = fake_proc(tmp_path, {10: 1, 20: 10, 30: 20, 40: 1, 50: 99})
        assert descends_from(30, 10, proc) is True
        assert descends_from(10, 10, proc) is True
        assert descends_from(40, 10, proc) is False
        assert descends_from(50, 10, proc) is None  # its parent 99 is gone mid-walk

    def test_a_loop_in_proc_ends(self, tmp_path: Path) -> None:
        """A corrupt chain (a loop) answers False instead of spinning."""
        proc = fake_proc(tmp_path, {10: 20, 20: 10})
        assert descends_from(10, 30, proc) is False

    def test_real_processes(self) -> None:
        """Our child descends from us; we do not descend from it."""
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert descends_from(child.pid, os.getpid()) is True
            assert descends_from(os.getpid(), child.pid) is False
        finally:
            child.kill()
            child.wait()
