"""`OLLAMA_HOST` read exactly as Ollama's envconfig.Host() reads it, plus the address a local probe should use."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

DEFAULT_PORT = 11434


@dataclass(frozen=True, slots=True)
class OllamaHost:
    """Where Ollama listens: scheme, host (no brackets), port, path."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def netloc(self) -> str:
        """host:port with IPv6 brackets, as in a URL."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def probe_host(self) -> str:
        """The host to connect to for a readiness probe: a wildcard listen address means loopback."""
        if self.host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if self.host == "::":
            return "::1"
        return self.host

    def url(self, path: str = "") -> str:
        """A URL on the probe address, e.g. url('/api/version')."""
        host = f"[{self.probe_host}]" if ":" in self.probe_host else self.probe_host
        return f"{self.scheme}://{host}:{self.port}{self.path and '/' + self.path.strip('/')}{path}"

    @property
    def slug(self) -> str:
        """A file-name-safe instance name: two Ollama instances on one machine never share a name."""
        return re.sub(r"[^A-Za-z0-9._-]", "_", f"{self.host}-{self.port}")


def _split_host_port(hostport: str) -> tuple[str, str] | None:
    """Go's net.SplitHostPort: 'h:p' or '[v6]:p'; None when it would fail."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or not hostport[end + 1 :].startswith(":"):
            return None
        host, port = hostport[1:end], hostport[end + 2 :]
        return (host, port) if "[" not in port and "]" not in port else None
    if hostport.count(":") != 1:
        return None  # no port, or a bare IPv6 address
    host, port = hostport.split(":")
    return host, port


def parse_ollama_host(raw: str | None) -> OllamaHost:
    """Parse OLLAMA_HOST as Ollama does: scheme optional, default port 11434 (80/443 with an explicit scheme)."""
    s = (raw or "").strip().strip("\"'").strip()
    default_port = str(DEFAULT_PORT)
    scheme, sep, hostport = s.partition("://")
    if not sep:
        scheme, hostport = "http", s
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport, _, path = hostport.partition("/")
    split = _split_host_port(hostport)
    if split is None:
        host, port = "127.0.0.1", default_port
        try:
            host = str(ipaddress.ip_address(hostport.strip("[]")))
        except ValueError:
            if hostport:
                host = hostport
    else:
        host, port = split
    try:
        port_n = int(port, 10)
        if not 0 <= port_n <= 65535:
            raise ValueError(port)
    except ValueError:
        port_n = int(default_port)
    return OllamaHost(scheme=scheme, host=host, port=port_n, path=path)
