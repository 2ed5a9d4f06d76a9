"""The Ollama simulator (a test double): D matches the real 0.32.15 process tree, argv, env and log lines; B and C
spawn their runners; the GPU path and each physical fault print the real lines; stopping leaves no process."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.ollama_sim import gguf, native
from tests.ollama_sim.harness import SimServer, runner_of, trace_preload, wait_for
from tests.ollama_sim.install import Install, make_install

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL = SHARED / "fixtures" / "ollama-real-cpu"
REAL_PREFIX = "/opt/ollama-0.32.15"



@pytest.fixture
def install_d(tmp_path: Path, libs: native.NativeLibs) -> Install:
    """A gen D install with the fake CUDA backend in lib/ollama/cuda_v13 and the tiny model."""
    inst = make_install(tmp_path / "ollama", "D", cuda_backend=libs.ggml_cuda)
    inst.add_model("tiny")
    return inst


@pytest.fixture
def install_cpu(tmp_path: Path) -> Install:
    """A gen D install without any GPU library dir, like the real CPU-only build in the fixtures."""
    inst = make_install(tmp_path / "ollama", "D")
    inst.add_model("tiny")
    return inst


def _processes_fixture() -> dict[str, tuple[str, list[str], dict[str, str]]]:
    """role -> (exe, argv, environ) from cpu-basic.processes.txt."""
    out: dict[str, tuple[str, list[str], dict[str, str]]] = {}
    for block in (REAL / "cpu-basic.processes.txt").read_text().split("=== pid ")[1:]:
        head, rest = block.split("\n", 1)
        argv_part, env_part = rest.split("--- environ:\n")
        argv = argv_part.replace("--- argv:\n", "").split("\n")[:-1]
        env = dict(line.split("=", 1) for line in env_part.splitlines() if "=" in line)
        role = "server" if argv[-1] == "serve" else "runner"
        out[role] = (head.split("exe=")[1], argv, env)
    return out


def _mask_argv(argv: list[str], prefix: str, models: str) -> list[str]:
    masked = []
    for tok in argv:
        tok = tok.replace(models, "MODELS").replace(prefix, "PREFIX")
        masked.append(re.sub(r"sha256-[0-9a-f]{64}", "sha256-HEX", re.sub(r"^\d{4,5}$", "PORT", tok)))
    return masked


class TestGenerationDProcesses:
    def test_server_and_model_runner_match_the_real_process_listing(self, install_cpu: Install) -> None:
        """Same exe, argv token for token (paths, port, digest masked) and the same env additions as Ollama 0.32.15."""
        real = _processes_fixture()
        with SimServer(install_cpu) as srv:
            assert srv.generate(options={"num_ctx": 512})[0] == 200
            runner = runner_of(srv, "--model")
            server = psutil.Process(srv.proc.pid)  # type: ignore[union-attr]
            models = str(install_cpu.prefix / "models")
            prefix = str(install_cpu.prefix)
            assert server.exe() == str(install_cpu.ollama)
            assert server.cmdline() == [str(install_cpu.ollama), "serve"]
            assert real["server"][0].replace(REAL_PREFIX, prefix) == server.exe()
            assert runner.exe() == real["runner"][0].replace(REAL_PREFIX, prefix)
            real_models = real["runner"][2]["OLLAMA_MODELS"]
            assert _mask_argv(runner.cmdline(), prefix, models) == _mask_argv(real["runner"][1], REAL_PREFIX,
                                                                              real_models)
            added_real = set(real["runner"][2]) - set(real["server"][2])
            added_sim = set(runner.environ()) - set(server.environ())
            assert added_sim == added_real == {"LD_LIBRARY_PATH", "LLAMA_MEDIA_MARKER"}
            assert runner.environ()["LD_LIBRARY_PATH"] == str(install_cpu.libdir)
            assert re.fullmatch(r"<__ollama_media_[0-9a-f]{32}__>", runner.environ()["LLAMA_MEDIA_MARKER"])
            assert runner.ppid() == server.pid and os.getpgid(runner.pid) == os.getpgid(server.pid)

    def test_every_child_inherits_ld_preload_like_the_real_trace(self, install_cpu: Install) -> None:
        """The LD_PRELOAD trace lists the same processes, parents and argv shapes as ld-preload.process-trace.txt."""
        trace = install_cpu.prefix / "trace.txt"
        env = {"LD_PRELOAD": str(trace_preload()), "SIM_TRACE_FILE": str(trace)}
        with SimServer(install_cpu, env) as srv:
            assert srv.generate()[0] == 200
            server_pid = srv.proc.pid  # type: ignore[union-attr]

        def shapes(text: str, prefix: str, server: str) -> list[tuple[bool, str, str]]:
            rows = []
            for line in text.splitlines():
                ids, _, argv = line.partition(" | ")
                pid, ppid, exe = ids.split(" ", 2)
                argv = re.sub(r"(--port|-c) \d+", r"\1 N", argv.replace(prefix, "P"))
                argv = re.sub(r"\S*/models/blobs/sha256-\w+", "BLOB", argv)
                rows.append((pid == server, exe.replace(prefix, "P"), argv if ppid == server or pid == server
                             else "not a child"))
            return rows

        real_text = (REAL / "ld-preload.process-trace.txt").read_text()
        real_server = real_text.split()[0]
        real = [r for r in shapes(real_text, REAL_PREFIX, real_server) if "llama-quantize" not in r[1]]
        sim = shapes(trace.read_text(), str(install_cpu.prefix), str(server_pid))
        assert sim == real


def _mask(line: str) -> str:
    line = re.sub(r"^time=\S+", "time=T", line)
    line = re.sub(r"^\[GIN\] [\d/]+ - [\d:]+ \|\s+(\d+) \|\s+\S+ \|\s+\S+ \|", r"[GIN] \1 |", line)
    line = re.sub(r"/\S*/(models|lib/ollama)/\S*", r"/\1/PATH", line)
    line = re.sub(r"'/\S*'", "'PATH'", line)
    line = re.sub(r"sha256-[0-9a-f]{64}", "BLOB", line)
    line = re.sub(r"http://[\d.]+:\d+", "http://ADDR", line)
    # The CPU's model name is the host's (the simulator prints this machine's, like llama.cpp does).
    line = re.sub(r"(- CPU\s+: ).*?( \(\d+ MiB)", r"\1CPUNAME\2", line)
    line = re.sub(r"\d+(\.\d+)?", "N", line)
    return re.sub(r" {2,}", " ", line)


def _slog_shape(line: str) -> tuple[str, ...] | None:
    m = re.match(r"time=\S+ level=(\w+) source=(\S+) msg=(\"(?:[^\"\\]|\\.)*\"|\S+)(.*)$", line)
    if not m:
        return None
    keys = tuple(re.findall(r" ([\w.]+)=", re.sub(r"\"(?:[^\"\\]|\\.)*\"", "\"\"", m[4])))
    return (m[1], m[2], re.sub(r"\d+(\.\d+)?", "N", m[3]), *keys)


REAL_LOGS = sorted(REAL.glob("*.server.log"))
STORY = ("discovering available GPUs...", "inference compute", "vram-based default context",
         "disabling mmap for llama-server load by default", "using llama-server for model", "starting llama-server",
         "system memory", "loading model via llama-server", "waiting for llama-server to start responding",
         "waiting for llama-server to become available", "llama-server started in", "loaded runners")


class TestGenerationDLogs:
    @pytest.fixture
    def cpu_log(self, install_cpu: Install) -> str:
        with SimServer(install_cpu, {"OLLAMA_DEBUG": "1"}) as srv:
            assert srv.generate(options={"num_ctx": 512})[0] == 200
            assert srv.get("/api/ps")[0] == 200
            srv.stop()
            return srv.log()

    def test_every_server_line_has_the_shape_of_a_real_line(self, cpu_log: str) -> None:
        """Each slog line (level, source, msg, keys) and each Gin line occurs in the real 0.32.15 logs."""
        real_lines = [x for p in REAL_LOGS for x in p.read_text(errors="replace").splitlines()]
        real_shapes = {_slog_shape(x) for x in real_lines} - {None}
        real_gin = {_mask(x) for x in real_lines if x.startswith("[GIN]")}
        sim = cpu_log.splitlines()
        slog_lines = [x for x in sim if x.startswith("time=")]
        assert len(slog_lines) > 15
        for line in slog_lines:
            assert _slog_shape(line) in real_shapes, line
        for line in (x for x in sim if x.startswith("[GIN]")):
            assert _mask(line) in real_gin, line

    def test_every_runner_line_occurs_in_the_real_runner_output(self, cpu_log: str) -> None:
        """The llama-server lines the simulator prints are real lines (numbers, paths and alignment masked)."""
        real = {_mask(x) for p in REAL_LOGS for x in p.read_text(errors="replace").splitlines()}
        runner_lines = [x for x in cpu_log.splitlines() if x and not x.startswith(("time=", "[GIN]"))]
        assert len(runner_lines) > 20
        missing = [x for x in runner_lines if _mask(x) not in real]
        assert missing == []

    def test_the_gpu_story_lines_come_in_the_real_order(self, cpu_log: str) -> None:
        """Discovery, inference compute, context, load and start lines appear in the same order as in cpu-basic."""
        def order(text: str) -> list[str]:
            msgs = [m for x in text.splitlines() for m in STORY if f'msg="{m}' in x or f"msg={m}" in x]
            return list(dict.fromkeys(msgs))
        assert order(cpu_log) == order((REAL / "cpu-basic.server.log").read_text(errors="replace")) == list(STORY)

    def test_the_log_parser_reads_simulated_and_real_logs_alike(self, cpu_log: str) -> None:
        """launcher.ollama_logs turns the simulated log into the same kinds of events as the real one."""
        from launcher.ollama_logs import parse_text

        def kinds(text: str) -> set[str]:
            return {e.kind for e in parse_text(text)}
        real = kinds((REAL / "cpu-debug.server.log").read_text(errors="replace"))
        # backend_loaded comes from llama-quantize's output during `ollama create`, which the simulator has not.
        assert kinds(cpu_log) == real - {"backend_loaded"}


class TestApi:
    def test_version_ps_and_generate(self, install_cpu: Install) -> None:
        """/api/version, /api/generate (one JSON and a stream) and /api/ps answer as Ollama's do."""
        with SimServer(install_cpu) as srv:
            assert srv.get("/api/version") == (200, {"version": "0.32.15"})
            assert srv.get("/api/ps") == (200, {"models": []})
            code, body = srv.generate(options={"num_predict": 5})
            assert code == 200 and body["done"] is True and len(body["response"].split()) == 5
            code, chunks = srv.generate(stream=True, options={"num_predict": 3})
            assert code == 200 and [c["done"] for c in chunks] == [False, False, False, True]
            (model,) = srv.get("/api/ps")[1]["models"]
            assert model["name"] == "tiny:latest" and model["size_vram"] == 0 and model["size"] > 0
            assert srv.generate(model="missing")[0] == 404


