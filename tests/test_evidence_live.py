"""The board's live tier: real fixture logs replayed with synthetic shim, /proc and NVML streams; verdicts by hand."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from launcher.events import Event, Replay, record
from launcher.evidence import Board, LiveVerdicts, Verdict, judge
from launcher.ollama_logs import parse_stream, parse_text

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures"
RUNNER_ARGV = ["/usr/lib/ollama/llama-server", "--model", "/m", "--port", "40001"]
DISCOVERY_ARGV = ["/usr/lib/ollama/llama-server", "--list-devices"]
H100 = {"index": 0, "uuid": "GPU-5f1c", "name": "NVIDIA H100 80GB HBM3", "pci_bus_id": "00000000:00:06.0",
        "memory_total": 85899345920, "memory_used": 0, "compute_capability": "9.0", "mig_mode": False}
MIB = 1 << 20


def fixture_log(name: str) -> list[Event]:
    path = FIXTURES / name
    if not path.is_file():
        pytest.fail(f"shared fixture missing: {path}")
    with open(path, "rb") as stream:
        return list(parse_stream(stream))


def started(env: dict[str, Any] | None = None, pid: int = 100, with_env: bool = True) -> Event:
    data: dict[str, Any] = {"argv": ["ollama", "serve"], "restarts": 0}
    if with_env:
        data["env"] = env or {}
    return Event("supervisor", "ollama_started", 0.0, pid, data)


def nvml_gpus(*gpus: dict[str, Any]) -> Event:
    return Event("nvml", "gpus", 0.0, None, {"available": True, "driver_version": "580.159.04", "cuda_version": "13.0",
                                             "gpus": list(gpus or (H100,))})


def nvml_absent(cause: str | None = None) -> Event:
    return Event("nvml", "unavailable", 0.0, None, {"available": False, "reason": "libnvidia-ml not found",
                                                    "cause": cause})


def memory(used_mib: int, procs: Iterable[tuple[int, int]] = (), comparable: bool = True) -> Event:
    return Event("nvml", "memory", 0.0, None, {
        "gpus": [{"index": 0, "used": used_mib * MIB}],
        "processes": [{"pid": pid, "gpu": 0, "used": mib * MIB, "type": "compute"} for pid, mib in procs],
        "pids_comparable": comparable})


def shim(kind: str, pid: int = 200, start: int = 5000, **data: Any) -> Event:
    return Event("shim", kind, 0.0, pid, {"start_time": start, **data})


def proc(kind: str, pid: int = 200, start: int = 5000, **data: Any) -> Event:
    return Event("proc", kind, 0.0, pid, {"start_time": start, **data})


def runner(pid: int = 200, start: int = 5000, cvd: str | None = "0", argv: list[str] | None = None) -> list[Event]:
    argv = argv or RUNNER_ARGV
    cls = "discovery_runner" if "--list-devices" in argv else "model_runner"
    return [proc("runner_started", pid, start, cls=cls, argv=argv),
            shim("hello", pid, start, exe=argv[0], argv=argv, ppid=100, cuda_visible_devices=cvd)]


def cuda_ok(pid: int = 200, start: int = 5000) -> list[Event]:
    return [shim("cu_init", pid, start, result=0), shim("device", pid, start, ordinal=0, name="NVIDIA H100"),
            shim("ctx", pid, start, device=0, result=0)]


def snapshot(launches: int, alloc_mib: int, pid: int = 200, start: int = 5000) -> Event:
    return shim("snapshot", pid, start, launches={"kernel": launches, "kernel_ex": 0, "cooperative": 0, "graph": 0},
                mem={"allocs": 1, "frees": 0, "alloc_bytes": alloc_mib * MIB, "free_bytes": 0},
                copies={"htod_bytes": 0, "dtoh_bytes": 0, "dtod_bytes": 0}, dropped=0)


def dlopen_failed(error: str, pid: int = 200) -> Event:
    return shim("dlopen", pid, name="/usr/lib/ollama/cuda_v13/libggml-cuda.so", ok=False, error=error)


def board_of(events: Iterable[Event]) -> Board:
    board = Board()
    for e in events:
        board.add(e)
    return board


def live(events: Iterable[Event]) -> LiveVerdicts:
    return board_of(events).live()


def only_runner(v: LiveVerdicts) -> Verdict:
    assert len(v.runners) == 1, v.runners
    return next(iter(v.runners.values()))


class TestHealthyGpu:
    def test_log_offload_plus_shim_and_nvml_is_gpu(self) -> None:
        """The real H100 log with shim kernels and NVML memory held by the runner's pid: gpu, three sources."""
        v = only_runner(live([started(), nvml_gpus(), memory(500), *runner(), *cuda_ok(),
                              *fixture_log("ggml-real/llama-server-gpu.log"), snapshot(120, 30),
                              memory(1500, [(200, 1000)])]))
        assert (v.outcome, v.cause) == ("gpu", "none")
        assert set(v.signals) == {"log:gpu", "shim:gpu", "nvml:gpu"}
        assert v.subject == "runner 200" and v.tier == "live" and not v.disagreement

    def test_default_verbosity_log_with_shim_and_proc_libs_is_gpu(self) -> None:
        """A log that names no device (llama-server at -lv 3), shim context + kernels and libcuda mapped: gpu."""
        v = only_runner(live([started(), nvml_absent(), *runner(), *cuda_ok(),
                              *fixture_log("ggml-real/llama-server-gpu-default-verbosity.log"),
                              proc("runner_libs", libs=["libcuda", "ggml_cuda", "cudart", "ggml_cpu"], paths=[]),
                              snapshot(50, 20)]))
        assert (v.outcome, v.cause) == ("gpu", "none")

    def test_per_gpu_rise_stands_in_for_host_pids(self) -> None:
        """In a container NVML's pids are the host's: a 4 GiB rise while this was the only runner is the signal."""
        v = only_runner(live([started(), nvml_gpus(), memory(500, comparable=False), *runner(), *cuda_ok(),
                              memory(4596, [(987654, 4096)], comparable=False)]))
        assert (v.outcome, v.cause) == ("gpu", "none")
        assert "nvml:gpu" in v.signals

    def test_a_rise_shared_by_two_runners_is_not_attributed(self) -> None:
        """Two model runners alive during the rise: neither gets the NVML signal (no guessing)."""
        events = [started(), nvml_gpus(), memory(500, comparable=False), *runner(200, 5000), *runner(201, 5001),
                  memory(4596, comparable=False)]
        v = live(events)
        assert all("nvml:gpu" not in r.signals for r in v.runners.values())

    def test_one_signal_is_not_yet_gpu(self) -> None:
        """Shim kernels alone (no log line, no NVML, no libraries seen): unknown until a second source agrees."""
        v = only_runner(live([started(), nvml_absent(), *runner(), snapshot(10, 0)]))
        assert v.outcome == "unknown"
        assert any("second, independent signal" in n for n in v.notes)

    def test_healthy_run_whose_shim_was_silent_is_never_a_fallback(self) -> None:
        """Log at default verbosity, a shim that saw nothing, no NVML: not enough to call a fallback."""
        v = only_runner(live([started(), nvml_gpus(), *runner(),
                              *fixture_log("ggml-real/llama-server-gpu-default-verbosity.log"),
                              proc("runner_exited", cls="model_runner")]))
        assert v.outcome != "cpu_fallback"


