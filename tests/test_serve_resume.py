"""Issue 16, the resume path end to end: `ollama-gpu serve` over the simulator, the mock libcuda (its state file says
what cuInit returns now), the mock NVML, and a BOOTTIME preload in the supervisor alone (tests/native/fakeboot.c: the
test writes how long the host "slept"). A healthy resume changes nothing; one that breaks nvidia_uvm is advised with
the commands; with OGPU_MAY_RELOAD_UVM=1 a fake `modprobe` (first on PATH) reloads it once Ollama is idle and Ollama
is restarted once; a process holding the GPU stops the reload and is named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher.events import Event, Replay
from tests.native.build import native_build
from tests.nvml_double import NvmlScript
from tests.ollama_sim import native
from tests.serve_helpers import descendants, wait_for
from tests.test_serve_remedies import Run

UVM_COMMANDS = "sudo rmmod nvidia_uvm && sudo modprobe nvidia_uvm"


class Host:
    """The scripted host: the driver's cuInit answer, NVML's state, the time asleep, and a fake modprobe."""

    def __init__(self, tmp: Path, unload_fails: bool = False) -> None:
        self.cuda = tmp / "cuda.state"
        self.cuda.write_text("", encoding="utf-8")
        self.nvml = NvmlScript(tmp / "nvml.state")
        self.nvml.set(count=1)
        self.slept = tmp / "boottime.offset"
        self.slept.write_text("0\n", encoding="utf-8")
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.modprobe_log = tmp / "modprobe.log"
        modprobe = self.bin / "modprobe"
        refuse = "if [ \"$1\" = -r ]; then echo 'modprobe: FATAL: Module nvidia_uvm is in use.' >&2; exit 1; fi\n"
        modprobe.write_text(  # logs its arguments; loading nvidia_uvm "repairs" the driver, as a real reload would
            "#!/bin/sh\n"
            f"echo \"$*\" >> '{self.modprobe_log}'\n" + (refuse if unload_fails else "") +
            f"if [ \"$1\" = nvidia_uvm ]; then printf 'init_error=0\\n' > '{self.cuda}.tmp' && "
            f"mv '{self.cuda}.tmp' '{self.cuda}'; fi\n", encoding="utf-8")
        modprobe.chmod(0o755)

    def suspend_and_resume(self, breaks_uvm: bool) -> None:
        """The host sleeps 100 s; on waking cuInit returns 999 when the resume broke nvidia_uvm."""
        self._write(self.cuda, "init_error=999\n" if breaks_uvm else "")
        self._write(self.slept, "100\n")

    @staticmethod
    def _write(path: Path, text: str) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    def modprobe_calls(self) -> list[str]:
        return self.modprobe_log.read_text().splitlines() if self.modprobe_log.exists() else []


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


@pytest.fixture
def holder() -> Iterator[subprocess.Popen[bytes]]:
    """A process that NVML will list as holding the GPU."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def start(tmp_path: Path, libs: native.NativeLibs, cache_dir: Path, host: Host, **env: str) -> Run:
    """A gen-D serve, health checked every second, every event recorded, the fake BOOTTIME in the supervisor only."""
    build = native_build()
    run = Run(tmp_path, libs, cache_dir, ld_library_path=f"{libs.driver_dir}:{build.mock_nvml_dir}",
              MOCKNVML_STATE=str(host.nvml.path), MOCKCUDA_STATE=str(host.cuda), OGPU_HEALTH_INTERVAL="1",
              OGPU_RECORD=str(tmp_path / "events.jsonl"), LD_PRELOAD=str(build.fakeboot),
              FAKEBOOT_FILE=str(host.slept), PATH=f"{host.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}", **env)
    run.ready()
    run.wait_status(lambda s: (s.get("gpu_health") or {}).get("state") == "ok", "first health check")
    return run


def recorded(tmp_path: Path, kind: str) -> list[Event]:
    path = tmp_path / "events.jsonl"
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as stream:
        return [e for e in Replay(stream) if e.kind == kind]


def probe_after(run: Run, after: str) -> dict[str, Any]:
    return run.wait_status(lambda s: ((s.get("gpu_health") or {}).get("cuda_probe") or {}).get("after") == after,
                           f"the CUDA probe after the {after}")


def warnings(run: Run) -> list[dict[str, Any]]:
    return [e for e in run.serve.events() if e.get("level") in ("warning", "error")]


