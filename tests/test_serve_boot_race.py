"""Issue 16, the boot race end to end: `ollama-gpu serve` over the simulator, the mock CUDA driver and the mock NVML,
in a private mount namespace whose /dev, /proc/driver and /sys/bus/pci/devices are directories of the test (bind
mounts), so the NVIDIA driver "loads" when the test writes /proc/driver/nvidia/version and NVML starts answering.

(a) OGPU_GPU_WAIT: a driver that comes up within the wait is waited for (Ollama then discovers the GPU; the log says
how long); one that does not is given up on after the wait, with one warning, and Ollama starts anyway.
(b) The late GPU: Ollama started without a GPU (no libcuda on its path, NVML "driver not loaded"); the driver comes
up later: one restart when idle, after which discovery sees the GPU; a second supervisor for the same instance on the
same boot does not repeat it; mode advise only advises.

For CUDA the test swaps the driver in: a directory on LD_LIBRARY_PATH holds no libcuda.so.1 until the driver comes
up, then a symlink to the mock (the restarted Ollama's runners resolve it afresh). Needs root and unshare(1), as CI
has (tests/test_fresh_box.py).
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.native.build import native_build
from tests.nvml_double import NvmlScript
from tests.ollama_sim import native
from tests.serve_helpers import descendants, free_port, wait_for
from tests.test_serve_remedies import Run, discovery

DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty", "ptmx")
DEV_DIRS = ("pts", "shm")
# In the namespace: the real /dev nodes a process needs onto the fake /dev's placeholders, the fake /dev over /dev,
# the fake PCI directory and /proc/driver; then serve. -n: no utab entry.
NAMESPACE = ('set -e; F="$BOOTRACE_FAKE"; for n in ' + " ".join(DEV_NODES) + '; do mount -n --bind "/dev/$n" '
             '"$F/dev/$n"; done; for d in ' + " ".join(DEV_DIRS) + '; do mount -n --rbind "/dev/$d" "$F/dev/$d"; '
             'done; mount -n --rbind "$F/dev" /dev; mount -n --bind "$F/pci" /sys/bus/pci/devices; '
             'mount -n --bind "$F/procdriver" /proc/driver; exec "$@"')


@pytest.fixture(autouse=True)
def _root_and_unshare() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("needs root and unshare(1) (util-linux), as CI has: the driver appears through bind mounts")


class Machine:
    """The fake machine seen from inside the namespace: an NVIDIA PCI function and device nodes from the start, the
    driver (/proc/driver/nvidia, NVML, libcuda) when `driver_up()` is called."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dev, self.pci, self.procdriver = root / "dev", root / "pci", root / "procdriver"
        for d in (self.dev, self.pci, self.procdriver):
            d.mkdir(parents=True)
        for name in DEV_NODES:
            (self.dev / name).touch()
        for name in DEV_DIRS:
            (self.dev / name).mkdir()
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2")):
            (self.dev / name).symlink_to(target)
        (self.dev / "nvidiactl").touch()
        (self.dev / "nvidia0").touch()
        function = self.pci / "0000:01:00.0"
        function.mkdir()
        (function / "vendor").write_text("0x10de\n")
        (function / "class").write_text("0x030200\n")
        self.cuda = root / "cuda"  # on LD_LIBRARY_PATH; empty until the driver is up
        self.cuda.mkdir()
        self.nvml = NvmlScript(root / "nvml.state")
        self.nvml.set(init=9)  # NVML_ERROR_DRIVER_NOT_LOADED

    def driver_up(self, libs: native.NativeLibs) -> None:
        """The kernel module loads: /proc/driver/nvidia, NVML lists one GPU, libcuda.so.1 on the path."""
        (self.procdriver / "nvidia").mkdir(exist_ok=True)
        (self.procdriver / "nvidia" / "version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  "
                                                            "580.65.06\n")
        self.nvml.set(count=1)
        link = self.cuda / "libcuda.so.1"
        if not link.exists():
            link.symlink_to(libs.driver_dir / "libcuda.so.1")

    def driver_down(self) -> None:
        """The driver goes away again (for a second appearance)."""
        shutil.rmtree(self.procdriver / "nvidia", ignore_errors=True)
        self.nvml.set(init=9)
        (self.cuda / "libcuda.so.1").unlink(missing_ok=True)

    def run(self, tmp: Path, libs: native.NativeLibs, cache: Path, *, wait: str, flags: tuple[str, ...] = (),
            state: Path | None = None, port: int | None = None) -> Run:
        """serve in the namespace, health checked every second, every event recorded."""
        return Run(tmp, libs, cache, ld_library_path=f"{self.cuda}:{native_build().mock_nvml_dir}", flags=flags,
                   state=state, port=port, prefix=("unshare", "--mount", "--propagation", "private", "sh", "-c",
                                                   NAMESPACE, "sh"),
                   BOOTRACE_FAKE=str(self.root), MOCKNVML_STATE=str(self.nvml.path), OGPU_GPU_WAIT=wait,
                   OGPU_HEALTH_INTERVAL="1")


