"""The general rules that fixed the issue 13 corpus misses, each on lines built from the format string the source
prints (llama.cpp/GGML `LLAMA_LOG_INFO`/`GGML_LOG_INFO` formats, Ollama's slog calls), with the healthy or opposite
case beside it so that a rule cannot turn a working GPU run into an alarm."""

from __future__ import annotations

import io

import pytest

from launcher.commands.explain import explain_stream
from launcher.evidence.facts import Verdict
from launcher.ollama_logs import parse_text

T = "time=2024-11-11T21:51:17.605+01:00 level=INFO source=x.go:1 "


def explain(*lines: str) -> Verdict:
    return explain_stream(io.BytesIO(("\n".join(lines) + "\n").encode()))


# llama.cpp llm_load_tensors (gen 0/A/B): "%s: offloaded %d/%d layers to GPU\n" and "%s: %10s buffer size = %8.2f MiB\n"
def offloaded(n: int, m: int) -> str:
    return f"llm_load_tensors: offloaded {n}/{m} layers to GPU"


def buffer(name: str, mib: float) -> str:
    return f"llm_load_tensors: {name:>10} buffer size = {mib:8.2f} MiB"


class TestOffloadLineWithoutVersion:
    def test_a_partial_count_with_weights_in_device_memory_is_a_partial_offload(self) -> None:
        v = explain(offloaded(31, 33), buffer("CPU", 809.84), buffer("CUDA0", 3627.97))
        assert (v.outcome, v.cause) == ("partial_offload", "insufficient_vram")

    def test_metal_weights_prove_it_too_even_in_generation_0(self) -> None:
        v = explain(f'{T}msg="offload to gpu" reallayers=1 layers=29', offloaded(1, 29), buffer("CPU", 4773.90),
                    buffer("Metal", 148.53))
        assert v.generation == "0"
        assert v.outcome == "partial_offload"

    def test_all_layers_with_weights_in_device_memory_is_gpu(self) -> None:
        v = explain(offloaded(33, 33), buffer("CPU", 70.31), buffer("CUDA0", 3577.56))
        assert (v.outcome, v.cause) == ("gpu", "none")

    def test_a_count_alone_that_is_partial_is_the_servers_own_does_not_fit(self) -> None:
        v = explain("llm_load_tensors: offloading 26 repeating layers to GPU", offloaded(26, 33))
        assert (v.outcome, v.cause) == ("partial_offload", "insufficient_vram")
        assert any("asked for only 26 of 33" in e.says for e in v.evidence)

    def test_all_layers_alone_proves_nothing(self) -> None:
        # reference A.5: after a failed CUDA init the old runner still prints N/N
        assert explain(offloaded(33, 33)).outcome == "unknown"

    @pytest.mark.parametrize("n", [31, 33])
    def test_weights_only_in_host_memory_are_the_cpu_whatever_the_count(self, n: int) -> None:
        v = explain(offloaded(n, 33), buffer("CPU", 4437.80))
        assert v.outcome == "cpu_fallback"


# memory.go `slog.Info("offload to "+library, …)` (gen A) and server.go `slog.Info("offload", "library", …)` (gen B)
PLAN_A = (f'{T}msg="offload to cuda" layers.requested=-1 layers.model=33 layers.offload=33 layers.split="" '
          'memory.available="[20.0 GiB]" memory.required.full="6.2 GiB"')


def start_a(variant: str) -> str:
    return (f'{T}msg="starting llama server" cmd="/tmp/ollama30/runners/{variant}/ollama_llama_server --model '
            '/root/.ollama/models/blobs/sha256-87 --ctx-size 8192 --batch-size 512 --n-gpu-layers 33 --port 38059"')


def plan_b(library: str, offload: int, requested: int = -1) -> str:
    return (f'{T}msg=offload library={library} layers.requested={requested} layers.model=29 '
            f'layers.offload={offload} layers.split="" memory.available="[3.2 GiB]" memory.required.full="2.6 GiB"')


SYSTEM_CPU = f"{T}msg=system CPU.0.LLAMAFILE=1 compiler=cgo(gcc)"
SYSTEM_CUDA = (f"{T}msg=system CPU.0.SSE3=1 CPU.0.AVX2=1 CPU.0.LLAMAFILE=1 CUDA.0.ARCHS=500,600,610,700,750,800,860,"
               "890,900,1200 CUDA.0.USE_GRAPHS=1 compiler=cgo(gcc)")