class TestDisagreement:
    def test_log_offloaded_but_no_shim_use_and_no_nvml_memory(self) -> None:
        """Log: all layers and CUDA0 buffers; shim: no CUDA at all; NVML: pid holds nothing → say so, unknown."""
        v = only_runner(live([started(), nvml_gpus(), memory(500), *runner(),
                              *fixture_log("ggml-real/llama-server-gpu.log"), memory(500, [])]))
        assert (v.outcome, v.cause) == ("unknown", "unknown")
        assert v.disagreement
        assert any("log says gpu" in line for line in v.disagreement)
        assert any("disagree" in n for n in v.notes)

    def test_log_says_cpu_but_shim_saw_kernels(self) -> None:
        """Log: CPU buffers only; shim: 500 kernel launches → never a fallback; the disagreement is reported."""
        v = only_runner(live([started(), nvml_gpus(), *runner(),
                              *fixture_log("ggml-real/llama-server-cpu-libcuda-unloadable.log"), snapshot(500, 0)]))
        assert v.outcome == "unknown"
        assert any("shim says gpu" in line for line in v.disagreement)
        assert any("log says cpu" in line for line in v.disagreement)

    def test_two_firm_sources_outvote_the_log(self) -> None:
        """Shim kernels and NVML memory by pid against a CPU log: gpu, with the disagreement kept."""
        v = only_runner(live([started(), nvml_gpus(), memory(500), *runner(),
                              *fixture_log("ggml-real/llama-server-cpu-libcuda-unloadable.log"), snapshot(500, 64),
                              memory(1500, [(200, 1000)])]))
        assert v.outcome == "gpu"
        assert v.disagreement

    def test_mapped_libraries_do_not_contradict_a_failed_init(self) -> None:
        """CUDA_VISIBLE_DEVICES=-1 maps libggml-cuda and libcuda with zero devices: a weak signal, no disagreement."""
        v = only_runner(live([started({"CUDA_VISIBLE_DEVICES": "-1"}), nvml_gpus(), *runner(cvd="-1"),
                              shim("cu_init", result=100),
                              proc("runner_libs", libs=["libcuda", "ggml_cuda", "cudart", "ggml_cpu"], paths=[]),
                              *fixture_log("ggml-real/llama-server-cpu-cuda-visible-devices.log")]))
        assert (v.outcome, v.cause) == ("cpu_expected", "operator_forced_cpu")
        assert not v.disagreement


