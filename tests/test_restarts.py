"""Crash-loop backoff and the persistent remedy budget."""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from launcher.restarts import CrashBudget, RemedyBudget, fingerprint
from tests.cli_helpers import REPO
from tests.serve_helpers import as_nobody, command_for_nobody


class TestCrashBudget:
    def test_backoff_doubles_then_gives_up(self) -> None:
        """Delays double up to the cap; past max restarts in the window the budget is spent."""
        budget = CrashBudget(max_restarts=4, window=100, backoff=1, backoff_max=3)
        assert [budget.on_crash(now=t) for t in (0, 1, 2, 3)] == [1, 2, 3, 3]
        assert budget.on_crash(now=4) is None

    def test_window_forgets_old_crashes(self) -> None:
        """Crashes older than the window no longer count."""
        budget = CrashBudget(max_restarts=1, window=10, backoff=1, backoff_max=1)
        assert budget.on_crash(now=0) == 1
        assert budget.on_crash(now=5) is None
        assert budget.on_crash(now=20) == 1


class TestRemedyBudget:
    def test_persisted_across_restarts(self, tmp_path: Path) -> None:
        """Attempts and tried environments survive a new process (a systemd restart)."""
        path = tmp_path / "state" / "s.json"
        budget = RemedyBudget.load(path, max_attempts=2)
        patch = {"LD_LIBRARY_PATH": "/usr/local/nvidia/lib64"}
        assert budget.allows(patch) == (True, "")
        budget.record(patch, "libcuda_not_found")
        again = RemedyBudget.load(path, max_attempts=2)
        assert again.allows(patch) == (False, "this environment was already tried")
        again.record({"OLLAMA_VULKAN": "0"}, "vulkan_selected_over_cuda")
        third = RemedyBudget.load(path, max_attempts=2)
        ok, why = third.allows({"X": None})
        assert not ok and "budget spent" in why

    def test_corrupt_state_is_reported_not_raised(self, tmp_path: Path) -> None:
        """A corrupt state file gives a fresh budget and a load error to log."""
        path = tmp_path / "s.json"
        path.write_text("{not json")
        budget = RemedyBudget.load(path, max_attempts=1)
        assert budget.load_error is not None
        assert budget.attempts == []
        assert budget.summary()["load_error"] == budget.load_error

    def test_fingerprint_is_order_independent(self) -> None:
        """The same patch in another order is the same environment."""
        assert fingerprint({"A": "1", "B": None}) == fingerprint({"B": None, "A": "1"})
        assert fingerprint({"A": "1"}) != fingerprint({"A": "2"})


# --- issue 15, item 3: a failed state write is said once, leaves no temp file, and the run keeps its history ------

PATCH = {"LD_LIBRARY_PATH": "/usr/lib/x86_64-linux-gnu"}

# Run in a separate process (a private mount namespace, or as uid 65534): record one remedy into the state file
# named by argv[1] and print what happened as one JSON object.
PROBE = """
import json, os, sys
import structlog.testing
from pathlib import Path
from launcher.restarts import RemedyBudget

path = Path(sys.argv[1])
if len(sys.argv) > 2:  # fill the file system first, so the state write meets ENOSPC
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        os.close(fd)
budget = RemedyBudget.load(path, max_attempts=3)
patch = {"LD_LIBRARY_PATH": "/usr/lib/x86_64-linux-gnu"}
with structlog.testing.capture_logs() as logs:
    budget.record(patch, "libcuda_not_found")
print(json.dumps({"logs": logs, "summary": budget.summary(), "again": budget.allows(patch),
                  "listing": sorted(os.listdir(path.parent))}))
"""


def _temps(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(".state-")]


