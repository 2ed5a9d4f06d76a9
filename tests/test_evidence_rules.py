"""Board rules are pure (issue 13 item 6): they return their notes with the verdict and never write into the facts;
and an undecided cause says which line or setting would decide it (item 8), computed from what is missing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from launcher.events import Event
from launcher.evidence import Board, Facts
from launcher.evidence.live import live_verdicts
from launcher.evidence.log_tier import log_tier
from launcher.ollama_logs import parse_text
from tests.test_evidence_live import fixture_log, nvml_gpus, runner, shim, started

T = "time=2026-01-01T00:00:00.000Z level=INFO source=x.go:1 "
V_A = f'{T}msg="Listening on 127.0.0.1:11434 (version 0.5.7)"'
V_C = f'{T}msg="Listening on 127.0.0.1:11434 (version 0.13.5)"'
V_D = f'{T}msg="Listening on 127.0.0.1:11434 (version 0.33.0)"'
CONFIG = f'{T}msg="server config" env="map[CUDA_VISIBLE_DEVICES: OLLAMA_LLM_LIBRARY: ROCR_VISIBLE_DEVICES:]"'
FOUND = (f'{T}msg="inference compute" id=GPU-1 library=cuda variant=v12 compute=8.9 driver=12.4 name="NVIDIA L4" '
         'total="22.0 GiB" available="21.7 GiB"')
CPU_ONLY = (f'{T}msg="inference compute" id=cpu library=cpu compute="" name=cpu description=cpu libdirs=ollama '
            'driver="" pci_id="" type="" total="31 GiB" available="30 GiB"')
START_D = (f'{T}msg="starting llama-server" cmd="/usr/lib/ollama/llama-server --model /m --port 40001 '
           '--n-gpu-layers 99"')


def state(f: Facts) -> tuple[object, ...]:
    """What a rule could change in the facts: notes, findings, problems (and whether superseded), runners, procs."""
    return (list(f.notes), list(f.findings), [replace(p) for p in f.problems],
            [(r.start, list(r.reports), list(r.plans), list(r.failures), r.ready, dict(r.layers)) for r in f.runners],
            dict(f.live.procs), f.generation, f.version)


def board_of(events: list[Event]) -> Board:
    board = Board()
    for e in events:
        board.add(e)
    return board


def notes_of(*lines: str) -> list[str]:
    board = board_of(list(parse_text("\n".join(lines) + "\n")))
    return [n for n in board.verdict().notes if n.startswith("to decide: ")]


class TestRulesArePure:
    def test_log_tier_leaves_the_facts_unchanged(self) -> None:
        """The log rules (AMD targets, a crash after a restart, notes) change nothing in the facts they read."""
        board = board_of(list(parse_text("\n".join((
            f'{T}msg="detected amdgpu versions [gfx1010]"', START_D, "GGML_ASSERT(x) failed",
            f'{T}msg="llama-server process has terminated: exit status 2"', START_D,
            f'{T}msg="llama-server started in 3.12 seconds"')) + "\n")))
        before = state(board.facts)
        first = log_tier(board.facts)
        assert state(board.facts) == before
        assert log_tier(board.facts) == first  # the same facts give the same verdict, notes included
        assert first.notes and first.findings

    def test_live_tier_leaves_the_facts_unchanged(self) -> None:
        """The live rules (disagreement, Vulkan, notes about attribution) change nothing in the facts."""
        board = board_of([started(), nvml_gpus(), *runner(), shim("cu_init", result=999),
                          *fixture_log("ggml-real/llama-server-cpu-libcuda-unloadable.log")])
        before = state(board.facts)
        first = live_verdicts(board.facts)
        assert state(board.facts) == before
        assert live_verdicts(board.facts) == first


class TestWhatWouldDecide:
    def test_missing_start_lines_are_named(self) -> None:
        """A pasted CPU load without the start: the version line, `server config` (with the filter variables) and
        the discovery lines are what would decide it."""
        notes = notes_of(f'{T}msg="compatible gpu libraries" compatible=[]',
                         "load_backend: loaded CPU backend from /x/lib/ollama/libggml-cpu-haswell.so")
        text = " ".join(notes)
        assert "`Listening on … (version …)`" in text
        assert "`server config` line, printed at start, would show CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES" in text
        assert "discovery lines (`inference compute …`)" in text

    def test_amd_log_names_the_amd_settings_first(self) -> None:
        """Where the log shows an AMD GPU, the `server config` note names ROCR_VISIBLE_DEVICES first."""
        notes = notes_of(V_A, f'{T}msg="detected amdgpu versions [gfx1030]"', CPU_ONLY,
                         f'{T}msg="offload to cpu" layers.requested=-1 layers.model=33 layers.offload=0')
        config = next(n for n in notes if "server config" in n)
        assert config.index("ROCR_VISIBLE_DEVICES") < config.index("CUDA_VISIBLE_DEVICES")
        assert "HSA_OVERRIDE_GFX_VERSION" in config

    def test_present_lines_are_not_asked_for(self) -> None:
        """With the version and `server config` lines present, neither is asked for."""
        notes = notes_of(V_A, CONFIG, CPU_ONLY)
        assert notes, "no GPU found without a reason: something must be named"
        assert not any("Listening on" in n or "server config" in n for n in notes)

    @pytest.mark.parametrize(("version", "words"), [
        (V_A, "with OLLAMA_DEBUG=1, discovery's `cuInit err: <code>`"),
        (V_C, "with OLLAMA_DEBUG=2 (TRACE), the discovery runner's own lines"),
    ])
    def test_no_gpu_without_a_reason_names_where_the_reason_is_printed(self, version: str, words: str) -> None:
        """No GPU found and no cause: the generation's own discovery error lines would name why."""
        notes = notes_of(version, CONFIG, CPU_ONLY)
        assert any(words in n and n.startswith("to decide: if this machine has a GPU") for n in notes)

    @pytest.mark.parametrize(("version", "debug", "asked"), [(V_A, "1", "OLLAMA_DEBUG=1"),
                                                            (V_C, "2", "OLLAMA_DEBUG=2")])
    def test_debug_already_set_is_not_asked_for(self, version: str, debug: str, asked: str) -> None:
        """OLLAMA_DEBUG already at the level that prints discovery's errors: not asked for again; the lines are
        missing from the paste, and the note says where they are printed."""
        config = f'{T}msg="server config" env="map[CUDA_VISIBLE_DEVICES: OLLAMA_DEBUG:{debug}]"'
        notes = notes_of(version, config, CPU_ONLY)
        assert notes and not any(f"with {asked}" in n for n in notes)
        assert any("is set" in n and "printed" in n for n in notes)

    def test_runner_started_without_reports(self) -> None:
        """A model runner started but printed nothing about devices: its ggml lines would show GPU use."""
        notes = notes_of(V_D, CONFIG, START_D)
        assert any("`ggml_cuda_init`" in n and "whether the GPU was used" in n for n in notes)

    def test_discovered_gpu_unused_for_unknown_reason(self) -> None:
        """A GPU discovered, the load on the CPU with no cause: the runner's CUDA init or backend line decides."""
        notes = notes_of(V_D, CONFIG, FOUND, START_D, "load_tensors: offloaded 0/33 layers to GPU")
        assert any("why the discovered GPU was not used" in n for n in notes)

    def test_present_failure_line_is_not_asked_for(self) -> None:
        """The runner's failure line is there but its code names no cause (hipErrorNoDevice): the note names the
        code and what else would decide, not the line that is already in the log."""
        rocm = (f'{T}msg="inference compute" id=GPU-1 library=rocm variant="" compute=gfx1100 driver=0.0 '
                'name=1002:744c total="20.0 GiB" available="19.9 GiB"')
        notes = notes_of(V_D, CONFIG, rocm, START_D,
                         "ggml_cuda_init: failed to initialize ROCm: no ROCm-capable device is detected")
        assert any("hipErrorNoDevice (no ROCm-capable device is detected), names no cause by itself" in n
                   for n in notes)
        assert not any("line would show why" in n for n in notes)

    def test_decided_cause_adds_nothing(self) -> None:
        """A decided cause (cuInit 999) needs no deciding line."""
        assert notes_of(V_A, CONFIG, "cuInit err: 999", CPU_ONLY) == []