class TestCausesFromTheShim:
    @pytest.mark.parametrize(("result", "cause"), [
        (999, "uvm_not_loaded"), (34, "stub_library"), (35, "driver_too_old"), (803, "driver_library_mismatch"),
        (46, "permission_denied"),
    ])
    def test_cu_init_result_names_the_cause(self, result: int, cause: str) -> None:
        """cuInit's CUresult, with a GPU seen by NVML and a CPU log: cpu_fallback with the table's cause."""
        v = only_runner(live([started(), nvml_gpus(), *runner(), shim("cu_init", result=result),
                              *fixture_log("ggml-real/llama-server-cpu-libcuda-unloadable.log")]))
        assert (v.outcome, v.cause) == ("cpu_fallback", cause)

    def test_missing_libcuda_from_the_loader_text(self) -> None:
        """dlopen of libggml-cuda failing with the loader's `libcuda.so.1: cannot open …` is libcuda_not_found."""
        v = only_runner(live([started(), nvml_gpus(), *runner(),
                              dlopen_failed("libcuda.so.1: cannot open shared object file: No such file or directory"),
                              *fixture_log("ggml-real/llama-server-cpu-libcuda-unloadable.log")]))
        assert (v.outcome, v.cause) == ("cpu_fallback", "libcuda_not_found")

    def test_undefined_cu_symbol_is_a_backend_load_failure(self) -> None:
        """The real `undefined symbol: cuMemAddressReserve` (a libcuda.so.1 that is not the driver) is
        backend_load_failed, as in the log tier: an old driver shows as error 35, not as a missing symbol."""
        v = only_runner(live([started(), nvml_gpus(), *runner(),
                              dlopen_failed("/usr/lib/ollama/cuda_v13/libggml-cuda.so: undefined symbol: "
                                            "cuMemAddressReserve"),
                              *fixture_log("ggml-real/llama-server-cpu-libcuda-unloadable-explicit-path.log")]))
        assert (v.outcome, v.cause) == ("cpu_fallback", "backend_load_failed")

    def test_no_device_with_ollamas_own_filter_is_a_filter_problem(self) -> None:
        """cuInit 100 where the operator set no filter but the runner has one (Ollama's): device_filter_hides_gpu."""
        v = only_runner(live([started({}), nvml_gpus(), *runner(cvd="GPU-other"), shim("cu_init", result=100),
                              *fixture_log("ggml-real/llama-server-cpu-cuda-visible-devices.log")]))
        assert (v.outcome, v.cause) == ("cpu_fallback", "device_filter_hides_gpu")

    def test_operator_filter_seen_in_the_servers_own_hello(self) -> None:
        """Without the supervisor's env, the server's shim hello carries the operator's CUDA_VISIBLE_DEVICES."""
        events = [started(with_env=False), nvml_gpus(),
                  shim("hello", 100, 4000, exe="/usr/bin/ollama", argv=["/usr/bin/ollama", "serve"], ppid=1,
                       cuda_visible_devices="none"),
                  *runner(cvd="none"), shim("cu_init", result=100)]
        v = only_runner(live(events))
        assert (v.outcome, v.cause) == ("cpu_expected", "operator_forced_cpu")

    def test_a_later_success_supersedes_a_failed_dlopen(self) -> None:
        """A failed probe of one CUDA dir followed by CUDA working in the same process is no cause."""
        v = only_runner(live([started(), nvml_gpus(), memory(500), *runner(),
                              dlopen_failed("libcudart.so.12: cannot open shared object file"), *cuda_ok(),
                              *fixture_log("ggml-real/llama-server-gpu.log"), snapshot(5, 10)]))
        assert (v.outcome, v.cause) == ("gpu", "none")