class TestMissingGpuRunner:
    def test_a_cuda_plan_run_by_a_cpu_runner_is_missing_gpu_runners(self) -> None:
        v = explain(PLAN_A, start_a("cpu_avx2"))
        assert (v.outcome, v.cause) == ("cpu_fallback", "missing_gpu_runners")

    def test_a_cuda_plan_run_by_the_cuda_runner_is_not_a_fallback(self) -> None:
        assert explain(PLAN_A, start_a("cuda_v12")).outcome == "gpu"

    def test_a_cuda_plan_whose_runner_registered_no_gpu_backend_is_missing_gpu_runners(self) -> None:
        v = explain(plan_b("cuda", 29), SYSTEM_CPU)
        assert (v.outcome, v.cause) == ("cpu_fallback", "missing_gpu_runners")

    def test_a_runner_that_registered_cuda_is_not_a_fallback(self) -> None:
        assert explain(plan_b("cuda", 29), SYSTEM_CUDA).outcome == "gpu"

    def test_vulkan_prints_no_system_features_so_its_plan_is_never_read_as_missing(self) -> None:
        assert explain(plan_b("vulkan", 29), SYSTEM_CPU).outcome != "cpu_fallback"


class TestZeroLayerPlan:
    def test_a_gpu_library_plan_that_fits_no_layer_is_insufficient_vram(self) -> None:
        start = (f'{T}msg="starting llama server" cmd="/usr/local/bin/ollama runner --ollama-engine --model /m '
                 '--ctx-size 4096 --batch-size 512 --threads 4 --no-mmap --parallel 1 --port 35213"')
        v = explain(plan_b("cuda", 0), start)
        assert (v.outcome, v.cause) == ("cpu_fallback", "insufficient_vram")

    def test_zero_layers_the_operator_asked_for_is_not_insufficient_vram(self) -> None:
        start = (f'{T}msg="starting llama server" cmd="/usr/local/bin/ollama runner --ollama-engine --model /m '
                 '--n-gpu-layers 0 --port 35213"')
        assert explain(plan_b("cuda", 0, requested=0), start).cause != "insufficient_vram"


# ggml-backend-reg.cpp "%s: loaded %s backend from %s\n"; ggml-vulkan.cpp ggml_vk_print_gpu_info
# "ggml_vulkan: %zu = %s (%s) | uma: %d | fp16: %d | bf16: %d | warp size: %zu | shared memory: %d | int dot: %d |
# matrix cores: %s\n"
LOADED_VK = r"load_backend: loaded Vulkan backend from C:\Program Files\Ollama\lib\ollama\vulkan\ggml-vulkan.dll"
VK_DEVICE = ("ggml_vulkan: 0 = AMD Radeon RX 6650 XT (AMD proprietary driver) | uma: 0 | fp16: 1 | bf16: 0 | "
             "warp size: 32 | shared memory: 32768 | int dot: 1 | matrix cores: none")
SYSTEM_VK = f"{T}msg=system CPU.0.SSE3=1 CPU.0.AVX2=1 CPU.0.LLAMAFILE=1 compiler=cgo(clang)"


class TestVulkanRunner:
    def test_a_loaded_vulkan_backend_with_its_device_is_a_gpu_path(self) -> None:
        v = explain(VK_DEVICE, LOADED_VK, SYSTEM_VK)
        assert (v.outcome, v.cause) == ("gpu", "none")

    def test_no_vulkan_device_is_no_gpu_path(self) -> None:
        assert explain("ggml_vulkan: No devices found.", LOADED_VK, SYSTEM_VK).outcome != "gpu"

    def test_only_the_cpu_backend_is_still_the_cpu(self) -> None:
        v = explain(r"load_backend: loaded CPU backend from C:\Ollama\lib\ollama\ggml-cpu-haswell.dll", SYSTEM_VK)
        assert v.outcome == "cpu_fallback"


# server/sched.go `slog.Info("NewLlamaServer failed", "model", …, "error", err)`; llm/server.go's error
# "unable to start server %w.  %s may have noexec set.  Set OLLAMA_TMPDIR for server to a writable executable directory"
class TestNewLlamaServerFailed:
    @pytest.mark.parametrize("tmp", ["/tmp/ollama123", "/data/ollama-tmp"])
    def test_the_noexec_error_is_tmp_noexec_wherever_the_directory_is(self, tmp: str) -> None:
        error = (f"unable to start server fork/exec {tmp}/runners/cpu_avx/ollama_llama_server: permission denied.  "
                 f"{tmp}/runners/cpu_avx may have noexec set.  Set OLLAMA_TMPDIR for server to a writable executable "
                 "directory")
        v = explain(f'{T}msg="NewLlamaServer failed" model=/root/.ollama/models/blobs/sha256-66 error="{error}"')
        assert (v.outcome, v.cause) == ("crash", "tmp_noexec")

    def test_another_start_failure_is_a_crash_of_its_own_cause(self) -> None:
        v = explain(f'{T}msg="NewLlamaServer failed" model=/m error="model requires more system memory (996.3 GiB) '
                    'than is available (747.0 GiB)"')
        assert v.outcome == "crash"
        assert v.cause != "tmp_noexec"