def kill_runners(run: Run) -> None:
    """Unload the model (Ollama becomes idle) the way the remedies tests do."""
    for proc in descendants(run.serve.pid):
        if "--model" in proc.cmdline():
            os.kill(proc.pid, signal.SIGKILL)


def test_a_healthy_resume_changes_nothing(tmp_path: Path, libs: native.NativeLibs, cache_dir: Path,
                                          host: Host) -> None:
    """Suspend and resume with the driver intact: the probe (under the shim) says cuInit ok→ok; no warning line,
    no advice, no remedy, no restart, ready."""
    run = start(tmp_path, libs, cache_dir, host)
    try:
        assert run.generate()["done"] is True
        before = run.status()[1]
        quiet = warnings(run)
        host.suspend_and_resume(breaks_uvm=False)
        status = probe_after(run, "resume")
        probe = status["gpu_health"]["cuda_probe"]
        assert probe["ok"] is True and probe["change"] == "ok→ok" and probe["news"] is False
        assert list(probe["shim_cu_init"]) == [0] and probe["shim"]  # measured under the shim, as doctor does
        assert [r["slept"] for r in status["gpu_health"]["resumes"]] == [100.0]
        assert status["gpu_health"]["advice"] == [] and status["gpu_health"]["degraded"] is False
        assert status["restarts"] == before["restarts"] and status["remedies"]["applied"] == []
        assert status["remedies"]["advised"] == [] and status["what_to_do"] == "nothing to do"
        assert warnings(run) == quiet == []
        assert host.modprobe_calls() == []
    finally:
        assert run.stop() == 0


def test_a_resume_that_breaks_uvm_is_advised_and_nothing_restarted(tmp_path: Path, libs: native.NativeLibs,
                                                                    cache_dir: Path, host: Host) -> None:
    """cuInit ok before, 999 after the resume: uvm_not_loaded in status with the exact commands, one warning, no
    restart, no modprobe (OGPU_MAY_RELOAD_UVM is off); readiness stays up and Ollama still answers."""
    run = start(tmp_path, libs, cache_dir, host)
    try:
        host.suspend_and_resume(breaks_uvm=True)
        status = run.wait_status(lambda s: s["gpu_health"].get("resume_break"), "the resume's break")
        broken = status["gpu_health"]["resume_break"]
        assert broken["cause"] == "uvm_not_loaded" and broken["change"] == "ok→999"
        assert UVM_COMMANDS in status["what_to_do"] and status["gpu_health"]["degraded"] is True
        [line] = status["gpu_health"]["advice"]
        assert UVM_COMMANDS in line and "OGPU_MAY_RELOAD_UVM=1" in line
        said = [e for e in warnings(run) if e.get("cause") == "uvm_not_loaded"]
        assert [(e["event"], e["subject"]) for e in said] == [("advice", "resume")]
        assert status["restarts"] == 0 and status["remedies"]["applied"] == []
        text = subprocess.run([sys.executable, "-m", "launcher.cli", "status"], env=run.env, capture_output=True,
                              text=True, timeout=30, check=False).stdout
        assert "cuInit ok→999" in text and UVM_COMMANDS in text
        ready = subprocess.run([sys.executable, "-m", "launcher.cli", "status", "--ready"], env=run.env,
                               capture_output=True, text=True, timeout=30, check=False)
        assert ready.returncode == 0
        assert run.generate()["done"] is True  # still serving, on the CPU
        assert host.modprobe_calls() == [] and run.status()[1]["restarts"] == 0
    finally:
        assert run.stop() == 0