class TestFailedStateWrite:
    def test_full_disk_via_the_write_seam(self, tmp_path: Path) -> None:
        """ENOSPC mid-write: one warning naming the path and errno (not one per failed write), no temp file left,
        the old state file intact, the attempt kept in memory (so the same environment is refused), and the failure
        in summary()."""
        path = tmp_path / "state-x.json"
        RemedyBudget.load(path, max_attempts=3).record({"OLD": "1"}, "stub_library")
        before = path.read_bytes()
        calls: list[int] = []

        def full(fd: int, data: bytes) -> int:
            calls.append(len(data))
            if len(calls) == 1:
                return os.write(fd, bytes(data[:10]))  # a short write first, as a filling disk gives
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        budget = RemedyBudget.load(path, max_attempts=5)
        budget.write = full
        with structlog.testing.capture_logs() as logs:
            budget.record(PATCH, "libcuda_not_found")
            budget.record({"OLLAMA_LLM_LIBRARY": None}, "forced_cpu_library")
        assert len(calls) >= 2
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert [(e["event"], e["path"], e["errno"]) for e in warnings] == [("state_write_failed", str(path), "ENOSPC")]
        assert _temps(tmp_path) == []
        assert path.read_bytes() == before
        assert budget.allows(PATCH) == (False, "this environment was already tried")
        assert len(budget.attempts) == 3
        failed = budget.summary()["write_error"]
        assert (failed["path"], failed["errno"], failed["error"]) == (str(path), "ENOSPC", "No space left on device")

    def test_a_later_successful_write_clears_the_failure(self, tmp_path: Path) -> None:
        """Once the disk has room again the whole in-memory history is written and the failure is gone."""
        path = tmp_path / "state-x.json"
        budget = RemedyBudget.load(path, max_attempts=3)

        def full(fd: int, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        budget.write = full
        budget.record(PATCH, "libcuda_not_found")
        assert budget.summary()["write_error"] is not None
        budget.write = os.write
        budget.record({"OLLAMA_VULKAN": "0"}, "vulkan_selected_over_cuda")
        assert budget.summary()["write_error"] is None
        assert len(RemedyBudget.load(path, max_attempts=3).attempts) == 2

    def _in_namespace(self, tmp_path: Path, mount: str, *probe_args: str) -> dict[str, Any]:
        """The probe under `unshare -m` after `mount` (a shell line) prepared tmp_path/mnt."""
        (tmp_path / "mnt").mkdir()
        script = tmp_path / "probe.py"
        script.write_text(PROBE)
        line = f"{mount} && exec {shlex.quote(sys.executable)} {script} " + " ".join(map(shlex.quote, probe_args))
        proc = subprocess.run(["unshare", "--mount", "sh", "-c", line], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def test_read_only_file_system(self, tmp_path: Path) -> None:
        """A real read-only mount (EROFS): one warning naming the path and errno; the run keeps its history."""
        mnt = tmp_path / "mnt"
        got = self._in_namespace(tmp_path, f"mount -t tmpfs -o size=64k tmpfs {mnt} && mkdir {mnt}/state && "
                                            f"mount -o remount,ro,bind {mnt}", str(mnt / "state" / "s.json"))
        assert [(e["event"], e["log_level"], e["errno"]) for e in got["logs"]] == [
            ("state_write_failed", "warning", "EROFS")]
        assert got["logs"][0]["path"] == str(mnt / "state" / "s.json")
        assert got["summary"]["write_error"]["errno"] == "EROFS"
        assert got["again"] == [False, "this environment was already tried"]
        assert got["listing"] == []

    def test_full_file_system(self, tmp_path: Path) -> None:
        """A real full tmpfs (ENOSPC): the temp file is removed, not left behind at 0 bytes."""
        mnt = tmp_path / "mnt"
        got = self._in_namespace(tmp_path, f"mount -t tmpfs -o size=64k tmpfs {mnt}", str(mnt / "s.json"),
                                 str(mnt / "filler"))
        assert [(e["event"], e["errno"]) for e in got["logs"]] == [("state_write_failed", "ENOSPC")]
        assert got["listing"] == ["filler"]
        assert got["again"] == [False, "this environment was already tried"]

    def test_permission_denied(self) -> None:
        """As uid 65534 in a state directory owned by root (0755): EACCES, said once, nothing left behind."""
        if os.geteuid() != 0:
            pytest.fail("this test switches to uid 65534 and must run as root (as CI does)")
        base = Path(tempfile.mkdtemp(prefix="ogpu-state-"))
        try:
            base.chmod(0o755)
            (base / "state").mkdir(mode=0o755)
            script = base / "probe.py"
            script.write_text(PROBE)
            interpreter, _c, _boot, site_dir = command_for_nobody()
            boot = "import runpy, site, sys; site.addsitedir(sys.argv.pop(1)); runpy.run_path(sys.argv.pop(1))"
            proc = subprocess.run([interpreter, "-c", boot, site_dir, str(script), str(base / "state" / "s.json")],
                                  capture_output=True, text=True, timeout=60, preexec_fn=as_nobody, check=False)
            assert proc.returncode == 0, proc.stderr
            got = json.loads(proc.stdout)
            assert [(e["event"], e["errno"], e["path"]) for e in got["logs"]] == [
                ("state_write_failed", "EACCES", str(base / "state" / "s.json"))]
            assert got["listing"] == [] and got["again"] == [False, "this environment was already tried"]
        finally:
            shutil.rmtree(base, ignore_errors=True)
