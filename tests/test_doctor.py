"""Tests of `ollama-gpu doctor`: each check against a fake root, the verdict rules, the live probes against the mock
driver and fake GGML backend under the real shim, and the real CLI on this machine (no GPU, no driver)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from launcher import doctor, shim_build
from launcher.doctor import Ctx, DoctorSettings, NvmlReport, Row
from launcher.nvml import Gpu, NvmlState
from tests.cli_helpers import assert_no_traceback, clean_env, run_cli
from tests.native.build import NativeBuild, native_build
from tests.ollama_sim.install import Install, make_install

H100 = Gpu(index=0, uuid="GPU-6d6f636b-1000-2000-3000-000000400000", name="NVIDIA H100 80GB HBM3",
           pci_bus_id="00000000:00:06.0", memory_total=81559 << 20, memory_used=0, compute_capability="9.0",
           mig_mode=False)
ABSENT = NvmlReport(NvmlState(False, reason="libnvidia-ml not found (no NVIDIA driver user-space libraries)",
                              code=12))
MISMATCH = NvmlReport(NvmlState(False, reason="Driver/library version mismatch: the driver was updated and the old "
                                "kernel module is still loaded", cause="driver_library_mismatch", code=18))


def nvml(driver: str = "580.159.04", cuda: str = "13.0", gpus: Sequence[Gpu] = (H100,),
         persistence: Mapping[int, bool | None] | None = None) -> NvmlReport:
    """An NVML report of a working driver."""
    state = NvmlState(True, driver_version=driver, cuda_version=cuda, gpus=tuple(gpus))
    return NvmlReport(state, persistence if persistence is not None else {g.index: True for g in gpus})


class FakeRunner:
    """`ldconfig -p` answers from a string; every other program really runs."""

    def __init__(self, ld_cache: str = "") -> None:
        self.ld_cache = ld_cache
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str], *, env: Mapping[str, str], timeout: float,
                 cwd: Path | None = None) -> shim_build.Completed:
        self.calls.append(tuple(argv))
        if argv[0].endswith("ldconfig"):
            return shim_build.Completed(tuple(argv), 0, self.ld_cache, "")
        return shim_build.run_process(argv, env=env, timeout=timeout, cwd=cwd)


class Root:
    """A fake filesystem root: /dev, /proc, /etc and library directories, built file by file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        gid = os.getgid()
        self.write("/etc/passwd", "root:x:0:0::/root:/bin/sh\n"
                                  f"ollama:x:{os.getuid() + 4242}:{gid + 4242}::/x:/bin/false\n")
        self.write("/etc/group", f"video:x:{gid}:\nollama:x:{gid + 4242}:\n")
        self.write("/proc/self/mountinfo", "22 1 0:21 / / rw,relatime - ext4 /dev/sda1 rw\n"
                                           "23 22 0:22 / /tmp rw,nosuid,nodev - tmpfs tmpfs rw\n")
        self.write("/proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n")

    def write(self, system_path: str, text: str = "", mode: int | None = None) -> Path:
        p = self.path / system_path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        if mode is not None:
            p.chmod(mode)
        return p

    def nodes(self, *names: str, mode: int = 0o666) -> None:
        for name in names:
            self.write(f"/dev/{name}", mode=mode)

    def gpu_host(self) -> None:
        """A healthy bare-metal driver: nodes, modules, libcuda.so.1 in the distribution's directory."""
        self.nodes("nvidiactl", "nvidia-uvm", "nvidia0")
        self.write("/proc/modules", "nvidia_uvm 1 0 - Live 0x0\nnvidia 2 1 nvidia_uvm, Live 0x0\n")
        self.write("/usr/lib/x86_64-linux-gnu/libcuda.so.1", "real")


def make_ctx(root: Root | Path, *, env: Mapping[str, str] | None = None, report: NvmlReport = ABSENT,
             settings: DoctorSettings | None = None, user: str = "ollama", runner: Any = None,
             probe: bool = False, backend: Path | None = None) -> Ctx:
    """A doctor context over a fake root with an injected NVML report."""
    base = root.path if isinstance(root, Root) else root
    return Ctx(root=base, env=dict(env or {"PATH": "/usr/bin:/bin"}), settings=settings or DoctorSettings(),
               runner=runner or FakeRunner(), nvml=lambda: report, user=user, probe=probe, backend=backend)


def fake_ollama(tmp: Path, version: str = "0.13.5", dirs: Sequence[str] = ("cuda_v12", "cuda_v13"),
                llama_server: bool = False, flat: bool = False) -> Path:
    """bin/ollama (a script printing its version) and lib/ollama/<dirs>/libggml-cuda.so."""
    exe = tmp / "inst" / "bin" / "ollama"
    exe.parent.mkdir(parents=True)
    exe.write_text(f"#!/bin/sh\necho 'ollama version is {version}'\n")
    exe.chmod(0o755)
    lib = tmp / "inst" / "lib" / "ollama"
    lib.mkdir(parents=True)
    for d in dirs:
        (lib / d).mkdir()
        (lib / d / "libggml-cuda.so").write_text("")
    if flat:
        (lib / "libggml-cuda.so").write_text("")
    if llama_server:
        (lib / "llama-server").write_text("")
    return exe


def one(ctx: Ctx, check: doctor.Check) -> Row:
    """Run one check through the same guard as the command."""
    (row,) = doctor.run_checks(ctx, [("check", check)])
    return row


