"""Issue 16 end to end: `ollama-gpu serve` over the simulator, the mock CUDA driver and the mock NVML, whose state
the test rewrites while the supervisor runs. A healthy run produces one health event and nothing else; each
unhealthy state shows in status per GPU, with the cause row's advice, never a restart; revoked device access inside
a container fails `status --ready` with the reason."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
from pathlib import Path
from typing import Any

from launcher.events import Event, Replay
from tests.native.build import native_build
from tests.nvml_double import NvmlScript
from tests.ollama_sim import native
from tests.serve_helpers import descendants, wait_for
from tests.test_serve_remedies import Run


def start(tmp_path: Path, libs: native.NativeLibs, cache_dir: Path, gpus: int = 1,
          **env: str) -> tuple[Run, NvmlScript]:
    """A gen-D serve over `gpus` mock GPUs, health checked every second, every event recorded."""
    script = NvmlScript(tmp_path / "nvml.state")
    script.set(count=gpus)
    run = Run(tmp_path, libs, cache_dir, ld_library_path=f"{libs.driver_dir}:{native_build().mock_nvml_dir}",
              MOCKNVML_STATE=str(script.path), MOCKCUDA_DEVICE_COUNT=str(gpus), OGPU_HEALTH_INTERVAL="1",
              OGPU_RECORD=str(tmp_path / "events.jsonl"), **env)
    return run.ready(), script


def recorded(tmp_path: Path) -> list[Event]:
    path = tmp_path / "events.jsonl"
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as stream:
        return list(Replay(stream))


def health(run: Run, state: str) -> dict[str, Any]:
    return run.wait_status(lambda s: (s.get("gpu_health") or {}).get("state") == state, f"gpu health {state}")


def ready(run: Run, probe: str = "--ready") -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "status", probe], env=run.env,
                          capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode, proc.stdout


def test_a_healthy_run_has_one_health_event_and_nothing_else(tmp_path: Path, libs: native.NativeLibs,
                                                             cache_dir: Path) -> None:
    """Healthy GPU, a model loaded, several checks: one gpu_health event (ok), no health warning, no advice, no
    restart, ready."""
    run, _script = start(tmp_path, libs, cache_dir)
    try:
        assert run.generate().get("done") is True
        status = health(run, "ok")
        first = next(e.t for e in recorded(tmp_path) if e.kind == "gpu_health")
        wait_for(lambda: sum(1 for e in recorded(tmp_path) if e.kind == "memory" and e.t > first + 2.2),
                 what="two more health intervals")
        events = recorded(tmp_path)
        assert [e.data["gpus"][0]["state"] for e in events if e.kind == "gpu_health"] == ["ok"]
        assert status["gpu_health"]["advice"] == [] and status["restarts"] == run.status()[1]["restarts"]
        assert ready(run)[0] == 0
        assert "gpu_health_changed" not in run.serve.err and "gpu_xid" not in run.serve.err
    finally:
        assert run.serve.stop() == 0


def test_revoked_access_in_a_container_fails_readiness(tmp_path: Path, libs: native.NativeLibs,
                                                       cache_dir: Path) -> None:
    """NVML "Unknown Error" (999) inside a Kubernetes pod: access_denied, `status --ready` exits 1 naming the
    container restart, and so does `status --live` (the probe that makes the kubelet restart the container); the
    supervisor restarts nothing itself. Access back: ready and alive again."""
    run, script = start(tmp_path, libs, cache_dir, KUBERNETES_SERVICE_HOST="10.0.0.1")
    try:
        health(run, "ok")
        assert ready(run, "--live") == (0, "alive\n")
        restarts = run.status()[1]["restarts"]
        script.set(count=1, all=999)
        status = health(run, "access_denied")
        code, out = ready(run)
        assert code == 1 and "restart the container" in out, out
        code, out = ready(run, "--live")
        assert code == 1 and out.startswith("restart the container: GPU access lost inside the container"), out
        assert status["gpu_health"]["gpus"][0]["cause"] == "container_gpu_access_lost"
        assert status["restarts"] == restarts
        script.set(count=1)
        health(run, "ok")
        assert ready(run)[0] == 0 and ready(run, "--live")[0] == 0
    finally:
        assert run.serve.stop() == 0


def test_driver_mismatch_is_advised_and_readiness_stays_up(tmp_path: Path, libs: native.NativeLibs,
                                                           cache_dir: Path) -> None:
    """NVML_ERROR_LIB_RM_VERSION_MISMATCH after start: status degraded with the reboot advice, ready, no restart."""
    run, script = start(tmp_path, libs, cache_dir, KUBERNETES_SERVICE_HOST="10.0.0.1")
    try:
        health(run, "ok")
        restarts = run.status()[1]["restarts"]
        script.set(count=1, all=18)
        status = health(run, "driver_mismatch")
        assert status["gpu_health"]["degraded"] is True and "reboot" in status["what_to_do"]
        assert ready(run)[0] == 0 and status["restarts"] == restarts
        assert ready(run, "--live")[0] == 0  # a container restart cannot fix a host driver: never asked for
        text = subprocess.run([sys.executable, "-m", "launcher.cli", "status"], env=run.env, capture_output=True,
                              text=True, timeout=30, check=False).stdout
        assert "driver_mismatch" in text
    finally:
        assert run.serve.stop() == 0


def test_a_lost_gpu_among_two_is_marked_and_excluding_it_advised(tmp_path: Path, libs: native.NativeLibs,
                                                                  cache_dir: Path) -> None:
    """GPU 1 of two falls off the bus (Xid 79 through the event set): lost, advice to exclude it, its Xid counted;
    readiness stays up."""
    run, script = start(tmp_path, libs, cache_dir, gpus=2)
    try:
        health(run, "ok")
        script.set(count=2, xids="1:79", gpu1=15)
        status = health(run, "lost")
        assert [g["state"] for g in status["gpu_health"]["gpus"]] == ["ok", "lost"]
        assert "CUDA_VISIBLE_DEVICES" in status["what_to_do"]
        assert ready(run)[0] == 0
        wait_for(lambda: [e for e in recorded(tmp_path) if e.kind == "xid" and e.data["xid"] == 79], what="xid 79")
        assert json.dumps(run.status()[1]["gpu_health"]["xids"]) == json.dumps([{"gpu": 1, "xid": 79, "count": 1}])
    finally:
        assert run.serve.stop() == 0


def test_a_runner_started_while_access_is_denied_names_the_revoked_access(tmp_path: Path, libs: native.NativeLibs,
                                                                           cache_dir: Path) -> None:
    """As on the H100 (benchmarks/gpu/e2e `revoked-access`): with the device nodes denied, a new runner's cuInit says
    100 (no device). With the health check's denial on the board that is the revoked access, not a device filter;
    nothing is restarted for it."""
    cuda = tmp_path / "cuda.state"
    cuda.write_text("")
    run, script = start(tmp_path, libs, cache_dir, KUBERNETES_SERVICE_HOST="10.0.0.1", MOCKCUDA_STATE=str(cuda))
    try:
        assert run.generate().get("done") is True
        health(run, "ok")
        restarts = run.status()[1]["restarts"]
        script.set(count=1, all=999)
        cuda.write_text("init_error=100\n")
        health(run, "access_denied")
        old = [proc.pid for proc in descendants(run.serve.pid) if "--model" in proc.cmdline()]
        for pid in old:
            os.kill(pid, signal.SIGKILL)

        def new_runner() -> bool:
            with contextlib.suppress(urllib.error.HTTPError):  # 500: the killed runner, or the new one failing
                run.generate()
            return bool(run.status()[1]["runners"]) and run.status()[1]["runners"][-1]["pid"] not in old
        wait_for(new_runner, what="a new runner")
        status = run.wait_status(lambda s: s["runners"] and s["runners"][-1]["cause"] == "container_gpu_access_lost",
                                 "the new runner's cause")
        assert status["runners"][-1]["outcome"] == "cpu_fallback"
        assert status["restarts"] == restarts
    finally:
        assert run.serve.stop() == 0
