"""Multi-GPU hosts end to end (issue 9): 2 and 4 mock GPUs of mixed sizes under `ollama-gpu serve` — per-GPU verdicts
in UUIDs, filters by index, UUID and MIG UUID, a stale entry narrowed only when listed, scheduler allocations kept."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.ollama_sim import gguf, native
from tests.ollama_sim.discovery import Gpu
from tests.ollama_sim.gens import GENERATIONS
from tests.ollama_sim.server import Sim
from tests.test_serve_remedies import Run

# Mock UUIDs (tests/native/mockcuda.c defaults for devices 0 and 1). Usable room per GPU is mem_mib - 1536 MiB
# (the mock reports 512 MiB in use; the simulated llama-server keeps 1024 MiB free): 64 and 48 MiB here.
GPU_A, GPU_B = "GPU-6d6f636b-1000-2000-3000-000000400000", "GPU-6d6f636c-1001-2000-3000-000000400001"
TWO = "name=NVIDIA H100 80GB HBM3,pci=0000:01:00.0,mem_mib=1600;name=NVIDIA A100-SXM4-40GB,cc=8.0,pci=0000:02:00.0," \
      "mem_mib=1584"
SMALL_SECOND = "name=NVIDIA H100 80GB HBM3,pci=0000:01:00.0,mem_mib=1600;name=NVIDIA T4,cc=7.5,pci=0000:02:00.0," \
               "mem_mib=1570"
MIG_1, GPU_C = "MIG-5f3a1c2e-7b1d-5e0a-9c44-0123456789ab", "GPU-6d6f636d-1002-2000-3000-000000400002"
FOUR = ";".join((
    "name=NVIDIA H100 80GB HBM3,pci=0000:01:00.0,mem_mib=1700",
    f"name=NVIDIA A100-SXM4-40GB MIG 3g.20gb,cc=8.0,pci=0000:02:00.0,mem_mib=1600,uuid={MIG_1}",
    "name=NVIDIA L4,cc=8.9,pci=0000:03:00.0,mem_mib=1590",
    "name=NVIDIA A100-SXM4-40GB MIG 1g.5gb,cc=8.0,pci=0000:04:00.0,mem_mib=1560,"
    "uuid=MIG-9e8d7c6b-5a49-5838-2716-fedcba987654",
))


def start(tmp: Path, libs: native.NativeLibs, cache: Path, devices: str, *, flags: tuple[str, ...] = (),
          **env: str) -> Run:
    """`ollama-gpu serve` over a gen-D install on these mock GPUs, with a 96 MiB, 16-layer model (6 MiB a layer:
    more than either 2-GPU layout fits alone)."""
    run = Run(tmp, libs, cache, flags=flags, MOCKCUDA_DEVICES=devices, **env)
    model = gguf.tiny_llama(tmp / "big.gguf", n_layer=15, size_mib=96)
    run.inst.add_model("big", model.read_bytes())
    return run.ready()


def generate(run: Run) -> None:
    body = json.dumps({"model": "big", "prompt": "hello", "stream": False}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{run.port}/api/generate", data=body)
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=60) as response:
        assert json.loads(response.read())["done"] is True


def runner(run: Run, outcome: str) -> dict[str, Any]:
    """The newest runner's verdict once it has this outcome and names its GPUs."""
    status = run.wait_status(lambda s: s["runners"] and s["runners"][-1]["outcome"] == outcome
                             and any(d["state"] == "used" for d in s["runners"][-1]["devices"]), f"{outcome} runner")
    return status["runners"][-1]  # type: ignore[no-any-return]


def used(verdict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["uuid"]: d for d in verdict["devices"] if d["state"] == "used"}


