"""`ollama-gpu serve` against the Ollama simulator (generations B, C, D) with the mock CUDA driver and the shim:
every runner is audited with the shim present and mapped, shim events from each runner reach the board, and
stopping (SIGTERM, Ctrl-C) leaves no process behind."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pexpect
import psutil
import pytest

from launcher.events import Event, Replay
from launcher.proctree import RUNNER_CLASSES
from tests.cli_helpers import REPO, clean_env
from tests.ollama_sim import native
from tests.ollama_sim.install import Install, make_install
from tests.serve_helpers import Serve, descendants, free_port, wait_for


def install(tmp_path: Path, generation: str, libs: native.NativeLibs) -> Install:
    inst = make_install(tmp_path / "ollama", generation, cuda_backend=libs.ggml_cuda)
    inst.add_model("tiny")
    return inst


def sim_env(tmp_path: Path, inst: Install, libs: native.NativeLibs, cache_dir: Path, port: int) -> dict[str, str]:
    env = clean_env(tmp_path, {"CACHE_DIRECTORY": str(cache_dir), "RUNTIME_DIRECTORY": str(tmp_path / "run"),
                               "STATE_DIRECTORY": str(tmp_path / "state"), "OGPU_LOG_FORMAT": "json",
                               "OGPU_RECORD": str(tmp_path / "events.jsonl")})
    env.update(inst.env(OLLAMA_HOST=f"127.0.0.1:{port}", LD_LIBRARY_PATH=str(libs.driver_dir)))
    for key in [k for k in env if k.startswith("OGPU_") and k not in ("OGPU_LOG_FORMAT", "OGPU_RECORD",
                                                                      "OGPU_SYSTEM_CONFIG")]:
        del env[key]
    return env


def generate(port: int) -> dict[str, object]:
    """A non-streaming /api/generate that loads the model (no proxy)."""
    body = json.dumps({"model": "tiny", "prompt": "hello", "stream": False}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/generate", data=body,
                                     headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=60) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def recorded(path: Path) -> list[Event]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as stream:
        return list(Replay(stream))


@pytest.mark.parametrize("generation", ["B", "C", "D"])
def test_runners_audited_and_shim_events_on_the_board(tmp_path: Path, libs: native.NativeLibs, cache_dir: Path,
                                                      generation: str) -> None:
    """Each generation: the model runner has the shim in its environ and maps, its shim events arrive, and a
    SIGTERM leaves nothing behind (exit 0)."""
    inst = install(tmp_path, generation, libs)
    port = free_port()
    record = tmp_path / "events.jsonl"
    serve = Serve(["--ollama", str(inst.ollama), "serve"], sim_env(tmp_path, inst, libs, cache_dir, port))
    serve.wait_event("ready", timeout=60)
    assert generate(port).get("done") is True

    def model_runner_seen() -> list[Event]:
        events = recorded(record)
        runners = {e.pid for e in events if e.kind == "runner_started" and e.data.get("cls") == "model_runner"}
        hellos = {e.pid for e in events if e.source == "shim" and e.kind == "hello"}
        ok = {e.pid for e in events if e.kind == "runner_env_ok"}
        return events if runners and runners <= ok and runners <= hellos else []

    events: list[Event] = wait_for(model_runner_seen, timeout=30, what="model runner audited with shim events")
    pids = [p.pid for p in descendants(serve.pid)]
    assert serve.stop() == 0
    assert not [p for p in pids if psutil.pid_exists(p)]

    missing = [e for e in events if e.kind == "runner_env_missing"]
    assert missing == [], f"runners without the shim: {missing}"
    audited = {e.pid for e in events if e.kind == "runner_env_ok"}
    assert all(e.data["shim_mapped"] and e.data["shim_in_env"] for e in events if e.kind == "runner_env_ok")
    hellos = {e.pid for e in events if e.source == "shim" and e.kind == "hello"}
    runners = {e.pid for e in events if e.kind == "runner_started" and e.data.get("cls") in RUNNER_CLASSES}
    # Every runner we saw was audited or reported itself over the shim (short-lived probes may end before a scan).
    assert runners <= audited | hellos
    model_pids = {e.pid for e in events if e.kind == "runner_started" and e.data.get("cls") == "model_runner"}
    shim_kinds = {e.kind for e in events if e.source == "shim" and e.pid in model_pids}
    assert {"hello", "dlopen", "cu_init"} <= shim_kinds, shim_kinds
    cu_init = [e for e in events if e.source == "shim" and e.kind == "cu_init" and e.pid in model_pids]
    assert cu_init and cu_init[0].data["result"] == 0
    # Ollama's own log lines were parsed into the same stream.
    assert any(e.source == "log" for e in events)


def test_ctrl_c_leaves_no_process(tmp_path: Path, libs: native.NativeLibs, cache_dir: Path) -> None:
    """Ctrl-C on a terminal with a model loaded: exit 0 and no Ollama or runner process left (psutil)."""
    inst = install(tmp_path, "D", libs)
    port = free_port()
    env = sim_env(tmp_path, inst, libs, cache_dir, port)
    env.update(OGPU_LOG_FORMAT="console", NO_COLOR="1")
    child = pexpect.spawn(sys.executable, ["-m", "launcher.cli", "--ollama", str(inst.ollama), "serve"], env=env,
                          cwd=str(REPO), encoding="utf-8", timeout=60)
    child.expect("ready")
    generate(port)
    pids = wait_for(lambda: [p.pid for p in descendants(child.pid)
                             if "--model" in " ".join(p.cmdline())] and [p.pid for p in descendants(child.pid)],
                    what="model runner")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert not [p for p in pids if psutil.pid_exists(p)]  # type: ignore[union-attr]
