"""Who holds Ollama's port: a listener is found with its pid, and a process that does not listen is told apart."""

from __future__ import annotations

import subprocess
import sys

from launcher.ollama_host import parse_ollama_host
from launcher.port_owner import answering, holder, listens_on
from tests.serve_helpers import FAKE_SERVER, free_port, wait_for


def test_listener_found_and_told_apart() -> None:
    """A server on the port is `answering`, is its `holder`, `listens_on` it; another process does not."""
    port = free_port()
    host = parse_ollama_host(f"127.0.0.1:{port}")
    assert not answering(host) and holder(port) is None
    server = subprocess.Popen([sys.executable, str(FAKE_SERVER), "serve"], env={"OLLAMA_HOST": f"127.0.0.1:{port}"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        wait_for(lambda: answering(host), what="the server listening")
        found = holder(port)
        assert found is not None and found.pid == server.pid
        assert listens_on(server.pid, port) is True
        assert listens_on(bystander.pid, port) is False
        assert listens_on(server.pid, free_port()) is False
    finally:
        for proc in (server, bystander):
            proc.kill()
            proc.wait()
    assert listens_on(server.pid, port) is None  # gone: cannot be told
