"""Issue 17 end to end: `ollama-gpu serve` over the simulator with a GPU too small for the model. The advice line,
the runner's `memory` block in `status` and the two metrics all show the load's split, and nothing is applied."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.ollama_sim import gguf, native
from tests.ollama_sim.install import make_install
from tests.serve_helpers import Serve, free_port, wait_for
from tests.test_metrics import parse, scrape, value
from tests.test_serve_sim import generate, sim_env


def status(env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "status", "--json"], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_partial_load_is_accounted_advised_and_measured(tmp_path: Path, libs: native.NativeLibs) -> None:
    """A 64 MiB, 8-layer model on a GPU with 1056 MiB free: llama-server's fit (1024 MiB target) places 4 of 9
    layers. `serve` logs one `partial_offload_advice` line (applied=false), `status` carries the account on the
    runner, and /metrics has ollama_gpu_model_layers{where=gpu|cpu} and the shortfall."""
    inst = make_install(tmp_path / "ollama", "D", cuda_backend=libs.ggml_cuda)
    model = gguf.tiny_llama(tmp_path / "big.gguf", n_layer=8, size_mib=64)
    inst.add_model("tiny", model.read_bytes())
    port, metrics_port = free_port(), free_port()
    env = sim_env(tmp_path, inst, libs, tmp_path / "cache", port)
    env.update(MOCKCUDA_DEVICES="mem_mib=1568", OGPU_METRICS_ADDR=f"127.0.0.1:{metrics_port}")
    serve = Serve(["--ollama", str(inst.ollama), "serve"], env)
    try:
        serve.wait_event("ready", timeout=90)
        assert generate(port).get("done") is True
        line = serve.wait_event("partial_offload_advice", timeout=30)
        doc = wait_for(lambda: (lambda s: s if any(r.get("memory") for r in s.get("runners") or []) else None)(
            status(env)), timeout=30, what="a runner with a memory block in status")
        s = wait_for(lambda: (lambda m: m if value(m, "ollama_gpu_model_layers", model="tiny:latest",
                                                   where="gpu") is not None else None)(parse(scrape(metrics_port))),
                     timeout=30, what="ollama_gpu_model_layers in /metrics")
    finally:
        assert serve.stop() == 0
    assert line["applied"] is False and line["layers_gpu"] == 4 and line["layers_total"] == 9
    assert str(line["advice"]).startswith("4/9 layers on GPU")
    (runner,) = [r for r in doc["runners"] if r.get("memory")]
    mem = runner["memory"]
    assert (mem["layers_gpu"], mem["layers_total"], mem["release_line"]) == (4, 9, "llama-server")
    assert mem["vram_free"] == 1056 << 20 and mem["advice"]
    assert value(s, "ollama_gpu_model_layers", model="tiny:latest", where="gpu") == 4
    assert value(s, "ollama_gpu_model_layers", model="tiny:latest", where="cpu") == 5
    short = value(s, "ollama_gpu_model_vram_shortfall_bytes", model="tiny:latest")
    assert short is not None and short == mem["shortfall"] > 0
    assert not [e for e in serve.events() if e.get("event") == "remedy"]  # advised only
