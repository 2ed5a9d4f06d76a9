"""/metrics after a fallback and its recovery shows the expected series and values, with bounded labels and no pid;
model names come from Ollama's manifests; a recorded simulator run replays into the same series."""

from __future__ import annotations

import hashlib
import re
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from launcher import __version__
from launcher.config import ConfigError, load_settings
from launcher.events import Event, Replay
from launcher.metrics import MAX_PROCS, Metrics, MetricsServer, start
from launcher.model_names import NO_MODEL, ModelNames, model_arg
from tests.cli_helpers import REPO
from tests.ollama_sim import models as sim_models
from tests.ollama_sim import native
from tests.ollama_sim.install import make_install
from tests.serve_helpers import Serve, free_port, wait_for

GIB = 1 << 30
UUID = "GPU-6d6f636b-1000-2000-3000-000000000000"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> str:
    """GET /metrics from loopback, no proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def parse(text: str) -> Samples:
    """(sample name, labels) → value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


def snapshot(pid: int, st: int, kernel: int, *, allocs: int = 0, alloc_bytes: int = 0, htod: int = 0,
             dropped: int = 0) -> Event:
    return Event("shim", "snapshot", 0.0, pid, {
        "start_time": st, "launches": {"kernel": kernel, "kernel_ex": 0, "cooperative": 0, "graph": 0},
        "mem": {"allocs": allocs, "frees": 0, "alloc_bytes": alloc_bytes, "free_bytes": 0},
        "copies": {"htod_bytes": htod, "dtoh_bytes": 0, "dtod_bytes": 0}, "dropped": dropped})


def runner_argv(blob: Path) -> list[str]:
    return ["/usr/lib/ollama/llama-server", "--model", str(blob), "--port", "40000", "--host", "127.0.0.1"]


def fallback_then_recovery(blob: Path) -> list[Event]:
    """A live stream: discovery GPU; runner 200 on the CPU (libcuda not found); remedy, restart; runner 300 on the
    GPU; then one crash restart. As the controller records it (verdict and decision events included)."""
    argv = runner_argv(blob)
    return [
        Event("nvml", "gpus", 0.0, None, {"available": True, "gpus": [
            {"index": 0, "uuid": UUID, "memory_total": 80 * GIB, "memory_used": 1 * GIB}]}),
        Event("supervisor", "state", 0.0, None, {"from": "starting", "to": "starting", "pid": 100}),
        Event("supervisor", "ollama_started", 0.0, 100, {"argv": ["ollama", "serve"], "restarts": 0}),
        Event("supervisor", "state", 0.1, None, {"from": "starting", "to": "running", "version": "0.32.15"}),
        Event("supervisor", "ready", 0.1, 100, {"version": "0.32.15"}),
        Event("supervisor", "verdict", 0.1, None, {"subject": "discovery", "outcome": "gpu", "cause": "none"}),
        Event("shim", "hello", 1.0, 200, {"start_time": 11, "exe": argv[0], "argv": argv, "ppid": 100}),
        Event("proc", "runner_started", 1.0, 200, {"start_time": 11, "cls": "model_runner", "argv": argv}),
        Event("shim", "cu_init", 1.0, 200, {"start_time": 11, "result": 100}),
        snapshot(200, 11, 0),
        Event("supervisor", "verdict", 1.2, None, {"subject": "runner 200", "outcome": "cpu_fallback",
                                                   "cause": "libcuda_not_found"}),
        Event("supervisor", "decision", 1.2, None, {"action": "apply_now", "cause": "libcuda_not_found",
                                                    "outcome": "cpu_fallback", "which": "runner"}),
        Event("proc", "runner_exited", 1.3, 200, {"start_time": 11, "cls": "model_runner"}),
        Event("supervisor", "restarted", 1.3, 100, {"reason": "remedy for libcuda_not_found"}),
        Event("supervisor", "ollama_started", 1.4, 101, {"argv": ["ollama", "serve"], "restarts": 1}),
        Event("supervisor", "ready", 1.5, 101, {"version": "0.32.15"}),
        Event("shim", "hello", 2.0, 300, {"start_time": 22, "exe": argv[0], "argv": argv, "ppid": 101}),
        Event("proc", "runner_started", 2.0, 300, {"start_time": 22, "cls": "model_runner", "argv": argv}),
        Event("shim", "device", 2.0, 300, {"start_time": 22, "ordinal": 0, "uuid": UUID}),
        Event("shim", "ctx", 2.0, 300, {"start_time": 22, "device": 0, "result": 0}),
        snapshot(300, 22, 50, allocs=3, alloc_bytes=4 * GIB, htod=3 * GIB),
        snapshot(300, 22, 80, allocs=3, alloc_bytes=4 * GIB, htod=3 * GIB, dropped=2),
        Event("nvml", "memory", 2.5, None, {"gpus": [{"index": 0, "used": 5 * GIB}], "processes": None}),
        Event("supervisor", "verdict", 2.5, None, {"subject": "runner 300", "outcome": "gpu", "cause": "none"}),
        Event("supervisor", "state", 3.0, None, {"from": "running", "to": "backoff", "delay": 1}),
        Event("supervisor", "state", 4.0, None, {"from": "backoff", "to": "starting", "pid": 102}),
    ]


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    """A model `tiny` in an Ollama model store (manifest + blob)."""
    return sim_models.install(tmp_path / "models", "tiny", b"GGUF tiny model").blob


