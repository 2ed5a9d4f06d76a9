"""The status socket's client side: `ollama-gpu status` reads the one JSON document the supervisor answers with
(the server side is `launcher.status_socket`).

A Unix stream socket in the runtime directory (0700), mode 0600; one JSON object per connection, then close.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

MAX_STATUS = 4 << 20


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
