"""Runner classification (from real Ollama argv) and the /proc audits, on a fake /proc and on real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.proctree import ProcFS, TreeWatcher, classify

SHARED = Path(__file__).resolve().parents[2] / "shared"
REAL = SHARED / "fixtures" / "ollama-real-cpu"


def real_trace() -> list[tuple[str, list[str]]]:
    """(exe, argv) of each process in the real Ollama 0.32.15 process trace."""
    rows = []
    for line in (REAL / "ld-preload.process-trace.txt").read_text().splitlines():
        if " | " not in line:
            continue
        head, argv = line.split(" | ", 1)
        rows.append((head.split()[2], argv.split()))
    return rows


class TestClassify:
    def test_real_generation_d_tree(self) -> None:
        """Every process of the real Ollama 0.32.15 tree gets the class its role implies."""
        classes = [classify(argv) for _exe, argv in real_trace()]
        assert classes == ["server", "discovery_runner", "discovery_runner", "gpu_discover", "quantize",
                           "model_runner"]

    @pytest.mark.parametrize(
        ("argv", "cls"),
        [
            ("/tmp/ollama1/runners/cuda_v12/ollama_llama_server --model /b --ctx-size 2048 --port 1", "model_runner"),
            ("/usr/bin/ollama runner --model /b --ctx-size 2048 --port 1", "model_runner"),
            ("/usr/bin/ollama runner --ollama-engine --model /b --port 1", "model_runner"),
            ("/usr/bin/ollama runner --ollama-engine --port 40211", "discovery_runner"),
            ("/usr/bin/ollama runner --mlx-engine --model m --port 1", "mlx_runner"),
            ("/usr/lib/ollama/llama-server --list-devices --offline --verbose", "discovery_runner"),
            ("/usr/bin/ollama gpu-discover --lib-dir /usr/lib/ollama --lib-dir /usr/lib/ollama/cuda_v13",
             "gpu_discover"),
            ("/bin/sh -c true", "other"),
            ("", "other"),
        ],
    )
    def test_generations(self, argv: str, cls: str) -> None:
        """Argv shapes of generations A-D, per the reference."""
        assert classify(argv.split()) == cls


def fake_proc(root: Path, pid: int, ppid: int, argv: list[str], env: dict[str, str], maps: list[str],
              start: int = 100) -> None:
    d = root / str(pid)
    (d / "task" / str(pid)).mkdir(parents=True)
    (d / "stat").write_text(f"{pid} (weird) name) S {ppid} " + " ".join(["0"] * 16) + f" {start} 0 0\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (d / "environ").write_bytes(b"\0".join(f"{k}={v}".encode() for k, v in env.items()) + b"\0")
    (d / "maps").write_text("".join(f"7f00-7f01 r-xp 0 08:01 1 {m}\n" for m in maps))
    (d / "task" / str(pid) / "children").write_text("")


def set_children(root: Path, pid: int, kids: list[int]) -> None:
    (root / str(pid) / "task" / str(pid) / "children").write_text(" ".join(map(str, kids)))


SHIM = "/cache/shim/libollama_gpu_shim.so"
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
SOCK = "/run/ollama-gpu/events.sock"


class TestWatcherFakeProc:
    def test_runner_env_ok_and_libs(self, tmp_path: Path) -> None:
        """A runner with the shim in env and maps is env-ok; its CUDA libraries are reported."""
        fake_proc(tmp_path, 1, 0, ["ollama-gpu"], {}, [])
        fake_proc(tmp_path, 10, 1, ["/opt/bin/ollama", "serve"], {}, [])
        fake_proc(tmp_path, 11, 10, ["/opt/lib/ollama/llama-server", "--model", "/b", "--port", "5"],
                  {"LD_PRELOAD": SHIM, "OGPU_EVENTS": SOCK},
                  [SHIM, LIBC, "/usr/lib/x86_64-linux-gnu/libcuda.so.580.1",
                   "/opt/lib/ollama/cuda_v13/libggml-cuda.so"])
        set_children(tmp_path, 1, [10])
        set_children(tmp_path, 10, [11])
        watcher = TreeWatcher(1, Path(SHIM), Path(SOCK), proc=ProcFS(tmp_path))
        events = watcher.scan()
        kinds = [(e.kind, e.pid) for e in events]
        assert ("process_started", 10) in kinds
        assert ("runner_started", 11) in kinds and ("runner_env_ok", 11) in kinds
        libs = next(e for e in events if e.kind == "runner_libs")
        assert set(libs.data["libs"]) == {"libcuda", "ggml_cuda"}
        assert watcher.scan() == []  # nothing changed

    def test_audit_waits_for_the_loader(self, tmp_path: Path) -> None:
        """Seen right after exec, before ld.so mapped the preloads: no verdict on the environment yet; once the
        libraries are mapped the runner is env-ok (no false `runner_env_missing`)."""
        fake_proc(tmp_path, 1, 0, ["ollama-gpu"], {}, [])
        fake_proc(tmp_path, 12, 1, ["/opt/lib/ollama/llama-server", "--list-devices"],
                  {"LD_PRELOAD": SHIM, "OGPU_EVENTS": SOCK}, ["/opt/lib/ollama/llama-server"])
        set_children(tmp_path, 1, [12])
        watcher = TreeWatcher(1, Path(SHIM), Path(SOCK), proc=ProcFS(tmp_path))
        assert [e.kind for e in watcher.scan()] == ["runner_started"]
        (tmp_path / "12" / "maps").write_text(f"7f00-7f01 r-xp 0 08:01 1 {SHIM}\n7f00-7f01 r-xp 0 08:01 1 {LIBC}\n")
        assert [e.kind for e in watcher.scan()] == ["runner_env_ok"]

    def test_runner_without_shim_is_env_missing_then_exit(self, tmp_path: Path) -> None:
        """A runner whose environ lacks the shim is an audit finding; its disappearance is runner_exited."""
        fake_proc(tmp_path, 1, 0, ["ollama-gpu"], {}, [])
        fake_proc(tmp_path, 20, 1, ["/usr/bin/ollama", "runner", "--model", "/b", "--port", "1"], {},
                  ["/usr/bin/ollama", LIBC])
        set_children(tmp_path, 1, [20])
        watcher = TreeWatcher(1, Path(SHIM), Path(SOCK), proc=ProcFS(tmp_path))
        missing = [e for e in watcher.scan() if e.kind == "runner_env_missing"]
        assert len(missing) == 1 and missing[0].data["shim_in_env"] is False
        set_children(tmp_path, 1, [])
        assert [e.kind for e in watcher.scan()] == ["runner_exited"]

    def test_a_zombie_is_not_audited(self, tmp_path: Path) -> None:
        """A short-lived runner seen after it exited but before Ollama reaped it reads an empty environ and no maps:
        that is no evidence of a missing shim (it caused a false `runner_env_missing` warning on healthy runs under
        load) and no change of its libraries."""
        fake_proc(tmp_path, 1, 0, ["ollama-gpu"], {}, [])
        fake_proc(tmp_path, 21, 1, ["/opt/lib/ollama/llama-server", "--list-devices"], {}, [])
        set_children(tmp_path, 1, [21])
        watcher = TreeWatcher(1, Path(SHIM), Path(SOCK), proc=ProcFS(tmp_path))
        assert [e.kind for e in watcher.scan()] == ["runner_started"]
        set_children(tmp_path, 1, [])
        assert [e.kind for e in watcher.scan()] == ["runner_exited"]

    def test_a_runner_that_becomes_a_zombie_keeps_its_libraries(self, tmp_path: Path) -> None:
        fake_proc(tmp_path, 1, 0, ["ollama-gpu"], {}, [])
        fake_proc(tmp_path, 22, 1, ["/opt/lib/ollama/llama-server", "--model", "/b"],
                  {"LD_PRELOAD": SHIM, "OGPU_EVENTS": SOCK}, [SHIM, LIBC, "/usr/lib/x86_64-linux-gnu/libcuda.so.1"])
        set_children(tmp_path, 1, [22])
        watcher = TreeWatcher(1, Path(SHIM), Path(SOCK), proc=ProcFS(tmp_path))
        assert {e.kind for e in watcher.scan()} == {"runner_started", "runner_env_ok", "runner_libs"}
        (tmp_path / "22" / "maps").write_text("")
        assert watcher.scan() == []

    def test_exec_reclassifies(self, tmp_path: Path) -> None:
        """Seen between fork and exec with Ollama's argv, the same (pid, start) is classified again after exec."""
        fake_proc(tmp_path, 1, 0, ["ollama-gpu"], {}, [])
        fake_proc(tmp_path, 30, 1, ["/usr/bin/ollama", "serve"], {}, [])
        set_children(tmp_path, 1, [30])
        watcher = TreeWatcher(1, None, None, proc=ProcFS(tmp_path))
        assert [e.data["cls"] for e in watcher.scan() if e.kind.endswith("started")] == ["server"]
        (tmp_path / "30" / "cmdline").write_bytes(b"/usr/lib/ollama/llama-server\0--list-devices\0")
        assert [e.data["cls"] for e in watcher.scan() if e.kind == "runner_started"] == ["discovery_runner"]

    def test_vanished_and_denied_are_normal(self, tmp_path: Path) -> None:
        """A child listed but already gone, or unreadable, is skipped without error."""
        fake_proc(tmp_path, 1, 0, ["ollama-gpu"], {}, [])
        set_children(tmp_path, 1, [40, 41])
        fake_proc(tmp_path, 41, 1, ["/usr/bin/ollama", "runner", "--model", "/b"], {}, [])
        (tmp_path / "41" / "environ").unlink()
        watcher = TreeWatcher(1, Path(SHIM), Path(SOCK), proc=ProcFS(tmp_path))
        events = watcher.scan()
        assert [e.kind for e in events] == ["runner_started"]  # environ vanished: audit skipped quietly