@pytest.fixture
def served() -> Iterable[MetricsServer]:
    """A Metrics server on a kernel-chosen loopback port."""
    server = MetricsServer(Metrics(), ("127.0.0.1", 0)).start()
    yield server
    server.close()


def no_pid_label(samples: Samples) -> bool:
    return all("pid" not in dict(labels) for _name, labels in samples)


class TestFallbackAndRecovery:
    def test_scrape_shows_the_recovery(self, served: MetricsServer, blob: Path) -> None:
        """After a CPU fallback fixed by a remedy and a GPU run, /metrics says so series by series."""
        for event in fallback_then_recovery(blob):
            served.metrics.observe(event)
        s = parse(scrape(served.port))
        model = "tiny:latest"
        assert series(s, "ollama_gpu_verdict") == [
            {"subject": "discovery", "model": "", "outcome": "gpu", "cause": "none"},
            {"subject": "model", "model": model, "outcome": "gpu", "cause": "none"}]
        changes = "ollama_gpu_verdict_changes_total"
        assert value(s, changes, subject="model", model=model, outcome="cpu_fallback", cause="libcuda_not_found") == 1
        assert value(s, changes, subject="model", model=model, outcome="gpu", cause="none") == 1
        assert value(s, "ollama_gpu_remedies_total", cause="libcuda_not_found", action="apply_now") == 1
        restarts = "ollama_gpu_ollama_restarts_total"
        assert value(s, restarts, reason="remedy", cause="libcuda_not_found") == 1
        assert value(s, restarts, reason="crash", cause="none") == 1
        assert value(s, "ollama_gpu_shim_launches_total", model=model, kind="kernel") == 80
        assert value(s, "ollama_gpu_shim_allocated_bytes_total", model=model) == 4 * GIB
        assert value(s, "ollama_gpu_shim_copied_bytes_total", model=model, direction="htod") == 3 * GIB
        assert value(s, "ollama_gpu_model_gpu_processes", model=model, gpu=UUID) == 1
        assert value(s, "ollama_gpu_gpu_memory_used_bytes", gpu=UUID) == 5 * GIB
        assert value(s, "ollama_gpu_gpu_memory_total_bytes", gpu=UUID) == 80 * GIB
        assert value(s, "ollama_gpu_nvml_up") == 1
        assert value(s, "ollama_gpu_dropped_events_total", where="shim", reason="send_buffer_full") == 2
        assert value(s, "ollama_gpu_supervisor_state", state="starting") == 1
        assert value(s, "ollama_gpu_supervisor_state", state="running") == 0
        assert value(s, "ollama_gpu_build_info", version=__version__, ollama_version="0.32.15") == 1
        assert no_pid_label(s)
        assert not [v for (_n, labels) in s for _k, v in labels if v in ("100", "101", "200", "300")]

    def test_the_fallback_is_visible_before_the_recovery(self, served: MetricsServer, blob: Path) -> None:
        """Scraped mid-way, the model's verdict is cpu_fallback with its cause, and no remedy restart yet."""
        stream = fallback_then_recovery(blob)
        cut = next(i for i, e in enumerate(stream) if e.kind == "decision")
        for event in stream[:cut]:
            served.metrics.observe(event)
        s = parse(scrape(served.port))
        assert value(s, "ollama_gpu_verdict", subject="model", model="tiny:latest", outcome="cpu_fallback",
                     cause="libcuda_not_found") == 1
        assert series(s, "ollama_gpu_ollama_restarts_total") == []


