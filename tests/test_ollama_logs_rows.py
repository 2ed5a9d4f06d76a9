"""Each pattern row, against a synthetic line of the generation that prints it (reference/ollama-internals.md)."""

from __future__ import annotations

from typing import Any

import pytest

from launcher.catalogue import load
from launcher.catalogue.sample import sample
from launcher.log_patterns import ROWS, generation_of, runner_cmd, size_bytes
from launcher.ollama_logs import parse_text

T = "time=2025-01-01T00:00:00.000Z level=INFO source=x.go:1 "

# (version line or "", line, kind, data subset). The version line pins the generation the row belongs to.
V0, VA, VB, VC, VD = (f'{T}msg="Listening on 127.0.0.1:11434 (version {v})"' for v in
                      ("0.1.27", "0.3.14", "0.6.8", "0.13.5", "0.33.0"))
SAMPLES: list[tuple[str, str, str, dict[str, Any]]] = [
    (VB, f'{T}msg="server config" env="map[CUDA_VISIBLE_DEVICES:-1 OLLAMA_LLM_LIBRARY:cpu_avx2 OLLAMA_DEBUG:false]"',
     "server_config",
     {"env": {"CUDA_VISIBLE_DEVICES": "-1", "OLLAMA_LLM_LIBRARY": "cpu_avx2", "OLLAMA_DEBUG": "false"}}),
    (VA, f'{T}msg="inference compute" id=GPU-452c library=cuda variant=v12 compute=6.1 driver=12.7 '
         'name="NVIDIA GeForce GT 1030" total="3.9 GiB" available="3.9 GiB"',
     "gpu_discovered", {"library": "cuda", "compute": "6.1", "name": "NVIDIA GeForce GT 1030", "variant": "v12"}),
    (VC, f'{T}msg="inference compute" id=cpu library=cpu compute="" name=cpu description=cpu libdirs=ollama '
         'driver="" pci_id="" type="" total="31 GiB" available="30 GiB"', "no_gpu", {}),
    (VC, f'{T}msg="user overrode visible devices" CUDA_VISIBLE_DEVICES=1', "device_filter",
     {"var": "CUDA_VISIBLE_DEVICES", "value": "1"}),
    (VD, f'{T}msg="dropping integrated GPU; to enable, set OLLAMA_IGPU_ENABLE=1" id=0 library=Vulkan '
         'description="Intel(R) UHD"', "gpu_dropped", {"cause": "unsupported_igpu", "name": "Intel(R) UHD"}),
    (VD, f'{T}msg="skipping CUDA device — compute capability not in compiled architectures" device=0 cc=610',
     "gpu_dropped", {"cause": "unsupported_compute_capability"}),
    (VD, f'{T}msg="NVIDIA driver too old" device=0 compute=8.6 driver=535 required_driver="550 or newer"',
     "gpu_dropped", {"cause": "driver_too_old"}),
    (VC, f"{T}msg=\"filtering device which didn't fully initialize\" id=0 libdir=/x pci_id=0 library=CUDA",
     "gpu_dropped", {"cause": "unsupported_compute_capability"}),
    (VC, f'{T}msg="removing unsupported or overlapping GPU combination" libDir=/usr/lib/ollama '
         'description="AMD Radeon RX 6700 XT" compute=gfx1031 pci_id=0d:00.0', "gpu_dropped",
     {"cause": "unsupported_gpu_arch", "name": "AMD Radeon RX 6700 XT"}),
    (VC, f'{T}msg="removing unsupported or overlapping GPU combination" libDir=/usr/lib/ollama/cuda_v12 '
         'description="NVIDIA GeForce RTX 4090" compute=8.9 pci_id=01:00.0', "combination_removed",
     {"compute": "8.9"}),
    (VC, f'{T}msg="removing unsupported or overlapping GPU combination" libDir=/usr/lib/ollama/vulkan '
         'description="AMD Radeon RX 7900 XTX" compute=gfx1100 pci_id=0d:00.0', "combination_removed",
     {"libDir": "/usr/lib/ollama/vulkan"}),
    (VC, f'{T}msg="failure during GPU discovery" OLLAMA_LIBRARY_PATH=[/a] extra_envs=map[] '
         'error="failed to finish discovery before timeout"', "discovery_failed", {"cause": "discovery_timeout"}),
    (VD, f'{T}msg="llama-server discovery: timed out waiting for server startup" error=x',
     "discovery_failed", {"cause": "discovery_timeout"}),
    (VD, f'{T}msg="llama-server GPU discovery watchdog timed out" error=x', "discovery_failed",
     {"cause": "discovery_timeout"}),
    (VD, f'{T}msg="vram-based default context" total_vram="0 B" default_num_ctx=4096', "no_gpu", {}),
    (VC, f"{T}msg=\"skipping available library at user's request\" requested=cuda libDir=/x", "library_skipped",
     {"cause": "forced_cpu_library"}),
    (VA, f'{T}msg="no compatible GPUs were discovered"', "no_gpu", {}),
    (V0, "2024/01/14 19:50:06 routes.go:953: no GPU detected", "no_gpu", {}),
    (V0, "2024/01/14 19:50:06 gpu.go:94: Nvidia GPU detected", "gpu_discovered", {"library": "cuda"}),
    (V0, "2024/01/14 19:50:06 gpu.go:135: CUDA Compute Capability detected: 7.5", "gpu_discovered",
     {"compute": "7.5"}),
    (VA, f'{T}msg="[0] CUDA GPU is too old. Compute Capability detected: 3.5"', "gpu_dropped",
     {"cause": "unsupported_compute_capability", "compute": "3.5"}),
    (V0, "2024/01/27 16:39:08 gpu.go:256: INFO Discovered GPU libraries: [/opt/cuda/lib/stubs/libnvidia-ml.so "
         "/usr/lib/libnvidia-ml.so.545]", "gpu_libraries", {"paths": ["/opt/cuda/lib/stubs/libnvidia-ml.so",
                                                                       "/usr/lib/libnvidia-ml.so.545"]}),
    (VA, f'{T}msg="Unable to load cudart library /usr/lib/libcuda.so.1: cuda driver library init failure: 999"',
     "library_failed", {"path": "/usr/lib/libcuda.so.1", "cause": "uvm_not_loaded"}),
    (VA, f'{T}msg="version mismatch between driver and cuda driver library - reboot or upgrade may be required: '
         'library /usr/lib/libcuda.so.1"', "library_failed", {"cause": "driver_library_mismatch"}),
    (VA, f'{T}msg="no nvidia devices detected by library /usr/lib/libcuda.so.1"', "library_failed",
     {"cause": "device_filter_hides_gpu"}),
    (VA, f'{T}msg="unknown error initializing cuda driver library /usr/lib/libcuda.so.1: cuda driver library init '
         'failure: 999. see https://x for more information"', "library_failed", {"cause": "uvm_not_loaded"}),
    (VA, "cuInit err: 803", "cuda_init_failed", {"code": 803, "cause": "driver_library_mismatch"}),
    (VA, f'{T}msg="CPU does not have minimum vector extensions, GPU inference disabled.  Required:avx  Detected:no '
         'vector extensions"', "cpu_lacks_avx", {}),
    (VA, f'{T}msg="GPU runner incompatible with host system, CPU does not have AVX" runner=cuda_v12',
     "cpu_lacks_avx", {}),
    (VA, f'{T}msg="Dynamic LLM libraries" runners="[cpu cpu_avx cpu_avx2 cuda_v11 cuda_v12]"', "runners_available",
     {"runners": ["cpu", "cpu_avx", "cpu_avx2", "cuda_v11", "cuda_v12"]}),
    (VA, f'{T}msg="detected amdgpu versions [gfx1010]"', "amd_detected", {"targets": ["gfx1010"]}),
    (VA, f'{T}msg="amdgpu is not supported" gpu=0 gpu_type=gfx1032 library=/opt/rocm', "gpu_dropped",
     {"cause": "unsupported_gpu_arch"}),
    (VA, f'{T}msg="skipping rocm gfx compatibility check" HSA_OVERRIDE_GFX_VERSION=9.0.0', "gfx_override", {}),
    (VA, f'{T}msg="user override" OLLAMA_LLM_LIBRARY=cpu_avx2 path=/tmp/x', "library_override",
     {"value": "cpu_avx2"}),
    (VA, "libnvidia-ml.so in GDK package is a stub library that is attached only for", "stub_warning",
     {"cause": "stub_library"}),
    (VA, "Error: llama runner exec: permission denied: /tmp/ollama1/runners may have noexec set.", "runner_failed",
     {"cause": "tmp_noexec"}),
    (VA, f'{T}msg="offload to cuda" layers.requested=-1 layers.model=33 layers.offload=33 layers.split=""',
     "offload_plan", {"library": "cuda", "model_layers": 33, "offload": 33, "requested": -1}),
    (VB, f'{T}msg=offload library=cuda layers.requested=-1 layers.model=81 layers.offload=44 layers.split=11,11',
     "offload_plan", {"library": "cuda", "model_layers": 81, "offload": 44}),
    (V0, "2024/01/01 20:22:43 llama.go:300: 24762 MB VRAM available, loading up to 162 GPU layers", "offload_plan",
     {"offload": 162}),
    (VA, f'{T}msg="new model will fit in available VRAM in single GPU, loading" model=/m gpu=GPU-1',
     "placement_plan", {"gpu": True}),
    (VC, f'{T}msg="finished setting up" runner.inference="[{{ID:GPU-1 Library:CUDA}}]" runner.size="3.0 GiB" '
         'runner.vram="3.0 GiB"', "placement_plan", {"libraries": ["cuda"]}),
    (VB, f'{T}msg="insufficient VRAM to load any model layers"', "placement_plan",
     {"gpu": False, "cause": "insufficient_vram"}),
    (VB, f'{T}msg="compatible gpu libraries" compatible=[]', "placement_plan", {"gpu": False}),
    (VD, f'{T}msg="selecting single GPU for llama-server model" library=Vulkan name=Vulkan0 description="Intel"',
     "scheduler_selected", {"library": "vulkan"}),
    (VC, f'{T}msg=load request="{{Operation:commit Parallel:1 GPULayers:[] MainGPU:0}}"', "load_request",
     {"gpu_layers": 0}),
    (VC, f'{T}msg="entering low vram mode" "total vram"="15.6 GiB" threshold="20.0 GiB"', "low_vram_mode", {}),
    (VD, f'{T}msg="llama-server VRAM tracking: no per-device buffer sizes were parsed from llama-server logs."',
     "estimate_fallback", {}),
    (VA, f'{T}msg="starting llama server" cmd="/tmp/ollama1/runners/cuda_v12/ollama_llama_server --model /m '
         '--ctx-size 2048 --n-gpu-layers 33 --parallel 1 --port 4321"', "runner_start",
     {"role": "model", "variant": "cuda_v12", "gpu_layers": 33, "port": 4321}),
    (VC, f'{T}msg="starting runner" cmd="/usr/bin/ollama runner --ollama-engine --port 40211"', "runner_start",
     {"role": "discovery"}),
    (VD, f'{T}msg="starting llama-server" cmd="/usr/lib/ollama/llama-server --model /m --port 5 -ngl 0"',
     "runner_start", {"role": "model", "gpu_layers": 0}),
    (VD, f'{T}level=TRACE msg="running llama-server for discovery" cmd=/usr/lib/ollama/llama-server libDirs="[a]"',
     "runner_start", {"role": "discovery"}),
    (V0, "2023/11/17 01:27:31 llama.go:415: starting llama runner", "runner_start", {"role": "model"}),
    (V0, f'{T}msg="Loading Dynamic llm server: /tmp/ollama1/cuda_v12/libext_server.so"', "runner_start",
     {"variant": "cuda_v12"}),
    (VB, f'{T}msg="llama runner started in 2.51 seconds"', "runner_ready", {"seconds": 2.51}),
    (VB, f'{T}msg="waiting for server to become available" status="llm server error"', "runner_failed", {}),
    (VA, 'Error: llama runner process has terminated: exit status 0xc0000409', "runner_failed", {}),
    (VB, f'{T}level=ERROR msg="error loading llama server" error="llama runner process has terminated: signal: '
         'aborted (core dumped)"', "runner_failed", {}),
    (VB, f'{T}level=ERROR msg="llama runner terminated" error="exit status 2"', "runner_failed", {}),
    (VA, f'{T}level=ERROR msg="timed out waiting for llama runner to start - progress 0.00"', "runner_failed", {}),
    (VD, f'{T}msg="llama-server reported out-of-memory during startup: x"', "runner_failed",
     {"cause": "insufficient_vram"}),
    (VB, f'{T}msg="unable to start runner with compatible gpu" error="fork/exec /x: permission denied"',
     "runner_failed", {}),
    (VA, "Error: fork/exec /tmp/ollama1/runners/cuda_v12/ollama_llama_server: permission denied", "runner_failed",
     {"cause": "tmp_noexec"}),
    (VD, f'{T}msg="llama-server process no longer running" sys=9 string="signal: killed"', "runner_exited",
     {"signal": True}),
    (VD, f'{T}msg="failed to load model metadata" model=/m error="tensor offset exceeds file size"',
     "model_load_failed", {}),
    (VB, "ggml_cuda_init: found 2 CUDA devices:", "runner_devices", {"count": 2, "library": "cuda"}),
    (V0, "ggml_init_cublas: found 1 CUDA devices:", "runner_devices", {"count": 1}),
    (VD, "ggml_vulkan: Found 1 Vulkan devices:", "runner_devices", {"library": "vulkan"}),
    (VB, "ggml_cuda_init: failed to initialize CUDA: CUDA driver version is insufficient for CUDA runtime version",
     "cuda_init_failed", {"where": "runner", "cause": "driver_too_old"}),
    (VB, "  Device 0: NVIDIA GeForce RTX 4090, compute capability 8.9, VMM: yes", "device",
     {"index": 0, "compute": "8.9", "name": "NVIDIA GeForce RTX 4090"}),
    (VB, "load_backend: loaded CUDA backend from /usr/lib/ollama/cuda_v12/libggml-cuda.so", "backend_loaded",
     {"backend": "CUDA", "gpu": True}),
    (VD, "load_backend: failed to load /usr/lib/ollama/cuda_v13/libggml-cuda.so: libcuda.so.1: cannot open shared "
         "object file: No such file or directory", "backend_failed", {"backend": "cuda", "cause": "libcuda_not_found"}),
    (VB, f"{T}msg=system CPU.0.AVX=1 CUDA.0.ARCHS=500,600 CUDA.0.USE_GRAPHS=1 compiler=cgo(gcc)", "runner_system",
     {"gpu_backends": ["CUDA"]}),
    (VA, "llm_load_tensors: offloaded 33/33 layers to GPU", "offload", {"n": 33, "m": 33, "form": "llm_load_tensors"}),
    (VD, "load_tensors: offloaded 0/33 layers to GPU", "offload", {"n": 0, "form": "current"}),
    (VB, "llm_load_tensors:      CUDA0 buffer size =  4156.00 MiB", "buffer", {"device": "CUDA0", "gpu": True}),
    (VD, "load_tensors:   CPU_Mapped model buffer size =   308.23 MiB", "buffer", {"device": "CPU_Mapped",
                                                                                  "gpu": False}),
    (VB, f'{T}msg="model weights" device=CUDA0 size="4.1 GiB"', "weights", {"device": "CUDA0", "gpu": True}),
    (VB, f'{T}msg="compute graph" backend=CPU buffer_type=CPU size="9.0 GiB"', "compute_graph",
     {"device": "CPU", "gpu": False, "bytes": 9 << 30}),
    (VD, "llama_prepare_model_devices: using device CUDA0 (NVIDIA H100 80GB HBM3) (0000:00:06.0) - 80552 MiB free",
     "device_used", {"device": "CUDA0", "name": "NVIDIA H100 80GB HBM3", "pci": "0000:00:06.0", "free_mib": 80552}),
    (VB, "llama_model_load_from_file_impl: using device CUDA1 (NVIDIA GeForce RTX 4060 Ti) - 15221 MiB free",
     "device_used", {"device": "CUDA1", "name": "NVIDIA GeForce RTX 4060 Ti", "free_mib": 15221}),
    (VD, "load_tensors: layer  12 assigned to device CUDA1, is_swa = 0", "layer_assigned",
     {"layer": 12, "device": "CUDA1"}),
    (VD, "warning: no usable GPU found, --gpu-layers option will be ignored", "runner_no_gpu", {}),
    (VA, "WARN [server_params_parse] Not compiled with GPU offload support, --n-gpu-layers option will be ignored",
     "runner_no_gpu", {}),
    (VD, "cmn  common_param: common_params_print_info: verbosity = 3 (adjust with the `-lv N` CLI arg)",
     "log_verbosity", {"level": 3}),
    (V0, "CUDA error 100 at /go/src/ggml-cuda.cu:5661: no CUDA-capable device is detected", "runner_crash",
     {"code": 100}),
    (VC, "ggml_cuda_compute_forward: ggml was not compiled with support for this arch", "runner_crash",
     {"cause": "unsupported_compute_capability"}),
    (VB, "ggml/src/ggml.c:1234: GGML_ASSERT(x) failed", "runner_crash", {}),
    (V0, "rocBLAS error: Cannot read TensileLibrary.dat: Illegal seek for GPU arch : gfx1032", "runner_crash",
     {"cause": "unsupported_gpu_arch"}),
    (VB, "SIGABRT: abort", "runner_crash", {}),
    (VB, "SIGSEGV: segmentation violation", "runner_crash", {}),
    (VB, "SIGILL: illegal instruction", "runner_crash", {}),
    (VB, "SIGBUS: bus error", "runner_crash", {}),
    (VD, "/lib/x86_64-linux-gnu/libc.so.6(__libc_start_main+0x80)[0x7f1515b49e40]", "runner_crash", {}),
    (VB, "rip    0x7fed9409894c", "runner_crash", {}),
    (VD, "ERROR: ld.so: object '/x/shim.so' from LD_PRELOAD cannot be preloaded (cannot open shared object file)",
     "ld_preload_failed", {"object": "/x/shim.so"}),
    # lines that carry error codes (issue 13 item 3)
    (VD, "ggml_cuda_init: failed to initialize ROCm: no ROCm-capable device is detected", "cuda_init_failed",
     {"where": "runner", "error": "no ROCm-capable device is detected"}),
    (VD, "ROCm error: invalid device function", "runner_crash", {}),
    (VB, "hipErrorNoBinaryForGpu: Unable to find code object for all current devices!", "runner_crash", {}),
    (VB, "nvmlInit_v2 err: 18", "cuda_init_failed", {"code": 18, "where": "discovery"}),
    (VD, "Failed to initialize NVML: Driver/library version mismatch", "nvml_failed",
     {"error": "Driver/library version mismatch"}),
    (VD, "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=ollama, GPU has fallen off the bus.", "gpu_dropped",
     {"cause": "gpu_lost", "xid": 79}),
]


