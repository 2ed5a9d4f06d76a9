"""Issue 16, `fabric_manager_not_running` end to end: an NVSwitch machine whose fabric manager stops after start. The
GPU was discovered at start; then new runners get cuInit 802 (the test swaps the libcuda.so.1 that a directory on
LD_LIBRARY_PATH links to for a mock whose cuInit returns 802; each runner resolves it afresh). The verdict names the
cause, status advises starting nvidia-fabricmanager, readiness stays up, and nothing is restarted, however idle
Ollama is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.native.build import native_build
from tests.nvml_double import NvmlScript
from tests.ollama_sim import native
from tests.serve_helpers import descendants, wait_for
from tests.test_serve_health import recorded
from tests.test_serve_remedies import Run, discovery


def swap(link: Path, target: Path) -> None:
    """Point `link` at `target` atomically (a runner starting meanwhile sees the old or the new driver)."""
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def test_fabric_manager_stopped_after_start_is_advised_never_restarted(tmp_path: Path, libs: native.NativeLibs,
                                                                        cache_dir: Path) -> None:
    """Discovery found the GPU; a runner started after the fabric manager stopped gets cuInit 802: its verdict is
    `fabric_manager_not_running`, status says to start nvidia-fabricmanager, `status --ready` exits 0, Ollama keeps
    serving; idle, through further health checks, no restart."""
    driver = tmp_path / "driver"
    driver.mkdir()
    link = driver / "libcuda.so.1"
    swap(link, libs.driver_dir / "libcuda.so.1")
    script = NvmlScript(tmp_path / "nvml.state")
    script.set(count=1)
    run = Run(tmp_path, libs, cache_dir, ld_library_path=f"{driver}:{native_build().mock_nvml_dir}",
              MOCKNVML_STATE=str(script.path), OGPU_HEALTH_INTERVAL="1", OGPU_RECORD=str(tmp_path / "events.jsonl"))
    try:
        run.ready()
        run.wait_status(lambda s: discovery(s) == ("gpu", "none"), "gpu discovery")
        swap(link, native_build().mock_fabric_dir / "libcuda.so.1")
        assert run.generate()["done"] is True  # served, on the CPU
        status = run.wait_status(lambda s: s["runners"] and s["runners"][-1]["cause"] == "fabric_manager_not_running",
                                 "the runner's verdict")
        assert status["runners"][-1]["outcome"] != "gpu"
        assert "nvidia-fabricmanager" in status["what_to_do"]
        assert any(a["cause"] == "fabric_manager_not_running" for a in run.events("advice"))
        ready = subprocess.run([sys.executable, "-m", "launcher.cli", "status", "--ready"], env=run.env,
                               capture_output=True, text=True, timeout=30, check=False)
        assert ready.returncode == 0, ready.stdout
        for runner in [p for p in descendants(run.serve.pid) if "--model" in p.cmdline()]:
            os.kill(runner.pid, signal.SIGKILL)  # the model is unloaded: Ollama is idle, a restart would be allowed
        idle = max(e.t for e in recorded(tmp_path))
        wait_for(lambda: sum(1 for e in recorded(tmp_path) if e.kind == "memory" and e.t > idle + 2.2), timeout=30,
                 what="two health intervals while idle")
        status = run.status()[1]
        assert status["restarts"] == 0 and status["remedies"]["applied"] == []
        assert run.events("restarting") == [] and run.events("restart_deferred") == []
    finally:
        assert run.stop() == 0