@pytest.fixture
def root(tmp_path: Path) -> Root:
    return Root(tmp_path / "root")


# --- NVML ---------------------------------------------------------------------------------------------------------


class TestNvml:
    def test_absent_nvml_is_a_fact_not_a_failure(self, root: Root) -> None:
        """No libnvidia-ml: an info row with NVML's reason, no cause."""
        row = one(make_ctx(root), doctor.check_nvml)
        assert (row.status, row.cause) == ("info", None)
        assert "libnvidia-ml not found" in row.found and row.data["available"] is False

    def test_driver_library_mismatch_fails_with_the_reload_commands(self, root: Root) -> None:
        """NVML's version mismatch is the driver_library_mismatch cause, fixed by a reboot or module reload."""
        row = one(make_ctx(root, report=MISMATCH), doctor.check_nvml)
        assert (row.status, row.cause) == ("fail", "driver_library_mismatch")
        assert "sudo rmmod nvidia_uvm" in row.fix and "reboot" in row.fix

    def test_driver_and_gpus_are_listed(self, root: Root) -> None:
        """Driver version, CUDA version and each GPU with its UUID, bus id, cc and MIG mode."""
        row = one(make_ctx(root, report=nvml()), doctor.check_nvml)
        assert row.status == "ok"
        assert row.found.startswith("driver 580.159.04, CUDA 13.0, 1 GPU(s): [0] NVIDIA H100 80GB HBM3 (GPU-6d6f")
        assert "cc 9.0" in row.found and "MIG off" in row.found

    def test_a_raising_nvml_source_is_reported_not_raised(self, root: Root) -> None:
        """A binding that raises becomes 'NVML query failed' with the exception's text."""
        def broken() -> NvmlReport:
            raise RuntimeError("binding exploded")

        ctx = Ctx(root=root.path, env={}, settings=DoctorSettings(), nvml=broken, user="ollama")
        row = one(ctx, doctor.check_nvml)
        assert row.status == "info" and "NVML query failed: RuntimeError: binding exploded" in row.found

    def test_persistence_off_is_a_warning_with_the_command(self, root: Root) -> None:
        """Persistence mode off on a GPU: warn, fix with nvidia-persistenced."""
        row = one(make_ctx(root, report=nvml(persistence={0: False})), doctor.check_persistence)
        assert row.status == "warn" and "GPU 0" in row.found and "nvidia-persistenced" in row.fix
        assert one(make_ctx(root, report=nvml()), doctor.check_persistence).status == "ok"


# --- libcuda ------------------------------------------------------------------------------------------------------


class TestLibcuda:
    def test_stub_first_on_ld_library_path_fails_with_the_path_without_stubs(self, root: Root) -> None:
        """A toolkit stubs dir first on LD_LIBRARY_PATH: stub_library, and the export that drops it."""
        root.gpu_host()
        root.write("/usr/local/cuda/lib64/stubs/libcuda.so.1", "stub")
        env = {"LD_LIBRARY_PATH": "/usr/local/cuda/lib64/stubs:/opt/x"}
        row = one(make_ctx(root, env=env, report=nvml()), doctor.check_libcuda)
        assert (row.status, row.cause) == ("fail", "stub_library")
        assert row.fix == "export LD_LIBRARY_PATH=/opt/x"
        paths = {c["path"]: c["stub"] for c in row.data["candidates"]}
        assert paths["/usr/local/cuda/lib64/stubs/libcuda.so.1"] is True
        assert paths["/usr/lib/x86_64-linux-gnu/libcuda.so.1"] is False

    def test_a_symlink_into_a_stubs_dir_is_a_stub(self, root: Root) -> None:
        """libcuda.so.1 that resolves into …/stubs/ counts as a stub even in an innocent directory."""
        root.gpu_host()
        target = root.write("/usr/local/cuda/lib64/stubs/libcuda.so", "stub")
        (root.path / "opt/lib").mkdir(parents=True)
        (root.path / "opt/lib/libcuda.so.1").symlink_to(target)
        row = one(make_ctx(root, env={"LD_LIBRARY_PATH": "/opt/lib"}, report=nvml()), doctor.check_libcuda)
        (cand,) = [c for c in row.data["candidates"] if c["path"] == "/opt/lib/libcuda.so.1"]
        assert cand["stub"] is True and cand["real"] == "/usr/local/cuda/lib64/stubs/libcuda.so"

    def test_real_driver_from_the_loader_cache_is_ok(self, root: Root) -> None:
        """`ldconfig -p` lists the driver: the loader takes it via the cache."""
        root.gpu_host()
        cache = "\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1\n"
        runner = FakeRunner(ld_cache=cache)
        row = one(make_ctx(root, report=nvml(), runner=runner), doctor.check_libcuda)
        assert row.status == "ok" and row.data["via"] == "cache"
        assert row.data["loader"] == "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
        assert any(call[0].endswith("ldconfig") for call in runner.calls)

    def test_driver_outside_the_loader_path_warns_with_the_directory(self, root: Root) -> None:
        """libcuda.so.1 only in a known driver dir the loader does not search: libcuda_not_found, fix names it."""
        root.gpu_host()
        (root.path / "usr/lib/x86_64-linux-gnu/libcuda.so.1").unlink()
        root.write("/usr/local/nvidia/lib64/libcuda.so.1", "real")
        row = one(make_ctx(root, report=nvml()), doctor.check_libcuda)
        assert (row.status, row.cause) == ("warn", "libcuda_not_found")
        assert "echo /usr/local/nvidia/lib64 | sudo tee /etc/ld.so.conf.d/" in row.fix

    def test_a_gpu_without_any_libcuda_fails(self, root: Root) -> None:
        """NVML sees a GPU but no libcuda.so.1 exists anywhere: libcuda_not_found."""
        root.nodes("nvidiactl", "nvidia-uvm", "nvidia0")
        row = one(make_ctx(root, report=nvml()), doctor.check_libcuda)
        assert (row.status, row.cause) == ("fail", "libcuda_not_found")

    def test_no_driver_no_libcuda_is_information(self, root: Root) -> None:
        """Nothing anywhere and no GPU: info."""
        row = one(make_ctx(root), doctor.check_libcuda)
        assert row.status == "info" and row.cause is None

    def test_wsl_linux_driver_shadowing_usr_lib_wsl_fails(self, root: Root) -> None:
        """On WSL2 a Linux libcuda found before /usr/lib/wsl/lib is wsl_libcuda_path."""
        root.nodes("dxg")
        root.write("/usr/lib/wsl/lib/libcuda.so.1", "wsl")
        root.write("/usr/lib/libcuda.so.1", "linux driver")
        row = one(make_ctx(root), doctor.check_libcuda)
        assert (row.status, row.cause) == ("fail", "wsl_libcuda_path")
        assert row.fix.startswith("export LD_LIBRARY_PATH=/usr/lib/wsl/lib:")


