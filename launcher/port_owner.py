"""Who holds Ollama's port: before the start (a stale Ollama answering) and at readiness (is it our child?)."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from launcher.ollama_host import OllamaHost


@dataclass(frozen=True, slots=True)
class Holder:
    """A process found listening on the port; pid None where the kernel does not tell us (another user's)."""

    pid: int | None
    name: str | None


def answering(host: OllamaHost, timeout: float = 0.2) -> bool:
    """Something accepts TCP connections on OLLAMA_HOST's probe address (a refused connect costs microseconds)."""
    try:
        with socket.create_connection((host.probe_host, host.port), timeout=timeout):
            return True
    except OSError:
        return False


def holder(port: int) -> Holder | None:
    """The process listening on TCP `port`, where the kernel tells us; None when nothing listens."""
    import psutil

    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return Holder(None, None)
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            name = None
            if conn.pid is not None:
                try:
                    name = psutil.Process(conn.pid).name()
                except psutil.Error:
                    name = None
            return Holder(conn.pid, name)
    return None


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process `pid` holds a listening TCP socket on `port`: True, False, or None when it cannot be told."""
    import psutil

    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)
