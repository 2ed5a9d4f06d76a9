"""The environment plan and the driver-library scan (on a fake root, never this machine's toolkit)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import structlog

from launcher.children import ChildRegistry
from launcher.config import Settings, load_settings
from launcher.driverlib import find_driver, parse_ld_cache
from launcher.environment import plan_environment, split_preload, with_patch, with_preload
from launcher.startup import prepare


@pytest.fixture(scope="module")
def shim_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One shim build for the module."""
    return tmp_path_factory.mktemp("cache")


def settings(tmp_path: Path, **env: str) -> Settings:
    return load_settings({"HOME": str(tmp_path), "OGPU_SYSTEM_CONFIG": str(tmp_path / "none"), **env}, uid=1000)


def lib(root: Path, directory: str) -> Path:
    path = root / directory.lstrip("/") / "libcuda.so.1"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF")
    return path


SHIM = Path("/var/cache/ollama-gpu/shim/abc/libollama_gpu_shim.so")
SOCK = Path("/run/ollama-gpu/events-127.0.0.1-11434.sock")


class TestPreload:
    def test_shim_first_existing_kept(self) -> None:
        """Our shim goes first; every existing preload is kept in order; the shim is not repeated."""
        assert with_preload("/a.so:/b.so", SHIM) == f"{SHIM} /a.so /b.so"
        assert with_preload(f"/a.so {SHIM}", SHIM) == f"{SHIM} /a.so"
        assert split_preload(" /x.so:/y.so  /z.so ") == ["/x.so", "/y.so", "/z.so"]


class TestPlan:
    def test_adds_preload_events_and_removes_systemd_variables(self, tmp_path: Path) -> None:
        """LD_PRELOAD and OGPU_EVENTS added; NOTIFY_SOCKET and WATCHDOG_* removed; nothing else dropped."""
        base = {"PATH": "/usr/bin", "LD_PRELOAD": "/opt/other.so", "NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "5",
                "WATCHDOG_PID": "1", "CUDA_VISIBLE_DEVICES": "0", "OLLAMA_HOST": "0.0.0.0"}
        plan = plan_environment(base, settings(tmp_path), ollama="/usr/bin/ollama", serve_args=["--x", "y"],
                                shim=SHIM, events_socket=SOCK)
        assert plan.argv == ("/usr/bin/ollama", "serve", "--x", "y")
        assert plan.env["LD_PRELOAD"] == f"{SHIM} /opt/other.so"
        assert plan.env["OGPU_EVENTS"] == str(SOCK)
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            assert key not in plan.env
        for key in ("PATH", "CUDA_VISIBLE_DEVICES", "OLLAMA_HOST"):
            assert plan.env[key] == base[key]
        assert set(base) - set(plan.env) == {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}

    def test_no_shim_no_preload(self, tmp_path: Path) -> None:
        """When the preflight failed (shim None), LD_PRELOAD is left exactly as it was."""
        plan = plan_environment({"LD_PRELOAD": "/opt/other.so"}, settings(tmp_path), ollama="ollama", shim=None,
                                events_socket=SOCK)
        assert plan.env["LD_PRELOAD"] == "/opt/other.so"
        assert "OGPU_EVENTS" not in plan.env

    def test_file_variables_reach_ollama_environment_wins(self, tmp_path: Path) -> None:
        """Non-OGPU keys from our files are added; the real environment keeps precedence."""
        env_file = tmp_path / "o.env"
        env_file.write_text("OLLAMA_GPU_OVERHEAD=1024\nOLLAMA_KEEP_ALIVE=1h\n")
        s = load_settings({"HOME": str(tmp_path), "OGPU_SYSTEM_CONFIG": str(tmp_path / "n")}, [env_file], uid=1000)
        plan = plan_environment({"OLLAMA_KEEP_ALIVE": "5m"}, s, ollama="ollama")
        assert plan.env["OLLAMA_GPU_OVERHEAD"] == "1024"
        assert plan.env["OLLAMA_KEEP_ALIVE"] == "5m"

    def test_with_patch_records_each_change(self, tmp_path: Path) -> None:
        """A remedy patch sets and unsets variables and says why for each."""
        plan = plan_environment({"CUDA_VISIBLE_DEVICES": "-1", "A": "1"}, settings(tmp_path), ollama="ollama")
        patched = with_patch(plan, {"CUDA_VISIBLE_DEVICES": None, "OLLAMA_VULKAN": "0"}, "because")
        assert "CUDA_VISIBLE_DEVICES" not in patched.env and patched.env["OLLAMA_VULKAN"] == "0"
        assert patched.env["A"] == "1"
        assert [(c.key, c.action, c.reason) for c in patched.changes[-2:]] == [
            ("CUDA_VISIBLE_DEVICES", "removed", "because"), ("OLLAMA_VULKAN", "set", "because")]


