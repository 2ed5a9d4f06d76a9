"""The command line itself: version, help on every command, exit codes defined in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher import __version__
from launcher.commands import COMMANDS
from launcher.exitcodes import Exit, VerdictExit, signal_exit, verdict_exit
from tests.cli_helpers import clean_env, run_cli


def test_version(tmp_path: Path) -> None:
    """--version prints the package version and exits 0."""
    proc = run_cli(["--version"], clean_env(tmp_path))
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"ollama-gpu {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(tmp_path: Path, command: str) -> None:
    """Every registered command answers --help with its usage."""
    proc = run_cli([command, "--help"], clean_env(tmp_path))
    assert proc.returncode == 0
    assert f"usage: ollama-gpu {command}" in proc.stdout


def test_top_level_help_lists_commands(tmp_path: Path) -> None:
    """The top-level help lists each registered command and the settings flags."""
    proc = run_cli(["--help"], clean_env(tmp_path))
    assert proc.returncode == 0
    for command in COMMANDS:
        assert command in proc.stdout
    assert "--env-file" in proc.stdout and "--mode" in proc.stdout


def test_no_command_is_usage_error(tmp_path: Path) -> None:
    """Without a command: usage on stderr, exit 2."""
    proc = run_cli([], clean_env(tmp_path))
    assert proc.returncode == Exit.USAGE
    assert "usage:" in proc.stderr


def test_exit_code_table() -> None:
    """Exit codes as DESIGN.md lists them."""
    assert [int(e) for e in (Exit.OK, Exit.USAGE, Exit.NOT_RUNNING, Exit.NO_GPU_REQUIRED, Exit.CRASH_LOOP)] == [
        0, 2, 3, 4, 5]
    assert signal_exit(15) == 143
    assert [verdict_exit(o) for o in ("gpu", "cpu_expected", "cpu_fallback", "partial_offload", "crash")] == [
        0, 0, 1, 1, 1]
    assert verdict_exit("unknown") == VerdictExit.UNKNOWN == verdict_exit("nonsense")
