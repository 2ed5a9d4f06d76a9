"""sd_notify: WATCHDOG=1 at half of WATCHDOG_USEC, only where systemd asked it of this process."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from launcher.sdnotify import Notifier, watchdog_interval


class TestWatchdogInterval:
    def test_half_of_watchdog_usec(self) -> None:
        """WatchdogSec=30 gives WATCHDOG_USEC=30000000: a ping every 15 s."""
        assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0

    def test_for_another_pid_or_nonsense_it_is_off(self) -> None:
        """WATCHDOG_PID naming another process, a bad number or 0: no watchdog (never a traceback)."""
        assert watchdog_interval({}) is None
        assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2) is None
        assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "2"}, pid=2) == 15.0
        assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
        assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None

    def test_the_datagram(self, tmp_path: Path) -> None:
        """watchdog() sends exactly WATCHDOG=1 to NOTIFY_SOCKET."""
        path = tmp_path / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
            assert notifier.watchdog_interval == 1.0
            assert notifier.watchdog()
            assert sock.recv(64) == b"WATCHDOG=1"


class TestUnits:
    def test_shipped_units_set_a_watchdog_the_loop_can_keep(self) -> None:
        """Both units set WatchdogSec=, with room for the loop's longest wait (1 s) many times over."""
        from launcher.systemd_units import render_dropin, render_service

        for unit in (render_dropin(), render_service()):
            values = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("WatchdogSec=")]
            assert len(values) == 1
            assert int(values[0]) >= 10


class TestNeverBlocks:
    def test_a_full_notify_queue_drops_and_counts(self, tmp_path: Path) -> None:
        """A receiver that never reads (systemd stuck): sends fail fast and are counted, the caller never waits."""
        path = tmp_path / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            notifier = Notifier({"NOTIFY_SOCKET": str(path)})
            results: list[bool] = []
            sender = threading.Thread(target=lambda: results.extend(notifier.watchdog() for _ in range(5000)),
                                      daemon=True)  # far more than a datagram queue holds
            sender.start()
            sender.join(10)
            assert not sender.is_alive(), "a send blocked on the full queue"
            assert not all(results) and notifier.errors == results.count(False)


class TestModeOff:
    def test_mode_off_turns_the_watchdog_off_before_exec(self, tmp_path: Path) -> None:
        """OGPU_MODE=off execs Ollama, which never pings: READY=1 and then WATCHDOG_USEC=0, so a unit with
        WatchdogSec= does not kill a healthy Ollama (the exec'd program here is /bin/true)."""
        from tests.cli_helpers import clean_env, run_cli

        path = tmp_path / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            sock.settimeout(10)
            env = clean_env(tmp_path, {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000"})
            proc = run_cli(["--mode", "off", "--ollama", "/bin/true", "serve"], env)
            assert proc.returncode == 0
            got = [sock.recv(4096).decode(), sock.recv(4096).decode()]
        assert got[0].startswith("READY=1")
        assert got[1] == "WATCHDOG_USEC=0"