# --- device nodes and modules -------------------------------------------------------------------------------------


class TestDeviceNodes:
    def test_open_nodes_are_ok(self, root: Root) -> None:
        """All nodes 0666: the service user can open them."""
        root.gpu_host()
        row = one(make_ctx(root, report=nvml()), doctor.check_device_nodes)
        assert row.status == "ok" and "/dev/nvidia0" in row.found

    def test_group_only_nodes_need_the_group(self, root: Root) -> None:
        """0660 nodes of group video and a user outside it: permission_denied, fix adds the user to video."""
        root.gpu_host()
        for n in ("nvidiactl", "nvidia-uvm", "nvidia0"):
            (root.path / "dev" / n).chmod(0o660)
        row = one(make_ctx(root, report=nvml()), doctor.check_device_nodes)
        assert (row.status, row.cause) == ("fail", "permission_denied")
        assert row.fix.startswith("sudo usermod -aG video ollama")
        root.write("/etc/group", f"video:x:{os.getgid()}:ollama\n")
        assert one(make_ctx(root, report=nvml()), doctor.check_device_nodes).status == "ok"

    def test_owner_only_nodes_need_a_mode_change(self, root: Root) -> None:
        """0600 nodes the user does not own: the fix is chmod 0666 (and NVreg_DeviceFileMode)."""
        root.gpu_host()
        (root.path / "dev/nvidia0").chmod(0o600)
        row = one(make_ctx(root, report=nvml()), doctor.check_device_nodes)
        assert row.status == "fail" and "sudo chmod 0666 /dev/nvidia0" in row.fix
        assert stat.S_IMODE((root.path / "dev/nvidia0").stat().st_mode) == 0o600

    def test_the_owner_may_open_its_own_nodes(self, root: Root) -> None:
        """A user whose uid owns 0600 nodes can open them."""
        root.gpu_host()
        for n in ("nvidiactl", "nvidia-uvm", "nvidia0"):
            (root.path / "dev" / n).chmod(0o600)
        root.write("/etc/passwd", f"svc:x:{os.getuid()}:{os.getgid()}::/x:/bin/false\n")
        assert one(make_ctx(root, report=nvml(), user="svc"), doctor.check_device_nodes).status == "ok"

    def test_missing_uvm_node_fails(self, root: Root) -> None:
        """nvidiactl and nvidia0 without nvidia-uvm: uvm_not_loaded with modprobe."""
        root.nodes("nvidiactl", "nvidia0")
        row = one(make_ctx(root, report=nvml()), doctor.check_device_nodes)
        assert (row.status, row.cause) == ("fail", "uvm_not_loaded") and "modprobe nvidia-uvm" in row.fix

    def test_container_without_gpu_runtime(self, root: Root) -> None:
        """NVML sees GPUs, no /dev/nvidia* in a container: container_no_gpu_runtime, fix --gpus all."""
        root.write("/.dockerenv")
        row = one(make_ctx(root, report=nvml()), doctor.check_device_nodes)
        assert (row.status, row.cause) == ("fail", "container_no_gpu_runtime") and "--gpus all" in row.fix

    def test_unknown_service_user_fails(self, root: Root) -> None:
        """--user naming no account is a failure that says so."""
        row = one(make_ctx(root, user="nobody-here"), doctor.check_device_nodes)
        assert row.status == "fail" and "'nobody-here' does not exist" in row.found

    def test_wsl_needs_only_dxg(self, root: Root) -> None:
        """WSL2: /dev/dxg is the node; no /dev/nvidia* expected."""
        root.nodes("dxg")
        row = one(make_ctx(root), doctor.check_device_nodes)
        assert row.status == "ok" and list(row.data["nodes"]) == ["/dev/dxg"]


