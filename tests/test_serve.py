"""`ollama-gpu serve` end to end, on the supervisor's generic mechanics (a stand-in server, not Ollama).

Runners, generations and the shim are covered against the Ollama simulator in tests/test_serve_sim.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pexpect
import psutil
import pytest

from tests.cli_helpers import REPO, clean_env
from tests.serve_helpers import FAKE_SERVER, Serve, as_nobody, command_for_nobody, descendants, free_port, wait_for


def serve_env(tmp_path: Path, cache_dir: Path, port: int, **extra: str) -> dict[str, str]:
    return clean_env(tmp_path, {"OLLAMA_HOST": f"127.0.0.1:{port}", "CACHE_DIRECTORY": str(cache_dir),
                                "RUNTIME_DIRECTORY": str(tmp_path / "run"), "STATE_DIRECTORY": str(tmp_path / "st"),
                                "OGPU_LOG_FORMAT": "json", **extra})


def args(*extra: str) -> list[str]:
    return ["--ollama", str(FAKE_SERVER), *extra, "serve"]


def answers(port: int, host: str = "127.0.0.1") -> bool:
    """/api/version answers 200 (no proxy)."""
    try:
        url = f"http://[{host}]:{port}/api/version" if ":" in host else f"http://{host}:{port}/api/version"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def gone(pids: list[int]) -> bool:
    return not [p for p in pids if psutil.pid_exists(p)]


class TestLifecycle:
    def test_sigterm_stops_everything(self, tmp_path: Path, cache_dir: Path) -> None:
        """SIGTERM: Ollama and its runner-like children are gone (psutil), exit 0, `stopped` logged."""
        serve = Serve(args(), serve_env(tmp_path, cache_dir, free_port(), FAKE_CHILDREN="2"))
        serve.wait_event("ready")
        tree = wait_for(lambda: len(descendants(serve.pid)) >= 3 and descendants(serve.pid), what="children")
        pids = [p.pid for p in tree]  # type: ignore[union-attr]
        assert serve.stop() == 0
        assert gone(pids)
        assert any(e["event"] == "stopped" for e in serve.events())

    def test_kill_after_grace(self, tmp_path: Path, cache_dir: Path) -> None:
        """A server that ignores TERM is killed with its group after the grace period: exit 137."""
        serve = Serve(args("--stop-grace", "0.3"),
                      serve_env(tmp_path, cache_dir, free_port(), FAKE_IGNORE_TERM="1", FAKE_CHILDREN="1"))
        serve.wait_event("ready")
        pids = [p.pid for p in wait_for(lambda: len(descendants(serve.pid)) >= 2 and descendants(serve.pid),
                                        what="children")]  # type: ignore[union-attr]
        assert serve.stop() == 128 + signal.SIGKILL
        assert gone(pids)
        assert any(e.get("killed_after_grace") is True for e in serve.events())

    def test_ctrl_c_on_a_terminal(self, tmp_path: Path, cache_dir: Path) -> None:
        """Ctrl-C in a terminal (pexpect) stops Ollama cleanly and leaves nothing behind."""
        env = serve_env(tmp_path, cache_dir, free_port(), FAKE_CHILDREN="1", OGPU_LOG_FORMAT="console",
                        NO_COLOR="1")
        child = pexpect.spawn(sys.executable, ["-m", "launcher.cli", *args()], env=env, cwd=str(REPO),
                              encoding="utf-8", timeout=30)
        child.expect("ready")
        pids = [p.pid for p in descendants(child.pid)]
        assert pids
        child.sendintr()
        child.expect("stopped")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert gone(pids)

    def test_sigkill_of_server_kills_orphans_and_restarts(self, tmp_path: Path, cache_dir: Path) -> None:
        """SIGKILL of the server: its orphaned children are killed and reaped, then Ollama is restarted."""
        mark = tmp_path / "mark.json"
        serve = Serve(args("--restart-backoff", "0.1"),
                      serve_env(tmp_path, cache_dir, free_port(), FAKE_CHILDREN="2", FAKE_MARK=str(mark)))
        serve.wait_event("ready")
        first = json.loads(mark.read_text())["pid"]
        orphans = wait_for(lambda: len(psutil.Process(first).children()) == 2 and psutil.Process(first).children(),
                           what="two children")
        orphan_pids = [p.pid for p in orphans]  # type: ignore[union-attr]
        mark.unlink()
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: mark.exists() and mark.stat().st_size > 0, what="restarted server")
        assert json.loads(mark.read_text())["pid"] != first
        wait_for(lambda: gone(orphan_pids), what="orphans gone")
        assert serve.stop() == 0
        events = [e["event"] for e in serve.events()]
        assert "restart_scheduled" in events and "killed_process_group" in events

    def test_missing_binary(self, tmp_path: Path, cache_dir: Path) -> None:
        """An Ollama binary that does not exist: one error line naming the fix, exit 127."""
        serve = Serve(["--ollama", "/nonexistent/ollama", "serve"], serve_env(tmp_path, cache_dir, free_port()))
        assert serve.wait() == 127
        errors = [e for e in serve.events() if e["event"] == "ollama_not_started"]
        assert errors and "OGPU_OLLAMA" in str(errors[0]["hint"])

    def test_failed_compiler_reported_as_failed(self, tmp_path: Path) -> None:
        """A failing cc inside the supervisor is reported as failed (its status is not lost), and Ollama still
        starts without the shim."""
        cc = tmp_path / "failing-cc"
        cc.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "failing-cc 1.0"; exit 0; }\n'
                      'echo "failing-cc: error: no" >&2; exit 1\n')
        cc.chmod(0o755)
        env = serve_env(tmp_path, tmp_path / "fresh-cache", free_port(), CC=str(cc))
        serve = Serve(args(), env)
        problem = serve.wait_event("shim_unavailable")
        assert "exited 1" in str(problem["problem"])
        serve.wait_event("ready")
        assert serve.stop() == 0


class TestReload:
    def test_hup_reloads_and_restarts_only_when_idle(self, tmp_path: Path, cache_dir: Path) -> None:
        """SIGHUP reads the files again; the restart waits until no model runner is alive, then applies them."""
        env_file = tmp_path / "o.env"
        env_file.write_text("OLLAMA_KEEP_ALIVE=1m\n")
        mark, unload = tmp_path / "mark.json", tmp_path / "unload"
        serve = Serve(["--env-file", str(env_file), *args()],
                      serve_env(tmp_path, cache_dir, free_port(), FAKE_MARK=str(mark), FAKE_MODEL_RUNNER="1",
                                FAKE_UNLOAD=str(unload)))
        serve.wait_event("ready")
        first = json.loads(mark.read_text())
        assert first["env"]["OLLAMA_KEEP_ALIVE"] == "1m"
        wait_for(lambda: any(p.name() == "llama-server" or "llama-server" in " ".join(p.cmdline())
                             for p in descendants(serve.pid)), what="model runner")
        env_file.write_text("OLLAMA_KEEP_ALIVE=2m\n")
        mark.unlink()
        os.kill(serve.pid, signal.SIGHUP)
        serve.wait_event("restart_deferred")
        assert not mark.exists()  # a model is loaded: no restart under its feet
        unload.touch()
        wait_for(lambda: mark.exists() and mark.stat().st_size > 0, what="restart after unload")
        second = json.loads(mark.read_text())
        assert second["pid"] != first["pid"]
        assert second["env"]["OLLAMA_KEEP_ALIVE"] == "2m"
        assert serve.stop() == 0

    def test_bad_config_on_hup_keeps_running(self, tmp_path: Path, cache_dir: Path) -> None:
        """A reload that fails validation is reported and the running Ollama is left alone."""
        env_file = tmp_path / "o.env"
        env_file.write_text("OGPU_STOP_GRACE=5\n")
        mark = tmp_path / "mark.json"
        serve = Serve(["--env-file", str(env_file), *args()],
                      serve_env(tmp_path, cache_dir, free_port(), FAKE_MARK=str(mark)))
        serve.wait_event("ready")
        pid = json.loads(mark.read_text())["pid"]
        env_file.write_text("OGPU_STOP_GRACE=soon\n")
        os.kill(serve.pid, signal.SIGHUP)
        failed = serve.wait_event("reload_failed")
        assert "OGPU_STOP_GRACE" in str(failed["error"])
        assert psutil.pid_exists(pid)
        assert serve.stop() == 0


class TestOutput:
    def test_64_mb_forwarded_identically(self, tmp_path: Path, cache_dir: Path) -> None:
        """64 MiB (64 times the pipe) of every byte value pass through unchanged (hash compared); the speed is
        `python -m benchmarks.supervisor`'s to measure, not this test's."""
        out_path = tmp_path / "stdout.bin"
        with open(out_path, "wb") as out:
            serve = Serve(args(), serve_env(tmp_path, cache_dir, free_port(), FAKE_OUTPUT_MB="64"),
                          stdout=out.fileno())
            wait_for(lambda: "sha256=" in serve.err, timeout=120, what="hash line")
            assert serve.stop() == 0
        expected = next(line.split("=", 1)[1] for line in serve.err.splitlines() if line.startswith("sha256="))
        digest = hashlib.sha256()
        with open(out_path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        assert out_path.stat().st_size == 64 << 20
        assert digest.hexdigest() == expected

    def test_partial_line_not_split_by_ours(self, tmp_path: Path, cache_dir: Path) -> None:
        """An Ollama line still without its newline when we log `ready` is completed before our line."""
        serve = Serve(args(), serve_env(tmp_path, cache_dir, free_port(), FAKE_PARTIAL="PARTIAL-LINE-START"))
        serve.wait_event("ready")
        wait_for(lambda: "(line end)" in serve.err, what="line end")
        assert serve.stop() == 0
        lines = [line for line in serve.err.splitlines() if "PARTIAL-LINE-START" in line]
        assert lines == ["PARTIAL-LINE-START (line end)"]


class TestReadiness:
    def test_ready_only_after_api_version(self, tmp_path: Path, cache_dir: Path) -> None:
        """With NOTIFY_SOCKET, READY=1 comes only once /api/version answers, then STOPPING=1 on stop."""
        port = free_port()
        sock_path = tmp_path / "notify.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(sock_path))
            sock.settimeout(30)
            serve = Serve(args(), serve_env(tmp_path, cache_dir, port, FAKE_READY_DELAY="1.5",
                                            NOTIFY_SOCKET=str(sock_path)))
            message = sock.recv(4096).decode()
            answered = answers(port)  # probed the moment READY arrived
            assert "READY=1" in message and "STATUS=" in message
            assert answered
            assert serve.stop() == 0
            rest = sock.recv(4096).decode()
        assert "STOPPING=1" in rest

    @pytest.mark.parametrize("host", ["0.0.0.0", "[::1]"])
    def test_hosts_and_proxies(self, tmp_path: Path, cache_dir: Path, host: str) -> None:
        """OLLAMA_HOST=0.0.0.0:PORT and an IPv6 host work, with HTTP(S)_PROXY pointing nowhere."""
        port = free_port()
        env = serve_env(tmp_path, cache_dir, port, HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
                        http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
        env["OLLAMA_HOST"] = f"{host}:{port}"
        serve = Serve(args(), env)
        event = serve.wait_event("ready")
        assert str(port) in str(event["url"])
        assert serve.stop() == 0


class TestDirectoriesAndPid1:
    @pytest.mark.parametrize("systemd", [True, False])
    def test_unprivileged_user(self, cache_dir: Path, systemd: bool) -> None:
        """As uid 65534, with systemd's directory variables and with none: directories resolved; the runtime
        directory we create is 0700, and systemd's (0755 here) keeps its mode (issue 15, item 1)."""
        if os.geteuid() != 0:
            pytest.fail("this test switches to an unprivileged uid and must run as root (as CI does)")
        command = command_for_nobody()
        base = Path(tempfile.mkdtemp(prefix="ogpu-nobody-"))  # pytest's tmp_path is closed to other users
        fallback = Path("/tmp/ollama-gpu-65534")
        fallback_existed = fallback.exists()
        try:
            base.chmod(0o755)
            home = base / "home"
            home.mkdir()
            os.chown(home, 65534, 65534)
            env = clean_env(base, {"OLLAMA_HOST": f"127.0.0.1:{free_port()}", "OGPU_LOG_FORMAT": "json",
                                   "HOME": str(home), "OGPU_SYSTEM_CONFIG": "/nonexistent/ollama-gpu.env"})
            if systemd:
                for name in ("run", "cache", "state"):
                    (base / name).mkdir()
                    (base / name).chmod(0o755)  # systemd's default RuntimeDirectoryMode=, whatever our umask
                    os.chown(base / name, 65534, 65534)
                env.update(RUNTIME_DIRECTORY=str(base / "run"), CACHE_DIRECTORY=str(base / "cache"),
                           STATE_DIRECTORY=str(base / "state"))
            config = subprocess.run([*command, "config", "--json"], env=env, capture_output=True, text=True,
                                    timeout=60, preexec_fn=as_nobody, check=False)
            assert config.returncode == 0, config.stderr
            dirs = json.loads(config.stdout)["directories"]
            serve = Serve(args(), env, preexec=as_nobody, command=command)
            serve.wait_event("ready")
            runtime = Path(dirs["runtime"])
            mode, owner = runtime.stat().st_mode & 0o777, runtime.stat().st_uid
            assert serve.stop() == 0
            if systemd:
                assert (dirs["runtime"], dirs["cache"], dirs["state"]) == (
                    str(base / "run"), str(base / "cache"), str(base / "state"))
            else:
                assert dirs["runtime"] == "/tmp/ollama-gpu-65534"
                assert dirs["cache"] == str(home / ".cache" / "ollama-gpu")
                assert dirs["state"] == str(home / ".local" / "state" / "ollama-gpu")
            assert (mode, owner) == ((0o755 if systemd else 0o700), 65534)
        finally:
            shutil.rmtree(base, ignore_errors=True)
            if not fallback_existed:
                shutil.rmtree(fallback, ignore_errors=True)

    def test_pid1_reaps_reparented_grandchildren(self, tmp_path: Path, cache_dir: Path) -> None:
        """As PID 1 of a new PID namespace, a grandchild re-parented to us is reaped, not left a zombie."""
        env = serve_env(tmp_path, cache_dir, free_port(), FAKE_GRANDCHILD="1")
        serve = Serve(args("--log-level", "debug"), env, prefix=["unshare", "--pid", "--fork", "--mount-proc"])
        serve.wait_event("ready")
        supervisor = psutil.Process(serve.pid).children()[0]  # PID 1 inside the namespace
        reaped = serve.wait_event("orphan_reaped")
        assert reaped["code"] == 3
        assert _zombies_under(serve.pid) == []
        os.kill(supervisor.pid, signal.SIGTERM)
        assert serve.wait() == 0


def _zombies_under(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True) if p.status() == psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []
