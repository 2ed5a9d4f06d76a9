"""The status socket: the supervisor answers each connection with one JSON document; `ollama-gpu status` reads it.

A Unix stream socket in the runtime directory (0700), mode 0600; one JSON object per connection, then close.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from launcher.paths import ensure_private_dir

MAX_STATUS = 4 << 20


class StatusServer:
    """Serves `provider()` as JSON to whoever connects (our uid only: the directory is 0700)."""

    def __init__(self, path: Path, provider: Callable[[], Mapping[str, Any]]) -> None:
        self.path = path
        self.provider = provider
        self._sock: socket.socket | None = None
        self.errors = 0

    def start(self) -> StatusServer:
        """Bind (replacing a stale socket of ours) and listen."""
        ensure_private_dir(self.path.parent)
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock.bind(str(tmp))
        tmp.chmod(0o600)
        tmp.replace(self.path)
        sock.listen(16)
        self._sock = sock
        return self

    def fileno(self) -> int:
        """The listening socket, for the supervisor's selector."""
        assert self._sock is not None
        return self._sock.fileno()

    def handle(self) -> None:
        """Answer every waiting connection; a client that does not read is its own problem, never ours."""
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.errors += 1
                return
            with conn:
                try:
                    body = json.dumps(self.provider(), default=str).encode()
                    conn.settimeout(1.0)
                    conn.sendall(body)
                except Exception:  # a status we cannot render or send is counted, never fatal
                    self.errors += 1

    def close(self) -> None:
        """Stop listening and remove the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                self.path.unlink()


def read_status(path: Path, timeout: float = 5.0) -> dict[str, Any] | None:
    """The supervisor's status, or None when no supervisor answers at `path`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            chunks = []
            size = 0
            while size < MAX_STATUS:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
    except OSError:
        return None
    try:
        value = json.loads(b"".join(chunks))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
