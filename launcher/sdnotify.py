"""systemd's notify protocol (READY=1, STATUS=, STOPPING=1) to $NOTIFY_SOCKET; silent where there is none."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    """Sends sd_notify datagrams; a missing or broken socket is remembered, never raised."""

    def __init__(self, env: Mapping[str, str]) -> None:
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]
        elif path.startswith("/"):
            self.address = path
        self.errors = 0
        self.watchdog_interval = watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        """True when systemd (or a test) asked for notifications."""
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send one datagram of newline-separated fields; True when it was sent."""
        if self.address is None:
            return False
        message = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            # non-blocking: a full queue on systemd's side drops this datagram (counted) instead of holding the loop
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
                sock.sendto(message, self.address)
        except OSError:
            self.errors += 1
            return False
        return True

    def ready(self, status: str) -> bool:
        """READY=1 with a status line."""
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        """A new status line."""
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: the loop is alive (sent from the loop's own thread, so a stuck loop sends none)."""
        return self.send("WATCHDOG=1")

    def watchdog_off(self) -> bool:
        """WATCHDOG_USEC=0: no more pings will come (mode off execs Ollama, which never sends any); systemd stops
        the watchdog instead of killing a healthy Ollama WatchdogSec later. Sent only where the watchdog is on."""
        return self.watchdog_interval is not None and self.send("WATCHDOG_USEC=0")

    def stopping(self) -> bool:
        """STOPPING=1."""
        return self.send("STOPPING=1", "STATUS=stopping")


def watchdog_interval(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between two WATCHDOG=1: half of WATCHDOG_USEC, when systemd set it for this process (WATCHDOG_PID
    unset or ours); None when the watchdog is off or the values make no sense."""
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None