class TestGpuAndFaults:
    def test_gpu_path_offloads_every_layer(self, install_d: Install, libs: native.NativeLibs) -> None:
        """Mock driver with one device on the path: discovery finds it, the runner loads CUDA and offloads 3/3."""
        with SimServer(install_d, {"LD_LIBRARY_PATH": str(libs.driver_dir)}) as srv:
            assert srv.generate()[0] == 200
            runner = runner_of(srv, "--model")
            env = runner.environ()
            assert env["GGML_BACKEND_PATH"] == str(install_d.cuda_backend)
            assert env["CUDA_VISIBLE_DEVICES"] == "0"
            assert env["LD_LIBRARY_PATH"] == f"{install_d.libdir}:{install_d.cuda_dir}:{libs.driver_dir}"
            maps = Path(f"/proc/{runner.pid}/maps").read_text()
            assert str(install_d.cuda_backend) in maps and str(libs.driver_dir / "libcuda.so.1") in maps
            model = srv.get("/api/ps")[1]["models"][0]
            assert model["size_vram"] > 0
            log = srv.log()
        for expected in ('msg="inference compute" id=0 filter_id=0 library=CUDA compute=9.0',
                         "ggml_cuda_init: found 1 CUDA devices (Total VRAM: 81079 MiB):",
                         f"load_backend: loaded CUDA backend from {install_d.cuda_backend}",
                         "llama_prepare_model_devices: using device CUDA0 (NVIDIA H100 80GB HBM3)",
                         "load_tensors: offloaded 3/3 layers to GPU", "CUDA0 model buffer size"):
            assert expected in log

    @pytest.mark.parametrize(("fault", "expected"), [
        ("driver_off_path", "load_backend: failed to load {backend}: libcuda.so.1: cannot open shared object file"),
        ("stub_driver", "ggml_cuda_init: failed to initialize CUDA: CUDA driver is a stub library"),
        ("device_filter", "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected"),
        ("driver_lacks_symbol", "load_backend: failed to load {backend}: {backend}: undefined symbol: "
                                "cuMemAddressReserve"),
        ("backend_missing", 'msg="inference compute" id=cpu library=cpu'),
    ])
    def test_physical_fault_gives_the_real_fallback_lines(self, install_d: Install, libs: native.NativeLibs,
                                                          fault: str, expected: str) -> None:
        """Each fault is made physically; discovery and the runner print what GGML/Ollama print, and run on CPU."""
        env = {"OLLAMA_DEBUG": "2", "LD_LIBRARY_PATH": str(libs.driver_dir)}
        if fault == "driver_off_path":
            env.pop("LD_LIBRARY_PATH")
        elif fault == "stub_driver":
            env["MOCKCUDA_STUB"] = "1"
        elif fault == "device_filter":
            env["CUDA_VISIBLE_DEVICES"] = "-1"
        elif fault == "driver_lacks_symbol":
            env["LD_LIBRARY_PATH"] = str(libs.no_va_driver_dir)
        elif fault == "backend_missing":
            install_d.cuda_backend.unlink()
        with SimServer(install_d, env) as srv:
            assert srv.generate()[0] == 200
            runner = runner_of(srv, "--model")
            assert "GGML_BACKEND_PATH" not in runner.environ()
            assert srv.get("/api/ps")[1]["models"][0]["size_vram"] == 0
            log = srv.log()
        assert expected.format(backend=install_d.cuda_backend) in log
        assert 'msg="inference compute" id=cpu library=cpu' in log
        assert "offloaded" not in log
        if fault == "device_filter":
            assert 'msg="user overrode visible devices" CUDA_VISIBLE_DEVICES=-1' in log