class TestUvm:
    def test_nvidia_without_uvm_fails(self, root: Root) -> None:
        """nvidia loaded, nvidia_uvm not: uvm_not_loaded."""
        root.write("/proc/modules", "nvidia 2 0 - Live 0x0\n")
        row = one(make_ctx(root), doctor.check_uvm)
        assert (row.status, row.cause) == ("fail", "uvm_not_loaded") and "sudo modprobe nvidia-uvm" in row.fix

    def test_uvm_loaded_is_ok_and_unreadable_is_information(self, root: Root) -> None:
        """Both modules: ok; no /proc/modules: info."""
        assert one(make_ctx(root), doctor.check_uvm).status == "info"
        root.gpu_host()
        assert one(make_ctx(root), doctor.check_uvm).status == "ok"


# --- filters, Ollama, CPU, tmp, shim ------------------------------------------------------------------------------


class TestFilters:
    @pytest.mark.parametrize("env", [{"CUDA_VISIBLE_DEVICES": "-1"}, {"CUDA_VISIBLE_DEVICES": ""},
                                     {"OLLAMA_LLM_LIBRARY": "cpu_avx2"}, {"NVIDIA_VISIBLE_DEVICES": "void"}])
    def test_filters_that_force_cpu_are_the_operators_choice(self, root: Root, env: dict[str, str]) -> None:
        """A value hiding every GPU or forcing a CPU library: warn, operator_forced_cpu."""
        row = one(make_ctx(root, env=env), doctor.check_filters)
        assert (row.status, row.cause) == ("warn", "operator_forced_cpu") and "OGPU_MAY_OVERRIDE" in row.fix

    def test_override_already_listed_is_not_asked_for(self, root: Root) -> None:
        """CUDA_VISIBLE_DEVICES=-1 already in OGPU_MAY_OVERRIDE: the fix does not ask to list it again (issue 15)."""
        ctx = make_ctx(root, env={"CUDA_VISIBLE_DEVICES": "-1"},
                       settings=DoctorSettings(may_override=frozenset({"CUDA_VISIBLE_DEVICES"})))
        row = one(ctx, doctor.check_filters)
        assert row.cause == "operator_forced_cpu" and "list them in OGPU_MAY_OVERRIDE" not in row.fix
        assert "already lists CUDA_VISIBLE_DEVICES" in row.fix

    def test_keys_from_our_env_files_count(self, root: Root) -> None:
        """A filter set in an ollama-gpu env file reaches Ollama, so it is reported."""
        ctx = make_ctx(root, settings=DoctorSettings(ollama_env={"CUDA_VISIBLE_DEVICES": "-1"}))
        assert one(ctx, doctor.check_filters).cause == "operator_forced_cpu"

    def test_a_selecting_filter_is_information(self, root: Root) -> None:
        """CUDA_VISIBLE_DEVICES=0 selects a GPU: info, listed."""
        row = one(make_ctx(root, env={"CUDA_VISIBLE_DEVICES": "0"}), doctor.check_filters)
        assert row.status == "info" and "CUDA_VISIBLE_DEVICES='0'" in row.found
        assert one(make_ctx(root), doctor.check_filters).status == "ok"


class TestOllama:
    def test_version_and_generation(self, root: Root, tmp_path: Path) -> None:
        """`ollama --version` is asked and mapped to its generation."""
        exe = fake_ollama(tmp_path, "0.13.5")
        row = one(make_ctx(root, settings=DoctorSettings(ollama=str(exe))), doctor.check_ollama)
        assert row.status == "ok" and row.found.endswith("version 0.13.5, generation C")

    def test_not_found(self, root: Root) -> None:
        """OGPU_OLLAMA that is not on PATH: fail with the install command."""
        row = one(make_ctx(root, settings=DoctorSettings(ollama="no-such-ollama")), doctor.check_ollama)
        assert row.status == "fail" and "install.sh" in row.fix

    def test_unknown_generation_is_observe_only(self, root: Root, tmp_path: Path) -> None:
        """A version outside the tables (v0.27 was never tagged): warn, observe only."""
        exe = fake_ollama(tmp_path, "0.27.0")
        row = one(make_ctx(root, settings=DoctorSettings(ollama=str(exe))), doctor.check_ollama)
        assert row.status == "warn" and "generation unknown" in row.found

    def test_a_binary_that_prints_no_version(self, root: Root, tmp_path: Path) -> None:
        """No version in the output: fail, with what it printed."""
        exe = tmp_path / "ollama"
        exe.write_text("#!/bin/sh\necho hello; exit 3\n")
        exe.chmod(0o755)
        row = one(make_ctx(root, settings=DoctorSettings(ollama=str(exe))), doctor.check_ollama)
        assert row.status == "fail" and "exit 3: hello" in row.found