class TestSeries:
    def test_shim_totals_are_cumulative_per_process(self, blob: Path) -> None:
        """A lost snapshot costs nothing; a second process of the same model adds its own totals from zero."""
        metrics = Metrics()
        argv = runner_argv(blob)
        for pid, st in ((200, 1), (300, 2)):
            metrics.observe(Event("shim", "hello", 0.0, pid, {"start_time": st, "argv": argv, "exe": "x", "ppid": 1}))
        for event in (snapshot(200, 1, 10), snapshot(200, 1, 30), snapshot(200, 1, 30), snapshot(300, 2, 5)):
            metrics.observe(event)
        s = parse_registry(metrics)
        assert value(s, "ollama_gpu_shim_launches_total", model="tiny:latest", kind="kernel") == 35

    def test_labels_stay_bounded_with_many_runner_processes(self, blob: Path) -> None:
        """Thousands of runner processes of one model: one series per model, bookkeeping capped."""
        metrics = Metrics()
        argv = runner_argv(blob)
        for pid in range(1000, 1000 + MAX_PROCS + 500):
            metrics.observe(Event("shim", "hello", 0.0, pid, {"start_time": pid, "argv": argv, "exe": "x",
                                                               "ppid": 1}))
            metrics.observe(snapshot(pid, pid, 1))
            metrics.observe(Event("supervisor", "verdict", 0.0, None, {"subject": f"runner {pid}",
                                                                       "outcome": "gpu", "cause": "none"}))
        s = parse_registry(metrics)
        assert len(series(s, "ollama_gpu_shim_launches_total")) == 4  # one model × four launch kinds
        assert len(series(s, "ollama_gpu_verdict")) == 1
        assert len(metrics._procs) <= MAX_PROCS
        assert no_pid_label(s)

    def test_values_outside_the_vocabulary_become_unknown(self) -> None:
        """An outcome or cause we do not know is `unknown`, never a new label value."""
        metrics = Metrics()
        metrics.observe(Event("supervisor", "verdict", 0.0, None, {"subject": "discovery", "outcome": "gpu?",
                                                                   "cause": "made up"}))
        metrics.observe(Event("supervisor", "decision", 0.0, None, {"action": "advise", "cause": "x" * 500}))
        s = parse_registry(metrics)
        assert series(s, "ollama_gpu_verdict") == [{"subject": "discovery", "model": "", "outcome": "unknown",
                                                    "cause": "unknown"}]
        assert value(s, "ollama_gpu_remedies_total", cause="unknown", action="advise") == 1

    def test_a_malformed_event_is_counted_not_raised(self) -> None:
        """An nvml event whose gpus are not objects is a dropped event of ours, and the sink goes on."""
        metrics = Metrics()
        metrics.observe(Event("nvml", "gpus", 0.0, None, {"gpus": [1, 2]}))
        metrics.observe(Event("nvml", "memory", 0.0, None, {"gpus": [{"index": 0, "used": 7}]}))
        s = parse_registry(metrics)
        assert value(s, "ollama_gpu_dropped_events_total", where="metrics", reason="unreadable_event") == 1
        assert value(s, "ollama_gpu_gpu_memory_used_bytes", gpu="0") == 7  # no UUID known: the index

    def test_gpu_health_and_xids(self) -> None:
        """Issue 16: one gpu_health series per (GPU, state), 1 on the current state; Xids counted per GPU and Xid;
        the GPU label is its UUID once known."""
        metrics = Metrics()
        for event in health_events():
            metrics.observe(event)
        s = parse_registry(metrics)
        assert value(s, "ollama_gpu_gpu_health", gpu="GPU-a", state="lost") == 1
        assert value(s, "ollama_gpu_gpu_health", gpu="GPU-a", state="ok") == 0
        assert len(series(s, "ollama_gpu_gpu_health")) == 6
        assert value(s, "ollama_gpu_xid_total", gpu="GPU-a", xid="79") == 2

    def test_resumes_the_probe_after_them_and_uvm_reloads(self) -> None:
        """Issue 16: resumes counted by how they were noticed; the after-resume probe as a 0/1 gauge (absent until
        the first probe, unchanged by a probe that could not run); nvidia_uvm reloads by outcome; unknown values are
        no new labels."""
        metrics = Metrics()
        assert series(parse_registry(metrics), "ollama_gpu_cuda_ok_after_resume") == []
        for event in resume_events():
            metrics.observe(event)
        s = parse_registry(metrics)
        assert value(s, "ollama_gpu_host_resumes_total", via="clock") == 2
        assert value(s, "ollama_gpu_host_resumes_total", via="logind") == 1
        assert value(s, "ollama_gpu_cuda_ok_after_resume") == 0
        assert value(s, "ollama_gpu_uvm_reloads_total", outcome="held") == 1
        assert {d["outcome"] for d in series(s, "ollama_gpu_uvm_reloads_total")} == {"held"}
        metrics.observe(Event("supervisor", "cuda_probe", 9.0, None, {"after": "uvm_reload", "ok": True}))
        assert value(parse_registry(metrics), "ollama_gpu_cuda_ok_after_resume") == 1

    def test_an_unknown_health_state_is_not_a_label(self) -> None:
        """A state outside the six is ignored, never a new label value."""
        metrics = Metrics()
        metrics.observe(Event("nvml", "gpu_health", 0.0, None, {"gpus": [{"index": 0, "state": "on fire"}]}))
        assert series(parse_registry(metrics), "ollama_gpu_gpu_health") == []

    def test_event_server_drops(self) -> None:
        """The shim event server's drop and reject counters appear per reason."""
        from launcher.shim_events import ServerStats

        metrics = Metrics()
        metrics.set_shim_server_stats(ServerStats(dropped={"oversize": 3}, rejected={"other_uid": 1}))
        s = parse_registry(metrics)
        assert value(s, "ollama_gpu_dropped_events_total", where="event_server", reason="oversize") == 3
        assert value(s, "ollama_gpu_dropped_events_total", where="event_server", reason="rejected_other_uid") == 1

    def test_naming_conventions(self, blob: Path) -> None:
        """Every family is ollama_gpu_*, counters end in _total, byte series in _bytes(_total), no pid label."""
        metrics = Metrics()
        for event in fallback_then_recovery(blob):
            metrics.observe(event)
        from prometheus_client import generate_latest

        families = list(text_string_to_metric_families(generate_latest(metrics.registry).decode()))
        assert families
        for family in families:
            assert family.name.startswith("ollama_gpu_"), family.name
            for sample in family.samples:
                if family.type == "counter" and not sample.name.endswith("_created"):
                    assert sample.name.endswith("_total"), sample.name
                if "byte" in sample.name:
                    assert sample.name.endswith(("_bytes", "_bytes_total")), sample.name
                assert "pid" not in sample.labels