class TestWatcherRealProc:
    def test_real_children_and_env_audit(self, tmp_path: Path) -> None:
        """On the real /proc: a child runner named llama-server is found, classified and audited."""
        # A Python process whose argv[0] is llama-server: it lives until killed (sleep would reject --model).
        env = {**os.environ, "LD_PRELOAD": "", "OGPU_EVENTS": SOCK}
        proc = subprocess.Popen([str(tmp_path / "llama-server"), "-c", "import time; time.sleep(60)", "--model", "/x"],
                                env=env, executable=sys.executable)
        try:
            watcher = TreeWatcher(os.getpid(), Path(SHIM), Path(SOCK))
            deadline = time.monotonic() + 10
            events = []
            while time.monotonic() < deadline:
                events += watcher.scan()
                if any(e.kind == "runner_env_missing" and e.pid == proc.pid for e in events):
                    break
                time.sleep(0.02)
            started = [e for e in events if e.kind == "runner_started" and e.pid == proc.pid]
            assert started and started[0].data["cls"] == "model_runner"
            missing = [e for e in events if e.kind == "runner_env_missing" and e.pid == proc.pid]
            assert missing[0].data["events_var_ok"] is True and missing[0].data["shim_in_env"] is False
        finally:
            proc.kill()
            proc.wait()