def test_may_reload_uvm_reloads_when_idle_then_restarts_once(tmp_path: Path, libs: native.NativeLibs,
                                                             cache_dir: Path, host: Host) -> None:
    """OGPU_MAY_RELOAD_UVM=1, as root: while a model is loaded nothing is unloaded; once Ollama is idle the fake
    modprobe is called `-r nvidia_uvm` then `nvidia_uvm`, the re-probe finds CUDA working, Ollama is restarted
    once, and the next runner uses the GPU."""
    run = start(tmp_path, libs, cache_dir, host, OGPU_MAY_RELOAD_UVM="1")
    try:
        assert run.generate()["done"] is True  # a runner stays loaded: Ollama is not idle
        host.suspend_and_resume(breaks_uvm=True)
        run.wait_status(lambda s: s["gpu_health"].get("resume_break"), "the resume's break")
        wait_for(lambda: [e for e in warnings(run) if e.get("cause") == "uvm_not_loaded"], what="the advice")
        probed = recorded(tmp_path, "cuda_probe")[-1].t
        wait_for(lambda: sum(1 for e in recorded(tmp_path, "memory") if e.t > probed) >= 3,
                 what="more NVML ticks after the break")
        assert host.modprobe_calls() == []  # never while a model runner is alive
        kill_runners(run)
        status = run.wait_status(lambda s: s["restarts"] == 1 and s["ready"]
                                 and s["discovery"]["outcome"] == "gpu", "one restart, GPU discovered again")
        assert host.modprobe_calls() == ["-r nvidia_uvm", "nvidia_uvm"]
        [reload] = recorded(tmp_path, "uvm_reload")
        assert reload.data["outcome"] == "reloaded"
        [reprobe] = [e for e in recorded(tmp_path, "cuda_probe") if e.data["after"] == "uvm_reload"]
        assert reprobe.data["ok"] is True and reprobe.data["key"] == reload.data["key"]
        assert [a["cause"] for a in status["remedies"]["applied"]] == ["uvm_not_loaded"]
        assert status["gpu_health"]["resume_break"] is None and status["gpu_health"]["advice"] == []
        assert run.generate()["done"] is True
        run.wait_status(lambda s: s["runners"] and s["runners"][-1]["outcome"] == "gpu", "a GPU runner again")
        assert run.status()[1]["restarts"] == 1 and host.modprobe_calls() == ["-r nvidia_uvm", "nvidia_uvm"]
    finally:
        assert run.stop() == 0


def test_a_process_holding_the_gpu_stops_the_reload(tmp_path: Path, libs: native.NativeLibs, cache_dir: Path,
                                                    host: Host, holder: subprocess.Popen[bytes]) -> None:
    """OGPU_MAY_RELOAD_UVM=1 but NVML lists another process on the GPU: modprobe is never called, the advice names
    the holder, nothing is restarted."""
    run = start(tmp_path, libs, cache_dir, host, OGPU_MAY_RELOAD_UVM="1")
    try:
        host.nvml.set(count=1, procs0=holder.pid)
        host.suspend_and_resume(breaks_uvm=True)
        status = run.wait_status(lambda s: (s["gpu_health"].get("uvm_reload") or {}).get("outcome") == "held",
                                 "the reload refused")
        assert [h["pid"] for h in status["gpu_health"]["uvm_reload"]["holders"]] == [holder.pid]
        [line] = status["gpu_health"]["advice"]
        assert f"pid {holder.pid} (sleep)" in line and UVM_COMMANDS in line
        assert host.modprobe_calls() == [] and status["restarts"] == 0
        assert any(e["event"] == "uvm_reload_skipped" for e in warnings(run))
    finally:
        assert run.stop() == 0


def test_a_failed_reload_is_reported_and_not_retried(tmp_path: Path, libs: native.NativeLibs,
                                                     cache_dir: Path) -> None:
    """`modprobe -r nvidia_uvm` fails: its stderr is in status and the advice, the load is not tried, nothing is
    restarted, and later ticks do not try again."""
    host = Host(tmp_path, unload_fails=True)
    run = start(tmp_path, libs, cache_dir, host, OGPU_MAY_RELOAD_UVM="1")
    try:
        host.suspend_and_resume(breaks_uvm=True)
        status = run.wait_status(lambda s: (s["gpu_health"].get("uvm_reload") or {}).get("outcome") == "failed",
                                 "the reload failed")
        reload = status["gpu_health"]["uvm_reload"]
        assert (reload["step"], reload["exit"]) == ("modprobe -r nvidia_uvm", 1)
        assert reload["stderr"] == "modprobe: FATAL: Module nvidia_uvm is in use."
        [line] = status["gpu_health"]["advice"]
        assert "Module nvidia_uvm is in use" in line and "not retried" in line and UVM_COMMANDS in line
        failed_at = recorded(tmp_path, "uvm_reload")[-1].t
        wait_for(lambda: sum(1 for e in recorded(tmp_path, "memory") if e.t > failed_at) >= 3,
                 what="more NVML ticks after the failure")
        assert host.modprobe_calls() == ["-r nvidia_uvm"] and run.status()[1]["restarts"] == 0
    finally:
        assert run.stop() == 0