def health_events() -> list[Event]:
    """GPU 0 (GPU-a) fine, then lost after two Xid 79."""
    xid = Event("nvml", "xid", 2.0, None, {"index": 0, "uuid": "GPU-a", "xid": 79, "critical": True})
    return [Event("nvml", "gpus", 0.0, None, {"gpus": [{"index": 0, "uuid": "GPU-a"}]}),
            Event("nvml", "gpu_health", 1.0, None, {"gpus": [{"index": 0, "uuid": "GPU-a", "state": "ok"}]}),
            xid, xid,
            Event("nvml", "gpu_health", 3.0, None, {"gpus": [{"index": 0, "uuid": "GPU-a", "state": "lost"}]})]


def resume_events() -> list[Event]:
    """Three resumes (one announced by logind, one with an unknown `via`), a failed probe after the last, a probe
    that could not run (changes nothing), a reload refused because a process held the GPU, an unknown outcome."""
    return [Event("supervisor", "resumed", 1.0, None, {"slept": 600.0, "via": "clock"}),
            Event("supervisor", "resumed", 2.0, None, {"slept": 60.0, "via": "logind"}),
            Event("supervisor", "resumed", 3.0, None, {"slept": 60.0, "via": "carrier pigeon"}),
            Event("supervisor", "cuda_probe", 4.0, None, {"after": "resume", "ok": False, "cu_init": 999}),
            Event("supervisor", "cuda_probe", 5.0, None, {"after": "resume", "ok": None}),
            Event("supervisor", "uvm_reload", 6.0, None, {"key": "k", "outcome": "held"}),
            Event("supervisor", "uvm_reload", 7.0, None, {"key": "k", "outcome": "exploded"})]


