"""Issue 17 item 4 on a real H100: the eight server logs of `benchmarks/gpu/partial/device.sh run` (2026-12-06,
README in tests/fixtures/h100-partial) read back by `explain`, and the baseline's prediction checked against each
real load.

Every expected figure below was read by hand from the fixture's own llama.cpp lines (line numbers in the comments),
not from our parser's output: `load_tensors: offloaded N/M layers`, the device line `(81079 MiB, F MiB free)`, the
first `common_memory_breakdown_print` CUDA0 row (`self = model + context + compute`, full offload), the fit's
`need to reduce device memory by N MiB` / `will leave N >= 1024 MiB`, and the `CUDA0`/`CPU` buffer sizes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from launcher.commands.explain import explain_with_memory
from launcher.fit_advice import advise
from launcher.memory_account import FIT_TARGET_DEFAULT, MemoryAccount, accounts_of_text
from launcher.memory_report import report
from tests.cli_helpers import REPO
from tests.partial_bench_module import load_run_partial

MIB = 1 << 20
H100 = REPO / "tests" / "fixtures" / "h100-partial"
RESULTS = REPO / "benchmarks" / "gpu" / "partial" / "results"
VRAM_TOTAL_MIB = 81079  # ggml_cuda_init: "found 1 CUDA devices (Total VRAM: 81079 MiB)", the same in every log
HOLD_MIB = 76912  # what hold_vram.py held for the baseline (run_partial.py's print; the server log cannot say)


@dataclass(frozen=True)
class Load:
    """One fixture's load as its llama.cpp lines print it (MiB)."""

    layers: tuple[int, int]
    free: int  # common_param device line / llama_prepare_model_devices
    full: tuple[int, int, int]  # breakdown at full offload: model, context (KV), compute
    need_full: int  # the same row's `self` (= "projected to use N MiB")
    shortfall: int  # "need to reduce device memory by N"; negative: "will leave N >= 1024" less the 1024 target
    ctx: int  # llama_context: n_ctx
    kv_type: str  # llama_kv_cache: K (type)
    on_gpu: tuple[float, float | None, float]  # CUDA0 model / KV / compute buffer sizes
    off_gpu: tuple[float, float | None, float]  # CPU_Mapped model / CPU KV / CUDA_Host compute buffer sizes

    @property
    def partial(self) -> bool:
        return self.layers[0] < self.layers[1]


LOADS: dict[str, Load] = {
    # lines 55, 67, 69-70, 193-195, 201, 215-217, 226-227
    "baseline": Load((8, 17), 3114, (1693, 2048, 61), 3802, 1711, 16384, "f16",
                     (811.12, 896.00, 160.00), (1007.14, 1152.00, 28.01)),
    # lines 54, 66, 68-69 ("will leave 1053 >= 1024"), 165-167, 171, 185-186, 195-196
    "num_ctx": Load((17, 17), 3114, (1693, 320, 47), 2060, -(1053 - 1024), 2560, "f16",
                    (1693.26, 320.00, 47.51), (125.00, None, 10.51)),
    # lines 54, 66, 68-69, 192-194, 200, 214-216, 225-226
    "num_ctx_half": Load((11, 17), 3114, (1693, 1184, 54), 2931, 840, 9472, "f16",
                         (1105.16, 740.00, 99.25), (713.09, 444.00, 21.26)),
    # lines 55, 67, 69-70, 192-194, 215-217, 225-226
    "kv_q8_0": Load((11, 17), 3114, (1693, 1088, 160), 2941, 850, 16384, "q8_0",
                    (1105.16, 680.00, 232.07), (713.09, 408.00, 28.09)),
    # lines 55, 67, 69-70, 192-194, 215-217, 225-226
    "kv_q4_0": Load((14, 17), 3114, (1693, 576, 160), 2429, 338, 16384, "q4_0",
                    (1399.21, 468.00, 200.06), (419.05, 108.00, 28.09)),
    # lines 54, 66, 68-69, 192-194, 214-216, 225-226
    "free_1gib": Load((13, 17), 4138, (1693, 2048, 61), 3802, 687, 16384, "f16",
                      (1301.20, 1536.00, 160.00), (517.06, 512.00, 28.01)),
    # lines 76, 88, 90-91 ("will leave 76749 >= 1024"), 186-188, 192, 206-207, 216-217
    "free_all": Load((17, 17), 80552, (1693, 2048, 61), 3802, -(76749 - 1024), 16384, "f16",
                     (1693.26, 2048.00, 61.01), (125.00, None, 24.01)),
    # lines 54, 66, 68-69, 129-130 (Q8_0, 966.07 MiB), 193-195, 201, 215-217, 226-227
    "quant_q8_0": Load((11, 17), 3114, (899, 2048, 61), 3008, 918, 16384, "f16",
                       (587.20, 1280.00, 220.25), (378.88, 768.00, 28.01)),
}