class TestUsableGpuRequirement:
    def test_failure_without_any_gpu_seen_is_not_a_fallback(self) -> None:
        """cuInit 999 but NVML absent and no device seen by the shim: unknown, cause kept, never cpu_fallback."""
        v = only_runner(live([started(), nvml_absent(), *runner(), shim("cu_init", result=999),
                              *fixture_log("ggml-real/llama-server-cpu-libcuda-unloadable.log")]))
        assert (v.outcome, v.cause) == ("unknown", "uvm_not_loaded")
        assert any("not called a fallback" in n for n in v.notes)

    def test_cpu_machine_without_nvml_is_cpu_expected(self) -> None:
        """The real CPU-only Ollama log, NVML absent: discovery is cpu_expected/none."""
        v = live([started(), nvml_absent(), *fixture_log("ollama-real-cpu/cpu-basic.server.log")])
        assert (v.discovery.outcome, v.discovery.cause) == ("cpu_expected", "none")

    def test_nvml_version_mismatch_is_the_cause(self) -> None:
        """NVML's Driver/library version mismatch names the cause of a CPU discovery."""
        v = live([started(), nvml_absent("driver_library_mismatch"),
                  *fixture_log("ollama-real-cpu/cpu-basic.server.log")])
        assert v.discovery.cause == "driver_library_mismatch"
        assert v.discovery.outcome != "cpu_fallback"  # no GPU was seen by NVML or the shim


