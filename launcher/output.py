"""One writer per output stream: Ollama's bytes forwarded as they arrive, our lines only between complete lines.

And the other side of the pump: complete lines cut from the byte stream for the parser, which reads them from a
bounded queue and never slows forwarding (lines it cannot take in time are skipped and counted).
"""

from __future__ import annotations

import os
import queue
import select
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

MAX_LINE: Final = 64 * 1024  # longer lines reach the parser truncated (they are forwarded whole)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte, across short writes and EINTR; EAGAIN on a non-blocking fd waits for room."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[n:]


class SharedStream:
    """Our stdout or stderr, shared by Ollama's forwarded bytes and our own log lines (file-like for structlog)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self._at_line_start = True
        self._pending: list[bytes] = []

    def forward(self, data: bytes) -> None:
        """Forward Ollama's bytes unchanged; our held lines go out right after the partial line completes."""
        if not data:
            return
        with self._lock:
            if self._pending and b"\n" in data:
                cut = data.index(b"\n") + 1
                write_all(self.fd, data[:cut])
                write_all(self.fd, b"".join(self._pending))
                self._pending.clear()
                data = data[cut:]
                self._at_line_start = True
                if not data:
                    return
            write_all(self.fd, data)
            self._at_line_start = data.endswith(b"\n")

    def write(self, text: str) -> int:
        """One of our log lines (structlog writes whole lines): now if at a line start, else after Ollama's line."""
        data = text.encode("utf-8", errors="replace")
        with self._lock:
            if self._at_line_start and not self._pending:
                write_all(self.fd, data)
            else:
                self._pending.append(data)
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered in Python; held lines wait for Ollama's newline or `end_of_input`."""

    def isatty(self) -> bool:
        """Whether the stream is a terminal (decides the log renderer)."""
        try:
            return os.isatty(self.fd)
        except OSError:
            return False

    def end_of_input(self) -> None:
        """Ollama's stream closed mid-line: finish with a newline of ours, then the held lines."""
        with self._lock:
            if self._pending:
                prefix = b"" if self._at_line_start else b"\n"
                write_all(self.fd, prefix + b"".join(self._pending))
                self._pending.clear()
                self._at_line_start = True


class LineSplitter:
    """Cuts a byte stream into complete lines (without the newline); over-long lines are truncated and counted."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self._max = max_line
        self._discarding = False
        self.truncated = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Complete lines found in `data` (with what was held from before)."""
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            piece = data[start:nl]
            if self._discarding:
                self._discarding = False
                self._buf.clear()
            else:
                self._buf += piece
                yield bytes(self._buf[: self._max])
                self._buf.clear()
            start = nl + 1
        if not self._discarding:
            self._buf += data[start:]
            if len(self._buf) > self._max:
                yield bytes(self._buf[: self._max])
                self.truncated += 1
                self._buf.clear()
                self._discarding = True

    def close(self) -> Iterator[bytes]:
        """The last line if the stream ended without a newline."""
        if self._buf and not self._discarding:
            yield bytes(self._buf)
        self._buf.clear()


@dataclass(frozen=True, slots=True)
class Line:
    """A complete line of Ollama's output for the parser (raw bytes: the parser owns decoding and cleaning)."""

    stream: str  # 'stdout' | 'stderr'
    number: int  # across both streams, in order of arrival, from 1
    raw: bytes
    truncated: bool = False


class LineQueue:
    """Bounded hand-off to the parser thread: `offer` never blocks; a full queue skips the line and counts it."""

    def __init__(self, maxsize: int = 10000) -> None:
        self._q: queue.Queue[Line | None] = queue.Queue(maxsize)
        self.skipped = 0

    def offer(self, line: Line) -> None:
        """Queue a line for the parser, or count it as skipped."""
        try:
            self._q.put_nowait(line)
        except queue.Full:
            self.skipped += 1

    def close(self) -> None:
        """Tell the consumer no more lines come (blocks only while the queue is full)."""
        self._q.put(None)

    def __iter__(self) -> Iterator[Line]:
        while True:
            item = self._q.get()
            if item is None:
                return
            yield item