class TestTwoGpus:
    def test_model_split_across_both_gpus_names_both(self, tmp_path: Path, libs: native.NativeLibs,
                                                     cache_dir: Path) -> None:
        """A model neither GPU holds alone is split: the runner's verdict is gpu and names both GPUs by UUID, with
        the weights each holds."""
        run = start(tmp_path, libs, cache_dir, TWO)
        status = run.wait_status(lambda s: s["discovery"]["outcome"] == "gpu", "gpu discovery")
        assert {d["uuid"] for d in status["discovery"]["devices"] if d["state"] == "discovered"} == {GPU_A, GPU_B}
        generate(run)
        verdict = runner(run, "gpu")
        assert verdict["cause"] == "none"
        split = used(verdict)
        assert set(split) == {GPU_A, GPU_B}
        assert split[GPU_A]["device"] == "CUDA0" and split[GPU_B]["device"] == "CUDA1"
        assert split[GPU_A]["weights_mib"] > split[GPU_B]["weights_mib"] > 0  # more room, more layers
        assert not any(d["lacked_room"] for d in verdict["devices"])
        assert run.stop() == 0

    def test_index_filter_is_the_operators_choice_and_the_small_gpu_is_named_when_full(
            self, tmp_path: Path, libs: native.NativeLibs, cache_dir: Path) -> None:
        """CUDA_VISIBLE_DEVICES=1 (by index) hides the large GPU: that is the operator's choice, kept even when listed
        in OGPU_MAY_OVERRIDE (the listing names one GPU); the small GPU fits 5 of 16 layers, and the partial
        offload names it, in UUIDs, as the GPU that lacked room."""
        run = start(tmp_path, libs, cache_dir, SMALL_SECOND, flags=("--may-override", "CUDA_VISIBLE_DEVICES"),
                    CUDA_VISIBLE_DEVICES="1")
        status = run.wait_status(lambda s: s["discovery"]["outcome"] == "gpu", "gpu discovery")
        assert status["discovery"]["cause"] == "none"
        assert any("operator's choice" in n for n in status["discovery"]["notes"])
        assert [d["uuid"] for d in status["discovery"]["devices"]] == [GPU_B]
        generate(run)
        verdict = runner(run, "partial_offload")
        assert verdict["cause"] == "insufficient_vram"
        full = [d for d in verdict["devices"] if d["lacked_room"]]
        assert [(d["device"], d["uuid"], d["name"]) for d in full] == [("CUDA0", GPU_B, "NVIDIA T4")]
        assert any(GPU_B in n and "lacked room" in n for n in verdict["notes"])
        final = run.status()[1]
        assert final["restarts"] == 0 and final["remedies"]["applied"] == []
        assert run.stop() == 0

    def test_stale_uuid_entry_is_dropped_when_listed_and_both_gpus_are_used(
            self, tmp_path: Path, libs: native.NativeLibs, cache_dir: Path) -> None:
        """CUDA_VISIBLE_DEVICES=<GPU A>,<stale UUID>,<prefix of GPU B>: CUDA stops at the stale entry, so GPU B is
        hidden — a degraded GPU path. Listed in OGPU_MAY_OVERRIDE, the stale entry alone is dropped before READY
        (nothing is added: the operator listed both GPUs), and the model is split across both."""
        value = f"{GPU_A},GPU-deadbeef-0000-0000-0000-000000000000,{GPU_B[:12]}"
        run = start(tmp_path, libs, cache_dir, TWO, flags=("--may-override", "CUDA_VISIBLE_DEVICES"),
                    CUDA_VISIBLE_DEVICES=value)
        status = run.wait_status(lambda s: s["restarts"] == 1 and s["discovery"]["outcome"] == "gpu"
                                 and s["ready"], "restarted with the narrowed filter")
        assert status["remedies"]["applied"][0]["changes"] == [f"SET CUDA_VISIBLE_DEVICES={GPU_A},{GPU_B[:12]}"]
        assert status["remedies"]["applied"][0]["cause"] == "device_filter_hides_gpu"
        assert run.order("remedy", "restarting", "ready") == ["remedy", "restarting", "ready"]
        generate(run)
        assert set(used(runner(run, "gpu"))) == {GPU_A, GPU_B}
        assert run.stop() == 0

    def test_scheduler_allocation_is_never_widened(self, tmp_path: Path, libs: native.NativeLibs,
                                                   cache_dir: Path) -> None:
        """The same stale filter under a Slurm allocation: reported as device_filter_hides_gpu and advised, never
        changed, even when listed in OGPU_MAY_OVERRIDE; the runner has only the GPU CUDA shows, which lacks room."""
        value = f"{GPU_A},GPU-deadbeef-0000-0000-0000-000000000000,{GPU_B}"
        run = start(tmp_path, libs, cache_dir, TWO, flags=("--may-override", "CUDA_VISIBLE_DEVICES"),
                    CUDA_VISIBLE_DEVICES=value, SLURM_JOB_GPUS="0,1")
        status = run.wait_status(lambda s: s["discovery"]["cause"] == "device_filter_hides_gpu"
                                 and s["remedies"]["advised"], "advice")
        assert "scheduler" in status["remedies"]["advised"][0]["reason"]
        assert status["discovery"]["outcome"] == "gpu"
        generate(run)
        verdict = runner(run, "partial_offload")
        assert set(used(verdict)) == {GPU_A}
        assert [d["uuid"] for d in verdict["devices"] if d["lacked_room"]] == [GPU_A]
        final = run.status()[1]
        assert final["restarts"] == 0 and final["remedies"]["applied"] == []
        assert run.stop() == 0