def parse_registry(metrics: Metrics) -> Samples:
    from prometheus_client import generate_latest

    return parse(generate_latest(metrics.registry).decode())


class TestModelNames:
    def test_names_from_manifests(self, tmp_path: Path) -> None:
        """Library, namespaced and other-registry models get Ollama's short names; an unknown blob its digest."""
        root = tmp_path / "models"
        tiny = sim_models.install(root, "tiny", b"a")
        user = sim_models.install(root, "alice/coder:7b", b"b")
        other = sim_models.install(root, "example.com/team/m:v1", b"c")
        names = ModelNames()
        assert names.name(["x", "--model", str(tiny.blob)]) == "tiny:latest"
        assert names.name(["x", "-m", str(user.blob)]) == "alice/coder:7b"
        assert names.name(["x", f"--model={other.blob}"]) == "example.com/team/m:v1"
        stray = root / "blobs" / ("sha256-" + "f" * 64)
        assert names.name(["x", "--model", str(stray)]) == "sha256-ffffffffffff"

    def test_a_model_installed_later_is_found(self, tmp_path: Path) -> None:
        """A blob unknown at the first read is looked up again (a model pulled while serving)."""
        root = tmp_path / "models"
        sim_models.install(root, "first", b"1")
        names = ModelNames()
        later = root / "blobs" / ("sha256-" + hashlib.sha256(b"2").hexdigest())
        assert names.name(["x", "--model", str(later)]).startswith("sha256-")
        sim_models.install(root, "second", b"2")
        assert names.name(["x", "--model", str(later)]) == "second:latest"

    def test_no_model_argument(self) -> None:
        """The server and discovery runners have no --model."""
        assert model_arg(["llama-server", "--list-devices"]) is None
        assert ModelNames().name(["ollama", "serve"]) == NO_MODEL
        assert ModelNames().name(["ollama", "runner", "--mlx-engine", "--model", "qwen3:4b"]) == "qwen3:4b"


