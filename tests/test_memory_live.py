"""Issue 17 in `serve`: the live memory watch (advice line once per load, NVML holders), the status block per
runner, and the two metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from launcher.events import Event
from launcher.memory_live import MemoryWatch, add_memory, runner_model
from launcher.metrics import Metrics
from tests.memory_logs import D_PARTIAL
from tests.ollama_sim import models as sim_models

MIB = 1 << 20
PR12000 = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "ollama-logs" / \
    "partial_offload-insufficient_vram-unk-pr12000" / "server.log"


class Log:
    """Captures structlog-style calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.calls.append((event, kw))


def feed_all(watch: MemoryWatch, text: str) -> list[Event]:
    out: list[Event] = []
    for number, line in enumerate(text.splitlines(), start=1):
        out.extend(watch.feed(number, line))
    return out


class TestWatch:
    def test_one_advice_line_per_partial_load(self) -> None:
        """A gen-D partial load: `memory_account` events as its buffers settle, and one advice line that names
        the change that fits and says it was not applied."""
        log = Log()
        events = feed_all(MemoryWatch(log), D_PARTIAL)
        assert events and all(e.source == "log" and e.kind == "memory_account" for e in events)
        assert events[-1].data["layers_gpu"] == 8 and events[-1].data["on_gpu"]["graph"] == 300 * MIB
        (call,) = log.calls
        assert call[0] == "partial_offload_advice"
        assert call[1]["applied"] is False and "Q4_K_M" in call[1]["change"]
        assert call[1]["shortfall_bytes"] == 1448 * MIB and call[1]["layers_gpu"] == 8

    def test_a_second_load_is_advised_again_even_with_restarted_line_numbers(self) -> None:
        """Ollama restarted (its output numbered from 1 again) and the model loaded partly again: a second line."""
        log = Log()
        watch = MemoryWatch(log)
        feed_all(watch, D_PARTIAL)
        feed_all(watch, D_PARTIAL)
        assert [c[0] for c in log.calls] == ["partial_offload_advice"] * 2
        assert len(watch.reports()) == 2

    def test_journald_fixture_line_by_line(self) -> None:
        """The pr12000 log as `serve` would see it (the journald prefix is cleaned before): one event, one line."""
        from launcher.log_input import clean

        log = Log()
        watch = MemoryWatch(log)
        events = []
        for number, raw in enumerate(PR12000.read_bytes().splitlines(), start=1):
            events.extend(watch.feed(number, clean(raw)[0]))
        assert [e.data["layers_gpu"] for e in events] == [48]
        assert log.calls[0][1]["change"] == "OLLAMA_KV_CACHE_TYPE=q8_0"
        assert watch.reports()[0]["summary"].startswith("48/49 layers on GPU, short by 307 MiB")

    def test_nvml_holders_named_and_own_pids_left_out(self, tmp_path: Path) -> None:
        """NVML's processes (pids comparable) that are not Ollama's become the account's holders, named from
        /proc/PID/comm, and the advice offers to free them."""
        (tmp_path / "4242").mkdir()
        (tmp_path / "4242" / "comm").write_text("python3\n")
        watch = MemoryWatch(Log(), own_pids=lambda: {77}, proc_root=tmp_path)
        watch.observe(Event("nvml", "memory", 1.0, None, {"pids_comparable": True, "processes": [
            {"pid": 4242, "gpu": 0, "used": 1536 * MIB, "type": "compute"},
            {"pid": 77, "gpu": 0, "used": 900 * MIB, "type": "compute"}, {"pid": "x", "used": 1}]}))
        events = feed_all(watch, D_PARTIAL)
        holders = events[-1].data["holders"]
        assert [dict(h) for h in holders] == [{"name": "python3", "pid": 4242, "used": 1536 * MIB}]
        first = events[-1].data["advice"][0]
        assert first["name"] == "free_vram" and first["fits"] is True

    def test_pids_from_another_namespace_are_not_named(self) -> None:
        """NVML pids that are not comparable with ours (a container) are not attributed."""
        watch = MemoryWatch(Log())
        watch.observe(Event("nvml", "memory", 1.0, None, {"pids_comparable": False, "processes": [
            {"pid": 1, "gpu": 0, "used": MIB, "type": "compute"}]}))
        assert feed_all(watch, D_PARTIAL)[-1].data["holders"] == ()

    def test_garbage_lines_never_raise(self) -> None:
        """Binary noise, half lines and odd sizes give no event and no exception."""
        watch = MemoryWatch(Log())
        noise = "\n".join(["msg=offload layers.model=x", "\x00\xff" * 100, "load_tensors: offloaded 9/3 layers to GPU",
                           'msg="gpu memory" free="1 XB"', "common_memory_breakdown_print: |   - CUDA0 (x) | 1 = 2 +"])
        assert all(e.kind == "memory_account" for e in feed_all(watch, noise))


