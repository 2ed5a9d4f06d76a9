"""The configuration file reader (issue 15, items 2 and 8): regular files only, size and line caps, cut echoes,
a bare `export` refused, and an unreadable optional file skipped while a named one is an error."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.envfile import MAX_FILE_BYTES, MAX_LINE_BYTES, ConfigError, clip, read_env_file
from tests.cli_helpers import REPO, assert_no_traceback, clean_env, run_cli
from tests.serve_helpers import as_nobody, command_for_nobody


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The run failed with exit 2 and said so in exactly one line, without a traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert_no_traceback(proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ollama-gpu: configuration error: ")
    return lines[0]


class TestNotARegularFile:
    def test_dev_zero_as_env_file(self, tmp_path: Path) -> None:
        """`--env-file /dev/zero` is refused at once (it used to be read until memory ran out)."""
        line = one_error_line(run_cli(["--env-file", "/dev/zero", "config"], clean_env(tmp_path), timeout=20))
        assert line.endswith("/dev/zero: is a character device, not a regular file")

    def test_dev_zero_as_system_file(self, tmp_path: Path) -> None:
        """The system file goes through the same reader: a device there is the same one-line error."""
        env = clean_env(tmp_path, {"OGPU_SYSTEM_CONFIG": "/dev/urandom"})
        line = one_error_line(run_cli(["config"], env, timeout=20))
        assert "/dev/urandom: is a character device, not a regular file" in line

    def test_fifo_does_not_hang(self, tmp_path: Path) -> None:
        """A FIFO with no writer is refused without blocking on open."""
        fifo = tmp_path / "pipe.env"
        os.mkfifo(fifo)
        line = one_error_line(run_cli(["--env-file", str(fifo), "config"], clean_env(tmp_path), timeout=20))
        assert line.endswith(f"{fifo}: is a FIFO, not a regular file")

    def test_socket(self, tmp_path: Path) -> None:
        """A Unix socket (open() gives ENXIO) is named as one."""
        path = tmp_path / "s.env"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
            line = one_error_line(run_cli(["--env-file", str(path), "config"], clean_env(tmp_path), timeout=20))
        assert line.endswith(f"{path}: is a socket, not a regular file")

    def test_directory(self, tmp_path: Path) -> None:
        """A directory named as the user's file is refused, naming it."""
        user = tmp_path / "home" / ".config" / "ollama-gpu" / "ollama-gpu.env"
        user.mkdir(parents=True)
        line = one_error_line(run_cli(["config"], clean_env(tmp_path)))
        assert line.endswith(f"{user}: is a directory, not a regular file")


    def test_home_that_is_not_a_directory(self, tmp_path: Path) -> None:
        """HOME=/dev/null (some service users have it): there is no user file, nothing to refuse."""
        proc = run_cli(["config", "--json"], clean_env(tmp_path, {"HOME": "/dev/null"}))
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["settings"]["OGPU_MODE"]["source"] == "default"


