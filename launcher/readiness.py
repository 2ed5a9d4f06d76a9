"""Is Ollama up? `GET /api/version` on OLLAMA_HOST's probe address, with no proxy ever in the way."""

from __future__ import annotations

import json

from launcher.ollama_host import OllamaHost


def probe_version(host: OllamaHost, timeout: float = 2.0) -> str | None:
    """Ollama's version string when `/api/version` answers 200 with JSON, else None.

    http.client never reads HTTP_PROXY/HTTPS_PROXY/NO_PROXY, so a proxy set for Ollama's model pulls cannot
    swallow the probe. Ollama serves plain HTTP on its port even when OLLAMA_HOST names https (that scheme
    is for clients behind a TLS proxy).
    """
    import http.client  # here, not at the top: it pulls in ssl and email (~12 ms) before Ollama is even spawned

    conn = http.client.HTTPConnection(host.probe_host, host.port, timeout=timeout)
    try:
        conn.request("GET", "/api/version", headers={"Accept": "application/json"})
        response = conn.getresponse()
        body = response.read(65536)
        if response.status != 200:
            return None
        version = json.loads(body).get("version")
        return str(version) if version is not None else ""
    except (OSError, http.client.HTTPException, ValueError, AttributeError):
        return None
    finally:
        conn.close()
