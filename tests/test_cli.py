"""The command line itself: version, help on every command, exit codes defined in one place."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from launcher import __version__
from launcher.cli import split_serve
from launcher.commands import COMMANDS
from launcher.exitcodes import Exit, VerdictExit, signal_exit, verdict_exit
from tests.cli_helpers import REPO, clean_env, run_cli


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
    """Without a command: one usage-error line on stderr, exit 2."""
    proc = run_cli([], clean_env(tmp_path))
    assert proc.returncode == Exit.USAGE
    assert proc.stderr == ("ollama-gpu: usage error: the following arguments are required: COMMAND "
                           "(see `ollama-gpu --help`)\n")


class TestUsageErrors:
    """Issue 15, item 8: a usage error is one line and exit 2, not the whole usage."""

    @pytest.mark.parametrize(("argv", "prog", "says"), [
        (["frobnicate"], "ollama-gpu", "argument COMMAND: invalid choice: 'frobnicate'"),
        (["--mode"], "ollama-gpu", "argument --mode: expected one argument"),
        (["shim"], "ollama-gpu shim", "the following arguments are required: ACTION"),
        (["status", "--bogus"], "ollama-gpu", "unrecognized arguments: --bogus"),
        (["shim", "build", "--output"], "ollama-gpu shim build", "argument --output: expected one argument"),
    ])
    def test_one_line_exit_2(self, tmp_path: Path, argv: list[str], prog: str, says: str) -> None:
        """The message, a pointer to --help, exit 2; no usage dump, no traceback."""
        proc = run_cli(argv, clean_env(tmp_path))
        assert proc.returncode == Exit.USAGE
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"{prog}: usage error: {says}")
        assert "usage:" not in proc.stderr

    def test_setting_flag_after_the_command_gets_a_hint(self, tmp_path: Path) -> None:
        """A settings flag written after the command says where it belongs."""
        proc = run_cli(["config", "--restart-max", "1"], clean_env(tmp_path))
        assert proc.returncode == Exit.USAGE
        assert proc.stderr == ("ollama-gpu: usage error: unrecognized arguments: --restart-max 1 (settings flags go "
                               "before the command, e.g. `ollama-gpu --restart-max 1 serve`)\n")


class TestServeArguments:
    def test_serve_help_says_where_arguments_go(self, tmp_path: Path) -> None:
        """`serve --help` explains that every other argument goes to `ollama serve` and where our settings go."""
        proc = run_cli(["serve", "--help"], clean_env(tmp_path))
        assert proc.returncode == 0
        text = " ".join(proc.stdout.split())
        assert "Every argument after `serve` goes to `ollama serve` unchanged" in text
        assert "ollama-gpu --mode advise serve" in text

    def test_options_after_serve_reach_ollama(self, tmp_path: Path) -> None:
        """Options after `serve` are Ollama's, not usage errors (they were: `unrecognized arguments`); a leading
        `--` is dropped so `serve -- --help` asks Ollama. Mode off execs the binary, here /bin/echo."""
        env = clean_env(tmp_path)
        echo = ["--mode", "off", "--ollama", "/bin/echo", "serve"]
        proc = run_cli([*echo, "--verbose", "-x", "a b"], env)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "serve --verbose -x a b\n", "")
        assert run_cli([*echo, "--", "--help"], env).stdout == "serve --help\n"

    @pytest.mark.parametrize(("argv", "ours", "theirs"), [
        (["serve"], ["serve"], []),
        (["--mode", "advise", "serve", "-v"], ["--mode", "advise", "serve"], ["-v"]),
        (["--ollama", "serve", "serve", "x"], ["--ollama", "serve", "serve"], ["x"]),
        (["serve", "--", "--help"], ["serve"], ["--help"]),
        (["serve", "--help"], ["serve", "--help"], None),
        (["config", "--json"], ["config", "--json"], None),
        (["--help", "serve"], ["--help", "serve"], None),
    ])
    def test_split(self, argv: list[str], ours: list[str], theirs: list[str] | None) -> None:
        """Where argv splits between our parser and `ollama serve`."""
        assert split_serve(argv) == (ours, theirs)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_no_file_users_do_not_have(tmp_path: Path, command: str) -> None:
    """No --help points at DESIGN.md or another repository file an installed user does not have."""
    proc = run_cli([command, "--help"], clean_env(tmp_path))
    assert proc.returncode == 0
    assert not re.search(r"\b[\w/-]+\.md\b", proc.stdout), proc.stdout


def test_status_help_lists_its_exit_codes(tmp_path: Path) -> None:
    """`status --help` states its exit codes itself (it used to say "per DESIGN.md")."""
    text = " ".join(run_cli(["status", "--help"], clean_env(tmp_path)).stdout.split())
    assert "exit codes: 0 every verdict is gpu" in text
    assert "1 a cpu_fallback, partial_offload or crash" in text and "3 no supervisor answers" in text


def test_exit_code_table() -> None:
    """Exit codes as DESIGN.md lists them."""
    assert [int(e) for e in (Exit.OK, Exit.USAGE, Exit.NOT_RUNNING, Exit.NO_GPU_REQUIRED, Exit.CRASH_LOOP)] == [
        0, 2, 3, 4, 5]
    assert signal_exit(15) == 143
    assert [verdict_exit(o) for o in ("gpu", "cpu_expected", "cpu_fallback", "partial_offload", "crash")] == [
        0, 0, 1, 1, 1]
    assert verdict_exit("unknown") == VerdictExit.UNKNOWN == verdict_exit("nonsense")


def test_ollama_not_executable_exits_126(tmp_path: Path, cache_dir: Path) -> None:
    """An OGPU_OLLAMA that exists but may not be executed: exit 126 (127 when missing), as a shell reports it, with one
    error line naming the fix (the README's exit codes list both)."""
    binary = tmp_path / "ollama"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o644)
    env = clean_env(tmp_path, {"CACHE_DIRECTORY": str(cache_dir), "RUNTIME_DIRECTORY": str(tmp_path / "run"),
                               "STATE_DIRECTORY": str(tmp_path / "state"), "OGPU_LOG_FORMAT": "json",
                               "OLLAMA_HOST": "127.0.0.1:1"})
    proc = run_cli(["--ollama", str(binary), "serve"], env, timeout=120)
    assert proc.returncode == 126, proc.stderr
    errors = [json.loads(line) for line in proc.stderr.splitlines() if '"ollama_not_started"' in line]
    assert len(errors) == 1 and "OGPU_OLLAMA" in errors[0]["hint"] and "Permission denied" in errors[0]["error"]


def test_readme_documents_ollama_exit_codes() -> None:
    """The README's exit codes say what 126, 127 and OGPU_RESTART_MAX=0 give (issue 15, item 8)."""
    readme = " ".join((REPO / "README.md").read_text().split())
    start = readme.index("Exit codes:")
    section = readme[start:readme.index("## ", start)]
    assert "126 the Ollama binary (`OGPU_OLLAMA`) exists but cannot be executed" in section
    assert "127 it was not found" in section
    assert "`OGPU_RESTART_MAX=0`" in section and "Ollama's own exit code" in section
