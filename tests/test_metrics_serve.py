"""/metrics of a live `ollama-gpu serve` against the simulator, through a real CPU run and its remedy."""

from __future__ import annotations

from pathlib import Path

from tests.ollama_sim import native
from tests.ollama_sim.install import make_install
from tests.serve_helpers import Serve, free_port, wait_for
from tests.test_metrics import no_pid_label, parse, scrape, series, value
from tests.test_serve_sim import generate, sim_env


def test_scrape_after_fallback_and_recovery(tmp_path: Path, libs: native.NativeLibs) -> None:
    """CUDA_VISIBLE_DEVICES=-1 listed in OGPU_MAY_OVERRIDE: discovery runs on the CPU, the remedy restarts Ollama
    without the filter, a model loads on the GPU; /metrics shows each step, with no pid label."""
    inst = make_install(tmp_path / "ollama", "D", cuda_backend=libs.ggml_cuda)
    inst.add_model("tiny")
    port, metrics_port = free_port(), free_port()
    env = sim_env(tmp_path, inst, libs, tmp_path / "cache", port)
    env.update(CUDA_VISIBLE_DEVICES="-1",
               OGPU_MAY_OVERRIDE="CUDA_VISIBLE_DEVICES", OGPU_METRICS_ADDR=f"127.0.0.1:{metrics_port}")
    serve = Serve(["--ollama", str(inst.ollama), "serve"], env)
    try:
        serve.wait_event("ready", timeout=90)
        assert generate(port).get("done") is True

        def recovered() -> dict | None:
            s = parse(scrape(metrics_port))
            held = [d for d in series(s, "ollama_gpu_model_gpu_processes") if d["model"] == "tiny:latest"]
            return s if held and value(s, "ollama_gpu_verdict", subject="model", model="tiny:latest",
                                       outcome="gpu", cause="none") == 1 else None

        s = wait_for(recovered, timeout=60, what="tiny:latest on the GPU in /metrics")
    finally:
        assert serve.stop() == 0
    changes = "ollama_gpu_verdict_changes_total"
    assert value(s, changes, subject="discovery", model="", outcome="cpu_expected",
                 cause="operator_forced_cpu") == 1
    assert value(s, changes, subject="discovery", model="", outcome="gpu", cause="none") == 1
    assert value(s, "ollama_gpu_verdict", subject="discovery", model="", outcome="gpu", cause="none") == 1
    assert value(s, "ollama_gpu_remedies_total", cause="operator_forced_cpu", action="apply_now") == 1
    assert value(s, "ollama_gpu_ollama_restarts_total", reason="remedy", cause="operator_forced_cpu") == 1
    assert value(s, "ollama_gpu_supervisor_state", state="running") == 1
    assert no_pid_label(s)  # type: ignore[arg-type]