class TestFourGpus:
    def test_mig_and_uuid_prefix_filter_on_four_mixed_gpus(self, tmp_path: Path, libs: native.NativeLibs,
                                                           cache_dir: Path) -> None:
        """Four GPUs of mixed sizes, two of them MIG instances; CUDA_VISIBLE_DEVICES names a MIG instance and a GPU by
        UUID prefix: discovery shows exactly those two (the operator's choice) and the model is split across them,
        named by PCI bus id."""
        run = start(tmp_path, libs, cache_dir, FOUR, CUDA_VISIBLE_DEVICES=f"{MIG_1},{GPU_C[:14]}")
        status = run.wait_status(lambda s: s["discovery"]["outcome"] == "gpu", "gpu discovery")
        assert status["discovery"]["cause"] == "none"
        assert [d["pci_bus_id"] for d in status["discovery"]["devices"]] == ["0000:02:00.0", "0000:03:00.0"]
        generate(run)
        verdict = runner(run, "gpu")
        assert sorted(d["pci_bus_id"] for d in verdict["devices"] if d["state"] == "used") == \
            ["0000:02:00.0", "0000:03:00.0"]
        assert GPU_C in used(verdict)
        assert run.stop() == 0


class TestSimulatedScheduler:
    @staticmethod
    def sim(*free_mib: int) -> Sim:
        sim = Sim.__new__(Sim)  # only the scheduler's inputs: the generation and the discovered GPUs
        sim.gen = GENERATIONS["D"]
        sim.gpus = [Gpu(i, f"GPU-{i}", "GPU", (9, 0), mib << 20, mib << 20, f"0000:0{i}:00.0", 13000, "")
                    for i, mib in enumerate(free_mib)]
        return sim

    def test_a_model_that_fits_one_gpu_gets_the_roomiest(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Gen D's `selecting single GPU`: the GPU with the most free memory when the model fits it alone."""
        monkeypatch.delenv("OLLAMA_SCHED_SPREAD", raising=False)
        sim = self.sim(4000, 8000)
        assert sim._choose(100 << 20) == [sim.gpus[1]]
        assert sim._choose(7500 << 20) == sim.gpus  # too big for one: every GPU, llama-server splits it

    def test_sched_spread_always_takes_every_gpu(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """OLLAMA_SCHED_SPREAD=1 (Ollama's own knob) spreads even a small model over every GPU."""
        monkeypatch.setenv("OLLAMA_SCHED_SPREAD", "1")
        sim = self.sim(4000, 8000)
        assert sim._choose(100 << 20) == sim.gpus