class TestRunnerCrash:
    @pytest.mark.parametrize(("data", "status"), [
        (b"NOTGGUF" + bytes(64), "llama-server process has terminated: exit status 1"),
        (None, "llama-server process has terminated: signal: aborted"),
    ])
    def test_a_broken_model_kills_the_runner(self, install_cpu: Install, tmp_path: Path, data: bytes | None,
                                             status: str) -> None:
        """A non-GGUF blob makes the runner exit 1, an impossible shape makes it abort; the API returns 500."""
        if data is None:
            data = gguf.tiny_llama(tmp_path / "bad.gguf", n_embd=65, n_head=4, size_mib=0.1).read_bytes()
        install_cpu.add_model("broken", data)
        with SimServer(install_cpu) as srv:
            code, body = srv.generate(model="broken")
            assert code == 500 and body["error"].startswith(status)
            assert f'msg="error loading llama server" error="{status}' in srv.log()

    def test_a_killed_runner_is_noticed_and_replaced(self, install_cpu: Install) -> None:
        """SIGKILL of the runner logs the real WARN; the next request starts a new runner."""
        with SimServer(install_cpu) as srv:
            assert srv.generate()[0] == 200
            first = runner_of(srv, "--model")
            first.kill()
            wait_for(lambda: "llama-server process no longer running" in srv.log(), what="the WARN line")
            assert 'sys=9 string="signal: killed"' in srv.log()
            assert srv.generate()[0] == 200
            assert runner_of(srv, "--model").pid != first.pid