# the server config pasted from its `env=` on: only as a paste's first line (after another record it is that record's
# continuation, and the joiner rejoins it)
CUT_CONFIG = 'env="map[CUDA_VISIBLE_DEVICES:-1 OLLAMA_HOST:http://127.0.0.1:11434 OLLAMA_LLM_LIBRARY:]"'


def _events(version_line: str, line: str) -> list[Any]:
    return [e for e in parse_text(f"{version_line}\n{line}\n") if e.data.get("line") == 2]


class TestRows:
    @pytest.mark.parametrize(("version_line", "line", "kind", "subset"), SAMPLES,
                             ids=[f"{i}-{s[2]}" for i, s in enumerate(SAMPLES)])
    def test_row_turns_its_line_into_its_event(self, version_line: str, line: str, kind: str,
                                               subset: dict[str, Any]) -> None:
        """The line of a generation's key message becomes the expected event, with the expected fields."""
        events = [e for e in _events(version_line, line) if e.kind == kind]
        assert events, f"no {kind} event from {line!r}"
        data = events[0].data
        for key, value in subset.items():
            got = data.get(key)
            assert (list(got) if isinstance(got, tuple) else got) == value, key
        assert data["line"] == 2 and events[0].t == 2.0 and events[0].source == "log"

    def test_every_row_has_a_sample(self) -> None:
        """No pattern row is left without a synthetic line that exercises it."""
        lines = [s[1] for s in SAMPLES] + [V0, VA, VB, VC, VD, CUT_CONFIG]
        lines += [sample(e, line) for e in load() if e.relevant for line in e.lines]  # the catalogue's own lines
        for row in ROWS:
            assert any(row.regex.search(line) for line in lines), f"row {row.kind}/{row.needle!r} has no sample"

    def test_a_server_config_cut_before_env_is_still_read(self) -> None:
        events = [e for e in parse_text(CUT_CONFIG + "\n") if e.kind == "server_config"]
        assert events and events[0].data["env"] == {"CUDA_VISIBLE_DEVICES": "-1", "OLLAMA_LLM_LIBRARY": ""}

    def test_generation_row_keeps_out_of_another_generation(self) -> None:
        """A row of one generation does not fire when the version says another (tables are keyed by generation)."""
        line = f'{T}msg="dropping integrated GPU; to enable, set OLLAMA_IGPU_ENABLE=1" library=Vulkan'
        assert not [e for e in _events(VA, line) if e.kind == "gpu_dropped"]
        assert [e for e in _events(VD, line) if e.kind == "gpu_dropped"]

    def test_unknown_version_uses_common_rows_only_while_the_lines_tell_nothing(self) -> None:
        """A version newer than the tables keeps the common rows until a line's shape shows its generation."""
        future = f'{T}msg="Listening on 127.0.0.1:11434 (version 0.99.0)"'
        assert not [e for e in _events(future, "cuInit err: 999") if e.kind == "cuda_init_failed"]
        assert [e for e in _events(future, "ggml_cuda_init: found 1 CUDA devices:") if e.kind == "runner_devices"]
        gen = [e for e in parse_text(future) if e.kind == "generation"]
        assert gen and gen[0].data["known"] is False

    def test_unknown_version_uses_the_generation_its_lines_show(self) -> None:
        """Issue 13 item 5: a message only generation D prints makes D's rows apply under a version newer than the
        tables."""
        future = f'{T}msg="Listening on 127.0.0.1:11434 (version 0.99.0)"'
        line = f'{T}msg="dropping integrated GPU; to enable, set OLLAMA_IGPU_ENABLE=1" library=Vulkan'
        events = _events(future, line)
        assert [e for e in events if e.kind == "gpu_dropped"]
        gen = [e.data for e in events if e.kind == "generation" and e.data["from"] == "inferred"]
        assert gen and gen[0]["generation"] == "D" and "dropping integrated GPU" in gen[0]["basis"]

    def test_generation_is_inferred_from_a_generation_only_line(self) -> None:
        """Without a version line, a line that exists in one generation only names the generation."""
        events = parse_text(f'{T}msg="starting llama-server" cmd="/usr/lib/ollama/llama-server --model /m"\n')
        gen = [e for e in events if e.kind == "generation"]
        assert gen and gen[0].data["generation"] == "D" and gen[0].data["from"] == "inferred"