def warnings(run: Run, name: str) -> list[dict[str, object]]:
    return [e for e in run.events(name) if e.get("level") == "warning"]


class TestGpuWait:
    def test_a_driver_that_comes_up_within_the_wait(self, tmp_path: Path, libs: native.NativeLibs,
                                                    cache_dir: Path) -> None:
        """Nodes and PCI function but no driver: serve says it waits; the driver comes up; `gpu_driver_ready` says
        how long it waited; Ollama then discovers the GPU with no restart."""
        machine = Machine(tmp_path / "machine")
        run = machine.run(tmp_path, libs, cache_dir, wait="60")
        try:
            waiting = run.serve.wait_event("gpu_driver_waiting", timeout=60)
            assert waiting["up_to"] == 60 and waiting["driver_loaded"] is False and waiting["device_nodes"] is True
            assert not run.serve.out and "ollama_started" not in run.serve.err  # Ollama waits with us
            machine.driver_up(libs)
            ready = run.serve.wait_event("gpu_driver_ready", timeout=30)
            assert isinstance(ready["waited"], float) and 0 < ready["waited"] < 60
            run.ready()
            status = run.wait_status(lambda s: discovery(s) == ("gpu", "none"), "gpu discovery")
            assert status["restarts"] == 0 and run.events("gpu_driver_not_ready") == []
        finally:
            assert run.stop() == 0

    def test_a_driver_that_never_comes_is_given_up_on(self, tmp_path: Path, libs: native.NativeLibs,
                                                      cache_dir: Path) -> None:
        """OGPU_GPU_WAIT=1 and no driver: one warning after about a second, and Ollama starts anyway (ready)."""
        machine = Machine(tmp_path / "machine")
        run = machine.run(tmp_path, libs, cache_dir, wait="1")
        try:
            run.ready()
            [warning] = warnings(run, "gpu_driver_not_ready")
            assert isinstance(warning["waited"], float) and 1.0 <= warning["waited"] < 3.0
            assert run.events("gpu_driver_ready") == []
            run.wait_status(lambda s: s["ready"] and discovery(s)[0] != "gpu", "ready without a GPU")
        finally:
            assert run.stop() == 0