# routes.go `slog.Info("server config", "env", envconfig.Values())`, pasted from `env=` on
class TestServerConfigWithItsStartCut:
    def test_a_cut_config_line_still_shows_the_operators_cpu_choice(self) -> None:
        v = explain('env="map[CUDA_VISIBLE_DEVICES:-1 GPU_DEVICE_ORDINAL: HIP_VISIBLE_DEVICES: OLLAMA_DEBUG:true '
                    'OLLAMA_HOST:http://127.0.0.1:11434 OLLAMA_LLM_LIBRARY: OLLAMA_MODELS:/root/.ollama/models]"')
        assert (v.outcome, v.cause) == ("cpu_expected", "operator_forced_cpu")

    def test_an_env_map_without_ollamas_keys_is_not_a_server_config(self) -> None:
        events = parse_text('env="map[CUDA_VISIBLE_DEVICES:-1 PATH:/usr/bin]"\n')
        assert not [e for e in events if e.kind == "server_config"]


# discover/gpu_info_nvcuda.c: nvcuda_get_free's `LOG(1, "cuda driver library failed to get device context %d", ret)`
# (no newline, so the next record is glued on) and nvcuda_bootstrap's error string of the same words, which
# discover/gpu.go logs as `slog.Info("error looking up nvidia GPU memory", "error", …)`
CONTEXT_800 = "cuda driver library failed to get device context 800"
NEXT = (f'{T.replace("level=INFO", "level=WARN")}msg="gpu VRAM usage didn\'t recover within timeout" '
        "seconds=5.5 model=/m")


class TestDeviceContextFailure:
    def test_the_log_line_glued_to_the_next_record_names_the_code(self) -> None:
        v = explain(CONTEXT_800 + NEXT)
        assert (v.outcome, v.cause) == ("cpu_fallback", "container_gpu_access_lost")

    def test_the_slog_line_carrying_it_names_the_code(self) -> None:
        v = explain(f'{T}msg="error looking up nvidia GPU memory" error="{CONTEXT_800}"')
        assert v.cause == "container_gpu_access_lost"

    def test_another_memory_lookup_error_names_nothing(self) -> None:
        events = parse_text(f'{T}msg="error looking up nvidia GPU memory" error="nvml vram init failure: 9"\n')
        assert not [e for e in events if e.kind == "library_failed" and e.data.get("code") == 800]

    def test_a_model_that_then_loads_on_the_gpu_is_still_gpu(self) -> None:
        v = explain(CONTEXT_800 + NEXT, offloaded(33, 33), buffer("CPU", 70.31), buffer("CUDA0", 3577.56))
        assert v.outcome == "gpu"


# routes.go `slog.Info("server config", "env", envconfig.Values())`; discover/runner.go (v0.12.4 on) skips every
# library directory whose base name is not OLLAMA_LLM_LIBRARY
def listening(version: str) -> str:
    return f'{T}msg="Listening on 127.0.0.1:11434 (version {version})"'


def config(library: str) -> str:
    return (f'{T}msg="server config" env="map[CUDA_VISIBLE_DEVICES:GPU-6026f538-f122-eb94-1388-5d1156d22bff '
            f'HIP_VISIBLE_DEVICES: OLLAMA_DEBUG:INFO OLLAMA_HOST:http://0.0.0.0:11434 OLLAMA_LLM_LIBRARY:{library} '
            'ROCR_VISIBLE_DEVICES:]"')


CPU_BACKEND = "load_backend: loaded CPU backend from /usr/lib/ollama/libggml-cpu-alderlake.so"
SYSTEM_CPU_C = f"{T}msg=system CPU.0.SSE3=1 CPU.0.AVX2=1 CPU.0.LLAMAFILE=1 compiler=cgo(gcc)"


class TestLibraryNamingNoDirectory:
    def test_a_family_name_in_generation_c_skips_every_gpu_library(self) -> None:
        v = explain(config("cuda"), listening("0.12.5"), CPU_BACKEND, SYSTEM_CPU_C)
        assert (v.outcome, v.cause) == ("cpu_fallback", "forced_cpu_library")

    def test_a_directory_name_is_a_real_choice(self) -> None:
        assert explain(config("cuda_v12"), listening("0.12.5"), CPU_BACKEND, SYSTEM_CPU_C).cause != \
            "forced_cpu_library"

    def test_before_0_12_4_an_unknown_name_was_ignored(self) -> None:
        assert explain(config("cuda"), listening("0.11.11"), CPU_BACKEND, SYSTEM_CPU_C).cause != \
            "forced_cpu_library"

    def test_a_model_on_the_gpu_is_still_gpu(self) -> None:
        v = explain(config("cuda"), listening("0.12.5"), "load_tensors: offloaded 33/33 layers to GPU",
                    "load_tensors:        CUDA0 model buffer size =  3577.56 MiB")
        assert (v.outcome, v.cause) == ("gpu", "none")
