"""Run the real `ollama-gpu` CLI as a subprocess with a controlled environment and config layers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def clean_env(tmp: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment with no OGPU_ keys, no systemd/XDG directories and a system config file under `tmp`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OGPU_")}
    for key in ("RUNTIME_DIRECTORY", "CACHE_DIRECTORY", "STATE_DIRECTORY", "XDG_RUNTIME_DIR", "XDG_CACHE_HOME",
                "XDG_STATE_HOME", "XDG_CONFIG_HOME", "NOTIFY_SOCKET", "OLLAMA_HOST"):
        env.pop(key, None)
    env["HOME"] = str(tmp / "home")
    env["OGPU_SYSTEM_CONFIG"] = str(tmp / "etc" / "ollama-gpu.env")
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


def run_cli(args: Sequence[str], env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m launcher.cli ARGS`; stdin closed, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        env=dict(env), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False,
    )


def config_json(args: Sequence[str], env: Mapping[str, str]) -> dict[str, Any]:
    """`ollama-gpu [ARGS] config --json`, parsed; fails the test on a non-zero exit."""
    proc = run_cli([*args, "config", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_no_traceback(text: str) -> None:
    """Bad input must never show the operator a Python traceback."""
    assert "Traceback (most recent call last)" not in text, text
