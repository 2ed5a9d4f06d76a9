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


def test_probe_reports_our_server_and_names_a_foreign_one() -> None:
    """The readiness probe reports (pid, version, owner, holder): owner True for the child that listens; for a child
    that does not, owner False once, with the listener's pid, and polling goes on until the timeout."""
    from launcher.children import Child
    from launcher.system import probe_until_ready

    port = free_port()
    host = parse_ollama_host(f"127.0.0.1:{port}")
    server = subprocess.Popen([sys.executable, str(FAKE_SERVER), "serve"], env={"OLLAMA_HOST": f"127.0.0.1:{port}"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        wait_for(lambda: answering(host), what="the server listening")
        ours: list[tuple[int, str, bool | None, int | None]] = []
        probe_until_ready(Child(server.pid, "ollama", ("x",), True, 0.0), host, 10.0,
                          lambda *a: ours.append(a))  # type: ignore[arg-type]
        assert ours == [(server.pid, "0.0.0-fake", True, None)]
        theirs: list[tuple[int, str, bool | None, int | None]] = []
        probe_until_ready(Child(bystander.pid, "ollama", ("x",), True, 0.0), host, 0.5,
                          lambda *a: theirs.append(a))  # type: ignore[arg-type]
        assert theirs == [(bystander.pid, "0.0.0-fake", False, server.pid)]
    finally:
        for proc in (server, bystander):
            proc.kill()
            proc.wait()
