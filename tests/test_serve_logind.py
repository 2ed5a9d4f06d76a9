"""Issue 16, item 2 end to end: `ollama-gpu serve` over the simulator and the mock NVML, with a fake `gdbus` first on
PATH and a fake system bus socket. logind's PrepareForSleep(false) makes the supervisor check the GPUs and probe CUDA
at once, one resume per sleep, with no warning and no restart; on a machine without a system bus nothing is started
and nothing is said above debug; the listener never outlives serve."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.logind_double import FakeTool
from tests.ollama_sim import native
from tests.serve_helpers import wait_for
from tests.test_serve_health import health, recorded, start


def path_with(tool: FakeTool) -> str:
    return f"{tool.dir}:{os.environ.get('PATH', os.defpath)}"


def warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if '"level": "warning"' in line or '"level": "error"' in line]


def test_logind_resume_checks_the_gpus_at_once_and_only_once(tmp_path: Path, libs: native.NativeLibs,
                                                              cache_dir: Path) -> None:
    """PrepareForSleep true then false: `host_going_to_sleep`, one `resumed` event via logind, a health check and
    the CUDA probe (ok) right away; two more health intervals add no resume; no warning, no restart; at stop the
    tool is gone."""
    tool = FakeTool(tmp_path / "dbus")
    run, _script = start(tmp_path, libs, cache_dir, PATH=path_with(tool),
                         DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={tool.bus}")
    try:
        health(run, "ok")
        run.serve.wait_event("logind_listening", tool="gdbus")
        restarts = run.status()[1]["restarts"]
        tool.sleep_and_resume()
        run.serve.wait_event("host_going_to_sleep", via="logind")
        resumed = wait_for(lambda: [e for e in recorded(tmp_path) if e.kind == "resumed"], what="resumed")
        assert resumed[0].data["via"] == "logind"
        probe = wait_for(lambda: [e for e in recorded(tmp_path) if e.kind == "cuda_probe"], what="the CUDA probe")
        assert len(probe) == 1 and probe[0].data["ok"] is True
        wait_for(lambda: sum(1 for e in recorded(tmp_path) if e.kind == "memory" and e.t > resumed[0].t + 2.2),
                 what="two more health intervals")
        assert [e.kind for e in recorded(tmp_path) if e.kind in ("resumed", "cuda_probe")] == ["resumed", "cuda_probe"]
        status = run.status()[1]
        assert len(status["gpu_health"]["resumes"]) == 1 and status["restarts"] == restarts
        assert status["gpu_health"]["advice"] == [] and status["remedies"]["applied"] == []
        assert status["gpu_health"]["resume_signal"] == {"via": "logind", "tool": "gdbus", "state": "listening"}
        text = subprocess.run([sys.executable, "-m", "launcher.cli", "status"], env=run.env, capture_output=True,
                              text=True, timeout=30, check=False).stdout
        assert "Resumes: announced by logind (gdbus), and the clock gap." in text
        assert warnings(run.serve.err) == []
        assert tool.argv()[0].endswith("monitor --system --dest org.freedesktop.login1 --object-path "
                                       "/org/freedesktop/login1")
    finally:
        assert run.serve.stop() == 0
    assert tool.alive() == []


def test_without_a_system_bus_nothing_is_started_nor_said(tmp_path: Path, libs: native.NativeLibs,
                                                          cache_dir: Path) -> None:
    """No bus socket (a D-Bus-less box or container): the tool is never run, one debug line says why, no line above
    debug mentions logind, and health checks go on."""
    tool = FakeTool(tmp_path / "dbus", bus=False)
    run, _script = start(tmp_path, libs, cache_dir, PATH=path_with(tool), OGPU_LOG_LEVEL="debug",
                         DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={tool.bus}")
    try:
        health(run, "ok")
        wait_for(lambda: run.events("logind_not_followed"), what="the debug line")
        [line] = run.events("logind_not_followed")
        assert line["level"] == "debug" and str(tool.bus) in str(line["reason"])
        assert tool.argv() == []
        assert [e for e in run.serve.events() if "logind" in str(e.get("event")) and e.get("level") != "debug"] == []
        assert warnings(run.serve.err) == []
        assert run.status()[1]["gpu_health"]["resume_signal"] is None
    finally:
        assert run.serve.stop() == 0