class TestDiscovery:
    def test_discovery_runner_cuda_plus_log_is_gpu(self) -> None:
        """A discovery runner that initialised CUDA and the log's CUDA `inference compute`: gpu."""
        v = live([started(), nvml_gpus(),
                  *runner(300, 6000, cvd=None, argv=DISCOVERY_ARGV), *cuda_ok(300, 6000),
                  *fixture_log("ollama-logs/gpu-none-0.11.8-12243/server.log")])
        assert (v.discovery.outcome, v.discovery.cause) == ("gpu", "none")
        assert "shim:gpu" in v.discovery.signals and v.discovery.subject == "discovery"

    def test_vulkan_chosen_over_cuda_is_a_degraded_gpu_path(self) -> None:
        """The real #16536 log (CUDA found, Vulkan iGPU selected) with NVML: gpu / vulkan_selected_over_cuda."""
        v = live([started(), nvml_gpus(),
                  *fixture_log("ollama-logs/gpu-vulkan_selected_over_cuda-0.30.6-16536/server.log")])
        assert (v.discovery.outcome, v.discovery.cause) == ("gpu", "vulkan_selected_over_cuda")
        assert v.cuda_discovered  # so the OLLAMA_VULKAN=0 remedy may apply

    def test_vulkan_only_after_cuda_failed_names_the_cuda_cause(self) -> None:
        """Only Vulkan found the NVIDIA GPU because cuInit said 35: a degraded gpu path, cause driver_too_old."""
        t = "time=2026-01-01T00:00:00.000Z level=INFO source=types.go:32 "
        log = f'{t}msg="inference compute" id=0 library=Vulkan name=Vulkan0 description="NVIDIA H100 80GB HBM3"\n'
        v = live([started(), nvml_gpus(), *runner(300, 6000, cvd=None, argv=DISCOVERY_ARGV),
                  shim("cu_init", 300, 6000, result=35), *parse_text(log)])
        assert (v.discovery.outcome, v.discovery.cause) == ("gpu", "driver_too_old")
        assert not v.cuda_discovered  # Vulkan is the rescue here: never turned off

    def test_operator_forced_cpu_at_discovery(self) -> None:
        """CUDA_VISIBLE_DEVICES=-1 from the supervisor's env and a CPU-only discovery: cpu_expected, operator."""
        v = live([started({"CUDA_VISIBLE_DEVICES": "-1"}), nvml_gpus(),
                  *fixture_log("ollama-real-cpu/cpu-basic.server.log")])
        assert (v.discovery.outcome, v.discovery.cause) == ("cpu_expected", "operator_forced_cpu")

    def test_nothing_yet_is_unknown_and_invisible(self) -> None:
        """Right after start nothing has been said: unknown, not visible."""
        v = live([started()])
        assert v.discovery.outcome == "unknown" and not v.discovery.visible

    def test_a_filter_naming_a_gpu_is_no_fallback_before_discovery_reports(self) -> None:
        """Seen on 2 real H100s: CUDA_VISIBLE_DEVICES=<uuid> in the env and Ollama's `user overrode visible devices`
        line, nothing discovered yet: unknown, not `cpu_fallback` (a filter is a possible cause, not evidence)."""
        t = 'time=2026-11-25T21:02:52.289Z level=WARN source=runner.go:74 '
        log = f'{t}msg="user overrode visible devices" CUDA_VISIBLE_DEVICES=GPU-5f1c\n'
        v = live([started({"CUDA_VISIBLE_DEVICES": "GPU-5f1c"}), nvml_gpus(), *parse_text(log)])
        assert (v.discovery.outcome, v.discovery.cause) == ("unknown", "unknown")
        assert "log:cpu" not in v.discovery.signals

    def test_a_filter_still_names_the_cause_when_nothing_was_found(self) -> None:
        """The same filter and a discovery that found no GPU: the filter is the cause of the CPU result."""
        v = live([started({"CUDA_VISIBLE_DEVICES": "GPU-dead"}), nvml_gpus(),
                  *fixture_log("ollama-real-cpu/cpu-basic.server.log")])
        assert (v.discovery.outcome, v.discovery.cause) == ("cpu_fallback", "device_filter_hides_gpu")


