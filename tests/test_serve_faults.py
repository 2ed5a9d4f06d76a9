"""Issue 14's Why list, end to end: each fault an operator met in front of `ollama-gpu serve`, reproduced with the
stand-in server or the Ollama simulator; every test here failed on main at 94353a3."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from launcher.status import read_status
from tests.cli_helpers import REPO
from tests.ollama_sim import native
from tests.serve_helpers import FAKE_SERVER, Serve, descendants, free_port, wait_for
from tests.test_metrics import parse, scrape, value
from tests.test_serve import args, serve_env
from tests.test_serve_sim import generate, install, sim_env

REAPER = REPO / "tests" / "programs" / "reaper.py"
SLOW_CC = """#!/bin/sh
# a compiler that, once the gate file exists, says so and waits for the release file before compiling
case " $* " in
  *" -o "*) if [ -e "$SLOW_CC_GATE" ]; then
              : > "$SLOW_CC_MARK"; i=0
              while [ ! -e "$SLOW_CC_RELEASE" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
            fi ;;
esac
exec cc "$@"
"""


@pytest.fixture(autouse=True)
def _no_leftovers() -> Iterator[None]:
    """Whatever a test started is killed afterwards, passed or failed (a failing run must not leave servers)."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    for proc in me.children(recursive=True):
        if proc.pid not in before:
            with contextlib.suppress(psutil.Error):
                proc.kill()


def run_dir_socket(tmp_path: Path, kind: str, port: int) -> Path:
    return tmp_path / "run" / f"{kind}-127.0.0.1-{port}.sock"


def events_named(serve: Serve, name: str) -> list[dict[str, object]]:
    return [e for e in serve.events() if e.get("event") == name]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class TestLostExitAndBlocking:
    def test_ollama_dying_during_a_reload_compile_is_restarted_and_status_answers_meanwhile(
            self, tmp_path: Path) -> None:
        """SIGHUP's prepare() compiles the shim again (cache emptied); while the compiler runs, status answers and
        Ollama is SIGKILLed. On main the loop sat in the compile, then missed the exit the compile's reap took:
        RUNNING with Ollama dead, forever."""
        cc = tmp_path / "slowcc"
        cc.write_text(SLOW_CC)
        cc.chmod(0o755)
        gate, mark, release = tmp_path / "gate", tmp_path / "compiling", tmp_path / "release"
        ollama_mark = tmp_path / "ollama.json"
        cache = tmp_path / "cache"
        port = free_port()
        env = serve_env(tmp_path, cache, port, CC=str(cc), SLOW_CC_GATE=str(gate), SLOW_CC_MARK=str(mark),
                        SLOW_CC_RELEASE=str(release), FAKE_MARK=str(ollama_mark))
        serve = Serve(args("--restart-backoff", "0.1"), env)
        serve.wait_event("ready", timeout=60)
        first = json.loads(ollama_mark.read_text())["pid"]
        for built in cache.rglob("*.so"):
            built.unlink()
        gate.touch()
        os.kill(serve.pid, signal.SIGHUP)
        wait_for(mark.exists, timeout=30, what="the reload's compiler running")
        status = read_status(run_dir_socket(tmp_path, "status", port), timeout=3.0)
        assert status is not None and status["ollama"]["pid"] == first  # the loop is not stuck in the compile
        ollama_mark.unlink()
        os.kill(first, signal.SIGKILL)
        time.sleep(0.3)  # the compile's own reaping runs meanwhile
        release.touch()
        wait_for(lambda: ollama_mark.exists() and ollama_mark.stat().st_size > 0, timeout=30,
                 what="a new Ollama after the one that died during the reload")
        assert json.loads(ollama_mark.read_text())["pid"] != first
        assert serve.stop() == 0


class TestTermDuringRestart:
    def test_term_mid_restart_starts_no_new_ollama(self, tmp_path: Path, cache_dir: Path) -> None:
        """A restart waits out the grace for an Ollama that ignores TERM; a TERM to us meanwhile stops everything.
        On main the restart held the loop, started a fresh Ollama, and only then handled the TERM."""
        serve = Serve(args("--stop-grace", "2"), serve_env(tmp_path, cache_dir, free_port(), FAKE_IGNORE_TERM="1"))
        serve.wait_event("ready")
        os.kill(serve.pid, signal.SIGHUP)
        serve.wait_event("restarting")
        os.kill(serve.pid, signal.SIGTERM)
        assert serve.wait(30) == 128 + signal.SIGKILL
        assert len(events_named(serve, "ollama_started")) == 1


class TestSecondInstance:
    def test_second_serve_exits_2_naming_the_first_and_leaves_it_alone(self, tmp_path: Path,
                                                                       cache_dir: Path) -> None:
        """A second `serve` on the same OLLAMA_HOST exits 2 at once with one line naming the running supervisor;
        the first one's status socket (same inode) keeps answering. On main the second replaced that socket and
        unlinked it on its way out, so `status --ready` failed while Ollama served."""
        port = free_port()
        env = serve_env(tmp_path, cache_dir, port)
        first = Serve(args(), env)
        first.wait_event("ready")
        sock = run_dir_socket(tmp_path, "status", port)
        wait_for(sock.exists, what="status socket")
        inode = sock.stat().st_ino
        started = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "launcher.cli", *args()], env=env, cwd=str(REPO),
                                capture_output=True, text=True, timeout=30, check=False)
        assert second.returncode == 2
        assert time.monotonic() - started < 10
        lines = [json.loads(line) for line in second.stderr.splitlines() if line.startswith("{")]
        assert [e["event"] for e in lines] == ["already_running"]
        assert lines[0]["pid"] == first.pid
        assert sock.stat().st_ino == inode
        status = read_status(sock)
        assert status is not None and status["ready"] is True
        assert first.stop() == 0


