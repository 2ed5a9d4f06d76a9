"""Turn log bytes as operators have them (journalctl, docker, Windows, ANSI, CRLF, junk) into clean numbered lines."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import IO, Final, NamedTuple

MAX_LINE_BYTES: Final = 16 * 1024  # longer lines are cut here; the rest of the line is skipped, not buffered
CHUNK_BYTES: Final = 1 << 20

_ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]+")

# Prefixes that wrap Ollama's own text. Each has a cheap gate (plain string tests) so that a line without a prefix,
# the common case, costs no regex; journald's prefix leaves the pid behind.
_JOURNAL = re.compile(
    r"^(?:[^\[|]{0,40}?\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?(?:\s?(?:[+-]\d{2}:?\d{2}|Z|[A-Z]{2,5}))?"  # short, -iso, -full
    r"|\d{9,11}(?:\.\d+)?|\[\s*\d+\.\d+(?:\s*<\s*[\d.]+>)?\])"  # short-unix, short-monotonic, short-delta
    r"\s+\S+\s+[^\s\[\]]+\[(?P<pid>\d+)\]:\s?")  # host ident[pid]: (any locale's month names)
_COMPOSE = re.compile(r"^(?=[\w.-]{0,62}[A-Za-z])[A-Za-z0-9][\w.-]{0,62}\s+\|\s")  # docker compose: "ollama-1  | "
_KUBECTL = re.compile(r"^\[[a-z]+/[^\]\s/]+/[^\]\s/]+\]\s")  # kubectl logs --prefix: "[pod/ollama-0/ollama] "
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})\s")  # --timestamps
_LLAMA = re.compile(r"^\d+\.\d{2}\.\d{3}\.\d{3} [IWEDT] ")  # llama-server: "0.00.178.962 I "
_LEVEL = re.compile(r"^[IWED] (?=\s*(?:[A-Za-z_]\w*:|cmn |srv |slot |que |res |Device \d))")  # "I ggml_…"


def _strip_prefix(text: str) -> tuple[str, int | None, str]:
    """Remove one wrapping prefix, if the line has one; the last item names it ("" when none)."""
    head = text[:100]
    if "]:" in head:
        m = _JOURNAL.match(text)
        if m:
            return text[m.end() :], int(m["pid"][:9]), "journald"
    if " | " in head or " |\t" in head:
        m = _COMPOSE.match(text)
        if m:
            return text[m.end() :], None, "compose " + text[: m.end()].split()[0]
    first = text[0]
    if first.isdigit():
        is_ts = text[4:5] == "-"
        m = (_TIMESTAMP if is_ts else _LLAMA).match(text)
        if m:
            return text[m.end() :], None, "timestamp" if is_ts else "llama-server"
    elif first == "[":
        if text[1:2].isalpha():
            m = _KUBECTL.match(text)
            if m:
                return text[m.end() :], None, "kubectl"
    elif text[1:2] == " " and first in "IWED":
        m = _LEVEL.match(text)
        if m:
            return text[m.end() :], None, "level"
    return text, None, ""


def prefix_kind(text: str) -> str:
    """Which prefix the line starts with: journald, compose <service>, timestamp, kubectl, ...; "" when none."""
    if not text or text.startswith("time="):
        return ""
    return _strip_prefix(text)[2]


def strip_prefixes(text: str) -> tuple[str, int | None]:
    """Remove the wrapping prefixes a line has, outermost first (kubectl or compose, then a timestamp, ...)."""
    pid: int | None = None
    for _ in range(4):
        if not text or text.startswith("time="):
            break
        stripped, p, _ = _strip_prefix(text)
        if stripped is text:
            break
        text = stripped
        if p is not None:
            pid = p
    return text, pid


class Line(NamedTuple):
    """One input line: 1-based number, cleaned text, the pid a journal prefix named, whether it was cut."""

    number: int
    text: str
    pid: int | None = None
    truncated: bool = False


def clean(raw: bytes) -> tuple[str, int | None]:
    """Decode one raw line (without its newline) and strip colours, control bytes and wrapping prefixes."""
    text = raw.decode("utf-8", "replace")
    if text.startswith("time=") and text.isprintable():
        return text, None  # a plain slog line, the common case
    return strip_prefixes(scrub(text))


def scrub(text: str) -> str:
    """A line without its CR, colours and control bytes (a tab becomes a space)."""
    if text.endswith("\r"):
        text = text[:-1]
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    if not text.isprintable():
        text = _CONTROL.sub(" ", text.replace("\t", " "))
    return text


class LineSplitter:
    """Cuts a byte stream into complete lines (without the newline); over-long lines are truncated and counted."""

    def __init__(self, max_line: int = MAX_LINE_BYTES, *, after_gap: bool = False) -> None:
        self._buf = bytearray()
        self._max = max_line
        self._discarding = after_gap  # after skipped bytes the first line is a tail: drop it
        self.truncated = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Complete lines found in `data` (with what was held from before)."""
        if b"\n" not in data:
            if not self._discarding:
                self._buf += data
                if len(self._buf) > self._max:
                    self.truncated += 1
                    yield bytes(self._buf[: self._max])
                    self._buf.clear()
                    self._discarding = True
            return
        parts = data.split(b"\n")
        tail = parts.pop()
        first = parts[0]
        if self._discarding:
            self._discarding = False
        else:
            self._buf += first
            if len(self._buf) > self._max:
                self.truncated += 1
            yield bytes(self._buf[: self._max])
        self._buf.clear()
        for line in parts[1:]:
            if len(line) > self._max:
                self.truncated += 1
                yield line[: self._max]
            else:
                yield line
        self._buf += tail
        if len(self._buf) > self._max:
            self.truncated += 1
            yield bytes(self._buf[: self._max])
            self._buf.clear()
            self._discarding = True

    def feed_marked(self, data: bytes) -> Iterator[tuple[bytes, bool]]:
        """Like `feed`, with each line's `cut` flag (it was longer than the limit)."""
        seen = self.truncated
        for line in self.feed(data):
            yield line, self.truncated != seen
            seen = self.truncated

    def close(self) -> Iterator[bytes]:
        """The last line if the stream ended without a newline."""
        if self._buf and not self._discarding:
            yield bytes(self._buf)
        self._buf.clear()


def split_lines(chunks: Iterable[bytes], max_line: int = MAX_LINE_BYTES) -> Iterator[tuple[bytes, bool]]:
    """Split a byte stream into (line, cut) whatever its chunking; longer lines are cut, never buffered."""
    splitter = LineSplitter(max_line)
    for chunk in chunks:
        yield from splitter.feed_marked(chunk)
    for line in splitter.close():
        yield line, False


def read_chunks(stream: IO[bytes], size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Read a binary stream in fixed-size chunks until EOF."""
    while True:
        chunk = stream.read(size)
        if not chunk:
            return
        yield chunk


def iter_lines(chunks: Iterable[bytes], max_line: int = MAX_LINE_BYTES) -> Iterator[Line]:
    """Numbered, cleaned lines from a byte stream given in any chunking."""
    for number, (raw, cut) in enumerate(split_lines(chunks, max_line), start=1):
        text, pid = clean(raw)
        yield Line(number, text, pid, cut)