class TestRunnersAndRestarts:
    def test_cpu_backend_mapped_first_is_no_fallback_while_the_runner_starts(self) -> None:
        """Seen on real H100s: GGML maps its CPU backend before the CUDA one, and a /proc scan in between saw only
        libggml-cpu. Until the runner has loaded (log, ready, or exit) that is no CPU evidence."""
        v = only_runner(live([started(), nvml_gpus(), *runner(),
                              proc("runner_libs", libs=["ggml_cpu"], paths=["/usr/lib/ollama/libggml-cpu.so"])]))
        assert v.outcome == "unknown" and "proc:cpu" not in v.signals

    def test_cpu_backend_alone_once_the_log_says_the_runner_started_is_cpu(self) -> None:
        """Ollama's `llama-server started` line settles the runner: libcuda still unmapped then is CPU evidence."""
        t = 'time=2026-11-25T21:02:56.806Z level=INFO source=llama_server.go:1362 '
        v = only_runner(live([started(), nvml_gpus(), *runner(),
                              proc("runner_libs", libs=["ggml_cpu"], paths=["/usr/lib/ollama/libggml-cpu.so"]),
                              *parse_text(f'{t}msg="llama-server started in 0.78 seconds"\n')]))
        assert "proc:cpu" in v.signals

    def test_cpu_backend_alone_when_the_runner_ended_is_cpu(self) -> None:
        """The same libraries in a runner that exited: libcuda was never mapped."""
        v = only_runner(live([started(), nvml_gpus(), *runner(),
                              proc("runner_libs", libs=["ggml_cpu"], paths=["/usr/lib/ollama/libggml-cpu.so"]),
                              proc("runner_exited")]))
        assert "proc:cpu" in v.signals

    def test_each_runner_has_its_own_verdict(self) -> None:
        """Runners are keyed by (pid, start time): a reused pid is a new runner with its own verdict."""
        events = [started(), nvml_gpus(), memory(500),
                  *runner(200, 5000), shim("cu_init", 200, 5000, result=999), proc("runner_exited", 200, 5000),
                  *runner(200, 7000), *cuda_ok(200, 7000), snapshot(40, 100, 200, 7000),
                  memory(1500, [(200, 1000)])]
        v = live(events)
        assert list(v.runners) == [(200, 5000), (200, 7000)]
        first, second = v.runners[(200, 5000)], v.runners[(200, 7000)]
        assert second.outcome == "gpu"
        assert first.outcome != "gpu" and first.cause == "uvm_not_loaded"
        assert v.latest() == second

    def test_a_restart_starts_fresh_facts(self) -> None:
        """After the supervisor restarts Ollama, the verdict is about the new instance only."""
        before = [started(), nvml_gpus(), *runner(), shim("cu_init", result=999)]
        after = [started(), nvml_gpus(), memory(500), *runner(201, 8000), *cuda_ok(201, 8000),
                 snapshot(10, 50, 201, 8000), memory(1500, [(201, 1000)])]
        v = live(before + after)
        assert list(v.runners) == [(201, 8000)]
        assert only_runner(v).outcome == "gpu"

    def test_runner_without_the_shim_is_a_finding_not_a_cause(self) -> None:
        """runner_env_missing is an audit finding beside the verdict (DESIGN), never the cause."""
        v = only_runner(live([started(), nvml_gpus(), proc("runner_started", cls="model_runner", argv=RUNNER_ARGV),
                              proc("runner_env_missing", cls="model_runner", audit="permission denied"),
                              *fixture_log("ggml-real/llama-server-cpu-libcuda-unloadable.log")]))
        assert any("runner_env_missing" in x for x in v.findings)
        assert v.cause != "runner_env_missing"

    def test_recorded_live_stream_replays_to_the_same_verdicts(self) -> None:
        """Live events recorded to JSON lines and replayed give the same verdicts (DESIGN principle 1)."""
        events = [started(), nvml_gpus(), memory(500), *runner(), *cuda_ok(),
                  *fixture_log("ggml-real/llama-server-gpu.log"), snapshot(120, 30), memory(1500, [(200, 1000)])]
        buf = io.StringIO()
        record(events, buf)
        replayed = list(Replay(io.StringIO(buf.getvalue())))
        assert live(replayed) == live(events)
        assert judge(replayed) == judge(events) and judge(events).outcome == "gpu"

    def test_verdicts_are_repeatable(self) -> None:
        """Asking twice gives the same answers (the tier works on snapshots)."""
        board = board_of([started(), nvml_gpus(), *runner(), shim("cu_init", result=999)])
        assert board.live() == board.live()
        assert board.verdict() == board.verdict()

    def test_unknown_kinds_are_counted(self) -> None:
        """A kind no handler knows is counted, never an error."""
        board = board_of([shim("no_such_kind"), Event("nvml", "no_such_kind", 0.0)])
        assert board.ignored == 2
