"""Error-code tables (issue 13 item 3): every code that implies a cause names it from a realistic log line and from
a live event (the shim's cuInit result for CUDA, NVML's return code for NVML); the new causes end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import error_codes
from launcher.error_codes import CU, CUDART, HIP, NVML, ErrorCode
from launcher.events import Event
from launcher.evidence import judge
from launcher.ollama_logs import parse_text
from launcher.vocabulary import CAUSES
from tests.cli_helpers import REPO
from tests.test_evidence_live import (
    cuda_ok,
    fixture_log,
    live,
    memory,
    nvml_gpus,
    only_runner,
    runner,
    shim,
    snapshot,
    started,
)

T = "time=2026-01-01T00:00:00.000Z level=INFO source=x.go:1 "
V_A = f'{T}msg="Listening on 127.0.0.1:11434 (version 0.5.7)"'
V_D = f'{T}msg="Listening on 127.0.0.1:11434 (version 0.33.0)"'
START_D = (f'{T}msg="starting llama-server" cmd="/usr/lib/ollama/llama-server --model /m --port 40001 '
           '--n-gpu-layers 99"')


def caused(rows: tuple[ErrorCode, ...]) -> list[ErrorCode]:
    return [r for r in rows if r.cause is not None]


def ids(rows: list[ErrorCode]) -> list[str]:
    return [f"{r.family}-{r.code}-{r.cause}" for r in rows]


def verdict_of(*lines: str) -> tuple[str, str]:
    v = judge(parse_text("\n".join(lines) + "\n"))
    return v.outcome, v.cause


def expected_outcome(cause: str) -> str:
    return "cpu_expected" if cause in ("operator_forced_cpu", "unsupported_igpu") else "cpu_fallback"


CRASH_ROWS = [r for r in caused(CUDART) if r.cause != "device_filter_hides_gpu"]


class TestTables:
    def test_every_cause_is_in_the_vocabulary(self) -> None:
        """A row names a cause of the vocabulary or none."""
        for rows in error_codes.TABLES.values():
            for row in rows:
                assert row.cause is None or row.cause in CAUSES, row

    def test_codes_and_names_are_unique_per_family(self) -> None:
        """One row per code in a family, and the names carry their family's prefix."""
        prefixes = {"cu": "CUDA_", "cudart": "cuda", "nvml": "NVML_", "hip": "hip"}
        for family, rows in error_codes.TABLES.items():
            assert len({r.code for r in rows}) == len(rows)
            assert all(r.name.startswith(prefixes[family]) for r in rows)

    @pytest.mark.parametrize(("family", "code", "name", "text"), [
        ("cu", 100, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"),
        ("nvml", 18, "NVML_ERROR_LIB_RM_VERSION_MISMATCH", "Driver/library version mismatch"),
        ("cu", 999, "CUDA_ERROR_UNKNOWN", "unknown error"),
        ("cu", 802, "CUDA_ERROR_SYSTEM_NOT_READY", "system not yet initialized"),
        ("cu", 800, "CUDA_ERROR_NOT_PERMITTED", "operation not permitted"),
        ("cu", 803, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH", "system has unsupported display driver / cuda driver "
                                                         "combination"),
        ("cu", 804, "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE", "forward compatibility was attempted on non "
                                                                 "supported HW"),
        ("cudart", 35, "cudaErrorInsufficientDriver", "CUDA driver version is insufficient for CUDA runtime version"),
        ("cu", 3, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"),
        ("nvml", 15, "NVML_ERROR_GPU_IS_LOST", "GPU is lost"),
        ("hip", 209, "hipErrorNoBinaryForGpu", "no kernel image is available for execution on the device"),
    ])
    def test_rows_named_in_the_issue(self, family: error_codes.Family, code: int, name: str, text: str) -> None:
        """The codes issue 13 names carry the name and the text as printed."""
        row = error_codes.lookup(family, code)
        assert row is not None and row.name == name and text in row.texts

    def test_a_loader_message_is_not_a_code(self) -> None:
        """dlerror's "Operation not permitted" (noexec /tmp) stays tmp_noexec, never CUDA's 800."""
        line = (f'{T}msg="Unable to load cudart library /tmp/ollama1/runners/cuda_v12/libcudart.so.12: failed to '
                'map segment from shared object: Operation not permitted"')
        assert verdict_of(V_A, line, f'{T}msg="no compatible GPUs were discovered"')[1] == "tmp_noexec"

    def test_a_code_that_names_a_cause_beats_a_text_that_does_not(self) -> None:
        """`init failure: 802 (initialization error)`: the number names a cause, the generic text none."""
        assert error_codes.cause_of("cuInit err: 802 (initialization error)") == "fabric_manager_not_running"

    @pytest.mark.parametrize("gap", ["", "   ", "             "])
    def test_a_code_closing_a_go_error_value_is_read_through_a_wrap_gap(self, gap: str) -> None:
        """Discovery's `fmt.Errorf("cuda driver library init failure: %d", ret)` as the `error=` value of "unable to
        load cuda driver library", with the word before the code cut by a terminal's wrap gap (a pasted line)."""
        line = (f'{T}msg="unable to load cuda driver library" library=/usr/lib/x86_64-linux-gnu/libcuda.so.535.183.01 '
                f'error="cuda driver library init failur{gap}e: 802"')
        assert error_codes.cause_of(line) == "fabric_manager_not_running"

    def test_a_trailing_number_outside_an_error_value_is_not_a_code(self) -> None:
        assert error_codes.find('msg="cuda driver library" total="81559 MiB: 802"') is None

    def test_numbers_outside_the_words_that_carry_codes_are_not_codes(self) -> None:
        """A pid or a port in a line is not read as a code."""
        assert error_codes.find("cuInit pid 802 port 100") is None


class TestFromLogLines:
    @pytest.mark.parametrize("row", caused(CU), ids=ids(caused(CU)))
    def test_cuinit_err_line(self, row: ErrorCode) -> None:
        """Old discovery's `cuInit err: <CUresult>` names the row's cause."""
        assert row.cause is not None
        got = verdict_of(V_A, f"cuInit err: {row.code}", f'{T}msg="no compatible GPUs were discovered"')
        assert got == (expected_outcome(row.cause), row.cause)

    @pytest.mark.parametrize("row", caused(CUDART), ids=ids(caused(CUDART)))
    def test_ggml_cuda_init_text(self, row: ErrorCode) -> None:
        """`ggml_cuda_init: failed to initialize CUDA: <cudaGetErrorString text>` in a model runner names it."""
        assert row.cause is not None
        got = verdict_of(V_D, START_D, f"ggml_cuda_init: failed to initialize CUDA: {row.text}")
        assert got == (expected_outcome(row.cause), row.cause)

    @pytest.mark.parametrize("row", CRASH_ROWS, ids=ids(CRASH_ROWS))
    def test_ggml_cuda_error_crash(self, row: ErrorCode) -> None:
        """ggml's `CUDA error: <text>` abort names it as the crash's cause (a device filter never explains a crash:
        the board leaves it out there, so 100 is not in this list)."""
        assert row.cause is not None
        got = verdict_of(V_D, START_D, "ggml_cuda_init: found 1 CUDA devices:", f"CUDA error: {row.text}",
                         "  current device: 0, in function ggml_backend_cuda_synchronize at ggml-cuda.cu:2400")
        assert got == ("crash", row.cause)

    @pytest.mark.parametrize("row", caused(NVML), ids=ids(caused(NVML)))
    def test_nvml_lines(self, row: ErrorCode) -> None:
        """`nvmlInit_v2 err: <code>` and nvidia-smi's `Failed to initialize NVML: <text>` name it."""
        assert row.cause is not None
        tail = f'{T}msg="no compatible GPUs were discovered"'
        assert verdict_of(V_A, f"nvmlInit_v2 err: {row.code}", tail) == (expected_outcome(row.cause), row.cause)
        for text in row.texts:
            got = verdict_of(V_A, f"Failed to initialize NVML: {text}", tail)
            assert got == (expected_outcome(row.cause), row.cause)

    @pytest.mark.parametrize("row", caused(HIP), ids=ids(caused(HIP)))
    def test_hip_lines(self, row: ErrorCode) -> None:
        """ggml's HIP build: `failed to initialize ROCm: <text>` and `ROCm error: <text>` name it."""
        assert row.cause is not None
        got = verdict_of(V_D, START_D, f"ggml_cuda_init: failed to initialize ROCm: {row.text}")
        assert got == (expected_outcome(row.cause), row.cause)
        got = verdict_of(V_D, START_D, f"ROCm error: {row.text}")
        assert got == ("crash", row.cause)

    def test_hip_runtime_abort_names_the_arch(self) -> None:
        """The HIP runtime's own abort line (`hipErrorNoBinaryForGpu: Unable to find code object …`) after a ROCm
        runner start: crash/unsupported_gpu_arch."""
        got = verdict_of(V_D, START_D, "hipErrorNoBinaryForGpu: Unable to find code object for all current devices!")
        assert got == ("crash", "unsupported_gpu_arch")

    def test_symbolic_name_in_a_line(self) -> None:
        """A code printed by name (`CUDA_ERROR_SYSTEM_NOT_READY`) names its cause like its number does."""
        assert error_codes.cause_of("cuInit failed: CUDA_ERROR_SYSTEM_NOT_READY") == "fabric_manager_not_running"
        assert error_codes.cause_of("hipErrorNoBinaryForGpu: Unable to find code object") == "unsupported_gpu_arch"

    def test_xid_79_is_gpu_lost(self) -> None:
        """A pasted kernel line `NVRM: Xid (…): 79` after a GPU load that then crashed: crash/gpu_lost."""
        got = verdict_of(V_D, START_D, "ggml_cuda_init: found 1 CUDA devices:",
                         "NVRM: Xid (PCI:0000:3b:00): 79, pid=4242, name=llama-server, GPU has fallen off the bus.",
                         "CUDA error: unspecified launch failure")
        assert got == ("crash", "gpu_lost")

    def test_nvml_unknown_error_after_a_gpu_was_found_is_lost_container_access(self) -> None:
        """NVML's "Unknown Error" after this log discovered a GPU: the container's device access was revoked."""
        found = (f'{T}msg="inference compute" id=GPU-1 library=cuda variant=v12 compute=8.9 driver=12.4 '
                 'name="NVIDIA L4" total="22.0 GiB" available="21.7 GiB"')
        cpu = f'{T}msg="offload to cpu" layers.requested=-1 layers.model=33 layers.offload=0'
        assert verdict_of(V_A, found, "Failed to initialize NVML: Unknown Error", cpu) == \
            ("cpu_fallback", "container_gpu_access_lost")
        assert verdict_of(V_A, "Failed to initialize NVML: Unknown Error")[1] != "container_gpu_access_lost"


class TestFromLiveEvents:
    @pytest.mark.parametrize("row", caused(CU) + [r for r in caused(CUDART) if error_codes.lookup("cu", r.code)
                                                  is None], ids=ids(caused(CU)) + ids(
        [r for r in caused(CUDART) if error_codes.lookup("cu", r.code) is None]))
    def test_shim_cu_init_result(self, row: ErrorCode) -> None:
        """The shim's `cu_init` result, with a GPU seen by NVML and a CPU log: the row's cause (100 depends on who
        set the filter: the runner's own filter here)."""
        v = only_runner(live([started(), nvml_gpus(), *runner(), shim("cu_init", result=row.code),
                              *fixture_log("ggml-real/llama-server-cpu-libcuda-unloadable.log")]))
        assert v.cause == row.cause

    @pytest.mark.parametrize("row", caused(NVML), ids=ids(caused(NVML)))
    def test_nvml_unavailable_code(self, row: ErrorCode) -> None:
        """NVML unavailable with a return code (no cause of its own): the row's cause for a CPU discovery."""
        unavailable = Event("nvml", "unavailable", 0.0, None, {"available": False, "reason": row.text,
                                                               "code": row.code})
        v = live([started(), unavailable, *fixture_log("ollama-real-cpu/cpu-basic.server.log")])
        assert v.discovery.cause == row.cause

    def test_nvml_unknown_error_after_gpus_is_lost_container_access(self) -> None:
        """NVML listed the GPU, then a sample failed with 999 "Unknown Error": container_gpu_access_lost."""
        failed = Event("nvml", "sample_failed", 1.0, None, {"reason": "Unknown Error", "cause": None, "code": 999})
        v = only_runner(live([started(), nvml_gpus(), *runner(), failed, shim("cu_init", result=999),
                              *fixture_log("ggml-real/llama-server-cpu-libcuda-unloadable.log")]))
        assert v.cause == "container_gpu_access_lost"

    def test_shim_cuda_error_mid_run_is_said_beside_the_verdict(self) -> None:
        """A runner on the GPU whose later driver calls fail with 800: the verdict rests on the signals, and a note
        names the code and its cause (container_gpu_access_lost)."""
        v = only_runner(live([started(), nvml_gpus(), memory(500), *runner(), *cuda_ok(),
                              *fixture_log("ggml-real/llama-server-gpu.log"), snapshot(120, 30),
                              memory(1500, [(200, 1000)]), shim("cuda_error", fn="cuMemAlloc_v2", code=800, count=3)]))
        assert v.outcome == "gpu"
        assert any("cuMemAlloc_v2 fail with 800 (CUDA_ERROR_NOT_PERMITTED" in n and "container_gpu_access_lost" in n
                   for n in v.notes)

    def test_nvml_gpu_is_lost_mid_run(self) -> None:
        """NVML's GPU_IS_LOST (15) while a runner failed: gpu_lost outranks the CUDA error it causes."""
        failed = Event("nvml", "sample_failed", 1.0, None, {"reason": "a GPU fell off the bus", "cause": "gpu_lost",
                                                            "code": 15})
        v = only_runner(live([started(), nvml_gpus(), *runner(), failed, shim("cu_init", result=999),
                              *fixture_log("ggml-real/llama-server-cpu-libcuda-unloadable.log")]))
        assert v.cause == "gpu_lost"


NEW_CAUSE_LOGS = {
    "fabric_manager_not_running": (V_A, "cuInit err: 802", f'{T}msg="no compatible GPUs were discovered"'),
    "container_gpu_access_lost": (V_D, START_D, "ggml_cuda_init: failed to initialize CUDA: operation not permitted"),
    "gpu_lost": (V_D, START_D, "ggml_cuda_init: found 1 CUDA devices:",
                 "NVRM: Xid (PCI:0000:3b:00): 79, pid=4242, name=llama-server, GPU has fallen off the bus.",
                 "CUDA error: unknown error"),
}


class TestExplainEndToEnd:
    @pytest.mark.parametrize("cause", sorted(NEW_CAUSE_LOGS))
    def test_explain_names_the_new_cause_and_its_fix(self, cause: str, tmp_path: Path) -> None:
        """`ollama-gpu explain --json` on a log with the code names the cause and the runbook's advice."""
        log = tmp_path / "server.log"
        log.write_text("\n".join(NEW_CAUSE_LOGS[cause]) + "\n")
        proc = subprocess.run([sys.executable, "-m", "launcher.cli", "explain", "--json", str(log)], cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=False)
        data = json.loads(proc.stdout)
        assert data["cause"] == cause and proc.returncode == 1
        words = {"fabric_manager_not_running": "fabricmanager", "container_gpu_access_lost": "restart the container",
                 "gpu_lost": "fell off the bus"}[cause]
        assert words in data["advice"]


class TestExplainAdviceFromTheLogsSettings:
    def test_igpu_enable_already_set_is_not_advised(self, tmp_path: Path) -> None:
        """The log's `server config` shows OLLAMA_IGPU_ENABLE:1 and the iGPU was still dropped: `explain` does not
        tell the operator to set it (issue 15 item 5, applied to explain)."""
        log = tmp_path / "server.log"
        log.write_text("\n".join((
            V_D, f'{T}msg="server config" env="map[CUDA_VISIBLE_DEVICES: OLLAMA_IGPU_ENABLE:1]"',
            f'{T}msg="dropping integrated GPU; to enable, set OLLAMA_IGPU_ENABLE=1" id=0 library=Vulkan '
            'description="Intel(R) UHD"',
            f'{T}msg="inference compute" id=cpu library=cpu compute="" name=cpu description=cpu libdirs=ollama '
            'driver="" pci_id="" type="" total="31 GiB" available="30 GiB"')) + "\n")
        proc = subprocess.run([sys.executable, "-m", "launcher.cli", "explain", "--json", str(log)], cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=False)
        data = json.loads(proc.stdout)
        assert data["cause"] == "unsupported_igpu"
        assert "set OLLAMA_IGPU_ENABLE=1" not in data["advice"] and "OLLAMA_IGPU_ENABLE=1" in data["advice"]
