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

from launcher.log_input import LineSplitter

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


@dataclass(frozen=True, slots=True)
class Line:
    """A complete line of Ollama's output for the parser (raw bytes: the parser owns decoding and cleaning)."""

    stream: str  # 'stdout' | 'stderr'
    number: int  # across both streams, in order of arrival, from 1
    raw: bytes
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class Chunk:
    """Bytes as read from one of Ollama's streams; `gap` says chunks before it were skipped."""

    stream: str
    data: bytes
    gap: bool = False


class ChunkQueue:
    """Bounded hand-off from the pump to the parser thread, chunk by chunk so the pump does no per-line work.

    `offer` never blocks: when the parser lags and the queue is full the chunk is skipped and counted, and the next
    chunk of that stream is marked as following a gap (the parser then drops the cut line instead of gluing two
    halves together). `lines()` is the parser thread's side: complete lines, numbered across both streams.
    """

    def __init__(self, max_chunks: int = 256, max_line: int = MAX_LINE) -> None:
        self._q: queue.Queue[Chunk | None] = queue.Queue(max_chunks)
        self._gap: dict[str, bool] = {}
        self._max_line = max_line
        self.skipped_chunks = 0
        self.skipped_bytes = 0
        self.truncated = 0

    def offer(self, stream: str, data: bytes) -> None:
        """Queue a chunk for the parser, or count it as skipped."""
        try:
            self._q.put_nowait(Chunk(stream, data, self._gap.get(stream, False)))
            self._gap[stream] = False
        except queue.Full:
            self.skipped_chunks += 1
            self.skipped_bytes += len(data)
            self._gap[stream] = True

    def close(self) -> None:
        """No more chunks (blocks only while the queue is full)."""
        self._q.put(None)

    def lines(self) -> Iterator[Line]:
        """Complete lines until `close()`; each stream's unfinished last line comes out at the end."""
        splitters: dict[str, LineSplitter] = {}
        number = 0
        while True:
            chunk = self._q.get()
            if chunk is None:
                break
            splitter = splitters.get(chunk.stream)
            if splitter is None or chunk.gap:
                if splitter is not None:
                    self.truncated += splitter.truncated
                splitter = splitters[chunk.stream] = LineSplitter(self._max_line, after_gap=chunk.gap)
            for raw, cut in splitter.feed_marked(chunk.data):
                number += 1
                yield Line(chunk.stream, number, raw, cut)
        for name, splitter in splitters.items():
            for raw in splitter.close():
                number += 1
                yield Line(name, number, raw)
            self.truncated += splitter.truncated