class TestProactiveRemedy:
    @pytest.mark.parametrize(("mode", "applied", "advised"),
                             [("auto", True, False), ("advise", False, True), ("observe", False, False)])
    def test_driver_directory_only_in_auto(self, tmp_path: Path, shim_cache: Path, mode: str, applied: bool,
                                           advised: bool) -> None:
        """A driver the loader cannot see is added to LD_LIBRARY_PATH before Ollama starts in auto, only advised in
        advise, left alone in observe."""
        root = tmp_path / "root"
        lib(root, "/usr/local/nvidia/lib64")
        s = settings(tmp_path, OGPU_MODE=mode, CACHE_DIRECTORY=str(shim_cache))
        prepared = prepare(s, {"LD_LIBRARY_PATH": "/opt/x", "PATH": os.environ["PATH"]}, ChildRegistry(),
                           structlog.get_logger(), root=root)
        assert prepared.driver.needs_dir
        if applied:
            assert prepared.plan.env["LD_LIBRARY_PATH"] == "/usr/local/nvidia/lib64:/opt/x"
        else:
            assert prepared.plan.env["LD_LIBRARY_PATH"] == "/opt/x"
        assert bool([a for a in prepared.plan.advice if "libcuda_not_found" in a]) is advised

    def test_stub_directory_dropped(self, tmp_path: Path, shim_cache: Path) -> None:
        """A toolkit stubs directory first on LD_LIBRARY_PATH is removed before start."""
        root = tmp_path / "root"
        lib(root, "/usr/local/cuda/lib64/stubs")
        lib(root, "/usr/lib/x86_64-linux-gnu")
        s = settings(tmp_path, CACHE_DIRECTORY=str(shim_cache))
        prepared = prepare(s, {"LD_LIBRARY_PATH": "/usr/local/cuda/lib64/stubs:/opt/y", "PATH": os.environ["PATH"]},
                           ChildRegistry(), structlog.get_logger(), root=root)
        assert prepared.driver.stub_first
        assert "stubs" not in prepared.plan.env["LD_LIBRARY_PATH"]


class TestDriverScan:
    def test_loader_finds_via_cache(self, tmp_path: Path) -> None:
        """A libcuda in the ld.so cache is found; no directory needs adding."""
        path = lib(tmp_path, "/usr/lib/x86_64-linux-gnu")
        cache = parse_ld_cache("\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1\n")
        finding = find_driver({}, root=tmp_path, cache=cache)
        assert path.exists()
        assert finding.loader_via == "cache" and finding.loader_finds_real and not finding.needs_dir

    def test_container_dir_outside_cache(self, tmp_path: Path) -> None:
        """The container toolkit's /usr/local/nvidia/lib64, not in the cache: loader misses it, we find it."""
        lib(tmp_path, "/usr/local/nvidia/lib64")
        finding = find_driver({}, root=tmp_path)
        assert finding.loader_path is None
        assert finding.real_dir == Path("/usr/local/nvidia/lib64")

    def test_wsl_and_nixos_and_extra_dirs(self, tmp_path: Path) -> None:
        """WSL and NixOS locations are known; OGPU_DRIVER_LIB_DIRS is searched first."""
        lib(tmp_path, "/usr/lib/wsl/lib")
        assert find_driver({}, root=tmp_path).real_dir == Path("/usr/lib/wsl/lib")
        lib(tmp_path, "/opt/driver")
        assert find_driver({}, root=tmp_path, extra_dirs=[Path("/opt/driver")]).real_dir == Path("/opt/driver")
        other = tmp_path / "nix"
        lib(other, "/run/opengl-driver/lib")
        assert find_driver({}, root=other).real_dir == Path("/run/opengl-driver/lib")

    def test_stub_dir_never_chosen_and_detected_first(self, tmp_path: Path) -> None:
        """A toolkit stubs dir is never proposed; when LD_LIBRARY_PATH puts it first, that is reported."""
        lib(tmp_path, "/usr/local/cuda/lib64/stubs")
        finding = find_driver({"LD_LIBRARY_PATH": "/usr/local/cuda/lib64/stubs"}, root=tmp_path,
                              extra_dirs=[Path("/usr/local/cuda/lib64/stubs")])
        assert finding.stub_first
        assert finding.real_dir is None
        assert not finding.loader_finds_real

    def test_nothing_anywhere(self, tmp_path: Path) -> None:
        """No driver at all: nothing to add (a CPU-only machine)."""
        finding = find_driver({}, root=tmp_path)
        assert finding.loader_path is None and finding.real_dir is None and not finding.needs_dir
