"""systemd's notify protocol (READY=1, STATUS=, STOPPING=1) to $NOTIFY_SOCKET; silent where there is none."""

from __future__ import annotations

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
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
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

    def stopping(self) -> bool:
        """STOPPING=1."""
        return self.send("STOPPING=1", "STATUS=stopping")