class TestStatus:
    def test_runner_gets_its_models_account(self) -> None:
        """The account whose --model matches the runner's command line goes on that runner."""
        reports = [{"model": "/m/a", "layers_gpu": 1}, {"model": "/m/b", "layers_gpu": 2}]
        status = {"runners": [{"pid": 10, "outcome": "gpu"}, {"pid": 11, "outcome": "partial_offload"}]}
        out = add_memory(status, reports, model_of=lambda pid: {10: "/m/b", 11: None}.get(pid))  # type: ignore[arg-type]
        assert out["runners"][0]["memory"]["model"] == "/m/b"
        assert out["runners"][1]["memory"]["model"] == "/m/b"  # unknown argv, partial: the newest load
        assert out["memory"] == reports

    def test_what_to_do_names_the_change_for_a_partial_runner(self) -> None:
        """The controller's generic line for a partial runner becomes the account's summary; an advised remedy's
        instruction is kept."""
        reports = [{"model": "/m/a", "summary": "8/17 layers on GPU, short by 1.4 GiB; smallest change that fits: X"}]
        generic = {"what_to_do": "see the verdict's evidence; `ollama-gpu doctor` checks the machine",
                   "runners": [{"pid": 1, "outcome": "partial_offload"}]}
        out = add_memory(generic, reports, model_of=lambda _pid: "/m/a")
        assert out["what_to_do"] == reports[0]["summary"] + " (advised, not applied)"
        kept = {"what_to_do": "restart the container", "runners": [{"pid": 1, "outcome": "partial_offload"}]}
        assert add_memory(kept, reports, model_of=lambda _pid: "/m/a")["what_to_do"] == "restart the container"

    def test_no_reports_no_block(self) -> None:
        status: dict[str, Any] = {"runners": [{"pid": 1}]}
        assert add_memory(status, []) == {"runners": [{"pid": 1}]}

    def test_runner_model_reads_cmdline(self, tmp_path: Path) -> None:
        (tmp_path / "5").mkdir()
        (tmp_path / "5" / "cmdline").write_bytes(b"llama-server\0--model\0/m/blobs/sha256-1\0--port\0" + b"1\0")
        assert runner_model(5, tmp_path) == "/m/blobs/sha256-1"
        assert runner_model(6, tmp_path) is None and runner_model("x", tmp_path) is None


class TestMetrics:
    def test_layers_and_shortfall_per_model(self, tmp_path: Path) -> None:
        """ollama_gpu_model_layers{model,where} and ollama_gpu_model_vram_shortfall_bytes{model}, named from the
        manifest; a later full load of the same model sets the shortfall to 0."""
        blob = sim_models.install(tmp_path / "models", "tiny", b"GGUF tiny model").blob
        m = Metrics()
        m.observe(Event("log", "memory_account", 1.0, None, {"model": str(blob), "layers_gpu": 8, "layers_total": 17,
                                                             "shortfall": 1448 * MIB}))
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(_text(m))
                   for s in f.samples}
        assert samples[("ollama_gpu_model_layers", (("model", "tiny:latest"), ("where", "gpu")))] == 8
        assert samples[("ollama_gpu_model_layers", (("model", "tiny:latest"), ("where", "cpu")))] == 9
        assert samples[("ollama_gpu_model_vram_shortfall_bytes", (("model", "tiny:latest"),))] == 1448 * MIB
        m.observe(Event("log", "memory_account", 2.0, None, {"model": str(blob), "layers_gpu": 17, "layers_total": 17,
                                                             "shortfall": -5 * MIB}))
        text = _text(m)
        assert 'ollama_gpu_model_vram_shortfall_bytes{model="tiny:latest"} 0.0' in text
        assert 'ollama_gpu_model_layers{model="tiny:latest",where="cpu"} 0.0' in text

    def test_bad_event_is_ignored(self) -> None:
        m = Metrics()
        m.observe(Event("log", "memory_account", 1.0, None, {"model": None, "layers_gpu": "x", "shortfall": None}))
        assert "ollama_gpu_model_layers{" not in _text(m)


def _text(m: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(m.registry).decode()



class TestStatusText:
    def test_runner_memory_lines(self, capsys: Any) -> None:
        """`ollama-gpu status` prints a runner's memory summary and its advised changes, marked not applied."""
        from launcher.status_text import render

        memory = feed_all(MemoryWatch(Log()), D_PARTIAL)[-1].data
        import json

        plain = json.loads(json.dumps(memory))
        out = "\n".join(render({"ollama": {}, "discovery": {"outcome": "gpu", "cause": "none"}, "runners": [
            {"pid": 9, "outcome": "partial_offload", "cause": "insufficient_vram", "memory": plain}]}))
        assert "  Memory: 8/17 layers on GPU, short by 1.4 GiB; smallest change that fits: the same model in Q4_K_M" \
            in out
        assert "    Advised (not applied): the same model in Q4_K_M: 17 of 17 layers, fits." in out