class TestLimits:
    def test_file_over_the_size_limit(self, tmp_path: Path) -> None:
        """A file of more than MAX_FILE_BYTES is refused with the limit stated, even if every line is a comment."""
        big = write(tmp_path / "big.env", ("#" * 1000 + "\n") * (MAX_FILE_BYTES // 1001 + 1))
        line = one_error_line(run_cli(["--env-file", str(big), "config"], clean_env(tmp_path)))
        assert f"{big}: is {big.stat().st_size} bytes, more than the limit of {MAX_FILE_BYTES} bytes" in line

    def test_file_at_the_size_limit_is_read(self, tmp_path: Path) -> None:
        """Exactly MAX_FILE_BYTES is still a configuration file."""
        filler = "#" * 99 + "\n"
        body = "OGPU_MODE=observe\n"
        text = body + filler * ((MAX_FILE_BYTES - len(body)) // len(filler))
        text += "#" * (MAX_FILE_BYTES - len(text) - 1) + "\n"
        path = write(tmp_path / "full.env", text)
        assert path.stat().st_size == MAX_FILE_BYTES
        assert read_env_file(path, required=True) == [("OGPU_MODE", "observe", 1)]

    def test_line_over_the_line_limit(self, tmp_path: Path) -> None:
        """A line longer than MAX_LINE_BYTES is refused naming file:line and the limit."""
        path = write(tmp_path / "long.env", "OGPU_MODE=auto\nOLLAMA_ORIGINS=" + "x" * MAX_LINE_BYTES + "\n")
        line = one_error_line(run_cli(["--env-file", str(path), "config"], clean_env(tmp_path)))
        assert f"{path}:2: line is {MAX_LINE_BYTES + 15} bytes, more than the limit of {MAX_LINE_BYTES} bytes" in line

    def test_nul_byte(self, tmp_path: Path) -> None:
        """A NUL byte (no environment variable can hold one) is refused with its line."""
        path = write(tmp_path / "nul.env", b"OGPU_MODE=auto\nOLLAMA_X=a\0b\n")
        line = one_error_line(run_cli(["--env-file", str(path), "config"], clean_env(tmp_path)))
        assert f"{path}:2: contains a NUL byte" in line


class TestEchoedValuesAreCut:
    def test_long_value_from_a_file(self, tmp_path: Path) -> None:
        """A long bad value is echoed as its first 80 characters and its size, not whole."""
        path = write(tmp_path / "v.env", "OGPU_MODE=" + "y" * 60000 + "\n")
        line = one_error_line(run_cli(["--env-file", str(path), "config"], clean_env(tmp_path)))
        assert f"{path}:1: OGPU_MODE={'y' * 80!r}… (60000 bytes): expected one of auto" in line
        assert len(line) < 300

    def test_long_value_from_the_environment(self, tmp_path: Path) -> None:
        """The same cut applies to the environment layer."""
        env = clean_env(tmp_path, {"OGPU_RESTART_MAX": "9" * 100000})
        line = one_error_line(run_cli(["config"], env))
        assert f"environment: OGPU_RESTART_MAX={'9' * 80!r}… (100000 bytes): expected a whole number" in line

    def test_long_unparsable_line(self, tmp_path: Path) -> None:
        """A malformed line is cut the same way."""
        path = write(tmp_path / "m.env", "not an assignment " + "z" * 5000 + "\n")
        line = one_error_line(run_cli(["--env-file", str(path), "config"], clean_env(tmp_path)))
        assert f"{path}:1: cannot parse " in line and "… (5018 bytes): expected KEY=VALUE" in line

    def test_clip_keeps_short_text_whole(self) -> None:
        """Short text is shown whole; long text keeps 80 characters and states its size in bytes (UTF-8)."""
        assert clip("auto") == "'auto'"
        assert clip("é" * 81) == repr("é" * 80) + "… (162 bytes)"


class TestExport:
    @pytest.mark.parametrize("text", ["export\n", "export \n", "  export   # nothing\n"])
    def test_bare_export_is_an_error_with_file_and_line(self, tmp_path: Path, text: str) -> None:
        """A bare `export` line is an error naming file:line (it used to pass a variable named `export`)."""
        path = write(tmp_path / "e.env", "OGPU_MODE=auto\n" + text)
        line = one_error_line(run_cli(["--env-file", str(path), "config"], clean_env(tmp_path)))
        assert f"{path}:2: a bare `export`: expected KEY=VALUE" in line

    def test_name_without_value_is_an_error(self, tmp_path: Path) -> None:
        """`export KEY` without '=' is an error too: it would pass an empty KEY to Ollama."""
        path = write(tmp_path / "e.env", "\nexport OLLAMA_KEEP_ALIVE\n")
        with pytest.raises(ConfigError, match=r"e\.env:2: 'export OLLAMA_KEEP_ALIVE' has no '='"):
            read_env_file(path, required=True)

    def test_export_assignment_is_accepted(self, tmp_path: Path) -> None:
        """`export KEY=VALUE` is an assignment, as in a shell."""
        path = write(tmp_path / "e.env", "export OGPU_MODE=observe\n")
        assert read_env_file(path, required=True) == [("OGPU_MODE", "observe", 1)]


@pytest.fixture
def foreign_home() -> Iterator[Path]:
    """A home directory whose ~/.config file belongs to root (0600), readable by no one else."""
    if os.geteuid() != 0:
        pytest.fail("this test switches to uid 65534 and must run as root (as CI does)")
    base = Path(tempfile.mkdtemp(prefix="ogpu-envfile-"))  # pytest's tmp_path is closed to other users
    try:
        base.chmod(0o755)
        user = write(base / "home" / ".config" / "ollama-gpu" / "ollama-gpu.env", "OGPU_MODE=observe\n")
        for p in (base / "home", base / "home" / ".config", user.parent):
            p.chmod(0o755)
        user.chmod(0o600)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_as_nobody(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command_for_nobody(), *args], env=env, capture_output=True, text=True, timeout=60,
                          preexec_fn=as_nobody, check=False)


class TestUnreadableFiles:
    def test_optional_user_file_is_skipped_with_a_debug_line(self, foreign_home: Path) -> None:
        """Another user's ~/.config file (HOME left pointing at it, as `sudo -u` does) is skipped: exit 0, and a
        debug line says so; nothing at the default level."""
        env = clean_env(foreign_home, {"OGPU_LOG_FORMAT": "json"})
        user = foreign_home / "home" / ".config" / "ollama-gpu" / "ollama-gpu.env"
        quiet = run_as_nobody(["config", "--json"], env)
        assert quiet.returncode == 0, quiet.stderr
        assert quiet.stderr == ""
        info = json.loads(quiet.stdout)
        assert info["settings"]["OGPU_MODE"]["source"] == "default"
        assert info["files_skipped"] == [{"path": str(user), "reason": "cannot be read (permission denied): skipped"}]
        debug = run_as_nobody(["--log-level", "debug", "config", "--json"], env)
        assert debug.returncode == 0, debug.stderr
        events = [json.loads(line) for line in debug.stderr.splitlines()]
        assert [(e["event"], e["level"], e["path"]) for e in events] == [("config_file_skipped", "debug", str(user))]

    def test_named_file_is_an_error(self, foreign_home: Path) -> None:
        """The same file named with --env-file is an error: one line, exit 2."""
        user = foreign_home / "home" / ".config" / "ollama-gpu" / "ollama-gpu.env"
        proc = run_as_nobody(["--env-file", str(user), "config"], clean_env(foreign_home / "elsewhere"))
        assert one_error_line(proc) == f"ollama-gpu: configuration error: {user}: cannot be read (permission denied)"

    def test_unreadable_system_file_is_a_warning(self, foreign_home: Path) -> None:
        """The administrator's system file that the service user may not read is skipped with a warning, not
        silently: the settings in it are not in force."""
        system = foreign_home / "home" / ".config" / "ollama-gpu" / "ollama-gpu.env"
        env = clean_env(foreign_home / "elsewhere", {"OGPU_SYSTEM_CONFIG": str(system), "OGPU_LOG_FORMAT": "json"})
        proc = run_as_nobody(["config", "--json"], env)
        assert proc.returncode == 0, proc.stderr
        events = [json.loads(line) for line in proc.stderr.splitlines()]
        assert [(e["event"], e["level"], e["where"]) for e in events] == [("config_warning", "warning", str(system))]
        assert "permission denied" in events[0]["problem"]


def test_readme_states_the_limits_the_code_enforces() -> None:
    """The README's configuration section names the same limits as the reader."""
    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"at most 1 MiB ({MAX_FILE_BYTES} bytes), lines of at most 64 KiB ({MAX_LINE_BYTES} bytes)" in readme
    assert "cut to its first 80 characters and its size" in readme
