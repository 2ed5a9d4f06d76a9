"""Crash-loop backoff and the persistent remedy budget."""

from __future__ import annotations

from pathlib import Path

from launcher.restarts import CrashBudget, RemedyBudget, fingerprint


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

    def test_fingerprint_is_order_independent(self) -> None:
        """The same patch in another order is the same environment."""
        assert fingerprint({"A": "1", "B": None}) == fingerprint({"B": None, "A": "1"})
        assert fingerprint({"A": "1"}) != fingerprint({"A": "2"})
