"""`ollama-gpu explain` end to end through the real CLI process: output, --json, stdin, exit codes, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import assert_no_traceback, clean_env, run_cli

T = "time=2025-01-01T00:00:00.000Z level=INFO source=x.go:1 "
GPU_LOG = "ggml_cuda_init: found 1 CUDA devices:\nload_tensors: offloaded 33/33 layers to GPU\n" \
          "load_tensors:        CUDA0 model buffer size =  4403.49 MiB\n"
FALLBACK_LOG = "ggml_cuda_init: failed to initialize CUDA: CUDA driver version is insufficient for CUDA runtime " \
               "version\nload_backend: loaded CUDA backend from /usr/lib/ollama/cuda_v13/libggml-cuda.so\n"
CPU_LOG = f'{T}msg="inference compute" id=cpu library=cpu compute="" name=cpu total="23.5 GiB"\n'


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return clean_env(tmp_path)


def write(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "server.log"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


class TestExitCodes:
    @pytest.mark.parametrize(("log", "code"), [(GPU_LOG, 0), (CPU_LOG, 0), (FALLBACK_LOG, 1), ("hello\n", 3)])
    def test_exit_code_follows_the_outcome(self, tmp_path: Path, env: dict[str, str], log: str, code: int) -> None:
        """0 gpu/cpu_expected, 1 cpu_fallback, 3 unknown (DESIGN.md exit codes)."""
        proc = run_cli(["explain", write(tmp_path, log)], env)
        assert proc.returncode == code, proc.stderr
        assert_no_traceback(proc.stdout + proc.stderr)

    def test_missing_file_is_unreadable(self, tmp_path: Path, env: dict[str, str]) -> None:
        """A file that does not exist exits 2 with one line, no traceback."""
        proc = run_cli(["explain", str(tmp_path / "nope.log")], env)
        assert proc.returncode == 2
        assert "cannot read" in proc.stderr
        assert_no_traceback(proc.stdout + proc.stderr)

    def test_directory_is_unreadable(self, tmp_path: Path, env: dict[str, str]) -> None:
        """A directory instead of a file exits 2."""
        proc = run_cli(["explain", str(tmp_path)], env)
        assert proc.returncode == 2
        assert_no_traceback(proc.stdout + proc.stderr)

    def test_binary_junk_is_read_without_a_traceback(self, tmp_path: Path, env: dict[str, str]) -> None:
        """Random binary input is an answer (unknown), never a crash of ours."""
        proc = run_cli(["explain", write(tmp_path, bytes(range(256)) * 200 + b"\xff\xfe\x00")], env)
        assert proc.returncode == 3
        assert_no_traceback(proc.stdout + proc.stderr)


class TestOutput:
    def test_text_names_outcome_cause_lines_and_advice(self, tmp_path: Path, env: dict[str, str]) -> None:
        """The text answer has the outcome, the cause, numbered evidence lines and what to do."""
        proc = run_cli(["explain", write(tmp_path, FALLBACK_LOG)], env)
        assert "cpu_fallback (cause: driver_too_old)" in proc.stdout
        assert "line 1:" in proc.stdout
        assert "what to do: " in proc.stdout and "driver" in proc.stdout.split("what to do: ")[1]

    def test_json_is_one_object_with_the_verdict(self, tmp_path: Path, env: dict[str, str]) -> None:
        """--json prints one object with outcome, cause, evidence (line numbers), advice and the exit code."""
        proc = run_cli(["explain", "--json", write(tmp_path, GPU_LOG)], env)
        data = json.loads(proc.stdout)
        assert (data["outcome"], data["cause"], data["exit_code"]) == ("gpu", "none", 0)
        assert {e["line"] for e in data["evidence"]} >= {2}
        assert data["advice"]

    def test_stdin_is_read_with_dash_and_by_default(self, env: dict[str, str]) -> None:
        """`explain -` and `explain` read the log from stdin (e.g. `journalctl -u ollama | ollama-gpu explain`)."""
        journal = "".join(f"Jan 14 16:41:34 host ollama[5]: {line}\n" for line in FALLBACK_LOG.splitlines())
        for args in (["explain", "-", "--json"], ["explain", "--json"]):
            proc = subprocess.run([sys.executable, "-m", "launcher.cli", *args], input=journal.encode(), env=env,
                                  capture_output=True, timeout=60, check=False)
            assert proc.returncode == 1, proc.stderr
            assert json.loads(proc.stdout)["cause"] == "driver_too_old"

    def test_json_on_unreadable_input_is_still_json(self, tmp_path: Path, env: dict[str, str]) -> None:
        """With --json, an unreadable file gives a JSON error object and exit 2."""
        proc = run_cli(["explain", "--json", str(tmp_path / "nope")], env)
        assert proc.returncode == 2
        assert json.loads(proc.stdout)["exit_code"] == 2