@pytest.fixture(params=["B", "C"])
def install_bc(request: pytest.FixtureRequest, tmp_path: Path, libs: native.NativeLibs) -> Iterator[Install]:
    """A gen B or C install with the fake CUDA backend in its cuda dir."""
    inst = make_install(tmp_path / "ollama", request.param, cuda_backend=libs.ggml_cuda)
    inst.add_model("tiny")
    yield inst


class TestGenerationsBC:
    def test_runner_is_ollama_itself_with_the_generation_env(self, install_bc: Install,
                                                             libs: native.NativeLibs) -> None:
        """B and C start `<exe> runner ... --model`, rewrite the env per their rules and load CUDA on the GPU."""
        gen = install_bc.generation
        with SimServer(install_bc, {"LD_LIBRARY_PATH": str(libs.driver_dir)}) as srv:
            assert srv.generate()[0] == 200
            runner = runner_of(srv, "--model")
            argv, env, exe = runner.cmdline(), runner.environ(), runner.exe()
            log = srv.log()
        lib, cuda_dir = str(install_bc.libdir), str(install_bc.cuda_dir)
        assert argv[:2] == [str(install_bc.ollama), "runner"]
        assert exe == str(install_bc.ollama)
        assert env["OLLAMA_LIBRARY_PATH"] == f"{lib}:{cuda_dir}"
        assert f"load_backend: loaded CUDA backend from {install_bc.cuda_backend}" in log
        assert "ggml_cuda_init: found 1 CUDA devices:" in log
        if gen == "B":
            assert "--n-gpu-layers" in argv and "--ollama-engine" not in argv
            assert env["LD_LIBRARY_PATH"] == f"{cuda_dir}:{cuda_dir}:{lib}:{libs.driver_dir}:{lib}"
            assert env["CUDA_VISIBLE_DEVICES"].startswith("GPU-")
            assert 'library=cuda variant=v12 compute=9.0 driver=13.0 name="NVIDIA H100 80GB HBM3"' in log
            assert "load_tensors: offloaded 3/3 layers to GPU" in log
            assert 'msg="starting llama server"' in log
        else:
            assert argv[2:4] == ["--ollama-engine", "--model"]
            assert env["LD_LIBRARY_PATH"] == f"{lib}:{cuda_dir}:{libs.driver_dir}"
            assert "CUDA_VISIBLE_DEVICES" not in env
            assert re.search(r'msg="starting runner" cmd="\S+/bin/ollama runner --ollama-engine --port \d+"', log)
            assert "libdirs=ollama,cuda_v13" in log and 'msg="offloaded 3/3 layers to GPU"' in log
            assert 'msg="model weights" device=CUDA0' in log

    def test_without_a_driver_the_runner_stays_on_cpu(self, install_bc: Install) -> None:
        """No libcuda on the path: B's in-process discovery and C's bootstrap runners find no GPU."""
        with SimServer(install_bc) as srv:
            assert srv.generate()[0] == 200
            env = runner_of(srv, "--model").environ()
            log = srv.log()
        assert "CUDA_VISIBLE_DEVICES" not in env
        assert "library=cpu" in log and "offloaded 3/3" not in log
        if install_bc.generation == "B":
            assert 'msg="no compatible GPUs were discovered"' in log


