"""The board: log-only rules, the traps of reference sections 7–8, replay, and the place later sources plug in."""

from __future__ import annotations

import io

from launcher.events import Event, Replay, record
from launcher.evidence import Board, Verdict, judge
from launcher.ollama_logs import parse_text
from launcher.vocabulary import CAUSES

T = "time=2025-01-01T00:00:00.000Z level=INFO source=x.go:1 "


def verdict_of(*lines: str) -> Verdict:
    return judge(parse_text("\n".join(lines) + "\n"))


class TestTraps:
    def test_loaded_cuda_backend_with_zero_devices_is_not_gpu(self) -> None:
        """`loaded CUDA backend` after `failed to initialize CUDA` is a CPU fallback, not GPU use."""
        v = verdict_of("ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected",
                       "load_backend: loaded CUDA backend from /usr/lib/ollama/cuda_v12/libggml-cuda.so",
                       "load_backend: loaded CPU backend from /usr/lib/ollama/libggml-cpu-haswell.so")
        assert (v.outcome, v.cause) == ("cpu_fallback", "device_filter_hides_gpu")
        assert 1 in [e.line for e in v.evidence]

    def test_gen_a_offloaded_after_failed_cuda_init_is_cpu(self) -> None:
        """Gen A prints `offloaded 33/33` even when CUDA init failed: only buffer lines prove GPU use."""
        v = verdict_of(f'{T}msg="Listening on [::]:11434 (version 0.3.14)"',
                       f'{T}msg="starting llama server" cmd="/tmp/o/runners/cuda_v12/ollama_llama_server --model /m '
                       '--n-gpu-layers 33 --port 1"',
                       "ggml_cuda_init: failed to initialize CUDA: CUDA driver version is insufficient for CUDA "
                       "runtime version",
                       "llm_load_tensors: offloaded 33/33 layers to GPU",
                       "llm_load_tensors:        CPU buffer size =  4437.80 MiB")
        assert (v.outcome, v.cause) == ("cpu_fallback", "driver_too_old")

    def test_gen_a_offloaded_with_cuda_buffers_is_gpu(self) -> None:
        """The same generation with `CUDA0 buffer size` lines is a healthy GPU run."""
        v = verdict_of(f'{T}msg="Listening on [::]:11434 (version 0.3.14)"',
                       "ggml_cuda_init: found 1 CUDA devices:",
                       "llm_load_tensors: offloaded 33/33 layers to GPU",
                       "llm_load_tensors:      CUDA0 buffer size =  4156.00 MiB")
        assert (v.outcome, v.cause) == ("gpu", "none")

    def test_low_vram_mode_on_a_healthy_gpu_is_gpu(self) -> None:
        """`entering low vram mode` is not a fallback."""
        v = verdict_of(f'{T}msg="inference compute" id=GPU-1 library=cuda variant=v12 compute=7.5 driver=13.0 '
                       'name="Quadro RTX 5000" total="15.6 GiB" available="15.4 GiB"',
                       f'{T}msg="entering low vram mode" "total vram"="15.6 GiB" threshold="20.0 GiB"')
        assert (v.outcome, v.cause) == ("gpu", "none")
        assert any("low vram" in n for n in v.notes)

    def test_harmless_management_library_failure_when_another_worked(self) -> None:
        """`Unable to load … management library` is harmless when another library found the GPU."""
        v = verdict_of("2024/01/30 09:00:00 gpu.go:259: Unable to load CUDA management library "
                       "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1: nvml vram init failure: 9",
                       "2024/01/30 09:00:00 gpu.go:94: Nvidia GPU detected",
                       "llm_load_tensors:      CUDA0 buffer size =  4695.56 MiB")
        assert (v.outcome, v.cause) == ("gpu", "none")

    def test_scheduler_estimate_does_not_beat_the_runner(self) -> None:
        """A plan of 33/33 GPU layers (what `/api/ps` shows) loses to the runner's failed CUDA init."""
        v = verdict_of(f'{T}msg=offload library=cuda layers.requested=-1 layers.model=33 layers.offload=33',
                       f'{T}msg="starting llama server" cmd="/usr/bin/ollama runner --model /m --n-gpu-layers 33"',
                       "ggml_cuda_init: failed to initialize CUDA: unknown error")
        assert (v.outcome, v.cause) == ("cpu_fallback", "uvm_not_loaded")

    def test_default_verbosity_llama_server_is_unknown(self) -> None:
        """A llama-server log at default verbosity names no device: unknown, not a fallback."""
        v = verdict_of("0.00.1 I cmn  common_param: common_params_print_info: verbosity = 3 (adjust with -lv N)",
                       "0.00.165.699 I srv  llama_server: initializing ...",
                       "0.00.419.443 I srv  llama_server: model loaded")
        assert v.outcome == "unknown" and not v.visible
        assert any("verbosity" in n for n in v.notes)