class TestHelpers:
    @pytest.mark.parametrize(("version", "gen"), [("0.1.9", "0"), ("0.3.14", "A"), ("0.5.7", "A"), ("0.5.8", "B"),
                                                  ("0.12.3", "B"), ("0.12.4", "C"), ("0.24.0", "C"),
                                                  ("0.30.0-rc0", "D"), ("0.33.0-rc2", "D"), ("0.40.0", None),
                                                  ("garbage", None)])
    def test_generation_of_version(self, version: str, gen: str | None) -> None:
        """Versions map to the reference's generations; unknown ones to None."""
        assert generation_of(version) == gen

    def test_size_bytes_reads_human_sizes(self) -> None:
        """HumanBytes2 sizes become bytes; nonsense becomes None."""
        assert size_bytes('"1.5 GiB"') == int(1.5 * (1 << 30))
        assert size_bytes("0 B") == 0
        assert size_bytes("lots") is None

    def test_runner_cmd_reads_the_argv_shapes(self) -> None:
        """Runner argv of each generation gives role, layers and library dir."""
        a = runner_cmd("/tmp/o/runners/cpu_avx2/ollama_llama_server --model /m --ctx-size 8 --port 9")
        assert a["variant"] == "cpu_avx2" and a["role"] == "model" and a["gpu_layers"] is None
        d = runner_cmd("/usr/lib/ollama/llama-server --list-devices --offline")
        assert d["role"] == "discovery"
