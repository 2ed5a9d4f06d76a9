"""The status socket's server: answers without ever waiting for a reader, and removes only its own socket file."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from launcher.status import read_status
from launcher.status_socket import SEND_TIMEOUT, StatusServer

BIG = {"runners": ["x" * 1000] * 8000}  # ~8 MB: more than a socket buffer holds


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


class TestStatusServer:
    def test_answers_one_document(self, tmp_path: Path) -> None:
        """A reader gets the provider's document as JSON."""
        server = StatusServer(tmp_path / "run" / "status.sock", lambda: {"ready": True}).start()
        try:
            with _connect(server.path) as client:
                server.handle()
                assert json.loads(client.recv(65536)) == {"ready": True}
        finally:
            server.close()

    def test_a_reader_that_does_not_read_never_holds_the_loop(self, tmp_path: Path) -> None:
        """handle() returns with the answer half written; the rest goes out as the reader reads."""
        server = StatusServer(tmp_path / "status.sock", lambda: BIG).start()
        try:
            with _connect(server.path) as client:
                server.handle()
                assert server.busy  # not all of it fit: kept, not waited for
                chunks = []
                client.settimeout(5)
                while True:
                    server.handle()
                    data = client.recv(1 << 20)
                    if not data:
                        break
                    chunks.append(data)
                assert json.loads(b"".join(chunks)) == BIG
                assert not server.busy
        finally:
            server.close()

    def test_an_unfinished_answer_is_dropped_after_its_deadline(self, tmp_path: Path) -> None:
        """A reader that never reads costs one buffer for SEND_TIMEOUT, then is dropped and counted."""
        clock = Clock()
        server = StatusServer(tmp_path / "status.sock", lambda: BIG, clock=clock).start()
        try:
            with _connect(server.path):
                server.handle()
                assert server.busy
                clock.t = SEND_TIMEOUT
                server.handle()
                assert not server.busy and server.dropped == 1
        finally:
            server.close()

    def test_close_leaves_a_socket_that_is_not_ours(self, tmp_path: Path) -> None:
        """If the path now holds another socket (inode changed), close() does not unlink it."""
        path = tmp_path / "status.sock"
        server = StatusServer(path, lambda: {"who": "first"}).start()
        other = StatusServer(path, lambda: {"who": "second"}).start()  # replaced under the first one's feet
        server.close()
        assert path.exists()
        with _connect(path) as client:
            other.handle()
            assert json.loads(client.recv(65536)) == {"who": "second"}
        other.close()
        assert not path.exists()

    def test_read_status_against_the_server(self, tmp_path: Path) -> None:
        """The client side reads what the server side writes (provider errors are counted, not raised)."""
        server = StatusServer(tmp_path / "status.sock", lambda: {"state": "running"}).start()
        try:
            import threading

            stop = threading.Event()

            def serve() -> None:
                while not stop.is_set():
                    server.handle()
                    stop.wait(0.005)

            thread = threading.Thread(target=serve)
            thread.start()
            assert read_status(server.path, timeout=5) == {"state": "running"}
            stop.set()
            thread.join()
        finally:
            server.close()
