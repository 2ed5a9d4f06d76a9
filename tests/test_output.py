"""The output pump's two halves: forwarding that never splits Ollama's lines, and lines cut for the parser."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from launcher.output import ChunkQueue, LineSplitter, SharedStream


def read_all(fd: int) -> bytes:
    chunks = []
    while True:
        data = os.read(fd, 65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


class TestSharedStream:
    def test_our_line_waits_for_ollamas_newline(self) -> None:
        """An Ollama line without its newline yet is never split by one of ours."""
        r, w = os.pipe()
        stream = SharedStream(w)
        stream.forward(b"time=1 msg=\"half")
        stream.write('{"event":"ours"}\n')
        stream.forward(b" a line\"\nnext ")
        stream.forward(b"line\n")
        os.close(w)
        assert read_all(r) == b'time=1 msg="half a line"\n{"event":"ours"}\nnext line\n'

    def test_immediate_at_line_start(self) -> None:
        """At a line boundary our line goes out at once."""
        r, w = os.pipe()
        stream = SharedStream(w)
        stream.forward(b"a\n")
        stream.write("ours\n")
        os.close(w)
        assert read_all(r) == b"a\nours\n"

    def test_end_of_input_mid_line(self) -> None:
        """If Ollama's stream ends mid-line, held lines follow after a newline of ours."""
        r, w = os.pipe()
        stream = SharedStream(w)
        stream.forward(b"partial")
        stream.write("ours\n")
        stream.end_of_input()
        os.close(w)
        assert read_all(r) == b"partial\nours\n"

    @given(st.lists(st.binary(max_size=40), max_size=30), st.lists(st.integers(0, 29), max_size=5))
    def test_forwarded_bytes_identical(self, chunks: list[bytes], ours_at: list[int]) -> None:
        """Whatever is interleaved, Ollama's bytes come out unchanged and each of our lines is whole."""
        r, w = os.pipe()
        stream = SharedStream(w)
        for i, chunk in enumerate(chunks):
            stream.forward(chunk)
            for _ in range(ours_at.count(i)):
                stream.write("\x01OURS\x01\n")
        stream.end_of_input()
        os.close(w)
        out = read_all(r)
        os.close(r)
        ollama = b"".join(chunks)
        ours = b"\x01OURS\x01\n"
        # Our lines start at a line start of the combined output.
        for index in range(len(out)):
            if out.startswith(ours, index):
                assert index == 0 or out[index - 1 : index] == b"\n"
        stripped = out.replace(ours, b"")
        # Unchanged, except one newline of ours when the stream ended mid-line with our lines held.
        assert stripped == ollama or (not ollama.endswith(b"\n") and stripped == ollama + b"\n")


class TestLineSplitter:
    @given(st.binary(max_size=500), st.lists(st.integers(1, 50), max_size=20))
    def test_chunking_does_not_matter(self, data: bytes, cuts: list[int]) -> None:
        """The same lines come out whatever the chunking."""
        whole = list(LineSplitter(max_line=1000).feed(data))
        splitter = LineSplitter(max_line=1000)
        parts, pos = [], 0
        for cut in cuts:
            parts.append(data[pos : pos + cut])
            pos += cut
        parts.append(data[pos:])
        chunked = [line for part in parts for line in splitter.feed(part)]
        a = LineSplitter(max_line=1000)
        assert chunked == whole
        assert list(a.feed(b"x")) == [] and list(a.close()) == [b"x"]

    def test_overlong_line_truncated_and_counted(self) -> None:
        """A line longer than the cap reaches the parser cut, once; the following line is intact."""
        splitter = LineSplitter(max_line=10)
        lines = list(splitter.feed(b"A" * 25)) + list(splitter.feed(b"B" * 5 + b"\nnext\n"))
        assert lines == [b"A" * 10, b"next"]
        assert splitter.truncated == 1


class TestChunkQueue:
    def test_lines_numbered_across_streams_and_last_line_kept(self) -> None:
        """Chunks become complete lines in arrival order; an unfinished last line comes out at close."""
        q = ChunkQueue()
        q.offer("stderr", b"a\nb")
        q.offer("stdout", b"x\n")
        q.offer("stderr", b"c\nd")
        q.close()
        got = [(line.stream, line.number, line.raw) for line in q.lines()]
        assert got == [("stderr", 1, b"a"), ("stdout", 2, b"x"), ("stderr", 3, b"bc"), ("stderr", 4, b"d")]

    def test_full_queue_skips_and_marks_gap(self) -> None:
        """offer() never blocks: a skipped chunk is counted and the line it cut is not glued to the next one."""
        q = ChunkQueue(max_chunks=2)
        q.offer("stderr", b"one\nhal")
        q.offer("stderr", b"f\ntwo\n")
        q.offer("stderr", b"LOST\nLO")  # queue full: skipped
        assert q.skipped_chunks == 1 and q.skipped_bytes == 7
        got = []
        lines = q.lines()
        got.append(next(lines).raw)
        got.append(next(lines).raw)
        got.append(next(lines).raw)
        q.offer("stderr", b"ST\nthree\n")  # after the gap: the cut line 'ST' is dropped
        q.close()
        got.extend(line.raw for line in lines)
        assert got == [b"one", b"half", b"two", b"three"]