class TestLateGpu:
    def started_without_gpu(self, machine: Machine, tmp: Path, libs: native.NativeLibs, cache: Path,
                            **kw: object) -> Run:
        run = machine.run(tmp, libs, cache, wait="0", **kw)  # type: ignore[arg-type]
        try:
            run.ready()
            run.wait_status(lambda s: s["discovery"]["outcome"] != "gpu" and not s["discovery"]["pending"],
                            "no GPU found")
        except BaseException:
            run.stop()  # never leave a serve behind when the precondition fails
            raise
        return run

    def test_one_restart_when_idle_then_discovery_sees_the_gpu(self, tmp_path: Path, libs: native.NativeLibs,
                                                                cache_dir: Path) -> None:
        """The driver comes up after Ollama discovered nothing: one remedy line, one restart, discovery gpu, a model
        runs on the GPU, and still one restart after it."""
        machine = Machine(tmp_path / "machine")
        run = self.started_without_gpu(machine, tmp_path, libs, cache_dir)
        try:
            assert run.status()[1]["restarts"] == 0
            machine.driver_up(libs)
            status = run.wait_status(lambda s: s["restarts"] == 1 and discovery(s) == ("gpu", "none") and s["ready"],
                                     "restarted, GPU discovered")
            [remedy] = [e for e in run.events("remedy") if e.get("subject") == "discovery"]
            assert remedy["when"] == "when idle" and "after Ollama started" in str(remedy["reason"])
            assert status["remedies"]["applied"][-1]["reason"] == "the GPU became available after Ollama started " \
                                                                  "without it"
            assert run.generate()["done"] is True
            run.wait_status(lambda s: s["runners"] and s["runners"][-1]["outcome"] == "gpu", "gpu runner")
            assert run.status()[1]["restarts"] == 1
        finally:
            assert run.stop() == 0

    def test_a_loaded_model_defers_the_restart_until_idle(self, tmp_path: Path, libs: native.NativeLibs,
                                                          cache_dir: Path) -> None:
        """A model is loaded (on the CPU) when the driver comes up: the restart is decided but deferred while the
        runner lives; once the model is unloaded, one restart, and discovery sees the GPU."""
        machine = Machine(tmp_path / "machine")
        run = self.started_without_gpu(machine, tmp_path, libs, cache_dir)
        try:
            assert run.generate()["done"] is True
            runner = wait_for(lambda: [p for p in descendants(run.serve.pid) if "--model" in p.cmdline()],
                              what="a model runner")[0]
            machine.driver_up(libs)
            run.serve.wait_event("restart_deferred", timeout=30)
            assert run.status()[1]["restarts"] == 0 and runner.is_running()
            os.kill(runner.pid, signal.SIGKILL)  # the model is unloaded: Ollama is idle
            run.wait_status(lambda s: s["restarts"] == 1 and discovery(s) == ("gpu", "none") and s["ready"],
                            "restarted once idle, GPU discovered")
        finally:
            assert run.stop() == 0

    def test_not_repeated_on_a_second_appearance(self, tmp_path: Path, libs: native.NativeLibs,
                                                 cache_dir: Path) -> None:
        """A second supervisor for the same instance on the same boot (systemd restarted ollama-gpu), the same race
        again: no second restart; the budget says it was already tried."""
        machine = Machine(tmp_path / "machine")
        state, port = tmp_path / "state", free_port()
        first = self.started_without_gpu(machine, tmp_path / "a", libs, cache_dir, state=state, port=port)
        try:
            machine.driver_up(libs)
            first.wait_status(lambda s: s["restarts"] == 1 and discovery(s) == ("gpu", "none"), "first restart")
        finally:
            assert first.stop() == 0
        machine.driver_down()
        second = self.started_without_gpu(machine, tmp_path / "b", libs, cache_dir, state=state, port=port)
        try:
            machine.driver_up(libs)
            skipped = second.serve.wait_event("late_gpu_restart_skipped", timeout=30)
            assert "tried" in str(skipped["reason"])
            status = second.status()[1]
            assert status["restarts"] == 0 and status["discovery"]["outcome"] != "gpu"
        finally:
            assert second.stop() == 0

    def test_mode_advise_only_advises(self, tmp_path: Path, libs: native.NativeLibs, cache_dir: Path) -> None:
        """--mode advise: the driver comes up, status and one warning say to restart; nothing is restarted."""
        machine = Machine(tmp_path / "machine")
        run = self.started_without_gpu(machine, tmp_path, libs, cache_dir, flags=("--mode", "advise"))
        try:
            machine.driver_up(libs)
            status = run.wait_status(lambda s: any("so that its discovery sees the GPU" in str(a.get("instruction"))
                                                   for a in s["remedies"]["advised"]), "the advice")
            assert status["restarts"] == 0 and status["remedies"]["applied"] == []
            [advice] = [e for e in warnings(run, "advice") if "after Ollama started" in str(e.get("reason"))]
            assert "restart Ollama" in str(advice["instruction"])
            assert run.status()[1]["restarts"] == 0
        finally:
            assert run.stop() == 0