class TestOllamaLibs:
    def libs(self, root: Root, tmp_path: Path, report: NvmlReport, **kw: Any) -> Row:
        exe = fake_ollama(tmp_path, **kw)
        return one(make_ctx(root, report=report, settings=DoctorSettings(ollama=str(exe))), doctor.check_ollama_libs)

    def test_driver_580_runs_both_variants(self, root: Root, tmp_path: Path) -> None:
        """cuda_v12 and cuda_v13 with driver 580: ok."""
        row = self.libs(root, tmp_path, nvml())
        assert row.status == "ok" and "cuda_v12 (ok), cuda_v13 (ok)" in row.found

    def test_driver_550_falls_back_to_cuda_v12(self, root: Root, tmp_path: Path) -> None:
        """Driver 550: cuda_v13 needs 580, Ollama uses cuda_v12: warn with the upgrade."""
        row = self.libs(root, tmp_path, nvml("550.54.15", "12.4"), version="0.32.15", llama_server=True)
        assert row.status == "warn" and "Ollama will use cuda_v12" in row.found and "580" in row.fix

    def test_generation_d_drops_cuda_v12_below_550(self, root: Root, tmp_path: Path) -> None:
        """Driver 535 under generation D: no variant runs, driver_too_old; under generation C cuda_v12 still runs."""
        row = self.libs(root, tmp_path, nvml("535.183.01", "12.2"), version="0.32.15", llama_server=True)
        assert (row.status, row.cause) == ("fail", "driver_too_old")
        assert "cuda_v12 needs ≥ 550" in row.found and "nvidia-driver-580" in row.fix
        row = self.libs(root, tmp_path / "c", nvml("535.183.01", "12.2"), version="0.13.5")
        assert row.status == "warn" and "Ollama will use cuda_v12" in row.found

    def test_no_cuda_dir_with_a_gpu_is_missing_runners(self, root: Root, tmp_path: Path) -> None:
        """A CPU-only install on a GPU host: missing_gpu_runners."""
        root.gpu_host()
        row = self.libs(root, tmp_path, nvml(), dirs=())
        assert (row.status, row.cause) == ("fail", "missing_gpu_runners")

    def test_generation_d_without_llama_server(self, root: Root, tmp_path: Path) -> None:
        """Generation D needs lib/ollama/llama-server."""
        row = self.libs(root, tmp_path, nvml(), version="0.32.15")
        assert (row.status, row.cause) == ("fail", "missing_gpu_runners") and "llama-server" in row.found

    def test_flat_layout_of_v0_10(self, root: Root, tmp_path: Path) -> None:
        """v0.9.3–v0.11.10 install CUDA 12 flat in lib/ollama: one variant, lib/ollama."""
        row = self.libs(root, tmp_path, nvml(), version="0.10.1", dirs=(), flat=True)
        assert row.status == "ok" and [v["name"] for v in row.data["variants"]] == ["lib/ollama"]

    def test_without_driver_nothing_is_judged(self, root: Root, tmp_path: Path) -> None:
        """No NVML: the variants are listed, not judged."""
        row = self.libs(root, tmp_path, ABSENT)
        assert row.status == "info" and "cuda_v13 (driver ≥ 580)" in row.found


class TestCpuAndTmp:
    def test_no_avx_blocks_generation_a_only(self, root: Root, tmp_path: Path) -> None:
        """No AVX: cpu_lacks_avx under generation A, a warning later."""
        root.write("/proc/cpuinfo", "flags\t\t: fpu sse sse2\n")
        exe_a = fake_ollama(tmp_path / "a", "0.3.14", dirs=())
        row = one(make_ctx(root, settings=DoctorSettings(ollama=str(exe_a))), doctor.check_avx)
        assert (row.status, row.cause) == ("fail", "cpu_lacks_avx")
        exe_d = fake_ollama(tmp_path / "d", "0.32.15", dirs=())
        assert one(make_ctx(root, settings=DoctorSettings(ollama=str(exe_d))), doctor.check_avx).status == "warn"

    def test_non_x86_is_information(self, root: Root) -> None:
        """No x86 flags line (aarch64 has Features): info."""
        root.write("/proc/cpuinfo", "processor\t: 0\nFeatures\t: fp asimd\n")
        assert one(make_ctx(root), doctor.check_avx).status == "info"

    def test_noexec_tmp_fails_generation_a(self, root: Root, tmp_path: Path) -> None:
        """/tmp noexec and generation A: tmp_noexec with the OLLAMA_TMPDIR fix; later generations: warn."""
        root.write("/proc/self/mountinfo", "22 1 0:21 / / rw - ext4 /dev/sda1 rw\n"
                                           "23 22 0:22 / /tmp rw,nosuid,nodev,noexec - tmpfs tmpfs rw\n")
        exe_a = fake_ollama(tmp_path / "a", "0.3.14", dirs=())
        row = one(make_ctx(root, settings=DoctorSettings(ollama=str(exe_a))), doctor.check_tmp)
        assert (row.status, row.cause) == ("fail", "tmp_noexec") and "OLLAMA_TMPDIR=" in row.fix
        ctx = make_ctx(root, env={"PATH": "/bin", "OLLAMA_TMPDIR": "/var/lib/ollama/tmp"},
                       settings=DoctorSettings(ollama=str(exe_a)))
        assert one(ctx, doctor.check_tmp).status == "warn"  # /tmp still noexec, but not where Ollama extracts

    def test_mountinfo_escapes_and_longest_prefix(self) -> None:
        """Octal escapes are decoded; a path belongs to its longest mount point."""
        mounts = doctor.parse_mountinfo("1 0 0:1 / / rw - ext4 x rw\n2 1 0:2 / /my\\040tmp rw,noexec - tmpfs t rw\n")
        assert doctor.mount_of(mounts, "/my tmp/x") == mounts[1]
        assert doctor.mount_of(mounts, "/my tmpx") == mounts[0]


