"""Our log lines: JSON lines when not on a terminal, a console renderer on one; always `logger=ollama-gpu`."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pexpect

from launcher import log as logsetup
from tests.cli_helpers import REPO, clean_env, run_cli


class TestJson:
    def test_one_object_per_line(self) -> None:
        """Each event is one JSON object on its own line, tagged with our logger name and level."""
        out = io.StringIO()
        log = logsetup.configure("json", "info", out)
        log.info("ready", pid=12, host="127.0.0.1:11434")
        log.warning("two\nlines", detail="a\nb")
        log.debug("hidden")
        lines = out.getvalue().splitlines()
        assert len(lines) == 2
        first, second = (json.loads(line) for line in lines)
        assert first["event"] == "ready" and first["pid"] == 12 and first["level"] == "info"
        assert first["logger"] == "ollama-gpu"
        assert second["event"] == "two\nlines" and second["detail"] == "a\nb"

    def test_level_filters(self) -> None:
        """OGPU_LOG_LEVEL=error drops warnings."""
        out = io.StringIO()
        log = logsetup.configure("json", "error", out)
        log.warning("dropped")
        log.error("kept")
        assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["kept"]

    def test_cli_warning_is_json_when_piped(self, tmp_path: Path) -> None:
        """Through the real CLI with stderr on a pipe, our warning is one JSON line."""
        proc = run_cli(["config"], clean_env(tmp_path, {"OGPU_MODDE": "auto"}))
        lines = proc.stderr.splitlines()
        assert len(lines) == 1
        obj = json.loads(lines[0])
        assert obj["logger"] == "ollama-gpu"
        assert obj["event"] == "config_warning"
        assert obj["suggestion"] == "OGPU_MODE"


class TestConsole:
    def test_console_on_tty(self, tmp_path: Path) -> None:
        """On a terminal (pexpect), the same warning is a readable key=value line, not JSON."""
        env = clean_env(tmp_path, {"OGPU_MODDE": "auto", "NO_COLOR": "1", "COLUMNS": "200"})
        child = pexpect.spawn(sys.executable, ["-m", "launcher.cli", "config"], env=env, cwd=str(REPO),
                              encoding="utf-8", timeout=30)
        child.expect("config_warning")
        line = child.readline()
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert "suggestion=OGPU_MODE" in line
        assert "[ollama-gpu]" in line  # the console renderer shows the logger name in brackets
        assert not line.lstrip().startswith("{")

    def test_forced_console_without_tty(self) -> None:
        """OGPU_LOG_FORMAT=console forces the console renderer on a pipe."""
        out = io.StringIO()
        logsetup.configure("console", "info", out).info("ready", pid=3)
        text = out.getvalue()
        assert "ready" in text and "pid=3" in text and "[ollama-gpu]" in text
        assert not text.startswith("{")
        assert "\x1b[" not in text  # no colour codes on a pipe