class TestWslShadowing:
    NATIVE = f'{T}msg="no nvidia devices detected by library /usr/lib/x86_64-linux-gnu/libcuda.so.535.183.01"'
    WSL_500 = (f'{T}msg="Unable to load cudart library /usr/lib/wsl/drivers/nv.inf_amd64_1/libcuda.so.1.1: cuda driver '
               'library init failure: 500"')

    def test_native_libcuda_before_failing_wsl_ones(self) -> None:
        """A Linux driver's versioned libcuda tried first, then WSL's own failing (500): wsl_libcuda_path, citing
        the native library's line."""
        v = board_of(list(parse_text("\n".join((V_A, self.NATIVE, self.WSL_500, CPU_ONLY)) + "\n"))).verdict()
        assert (v.outcome, v.cause) == ("cpu_fallback", "wsl_libcuda_path")
        assert "libcuda.so.535" in v.evidence[0].text

    def test_without_wsl_paths_it_is_not_wsl(self) -> None:
        """The same native library on a plain Linux host: the code's own cause (500), never WSL."""
        bare_500 = (f'{T}msg="Unable to load cudart library /usr/lib/x86_64-linux-gnu/libcuda.so.535.183.01: cuda '
                    'driver library init failure: 500"')
        v = board_of(list(parse_text("\n".join((V_A, bare_500, CPU_ONLY)) + "\n"))).verdict()
        assert v.cause == "driver_container_incompat"