class TestShim:
    def test_prebuilt_shim_passes_preflight(self, root: Root, native: NativeBuild) -> None:
        """OGPU_SHIM naming the real shim: ok, preflight passed."""
        ctx = make_ctx(root, env=dict(os.environ), settings=DoctorSettings(shim=native.shim))
        row = one(ctx, doctor.check_shim)
        assert row.status == "ok" and row.data["preflight"]["ok"] is True

    def test_a_broken_shim_fails_with_the_loaders_text(self, root: Root, tmp_path: Path) -> None:
        """OGPU_SHIM that is not an ELF: fail, the loader's message in the row."""
        bogus = tmp_path / "libbogus.so"
        bogus.write_text("not an ELF")
        ctx = make_ctx(root, env=dict(os.environ), settings=DoctorSettings(shim=bogus))
        row = one(ctx, doctor.check_shim)
        assert row.status == "fail" and "libbogus.so" in row.found and "cannot be preloaded" in row.found

    def test_a_missing_prebuilt_shim_is_a_warning(self, root: Root, tmp_path: Path) -> None:
        """OGPU_SHIM naming nothing: serve runs without the shim, a warning."""
        ctx = make_ctx(root, settings=DoctorSettings(shim=tmp_path / "nothing.so"))
        row = one(ctx, doctor.check_shim)
        assert row.status == "warn" and "is not a file" in row.found


# --- running, verdict, output -------------------------------------------------------------------------------------


class TestRunAndVerdict:
    def test_a_check_that_raises_is_that_checks_failure(self, root: Root) -> None:
        """An exception inside a check becomes its fail row; the next check still runs."""
        def boom(ctx: Ctx) -> Row:
            raise ValueError("kaput")

        rows = doctor.run_checks(make_ctx(root), [("boom", boom), ("device_filters", doctor.check_filters)])
        assert [(r.name, r.status) for r in rows] == [("boom", "fail"), ("device_filters", "ok")]
        assert "ValueError: kaput" in rows[0].found
        assert doctor.exit_code(rows) == 1

    def test_no_gpu_no_driver_is_cpu_expected(self, root: Root) -> None:
        """This CI machine's case: every check, no GPU, no driver: cpu_expected / none."""
        ctx = make_ctx(root)
        v = doctor.verdict(ctx, doctor.run_checks(ctx, doctor.CHECKS))
        assert (v.outcome, v.cause, v.proven) == ("cpu_expected", "none", False)

    def test_operator_choice_wins_over_a_gpu(self, root: Root) -> None:
        """CUDA_VISIBLE_DEVICES=-1 on a GPU host: cpu_expected / operator_forced_cpu."""
        root.gpu_host()
        ctx = make_ctx(root, env={"CUDA_VISIBLE_DEVICES": "-1"}, report=nvml())
        v = doctor.verdict(ctx, doctor.run_checks(ctx, [("f", doctor.check_filters), ("n", doctor.check_nvml)]))
        assert (v.outcome, v.cause) == ("cpu_expected", "operator_forced_cpu")

    def test_a_blocking_row_on_a_gpu_host_is_cpu_fallback(self, root: Root) -> None:
        """A GPU and missing /dev/nvidia-uvm: cpu_fallback / uvm_not_loaded."""
        root.nodes("nvidiactl", "nvidia0")
        ctx = make_ctx(root, report=nvml())
        v = doctor.verdict(ctx, doctor.run_checks(ctx, [("d", doctor.check_device_nodes)]))
        assert (v.outcome, v.cause) == ("cpu_fallback", "uvm_not_loaded")

    def test_mismatch_is_not_called_no_gpu(self, root: Root) -> None:
        """NVML's version mismatch hides the GPUs, but it is a fallback with that cause, not cpu_expected."""
        ctx = make_ctx(root, report=MISMATCH)
        v = doctor.verdict(ctx, doctor.run_checks(ctx, [("n", doctor.check_nvml)]))
        assert (v.outcome, v.cause) == ("cpu_fallback", "driver_library_mismatch")

    def test_healthy_without_probes_is_gpu_not_proven(self, root: Root) -> None:
        """A GPU and nothing in the way, no probe: gpu, not proven."""
        root.gpu_host()
        ctx = make_ctx(root, report=nvml())
        v = doctor.verdict(ctx, doctor.run_checks(ctx, [("n", doctor.check_nvml), ("d", doctor.check_device_nodes)]))
        assert (v.outcome, v.cause, v.proven) == ("gpu", "none", False)

    def test_text_table_marks_and_fix_lines(self, root: Root) -> None:
        """The table carries ✓/!/✗ marks and a fix line under failed and warned checks only."""
        rows = [Row("a", "ok", "fine"), Row("b", "warn", "meh", "do x"), Row("c", "fail", "bad", "do y"),
                Row("d", "info", "fyi", "not shown")]
        text = doctor.render_text(rows, doctor.Verdict("cpu_fallback", "unknown", "because", False), "ollama")
        lines = text.splitlines()
        assert lines[1].startswith(" ✓ a") and lines[2].startswith(" ! b") and lines[4].startswith(" ✗ c")
        assert "fix: do x" in lines[3] and "fix: do y" in lines[5] and "not shown" not in text
        assert "verdict: cpu_fallback (cause: unknown)" in text
        assert doctor.marks_for("ascii")["fail"] == "X" and doctor.marks_for("utf-8")["fail"] == "✗"


