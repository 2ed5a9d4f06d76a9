"""Closing the loop end to end (issue 6): the simulator and the mock driver produce each cause physically, and
`ollama-gpu serve` names it, fixes what the contract allows (before READY where the generation discovers at start),
advises the rest without restarting, and never tries the same environment twice."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.cli_helpers import clean_env
from tests.ollama_sim import native
from tests.ollama_sim.install import Install, make_install
from tests.serve_helpers import Serve, descendants, free_port, wait_for


class Run:
    """One `ollama-gpu serve` over a fresh gen-D (or other) simulated install."""

    def __init__(self, tmp: Path, libs: native.NativeLibs, cache: Path, *, generation: str = "D",
                 ld_library_path: str | None = None, flags: tuple[str, ...] = (), state: Path | None = None,
                 port: int | None = None, prefix: tuple[str, ...] = (), **env: str) -> None:
        self.inst: Install = make_install(tmp / "ollama", generation, cuda_backend=libs.ggml_cuda)
        self.inst.add_model("tiny")
        self.port = port or free_port()
        self.env = clean_env(tmp, {"CACHE_DIRECTORY": str(cache), "RUNTIME_DIRECTORY": str(tmp / "run"),
                                   "STATE_DIRECTORY": str(state or tmp / "state"), "OGPU_LOG_FORMAT": "json"})
        lib_path = str(libs.driver_dir) if ld_library_path is None else ld_library_path
        self.env.update(self.inst.env(OLLAMA_HOST=f"127.0.0.1:{self.port}", LD_LIBRARY_PATH=lib_path))
        self.env.update(env)
        self.serve = Serve(["--ollama", str(self.inst.ollama), *flags, "serve"], self.env, prefix=prefix)

    def ready(self) -> Run:
        """Wait for `ready`; a serve that never gets there is stopped before the failure is raised (callers often
        call this before their own try/finally, and a leaked serve outlives the test run)."""
        try:
            self.serve.wait_event("ready", timeout=90)
        except BaseException:
            with contextlib.suppress(Exception):
                self.serve.stop()
            raise
        return self

    def generate(self) -> dict[str, Any]:
        body = json.dumps({"model": "tiny", "prompt": "hello", "stream": False}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/generate", data=body)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=60) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def status(self) -> tuple[int, dict[str, Any]]:
        proc = subprocess.run([sys.executable, "-m", "launcher.cli", "status", "--json"], env=self.env,
                              capture_output=True, text=True, timeout=30, check=False)
        return proc.returncode, json.loads(proc.stdout)

    def wait_status(self, predicate: Any, what: str) -> dict[str, Any]:
        return wait_for(lambda: (lambda s: s if predicate(s) else None)(self.status()[1]), timeout=30,
                        what=what)  # type: ignore[no-any-return]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.serve.events() if e.get("event") == name]

    def order(self, *names: str) -> list[str]:
        return [str(e["event"]) for e in self.serve.events() if e.get("event") in names]

    def stop(self) -> int:
        return self.serve.stop()


def discovery(status: dict[str, Any]) -> tuple[str, str]:
    return status["discovery"]["outcome"], status["discovery"]["cause"]


class TestFixable:
    def test_driver_outside_the_loader_path_fixed_before_start(self, tmp_path: Path, libs: native.NativeLibs,
                                                               cache_dir: Path) -> None:
        """The driver in a directory the loader does not search: added before Ollama starts; no restart needed."""
        run = Run(tmp_path, libs, cache_dir, ld_library_path="", flags=("--driver-lib-dirs", str(libs.driver_dir)))
        run.ready()
        status = run.wait_status(lambda s: discovery(s) == ("gpu", "none"), "gpu discovery")
        assert status["restarts"] == 0
        changes = run.events("environment_change")
        assert changes and changes[0]["key"] == "LD_LIBRARY_PATH"
        assert run.stop() == 0

    def test_stub_first_on_the_path_dropped(self, tmp_path: Path, libs: native.NativeLibs, cache_dir: Path) -> None:
        """A toolkit stub first on LD_LIBRARY_PATH: dropped before start, the GPU is used."""
        run = Run(tmp_path, libs, cache_dir, ld_library_path=f"{libs.stub_dir}:{libs.driver_dir}")
        run.ready()
        run.wait_status(lambda s: discovery(s) == ("gpu", "none"), "gpu discovery")
        assert run.stop() == 0

    def test_stub_is_a_real_fault_when_not_fixed(self, tmp_path: Path, libs: native.NativeLibs,
                                                 cache_dir: Path) -> None:
        """The same stub in observe mode: the shim reports CUDA error 34 and the verdict names `stub_library`."""
        run = Run(tmp_path, libs, cache_dir, ld_library_path=f"{libs.stub_dir}:{libs.driver_dir}",
                  flags=("--mode", "observe"))
        run.ready()
        status = run.wait_status(lambda s: s["discovery"]["cause"] == "stub_library", "stub_library")
        assert status["restarts"] == 0 and status["remedies"]["applied"] == []
        assert run.stop() == 0

    def test_listed_override_fixed_with_one_restart_before_ready(self, tmp_path: Path, libs: native.NativeLibs,
                                                                 cache_dir: Path) -> None:
        """CUDA_VISIBLE_DEVICES=-1 listed in OGPU_MAY_OVERRIDE: unset at discovery, one restart, READY after it."""
        run = Run(tmp_path, libs, cache_dir, flags=("--may-override", "CUDA_VISIBLE_DEVICES"),
                  CUDA_VISIBLE_DEVICES="-1")
        run.ready()
        status = run.wait_status(lambda s: discovery(s) == ("gpu", "none"), "gpu discovery after the remedy")
        assert status["restarts"] == 1
        assert status["remedies"]["applied"][0]["changes"] == ["UNSET CUDA_VISIBLE_DEVICES"]
        assert run.order("remedy", "restarting", "ready") == ["remedy", "restarting", "ready"]
        assert run.generate()["done"] is True
        runner = run.wait_status(lambda s: s["runners"] and s["runners"][-1]["outcome"] == "gpu", "gpu runner")
        assert runner["runners"][-1]["cause"] == "none"
        assert run.stop() == 0

    def test_tried_environment_not_retried_after_supervisor_restart(self, tmp_path: Path, libs: native.NativeLibs,
                                                                    cache_dir: Path) -> None:
        """The remedy budget lives in the state dir, per OLLAMA_HOST: a new supervisor for the same instance does not
        try the same environment again."""
        state, port = tmp_path / "state", free_port()
        first = Run(tmp_path / "a", libs, cache_dir, flags=("--may-override", "CUDA_VISIBLE_DEVICES"),
                    state=state, port=port, CUDA_VISIBLE_DEVICES="-1")
        first.ready()
        first.wait_status(lambda s: s["restarts"] == 1, "one remedy restart")
        assert first.stop() == 0
        second = Run(tmp_path / "b", libs, cache_dir, flags=("--may-override", "CUDA_VISIBLE_DEVICES"),
                     state=state, port=port, CUDA_VISIBLE_DEVICES="-1")
        second.ready()
        status = second.wait_status(lambda s: s["discovery"]["cause"] == "operator_forced_cpu"
                                    and s["remedies"]["advised"], "advice instead of a second try")
        assert status["restarts"] == 0
        assert "already tried" in status["remedies"]["advised"][0]["reason"]
        assert second.stop() == 0

    def test_runner_fallback_after_ready_fixed_only_when_idle(self, tmp_path: Path, libs: native.NativeLibs,
                                                             cache_dir: Path) -> None:
        """The driver disappears from its directory after READY: the loaded model falls back to the CPU; the fix is
        advised at once and applied only once no model runner is alive; then the GPU is used again."""
        dir_a, dir_b = tmp_path / "driver-a", tmp_path / "driver-b"
        for d in (dir_a, dir_b):
            d.mkdir()
            shutil.copy2(libs.driver_dir / "libcuda.so.1", d / "libcuda.so.1")
        run = Run(tmp_path, libs, cache_dir, ld_library_path=str(dir_a), flags=("--driver-lib-dirs", str(dir_b)))
        run.ready()
        run.wait_status(lambda s: discovery(s) == ("gpu", "none"), "gpu discovery")
        (dir_a / "libcuda.so.1").unlink()
        run.generate()
        status = run.wait_status(lambda s: s["runners"] and s["runners"][-1]["outcome"] == "cpu_fallback",
                                 "runner fallback")
        assert status["runners"][-1]["cause"] == "libcuda_not_found"
        applied = run.wait_status(lambda s: s["remedies"]["applied"], "remedy decided")["remedies"]["applied"]
        assert applied[0]["when"] == "when idle"
        assert run.events("restart_deferred") and status["restarts"] == 0
        runner = next(p for p in descendants(run.serve.pid) if "--model" in p.cmdline())
        os.kill(runner.pid, signal.SIGKILL)  # the model is unloaded: Ollama is idle
        run.wait_status(lambda s: s["restarts"] == 1 and discovery(s) == ("gpu", "none") and s["ready"],
                        "restarted with the driver directory, ready again")
        run.generate()
        run.wait_status(lambda s: s["runners"] and s["runners"][-1]["outcome"] == "gpu", "gpu runner again")
        assert run.stop() == 0


class TestLeftAlone:
    def test_operator_forced_cpu(self, tmp_path: Path, libs: native.NativeLibs, cache_dir: Path) -> None:
        """CUDA_VISIBLE_DEVICES=-1 set by the operator: cpu_expected/operator_forced_cpu, no change, exit 0."""
        run = Run(tmp_path, libs, cache_dir, CUDA_VISIBLE_DEVICES="-1")
        run.ready()
        status = run.wait_status(lambda s: discovery(s) == ("cpu_expected", "operator_forced_cpu"), "verdict")
        assert status["restarts"] == 0 and status["remedies"]["applied"] == []
        assert run.status()[0] == 0
        assert run.stop() == 0

    def test_cuinit_999_advised_without_restart(self, tmp_path: Path, libs: native.NativeLibs,
                                                cache_dir: Path) -> None:
        """cuInit 999 (nvidia_uvm): Ollama keeps serving; the instruction is in `status` and the log; no restart."""
        run = Run(tmp_path, libs, cache_dir, MOCKCUDA_INIT_ERROR="999")
        run.ready()
        status = run.wait_status(lambda s: s["discovery"]["cause"] == "uvm_not_loaded", "uvm_not_loaded")
        assert status["restarts"] == 0 and status["remedies"]["applied"] == []
        assert "modprobe nvidia_uvm" in status["what_to_do"]
        assert any(a["cause"] == "uvm_not_loaded" for a in run.events("advice"))
        assert run.generate()["done"] is True  # still serving, on the CPU
        assert run.stop() == 0

    @pytest.mark.parametrize(("code", "cause", "words"), [
        ("802", "fabric_manager_not_running", "nvidia-fabricmanager"),
        ("800", "container_gpu_access_lost", "Restart the container"),
    ])
    def test_cuinit_code_names_its_cause_without_restart(self, tmp_path: Path, libs: native.NativeLibs,
                                                         cache_dir: Path, code: str, cause: str, words: str) -> None:
        """cuInit 802 (NVSwitch fabric manager down) and 800 (a container's device access revoked), from the mock
        driver: the error-code table names the cause, `status` carries the instruction, nothing is restarted."""
        run = Run(tmp_path, libs, cache_dir, MOCKCUDA_INIT_ERROR=code)
        run.ready()
        status = run.wait_status(lambda s: s["discovery"]["cause"] == cause, cause)
        assert status["restarts"] == 0 and status["remedies"]["applied"] == []
        assert words in status["what_to_do"]
        assert any(a["cause"] == cause for a in run.events("advice"))
        assert run.stop() == 0

    def test_old_driver_without_older_runtime_is_not_restarted(self, tmp_path: Path, libs: native.NativeLibs,
                                                               cache_dir: Path) -> None:
        """A driver (12.4) older than the only runtime shipped (cuda_v13): no restart, Ollama keeps serving, never
        called healthy. Without NVML (CI) the driver version is unknown, so the verdict says it cannot tell; on a
        real machine NVML's driver version names `driver_too_old` (tests/test_evidence_live.py, test_remedies.py)."""
        run = Run(tmp_path, libs, cache_dir, MOCKCUDA_DRIVER_VERSION="12040")
        run.ready()
        status = run.wait_status(lambda s: s["discovery"]["outcome"] != "gpu" and s["ready"], "a verdict")
        assert run.generate()["done"] is True
        status = run.status()[1]
        assert status["restarts"] == 0 and status["remedies"]["applied"] == []
        assert status["discovery"]["outcome"] in ("unknown", "cpu_fallback")
        assert run.stop() == 0

    def test_no_gpu_at_all(self, tmp_path: Path, libs: native.NativeLibs, cache_dir: Path) -> None:
        """No driver anywhere and no device node: cpu_expected, no restart, status exit 0."""
        run = Run(tmp_path, libs, cache_dir, ld_library_path="")
        run.ready()
        status = run.wait_status(lambda s: discovery(s) == ("cpu_expected", "none"), "cpu_expected")
        assert status["restarts"] == 0
        assert run.status()[0] == 0
        assert run.stop() == 0

    def test_unknown_generation_only_observed(self, tmp_path: Path, libs: native.NativeLibs,
                                              cache_dir: Path) -> None:
        """An Ollama version no generation row knows: a listed override is NOT applied; the reason says why."""
        run = Run(tmp_path, libs, cache_dir, flags=("--may-override", "CUDA_VISIBLE_DEVICES"),
                  CUDA_VISIBLE_DEVICES="-1", OLLAMA_SIM_VERSION="0.99.0")
        run.ready()
        status = run.wait_status(lambda s: s["discovery"]["outcome"] != "unknown", "a discovery verdict")
        assert status["restarts"] == 0 and status["remedies"]["applied"] == []
        assert any("unknown" in str(e) and "generation" in str(e) for e in run.serve.events())
        assert run.stop() == 0


def test_no_process_left(tmp_path: Path, libs: native.NativeLibs, cache_dir: Path) -> None:
    """After a remedy restart and a stop, nothing of Ollama is left."""
    run = Run(tmp_path, libs, cache_dir, flags=("--may-override", "CUDA_VISIBLE_DEVICES"), CUDA_VISIBLE_DEVICES="-1")
    run.ready()
    run.generate()
    pids = [p.pid for p in descendants(run.serve.pid)]
    assert run.stop() == 0
    assert not [p for p in pids if psutil.pid_exists(p)]


def test_failed_state_write_is_shown_in_status_15(tmp_path: Path, libs: native.NativeLibs, cache_dir: Path) -> None:
    """Issue 15, item 3: when the remedy history cannot be written (here a directory sits where the state file goes,
    so the rename fails even for root), the remedy still runs once, one warning names the path and errno, and
    `status` shows the failure in JSON and in text."""
    state, port = tmp_path / "state", free_port()
    state_file = state / f"state-127.0.0.1-{port}.json"
    state_file.mkdir(parents=True)
    run = Run(tmp_path, libs, cache_dir, flags=("--may-override", "CUDA_VISIBLE_DEVICES"), state=state, port=port,
              CUDA_VISIBLE_DEVICES="-1")
    run.ready()
    status = run.wait_status(lambda s: s["restarts"] == 1 and discovery(s) == ("gpu", "none"), "one remedy restart")
    failed = status["remedies"]["budget"]["write_error"]
    assert (failed["path"], failed["errno"]) == (str(state_file), "EISDIR")
    assert status["remedies"]["budget"]["used"] == 1
    warnings = run.events("state_write_failed")
    assert [(e["level"], e["path"], e["errno"]) for e in warnings] == [("warning", str(state_file), "EISDIR")]
    text = subprocess.run([sys.executable, "-m", "launcher.cli", "status"], env=run.env, capture_output=True,
                          text=True, timeout=30, check=False).stdout
    assert f"Remedy history not saved: writing {state_file} failed (EISDIR: Is a directory)" in text
    assert sorted(p.name for p in state.iterdir()) == [state_file.name]  # no temp file left beside it
    assert run.stop() == 0