class TestRules:
    def test_partial_offload_from_the_runner(self) -> None:
        """`offloaded 20/33` is a partial offload for lack of VRAM."""
        v = verdict_of("load_tensors: offloaded 20/33 layers to GPU",
                       "load_tensors:        CUDA0 model buffer size =  2000.00 MiB")
        assert (v.outcome, v.cause) == ("partial_offload", "insufficient_vram")

    def test_cpu_only_discovery_is_cpu_expected(self) -> None:
        """A machine where discovery found only the CPU runs on the CPU as expected."""
        v = verdict_of(f'{T}msg="inference compute" id=cpu library=cpu compute="" name=cpu description=cpu '
                       'libdirs=ollama driver="" pci_id="" type="" total="23.5 GiB" available="23.1 GiB"',
                       "load_tensors:   CPU_Mapped model buffer size =   308.23 MiB")
        assert (v.outcome, v.cause) == ("cpu_expected", "none")

    def test_operator_hiding_every_device_is_cpu_expected(self) -> None:
        """CUDA_VISIBLE_DEVICES=-1 in the server config is the operator choosing CPU."""
        v = verdict_of(f'{T}msg="server config" env="map[CUDA_VISIBLE_DEVICES:-1 OLLAMA_DEBUG:false]"',
                       "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected",
                       "load_tensors:   CPU_Mapped model buffer size =   308.23 MiB")
        assert (v.outcome, v.cause) == ("cpu_expected", "operator_forced_cpu")

    def test_crash_without_recovery(self) -> None:
        """A runner that dies and is not replaced is a crash."""
        v = verdict_of(f'{T}msg="starting llama server" cmd="/usr/bin/ollama runner --model /m --port 1"',
                       "ggml_cuda_init: found 1 CUDA devices:",
                       "SIGSEGV: segmentation violation",
                       f'{T}msg="waiting for server to become available" status="llm server error"')
        assert v.outcome == "crash"

    def test_killed_runner_that_was_restarted_is_a_finding(self) -> None:
        """A runner killed and started again is not a crash; the kill is reported beside the verdict."""
        start = f'{T}msg="starting llama-server" cmd="/usr/lib/ollama/llama-server --model /m --port 1"'
        v = verdict_of(f'{T}msg="inference compute" id=cpu library=cpu total="1 GiB"', start,
                       f'{T}msg="llama-server started in 0.25 seconds"',
                       f'{T}msg="llama-server process no longer running" sys=9 string="signal: killed"',
                       start, f'{T}msg="llama-server started in 0.25 seconds"')
        assert (v.outcome, v.cause) == ("cpu_expected", "none")
        assert any("killed" in x for x in v.findings)

    def test_vulkan_chosen_over_cuda(self) -> None:
        """A Vulkan device chosen while a CUDA device exists is a degraded GPU path."""
        v = verdict_of(f'{T}msg="inference compute" id=0 library=Vulkan name=Vulkan0 description="Intel UHD"',
                       f'{T}msg="inference compute" id=0 library=CUDA compute=8.9 name=CUDA0 description="RTX"',
                       f'{T}msg="selecting single GPU for llama-server model" library=Vulkan name=Vulkan0')
        assert (v.outcome, v.cause) == ("gpu", "vulkan_selected_over_cuda")

    def test_every_verdict_uses_the_vocabulary(self) -> None:
        """Verdicts refuse labels outside vocabulary.py."""
        try:
            Verdict("gpu", "not_a_cause")
        except ValueError:
            pass
        else:
            raise AssertionError("a cause outside the vocabulary was accepted")
        assert "none" in CAUSES


class TestBoard:
    def test_replay_of_a_recording_gives_the_same_verdict(self) -> None:
        """Events recorded to JSON lines and replayed give the verdict of the live run (DESIGN principle 1)."""
        events = parse_text("ggml_cuda_init: failed to initialize CUDA: unknown error\n"
                            "load_tensors:   CPU_Mapped model buffer size =   308.23 MiB\n")
        buf = io.StringIO()
        record(events, buf)
        replayed = list(Replay(io.StringIO(buf.getvalue())))
        assert replayed == events
        assert judge(replayed) == judge(events)

    def test_verdict_is_repeatable(self) -> None:
        """Asking twice gives the same answer (the tier works on a snapshot)."""
        board = Board()
        for e in parse_text(f'{T}msg="detected amdgpu versions [gfx1010]"\n'):
            board.add(e)
        assert board.verdict() == board.verdict()

    def test_events_from_sources_without_rules_are_counted_not_fatal(self) -> None:
        """Events of any source reach the same board; kinds no handler knows are counted, never fatal."""
        board = Board()
        board.add(Event(source="shim", kind="no_such_kind", t=1.0, pid=10, data={"result": 0}))
        board.add(Event(source="log", kind="no_such_kind", t=2.0))
        assert board.ignored == 2
        assert board.verdict().outcome == "unknown"
        assert board.facts.sources == {"shim", "log"}
