"""The systemd units of ollama-gpu, rendered from one source: the drop-in for Ollama's unit and a standalone unit.

packaging/systemd/ holds these renderings for the default install path; tests keep them equal.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Final

DEFAULT_EXEC: Final = Path("/opt/ollama-gpu/venv/bin/ollama-gpu")
DEFAULT_STOP_GRACE: Final = 10.0
DEFAULT_READY_TIMEOUT: Final = 120.0
# systemd's stop timeout = our grace + Ollama's own shutdown + our 5 s reap after KILL, with room to spare.
STOP_MARGIN_S: Final = 20
# systemd's start timeout (default 90 s) must outlast a first shim compile plus OGPU_READY_TIMEOUT.
START_MARGIN_S: Final = 60
# systemd's watchdog: the loop wakes at least every second, so 30 s only trips on a loop that is truly stuck.
WATCHDOG_S: Final = 30

_HEADER = """\
# Installed by `ollama-gpu systemd install`; `ollama-gpu systemd uninstall` removes it.
# Settings live in /etc/ollama-gpu/ollama-gpu.env, which ollama-gpu reads itself (no EnvironmentFile= here).
# No SupplementaryGroups=render: it fails where that group does not exist. If /dev/nvidia* or /dev/dri need a
# group, add the service user to it (`usermod -aG video,render ollama`); see docs/install.md.
# No sandboxing (PrivateDevices=, DevicePolicy=, ProtectKernelModules=...): it would hide /dev/nvidia*.
"""

_SERVICE_BODY = """\
Type=notify
NotifyAccess=main
{exec_start}
# SIGTERM reaches ollama-gpu alone; it stops Ollama's process group (OGPU_STOP_GRACE, then KILL) and reaps it.
KillMode=mixed
TimeoutStartSec={start_timeout}
TimeoutStopSec={stop_timeout}
# The supervisor's loop sends WATCHDOG=1 every WatchdogSec/2 while it turns (from READY=1 on); a stuck loop is
# killed and restarted by systemd. OGPU_MODE=off turns the watchdog off (WATCHDOG_USEC=0) before it execs Ollama.
WatchdogSec={watchdog}
Restart=on-failure
RestartSec=3
# Exit 2 is bad configuration: restarting cannot fix it.
RestartPreventExitStatus=2
RuntimeDirectory=ollama-gpu
RuntimeDirectoryMode=0700
StateDirectory=ollama-gpu
StateDirectoryMode=0700
CacheDirectory=ollama-gpu
CacheDirectoryMode=0700
"""


def _timeouts(stop_grace: float, ready_timeout: float) -> dict[str, int]:
    return {"stop_timeout": math.ceil(stop_grace) + STOP_MARGIN_S,
            "start_timeout": math.ceil(ready_timeout) + START_MARGIN_S, "watchdog": WATCHDOG_S}


def render_dropin(exec_path: Path = DEFAULT_EXEC, stop_grace: float = DEFAULT_STOP_GRACE,
                  ready_timeout: float = DEFAULT_READY_TIMEOUT) -> str:
    """ollama.service.d/ollama-gpu.conf: the official unit (user `ollama`) runs `ollama-gpu serve` instead."""
    body = _SERVICE_BODY.format(exec_start=f"ExecStart=\nExecStart={exec_path} serve",
                                **_timeouts(stop_grace, ready_timeout))
    return ("# ollama-gpu: run the official ollama.service under `ollama-gpu serve`.\n" + _HEADER
            + "\n[Service]\n" + body)


def render_service(exec_path: Path = DEFAULT_EXEC, stop_grace: float = DEFAULT_STOP_GRACE,
                   ready_timeout: float = DEFAULT_READY_TIMEOUT) -> str:
    """ollama-gpu.service: a unit of its own, for hosts without Ollama's unit (same user and directories)."""
    body = _SERVICE_BODY.format(exec_start=f"ExecStart={exec_path} serve", **_timeouts(stop_grace, ready_timeout))
    return ("# ollama-gpu: `ollama serve` supervised by ollama-gpu, as a unit of its own.\n" + _HEADER
            + "\n[Unit]\nDescription=Ollama under ollama-gpu (GPU use proven, fallbacks explained)\n"
            "After=network-online.target\nWants=network-online.target\nConflicts=ollama.service\n"
            "\n[Service]\nUser=ollama\nGroup=ollama\n" + body
            + "\n[Install]\nWantedBy=multi-user.target\n")