class TestSigkill:
    def _killed_tree_vanishes(self, serve: Serve) -> None:
        supervisor = psutil.Process(serve.pid).children()[0]  # serve runs under the reaper
        tree = [supervisor.pid, *(p.pid for p in descendants(supervisor.pid))]
        os.kill(supervisor.pid, signal.SIGKILL)
        deadline = time.monotonic() + 1.0
        left = tree
        while time.monotonic() < deadline:
            left = [pid for pid in tree if alive(pid)]
            if not left:
                break
            time.sleep(0.01)
        assert left == [], f"still alive 1 s after SIGKILL: {[psutil.Process(p).cmdline() for p in left]}"
        serve.wait(10)

    def test_no_process_left_after_sigkill(self, tmp_path: Path, cache_dir: Path) -> None:
        """SIGKILL of the supervisor: Ollama and its runner-like children are gone within 1 s (psutil). On main
        they lived on, and the next supervisor started Ollama into `address already in use`."""
        serve = Serve(["--", str(REAPER), sys.executable, "-m", "launcher.cli", *args()],
                      serve_env(tmp_path, cache_dir, free_port(), FAKE_CHILDREN="2"),
                      command=(sys.executable,))
        serve.wait_event("ready")
        wait_for(lambda: len([p for p in descendants(serve.pid) if "ollama-gpu-guardian" not in p.cmdline()]) >= 4,
                 what="supervisor, server and its 2 children")
        self._killed_tree_vanishes(serve)

    def test_no_simulated_runner_left_after_sigkill(self, tmp_path: Path, libs: native.NativeLibs,
                                                    cache_dir: Path) -> None:
        """The same with the simulator and a model runner loaded (runners have no parent-death signal)."""
        inst = install(tmp_path, "D", libs)
        port = free_port()
        serve = Serve(["--", str(REAPER), sys.executable, "-m", "launcher.cli", "--ollama", str(inst.ollama),
                       "serve"], sim_env(tmp_path, inst, libs, cache_dir, port), command=(sys.executable,))
        serve.wait_event("ready", timeout=60)
        generate(port)
        wait_for(lambda: any("--model" in " ".join(p.cmdline()) for p in descendants(serve.pid)),
                 what="model runner")
        self._killed_tree_vanishes(serve)


class TestPortTaken:
    def test_a_server_already_on_the_port_is_named_and_never_called_ready(self, tmp_path: Path,
                                                                          cache_dir: Path) -> None:
        """Something (a stale Ollama) already answers on OLLAMA_HOST: one line names its pid, and `ready` is never
        said for our child, which cannot listen. On main `ready` was logged, answered by the other server."""
        port = free_port()
        env = serve_env(tmp_path, cache_dir, port)
        stale = subprocess.Popen([sys.executable, str(FAKE_SERVER), "serve"], env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: _answers(port), what="the stale server")
            serve = Serve(args("--restart-max", "1", "--restart-backoff", "0.05"), env)
            assert serve.wait(60) == 5
            said = events_named(serve, "port_in_use")
            assert len(said) == 1 and said[0]["holder_pid"] == stale.pid
            assert events_named(serve, "ready") == []
        finally:
            stale.kill()
            stale.wait()


class TestForgedEvents:
    def test_a_stranger_on_the_event_socket_changes_no_verdict(self, tmp_path: Path, libs: native.NativeLibs,
                                                                cache_dir: Path) -> None:
        """A process that is not Ollama's (this test) connects to the event socket and claims to be a model runner
        whose CUDA failed. It is closed unread (foreign_peer) and status is unchanged; on main it became a phantom
        runner with a cpu_fallback verdict."""
        inst = install(tmp_path, "D", libs)
        port, metrics_port = free_port(), free_port()
        env = sim_env(tmp_path, inst, libs, cache_dir, port)
        env["OGPU_METRICS_ADDR"] = f"127.0.0.1:{metrics_port}"
        serve = Serve(["--ollama", str(inst.ollama), "serve"], env)
        serve.wait_event("ready", timeout=60)
        status_sock = run_dir_socket(tmp_path, "status", port)
        before = wait_for(lambda: read_status(status_sock), what="status")
        forged = [
            {"v": 1, "ev": "hello", "pid": os.getpid(), "seq": 1, "t_ns": 1, "exe": "/usr/bin/llama-server",
             "argv": ["llama-server", "--model", "/m.gguf", "--port", "1"], "ppid": 1},
            {"v": 1, "ev": "cu_init", "pid": os.getpid(), "seq": 2, "t_ns": 2, "result": 100},
        ]
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.connect(str(run_dir_socket(tmp_path, "events", port)))
            for message in forged:
                try:
                    sock.send(json.dumps(message).encode())
                except OSError:
                    break
        # Ollama's own short-lived processes may be refused too (unverified_peer: gone before their ancestry was
        # read), so the line to wait for is the one naming this process.
        rejected = serve.wait_event("shim_connection_rejected", pid=os.getpid())
        assert rejected["reason"] == "foreign_peer"
        time.sleep(0.3)  # a judgement turn (50 ms) would have taken anything that got through
        after = read_status(status_sock)
        assert after is not None
        assert [r["pid"] for r in after["runners"]] == [r["pid"] for r in before["runners"]]
        assert after["discovery"]["outcome"] == before["discovery"]["outcome"]
        # counted where the operator looks: the documented dropped_events{where="event_server"} series
        scraped = parse(scrape(metrics_port))
        assert value(scraped, "ollama_gpu_dropped_events_total", where="event_server",
                     reason="rejected_foreign_peer") == 1
        assert serve.stop() == 0


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