# The table device.sh printed (benchmarks/gpu/partial/results/h100-2026-12-06-table.txt): predicted from the
# baseline's account, actual from each run's own log.
PREDICTED = {"baseline": 8, "num_ctx": 17, "num_ctx_half": 11, "kv_q8_0": 11, "kv_q4_0": 14, "free_1gib": 12,
             "free_all": 17, "quant_q8_0": 10}
TITLE = "issue 17 on NVIDIA H100 80GB HBM3: predicted (from the baseline's account) vs actual layers on GPU"


def log_path(name: str) -> Path:
    return H100 / f"{name}.server.log"


def explained(name: str) -> tuple[str, str, list[MemoryAccount]]:
    with log_path(name).open("rb") as stream:
        board, accounts = explain_with_memory(stream)
    verdict = board.verdict()
    return verdict.outcome, verdict.cause, accounts


def account(name: str) -> MemoryAccount:
    """The fixture's one load (every run loads the model once)."""
    loads = [a for a in accounts_of_text(log_path(name).read_text(encoding="utf-8")) if a.layers_total is not None]
    assert len(loads) == 1, [(a.layers_gpu, a.layers_total) for a in loads]
    return loads[0]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_run_partial()


def test_fixtures_are_the_eight_runs_unedited() -> None:
    """Each log's sha256 is the one the fixtures' README gives (the logs are the device's output, byte for byte)."""
    readme = (H100 / "README.md").read_text(encoding="utf-8")
    listed = dict(re.findall(r"^\| `([a-z0-9_]+)\.server\.log` \|.*\| `([0-9a-f]{64})` \|$", readme, re.M))
    assert set(listed) == set(LOADS) == {p.name.removesuffix(".server.log") for p in H100.glob("*.server.log")}
    for name, digest in listed.items():
        assert hashlib.sha256(log_path(name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("name", list(LOADS))
def test_verdict(name: str) -> None:
    """partial_offload/insufficient_vram where llama-server's fit left layers on the CPU, gpu/none where all 17 fit;
    `explain` shows the memory account only for the partial loads."""
    outcome, cause, accounts = explained(name)
    if LOADS[name].partial:
        assert (outcome, cause) == ("partial_offload", "insufficient_vram")
        assert len(accounts) == 1
    else:
        assert (outcome, cause) == ("gpu", "none")
        assert accounts == []


@pytest.mark.parametrize("name", list(LOADS))
def test_account_figures_are_the_logs(name: str) -> None:
    """The account (explain's for the partial loads, the same tracker's for the two that fit) has the log's figures."""
    want = LOADS[name]
    _, _, accounts = explained(name)
    acc = accounts[0] if want.partial else account(name)
    assert acc.release_line == "llama-server" and acc.version == "0.32.15"
    assert (acc.layers_gpu, acc.layers_total) == want.layers
    assert acc.partial is want.partial
    assert acc.vram_total == VRAM_TOTAL_MIB * MIB
    assert acc.vram_free == want.free * MIB
    model, context, compute = want.full
    assert (acc.weights_total, acc.kv, acc.graph) == (model * MIB, context * MIB, compute * MIB)
    assert acc.need_full == want.need_full * MIB == (model + context + compute) * MIB
    assert acc.shortfall == want.shortfall * MIB
    assert acc.fit_margin == FIT_TARGET_DEFAULT and acc.gpu_overhead == 0
    assert (acc.ctx_total, acc.parallel, acc.kv_type) == (want.ctx, 1, want.kv_type)
    assert acc.holders == []  # the log names no process; NVML's holders come only in `serve`
    for placed, (weights, kv, graph) in ((acc.on_gpu, want.on_gpu), (acc.off_gpu, want.off_gpu)):
        assert placed.get("weights") == pytest.approx(weights * MIB, abs=1)
        assert placed.get("graph") == pytest.approx(graph * MIB, abs=1)
        if kv is None:
            assert "kv" not in placed
        else:
            assert placed.get("kv") == pytest.approx(kv * MIB, abs=1)
    # the KV buffers add up to the cache's printed size (`llama_kv_cache: size = ... MiB`)
    assert acc.on_gpu.get("kv", 0) + acc.off_gpu.get("kv", 0) == context * MIB


def test_baseline_advice() -> None:
    """The baseline's advice as `explain` prints it: the largest context that fits all 17 layers (2560, 16 MiB to
    spare), q8_0 and q4_0 caches still partial at 11 and 14 layers, and no quantisation that fits (KV 2048 + graph
    61 MiB alone exceed the fit's 3114 - 1024 = 2090 MiB)."""
    _, _, (base,) = explained("baseline")
    candidates, note = advise(base)
    got = [(c.setting, c.layers, c.layers_total, c.fits, c.margin) for c in candidates]
    assert got == [("num_ctx (or OLLAMA_CONTEXT_LENGTH)=2560", 17, 17, True, 16 * MIB),
                   ("OLLAMA_KV_CACHE_TYPE=q8_0", 11, 17, False, 80656466),
                   ("OLLAMA_KV_CACHE_TYPE=q4_0", 14, 17, False, 28269609),
                   ("a smaller quantisation", None, 17, False, None)]
    assert note == ""


def test_baseline_predicts_every_run_within_one_layer(bench: ModuleType) -> None:
    """run_partial.py's plan and prediction from the baseline's account, against each run's real layer count: the
    predictions are the ones the device printed, 6 of 8 exact, free_1gib and quant_q8_0 one layer low."""
    base = account("baseline")
    configs = bench.plan(base, HOLD_MIB * MIB, 16384, "bench-q8:latest")
    assert [c.name for c in configs] == list(LOADS)
    assert [c.setting for c in configs][1:3] == ["num_ctx=2560", "num_ctx=9472"]
    rows = []
    for cfg in configs:
        row = bench.Row(cfg.name, cfg.setting)
        bench.predict(base, cfg, row)
        acc = bench.last_load(log_path(cfg.name).read_text(encoding="utf-8"))
        row.actual, row.total, row.free_at_load_mib = acc.layers_gpu, acc.layers_total, acc.vram_free // MIB
        rows.append(row)
    assert {r.name: r.predicted for r in rows} == PREDICTED
    assert {r.name: r.actual for r in rows} == {name: load.layers[0] for name, load in LOADS.items()}
    assert {r.name: r.diff for r in rows if r.diff} == {"free_1gib": 1, "quant_q8_0": 1}
    assert all(abs(r.diff) <= 1 for r in rows)
    assert {r.name for r in rows if r.predicted_fits} == {"num_ctx", "free_all"} == \
        {name for name, load in LOADS.items() if not load.partial}
    # the committed table and results are what these fixtures and this code give
    assert bench.table(rows, TITLE) == (RESULTS / "h100-2026-12-06-table.txt").read_text(encoding="utf-8")
    recorded = json.loads((RESULTS / "h100-2026-12-06-results.json").read_text(encoding="utf-8"))["rows"]
    assert [(r["name"], r["predicted"], r["actual"]) for r in recorded] == \
        [(r.name, r.predicted, r.actual) for r in rows]


@pytest.mark.parametrize("name", ["num_ctx", "free_all"])
def test_a_load_that_fits_is_not_called_partial_in_status(name: str) -> None:
    """The account `serve` publishes for a full load (status' memory block) advises nothing and says it fits; on the
    H100 these two read "17/17 layers on GPU, partly offloaded; smallest change that fits: …" before."""
    data = report(account(name))
    assert data["summary"] == "17/17 layers on GPU: the whole model is on the GPU, nothing to change"
    assert data["advice"] == []


def test_the_partial_baseline_still_gets_its_advice_in_status() -> None:
    data = report(account("baseline"))
    assert data["summary"].startswith("8/17 layers on GPU, short by ")
    assert [c["setting"] for c in data["advice"] if c["fits"]]