# --- live probes against the mock driver and the fake GGML backend, under the real shim ---------------------------


@pytest.fixture(scope="module")
def native() -> NativeBuild:
    return native_build()


@pytest.fixture(scope="module")
def install(native: NativeBuild, tmp_path_factory: pytest.TempPathFactory) -> Install:
    return make_install(tmp_path_factory.mktemp("sim") / "prefix", "D", cuda_backend=native.ggml_cuda)


def probe_env(libdir: Path | None, **extra: str) -> dict[str, str]:
    """A clean environment: PATH, the mock driver's directory on LD_LIBRARY_PATH (or none), MOCKCUDA_* settings."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    if libdir is not None:
        env["LD_LIBRARY_PATH"] = str(libdir)
    env.update(extra)
    return env


def probes(root: Root, native: NativeBuild, install: Install, env: dict[str, str]) -> dict[str, Row]:
    """Run both probes with the shim preloaded (NVML absent, as here); rows by name, and the verdict as `verdict`."""
    ctx = make_ctx(root, env=env, settings=DoctorSettings(ollama=str(install.ollama), shim=native.shim),
                   probe=True)
    rows = doctor.run_checks(ctx, doctor.PROBES)
    v = doctor.verdict(ctx, rows)
    return {**{r.name: r for r in rows}, "verdict": Row("verdict", "info", v.outcome, cause=v.cause)}


def events(row: Row, kind: str) -> list[dict[str, Any]]:
    return [e for e in row.data["shim_events"] if e["kind"] == kind]


class TestProbes:
    def test_passing_probes_report_every_device(self, root: Root, native: NativeBuild, install: Install) -> None:
        """Two mock GPUs: cuInit 0 and 2 devices through the driver API; the backend registers 2 devices."""
        rows = probes(root, native, install, probe_env(native.mock_dir, MOCKCUDA_DEVICE_COUNT="2"))
        cu, be = rows["probe_cuinit"], rows["probe_backend"]
        assert cu.status == "ok" and cu.data["devices"] == 2
        assert "cuInit 0, driver API 13000, 2 device(s): 0: NVIDIA H100 80GB HBM3 (cc 9.0, 0000:01:00.0)" in cu.found
        assert [d["ctx"] for d in cu.data["result"]["devices"]] == [0, 0]
        assert events(cu, "cu_init") == [{"kind": "cu_init", "result": 0}]
        assert events(cu, "dlopen")[0]["name"] == "libcuda.so.1" and events(cu, "dlopen")[0]["ok"] is True
        assert be.status == "ok" and be.data["devices"] == 2 and str(install.cuda_backend) in be.found
        assert be.data["result"]["api_version"] == 2
        assert (rows["verdict"].found, rows["verdict"].cause) == ("gpu", "none")
        assert [e["name"] for e in events(be, "dlopen")][:2] == [str(install.cuda_backend), "libcuda.so.1"]

    def test_cuinit_999_is_reported_with_the_drivers_text(self, root: Root, native: NativeBuild,
                                                          install: Install) -> None:
        """cuInit 999: both probes fail with the driver's and GGML's exact text; the shim saw result 999."""
        rows = probes(root, native, install, probe_env(native.mock_dir, MOCKCUDA_INIT_ERROR="999"))
        cu, be = rows["probe_cuinit"], rows["probe_backend"]
        assert (cu.status, cu.cause) == ("fail", "uvm_not_loaded")
        assert cu.found.startswith("cuInit returned 999 unknown error")
        assert events(cu, "cu_init") == [{"kind": "cu_init", "result": 999}]
        assert "sudo rmmod nvidia_uvm && sudo modprobe nvidia_uvm" in cu.fix
        assert be.status == "fail" and be.found.endswith("with 0 devices: ggml_cuda_init: unknown error")
        assert "ggml_cuda_init: failed to initialize CUDA: unknown error" in be.data["log"]
        # a driver that loads and fails with 999 is a broken GPU, not a machine without one
        assert (rows["verdict"].found, rows["verdict"].cause) == ("cpu_fallback", "uvm_not_loaded")

    @pytest.mark.parametrize(("code", "cause"), [("802", "fabric_manager_not_running"),
                                                 ("800", "container_gpu_access_lost")])
    def test_cuinit_code_names_its_cause(self, root: Root, native: NativeBuild, install: Install, code: str,
                                         cause: str) -> None:
        """cuInit 802 / 800 from the mock driver: the probe names the error-code table's cause and its fix."""
        rows = probes(root, native, install, probe_env(native.mock_dir, MOCKCUDA_INIT_ERROR=code))
        cu = rows["probe_cuinit"]
        assert (cu.status, cu.cause) == ("fail", cause)
        assert cu.found.startswith(f"cuInit returned {code}")

    def test_missing_libcuda_on_a_gpu_host_gives_the_loaders_text(self, root: Root, native: NativeBuild,
                                                                  install: Install) -> None:
        """Device nodes but no libcuda.so.1: fail with the dlopen error text, in the row and the shim's event."""
        root.nodes("nvidiactl", "nvidia-uvm", "nvidia0")
        rows = probes(root, native, install, probe_env(None))
        text = "libcuda.so.1: cannot open shared object file: No such file or directory"
        cu, be = rows["probe_cuinit"], rows["probe_backend"]
        assert (cu.status, cu.cause) == ("fail", "libcuda_not_found") and cu.found.endswith(text)
        assert events(cu, "dlopen") == [{"kind": "dlopen", "name": "libcuda.so.1", "ok": False, "error": text,
                                         "flags": 2}]
        assert (be.status, be.cause) == ("fail", "libcuda_not_found") and be.found.endswith(text)
        assert (rows["verdict"].found, rows["verdict"].cause) == ("cpu_fallback", "libcuda_not_found")

    def test_missing_libcuda_without_a_gpu_is_expected(self, root: Root, native: NativeBuild,
                                                       install: Install) -> None:
        """No GPU sign and no libcuda.so.1: the same text, as information; verdict cpu_expected."""
        rows = probes(root, native, install, probe_env(None))
        cu, be = rows["probe_cuinit"], rows["probe_backend"]
        assert (cu.status, cu.cause) == ("info", None) and "cannot open shared object file" in cu.found
        assert be.status == "info" and "libcuda.so.1: cannot open shared object file" in be.found
        assert rows["verdict"].found == "cpu_expected"

    def test_backend_with_an_unresolved_symbol(self, root: Root, native: NativeBuild, install: Install) -> None:
        """A driver without cuMemAddressReserve: cuInit passes, the backend's dlopen fails with 'undefined symbol'."""
        rows = probes(root, native, install, probe_env(native.mock_novareserve_dir))
        cu, be = rows["probe_cuinit"], rows["probe_backend"]
        assert cu.status == "ok"
        assert (be.status, be.cause) == ("fail", "backend_load_failed")
        assert be.found.endswith(f"{install.cuda_backend}: undefined symbol: cuMemAddressReserve")
        (ev,) = [e for e in events(be, "dlopen") if e["name"] == str(install.cuda_backend)]
        assert ev["ok"] is False and "undefined symbol: cuMemAddressReserve" in ev["error"]

    def test_backend_option_overrides_the_install(self, root: Root, native: NativeBuild, tmp_path: Path) -> None:
        """--backend PATH is probed instead of the installation's own (here: a file that is no library)."""
        bogus = tmp_path / "libggml-cuda.so"
        bogus.write_text("")
        ctx = make_ctx(root, env=probe_env(native.mock_dir), settings=DoctorSettings(shim=native.shim),
                       probe=True, backend=bogus)
        row = one(ctx, doctor.check_probe_backend)
        assert row.status == "fail" and "file too short" in row.found

    def test_a_crashed_probe_says_which_signal(self) -> None:
        """A probe killed by a signal prints no answer: the row names the signal and the stderr tail."""
        run = doctor.ProbeRun(None, 139, "Segmentation fault", (), None)
        row = doctor._cuinit_row(run)
        assert row.status == "fail" and "killed by signal 11" in row.found and "Segmentation fault" in row.found