class TestSetting:
    def test_off_by_default(self, tmp_path: Path) -> None:
        """No OGPU_METRICS_ADDR: no metrics, no server."""
        settings = load_settings({"HOME": str(tmp_path)}, uid=1000)
        assert settings.metrics_addr is None
        assert start(settings.metrics_addr, structlog.get_logger()) is None

    @pytest.mark.parametrize(("text", "addr"), [("127.0.0.1:9835", ("127.0.0.1", 9835)),
                                                ("[::1]:9835", ("::1", 9835)), ("0.0.0.0:1", ("0.0.0.0", 1))])
    def test_addresses(self, tmp_path: Path, text: str, addr: tuple[str, int]) -> None:
        """host:port and [v6]:port parse."""
        settings = load_settings({"HOME": str(tmp_path), "OGPU_METRICS_ADDR": text}, uid=1000)
        assert settings.metrics_addr == addr

    @pytest.mark.parametrize("text", ["9835", "localhost", "127.0.0.1:0", "127.0.0.1:70000", "::1:9835"])
    def test_bad_addresses(self, tmp_path: Path, text: str) -> None:
        """Anything else is a configuration error naming the key."""
        with pytest.raises(ConfigError, match="OGPU_METRICS_ADDR"):
            load_settings({"HOME": str(tmp_path), "OGPU_METRICS_ADDR": text}, uid=1000)

    def test_a_port_in_use_is_a_warning_not_a_failure(self, served: MetricsServer) -> None:
        """When the port is taken, start() says so once and returns None: serve goes on without metrics."""
        with structlog.testing.capture_logs() as logs:
            assert start(("127.0.0.1", served.port), structlog.get_logger()) is None
        assert [e["event"] for e in logs] == ["metrics_unavailable"]


# --- a real run: serve + simulator, recorded, replayed into Metrics ------------------------------------------------



def replay_file(path: Path) -> Metrics:
    metrics = Metrics()
    if path.exists():
        with open(path, encoding="utf-8") as stream:
            for event in Replay(stream):
                metrics.observe(event)
    return metrics


def test_recorded_simulator_run_replays_into_metrics(tmp_path: Path, libs: native.NativeLibs) -> None:
    """serve + simulator (gen D, mock driver): the recording of a model load replays into a CUDA context of
    `tiny:latest` on the mock GPU (by UUID) while the runner lives, and none once serve stopped; no pid label."""
    from tests.test_serve_sim import generate, sim_env

    inst = make_install(tmp_path / "ollama", "D", cuda_backend=libs.ggml_cuda)
    inst.add_model("tiny")
    port = free_port()
    env = sim_env(tmp_path, inst, libs, tmp_path / "cache", port)
    record = tmp_path / "events.jsonl"
    serve = Serve(["--ollama", str(inst.ollama), "serve"], env)
    try:
        serve.wait_event("ready", timeout=60)
        assert generate(port).get("done") is True

        def on_gpu() -> list[dict[str, str]]:
            found = series(parse_registry(replay_file(record)), "ollama_gpu_model_gpu_processes")
            return [d for d in found if d["model"] == "tiny:latest"]

        held = wait_for(on_gpu, what="a CUDA context of tiny:latest in the recording")
        assert [d["gpu"][:4] for d in held] == ["GPU-"]  # type: ignore[union-attr]  # the UUID, not an index
    finally:
        assert serve.stop() == 0
    s = parse_registry(replay_file(record))
    assert [d for d in series(s, "ollama_gpu_model_gpu_processes") if d["model"] == "tiny:latest"] == []
    assert no_pid_label(s)


class TestAlertRules:
    def test_example_rules_use_only_exported_series(self, blob: Path) -> None:
        """docs/prometheus-alerts.yml parses and every ollama_gpu_ series it names is one we export."""
        import yaml

        rules = yaml.safe_load((REPO / "docs" / "prometheus-alerts.yml").read_text())["groups"][0]["rules"]
        metrics = Metrics()
        for event in [*fallback_then_recovery(blob), *health_events(), *resume_events()]:
            metrics.observe(event)
        exported = {name for name, _labels in parse_registry(metrics)}
        named = {name for rule in rules for name in re.findall(r"ollama_gpu_\w+", rule["expr"])}
        assert named and named <= exported, named - exported
        assert all(rule.get("alert") and rule.get("expr") for rule in rules)
