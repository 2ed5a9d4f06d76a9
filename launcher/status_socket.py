"""The status socket's server side: each connection gets one JSON document, and the loop never waits for a reader.

A Unix stream socket in the runtime directory (0700), mode 0600. The document is rendered in the loop (it reads the
loop's state) and written without blocking; what a slow reader leaves unread waits in a per-connection buffer,
written as the socket drains, and a connection still unfinished after `SEND_TIMEOUT` is dropped and counted.
The socket file is removed at close only while it is still ours (same inode): a second supervisor can never unlink
the first one's socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from launcher.paths import ensure_private_dir

SEND_TIMEOUT: Final = 1.0
MAX_PENDING: Final = 16


@dataclass(slots=True)
class _Pending:
    sock: socket.socket
    data: memoryview
    deadline: float


class StatusServer:
    """Serves `provider()` as JSON to whoever connects (our uid only: the directory is 0700)."""

    def __init__(self, path: Path, provider: Callable[[], Mapping[str, Any]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.provider = provider
        self._clock = clock
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._sel = selectors.EpollSelector()
        self._pending: dict[int, _Pending] = {}
        self.errors = 0
        self.dropped = 0

    def start(self) -> StatusServer:
        """Bind under a temporary name, then rename over `path` (the instance lock makes any old socket a stale
        one of ours), and listen."""
        ensure_private_dir(self.path.parent)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            sock.bind(str(tmp))
            tmp.chmod(0o600)
            sock.listen(16)
            tmp.replace(self.path)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        st = self.path.lstat()
        self._inode = (st.st_dev, st.st_ino)
        self._sock = sock
        self._sel.register(sock, selectors.EVENT_READ, None)
        return self

    def fileno(self) -> int:
        """An epoll descriptor, readable when `handle()` has work (a connection, or a reader ready for more)."""
        return self._sel.fileno()

    @property
    def busy(self) -> bool:
        """Some answer is still being written (the loop should call `handle()` again within SEND_TIMEOUT)."""
        return bool(self._pending)

    def handle(self) -> None:
        """Drop answers past their deadline, accept and answer what is waiting, continue unfinished answers."""
        self._expire()
        for key, _mask in self._sel.select(0):
            if key.data is None:
                self._accept()
            elif key.data.sock.fileno() in self._pending:
                self._send(key.data)

    def _expire(self) -> None:
        t = self._clock()
        for pending in [p for p in self._pending.values() if t >= p.deadline]:
            self.dropped += 1
            self._forget(pending)

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.errors += 1
                return
            if len(self._pending) >= MAX_PENDING:
                self.dropped += 1
                conn.close()
                continue
            try:
                body = json.dumps(self.provider(), default=str).encode()
            except Exception:  # a status we cannot render is counted, never fatal
                self.errors += 1
                conn.close()
                continue
            conn.setblocking(False)
            pending = _Pending(conn, memoryview(body), self._clock() + SEND_TIMEOUT)
            self._pending[conn.fileno()] = pending
            self._sel.register(conn, selectors.EVENT_WRITE, pending)
            self._send(pending)

    def _send(self, pending: _Pending) -> None:
        try:
            while pending.data:
                sent = pending.sock.send(pending.data)
                pending.data = pending.data[sent:]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.errors += 1
        self._forget(pending)

    def _forget(self, pending: _Pending) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(pending.sock)
        self._pending.pop(pending.sock.fileno(), None)
        pending.sock.close()

    def close(self) -> None:
        """Stop listening; remove the socket file only if it is still the one we bound."""
        for pending in list(self._pending.values()):
            self._forget(pending)
        if self._sock is not None:
            self._sel.unregister(self._sock)
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                st = self.path.lstat()
                if (st.st_dev, st.st_ino) == self._inode:
                    self.path.unlink()
        self._sel.close()