# --- the real CLI -------------------------------------------------------------------------------------------------


class TestCli:
    def test_json_on_this_machine_reports_no_nvml_and_cpu_expected(self, tmp_path: Path,
                                                                   native: NativeBuild) -> None:
        """`doctor --json` here (no GPU, no driver): NVML absent, verdict cpu_expected, no traceback."""
        proc = run_cli(["doctor", "--json"], clean_env(tmp_path, {"OGPU_SHIM": str(native.shim)}))
        assert_no_traceback(proc.stdout + proc.stderr)
        out = json.loads(proc.stdout)
        checks = {c["name"]: c for c in out["checks"]}
        assert checks["nvml"]["status"] == "info" and checks["nvml"]["data"]["available"] is False
        assert (out["verdict"]["outcome"], out["verdict"]["cause"]) == ("cpu_expected", "none")
        assert proc.returncode == out["exit_code"] == (1 if any(c["status"] == "fail" for c in out["checks"]) else 0)
        assert [c["name"] for c in out["checks"]] == [name for name, _ in doctor.CHECKS]

    def test_probe_through_the_cli(self, tmp_path: Path, native: NativeBuild, install: Install) -> None:
        """`doctor --probe` with the mock driver and the simulated install: both probes pass, verdict gpu, exit 0."""
        env = clean_env(tmp_path, {"OGPU_SHIM": str(native.shim), "OGPU_OLLAMA": str(install.ollama),
                                   "LD_LIBRARY_PATH": str(native.mock_dir)})
        proc = run_cli(["doctor", "--probe"], env)
        assert_no_traceback(proc.stdout + proc.stderr)
        assert "✓ probe_cuinit" in proc.stdout and "✓ probe_backend" in proc.stdout
        assert "verdict: gpu (cause: none)" in proc.stdout
        assert proc.returncode == 0, proc.stdout

    def test_a_failed_check_exits_1_and_usage_exits_2(self, tmp_path: Path, native: NativeBuild) -> None:
        """A missing Ollama binary fails a check (exit 1, the fix printed); an unknown option is usage (exit 2)."""
        env = clean_env(tmp_path, {"OGPU_SHIM": str(native.shim), "OGPU_OLLAMA": str(tmp_path / "no-ollama")})
        proc = run_cli(["doctor"], env)
        assert proc.returncode == 1 and "✗ ollama" in proc.stdout and "fix: install Ollama" in proc.stdout
        assert run_cli(["doctor", "--bogus"], env).returncode == 2
