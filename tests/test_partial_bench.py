"""Issue 17 item 4: the H100 script's plan, prediction and table, checked here on a recorded (built) gen-D log.

The device run itself needs the GPU; what can be tested without it is: which configurations the baseline's advice
turns into, what the baseline's account predicts for each, how a run's log is read back, and the table.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

from launcher.memory_account import accounts_of_text
from tests.cli_helpers import REPO
from tests.memory_logs import D_PARTIAL
from tests.partial_bench_module import load_run_partial

MIB, GIB = 1 << 20, 1 << 30


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_run_partial()


def test_plan_turns_each_advised_change_into_a_run(bench: ModuleType) -> None:
    """Baseline, the advised and a half-way context, q8_0 and q4_0 caches, 1 GiB freed, the holder stopped, and
    Q8_0 weights when the quantised model exists: at least 4 configurations besides the baseline."""
    (base,) = accounts_of_text(D_PARTIAL)
    configs = bench.plan(base, 70 * GIB, 8192, "bench-q8:latest")
    names = [c.name for c in configs]
    assert names[0] == "baseline" and {"kv_q8_0", "kv_q4_0", "free_1gib", "free_all", "quant_q8_0"} <= set(names)
    assert len(configs) >= 5
    q8 = next(c for c in configs if c.name == "kv_q8_0")
    assert q8.env == {"OLLAMA_KV_CACHE_TYPE": "q8_0", "OLLAMA_FLASH_ATTENTION": "1"}
    assert q8.change.kv == pytest.approx(17 / 32)
    assert next(c for c in configs if c.name == "free_all").hold == 0
    assert next(c for c in configs if c.name == "quant_q8_0").change.weights == pytest.approx(8.5 / 16)


def test_predictions_from_the_baseline_account(bench: ModuleType) -> None:
    """Replay: 8 of 17 (as placed); freeing all the held VRAM fits all 17; q8_0 KV: 10 (hand arithmetic in
    tests/test_fit_advice.py); Q8_0 weights: (1976 - 300 - 56.9) / (123.7 * 8.5/16 + 56.9) = 13.2."""
    (base,) = accounts_of_text(D_PARTIAL)
    rows = {}
    for cfg in bench.plan(base, 70 * GIB, 8192, "bench-q8:latest"):
        row = bench.Row(cfg.name, cfg.setting)
        bench.predict(base, cfg, row)
        rows[cfg.name] = row
    assert rows["baseline"].predicted == 8
    assert rows["free_all"].predicted == 17 and rows["free_all"].predicted_fits
    assert rows["kv_q8_0"].predicted == 10
    assert rows["quant_q8_0"].predicted == 13


def test_last_load_and_table(bench: ModuleType) -> None:
    """A run's log gives its actual layers; the table shows predicted, actual, the difference and the tally."""
    acc = bench.last_load(D_PARTIAL)
    assert acc is not None and (acc.layers_gpu, acc.layers_total) == (8, 17)
    rows = [bench.Row("baseline", "num_ctx=8192", predicted=8, actual=8, total=17, free_at_load_mib=3000),
            bench.Row("kv_q8_0", "OLLAMA_KV_CACHE_TYPE=q8_0", predicted=10, actual=12, total=17),
            bench.Row("free_all", "the holder stopped", predicted=17, actual=17, total=17),
            bench.Row("quant_q8_0", "Q8_0", error="RuntimeError: load: HTTP 500")]
    text = bench.table(rows, "title")
    lines = text.splitlines()
    assert lines[0] == "title"
    assert lines[2].split()[:5] == ["baseline", "num_ctx=8192", "8/17", "8/17", "+0"]
    assert "+2" in lines[3] and lines[4].rstrip().endswith("fits") and "HTTP 500" in lines[5]
    assert lines[-1] == "within one layer: 2/3 configurations"


def test_no_layers_in_the_log_is_said(bench: ModuleType) -> None:
    assert bench.last_load("hello\n") is None


def test_device_script_is_valid_bash() -> None:
    """`bash -n` parses the device script (it cannot run here)."""
    done = subprocess.run(["bash", "-n", str(REPO / "benchmarks/gpu/partial/device.sh")], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_holder_fails_cleanly_without_a_driver(tmp_path: Path) -> None:
    """hold_vram.py on a machine without libcuda.so.1 (or a GPU) exits non-zero with a one-line reason."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu/partial/hold_vram.py"), str(MIB)],
                          capture_output=True, text=True, check=False, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stdout.startswith("error ")


def test_mock_run_end_to_end(tmp_path: Path) -> None:
    """The script's plumbing without a GPU (--mode mock: the simulator's runner on the mock driver, whose 1056 MiB
    free put 4 of 9 layers on the GPU): the baseline loads under `serve`, its account, the live `status` memory
    summary and the advice line are recorded, later configurations are skipped at the deadline, and the table,
    results and logs come back."""
    from tests.ollama_sim import gguf

    model = gguf.tiny_llama(tmp_path / "big.gguf", n_layer=8, size_mib=64)
    out = tmp_path / "out"
    # a short work dir: the status socket's path must fit a sockaddr_un (108 bytes)
    with tempfile.TemporaryDirectory(prefix="p17-", dir="/tmp") as work:
        done = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu/partial/run_partial.py"), "--mode", "mock",
                               "--model", str(model), "--work", work, "--out", str(out), "--target-free-mib", "1056",
                               "--num-ctx", "4096", "--deadline", "0"],
                              capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    import json

    results = json.loads((out / "partial_results.json").read_text())
    base = results["rows"][0]
    assert (base["name"], base["predicted"], base["actual"], base["total"]) == ("baseline", 4, 4, 9)
    assert base["status_memory"].startswith("4/9 layers on GPU") and base["advice_line"] == base["status_memory"]
    assert all(r["error"] == "skipped: deadline" for r in results["rows"][1:]) and len(results["rows"]) >= 5
    assert results["baseline_account"]["release_line"] == "llama-server"
    assert "within one layer: 1/1 configurations" in (out / "partial_table.txt").read_text()
    with tarfile.open(out / "partial-logs.tgz") as tar:
        assert "partial-logs/baseline.server.log" in tar.getnames()
    assert done.returncode == 1  # skipped configurations are not a clean run