class TestShutdown:
    def test_sigterm_kills_the_runners_and_exits_zero(self, install_cpu: Install) -> None:
        """A clean stop leaves no process behind (Ollama unloads and kills its runners)."""
        with SimServer(install_cpu) as srv:
            assert srv.generate()[0] == 200
            runner = runner_of(srv, "--model")
            assert srv.stop(signal.SIGTERM) == 0
            assert not psutil.pid_exists(runner.pid) or runner.status() == psutil.STATUS_ZOMBIE

    def test_sigkill_of_the_server_orphans_the_runner(self, install_cpu: Install) -> None:
        """Runners have no parent-death signal: after SIGKILL of the server the runner lives on, re-parented."""
        with SimServer(install_cpu) as srv:
            assert srv.generate()[0] == 200
            runner = runner_of(srv, "--model")
            assert srv.stop(signal.SIGKILL) == -signal.SIGKILL
            assert runner.is_running() and runner.ppid() != srv.proc.pid  # type: ignore[union-attr]
            runner.kill()
            runner.wait(10)


class TestScript:
    def test_the_ollama_script_execs_the_install(self, install_cpu: Install) -> None:
        """tests/ollama_sim/ollama (what OGPU_OLLAMA names) runs the install's bin/ollama with the same arguments."""
        import subprocess

        script = Path(__file__).resolve().parent / "ollama_sim" / "ollama"
        env = {**install_cpu.env(), "OLLAMA_SIM_PREFIX": str(install_cpu.prefix)}
        out = subprocess.run([str(script), "--version"], env=env, capture_output=True, text=True, check=True)
        assert out.stdout == "ollama version is 0.32.15\n"
