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
_JOURNAL = re.compile(r"^[^\[|]{0,40}?\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?(?:[+-]\d{2}:?\d{2}|Z)?\s+\S+\s+"
                      r"[^\s\[\]]+\[(?P<pid>\d+)\]:\s?")  # journalctl short/short-iso/precise, any locale
_COMPOSE = re.compile(r"^[A-Za-z0-9][\w.-]{0,62}\s+\|\s")  # docker compose: "ollama-1  | "
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})\s")  # docker -t
_LLAMA = re.compile(r"^\d+\.\d{2}\.\d{3}\.\d{3} [IWEDT] ")  # llama-server: "0.00.178.962 I "
_LEVEL = re.compile(r"^[IWED] (?=\s*(?:[A-Za-z_]\w*:|cmn |srv |slot |que |res |Device \d))")  # "I ggml_…"


def _strip_prefix(text: str) -> tuple[str, int | None]:
    """Remove one wrapping prefix, if the line has one."""
    head = text[:100]
    if "]:" in head:
        m = _JOURNAL.match(text)
        if m:
            return text[m.end() :], int(m["pid"][:9])
    if " | " in head or " |\t" in head:
        m = _COMPOSE.match(text)
        if m:
            return text[m.end() :], None
    first = text[0]
    if first.isdigit():
        m = (_TIMESTAMP if text[4:5] == "-" else _LLAMA).match(text)
        if m:
            return text[m.end() :], None
    elif text[1:2] == " " and first in "IWED":
        m = _LEVEL.match(text)
        if m:
            return text[m.end() :], None
    return text, None


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
    if text.endswith("\r"):
        text = text[:-1]
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    if not text.isprintable():
        text = _CONTROL.sub(" ", text.replace("\t", " "))
    pid: int | None = None
    if text and not text.startswith("time="):
        text, pid = _strip_prefix(text)
    return text, pid


def split_lines(chunks: Iterable[bytes], max_line: int = MAX_LINE_BYTES) -> Iterator[tuple[bytes, bool]]:
    """Split a byte stream into lines whatever its chunking; lines longer than `max_line` are cut, never buffered."""
    pending = b""  # the start of a line that continues in the next chunk (at most max_line bytes)
    skipping = False  # the pending line was already cut and yielded: drop the rest up to its newline
    for chunk in chunks:
        if not chunk:
            continue
        parts = chunk.split(b"\n")
        last = parts.pop()  # no newline after it (yet)
        for i, part in enumerate(parts):
            if i == 0:
                if skipping:
                    skipping = False
                    continue
                part = pending + part
                pending = b""
            if len(part) > max_line:
                yield part[:max_line], True
            else:
                yield part, False
        if parts:
            pending = b""
        elif skipping:
            continue  # still inside an over-long line
        if len(pending) + len(last) > max_line:
            yield (pending + last[: max_line - len(pending)]), True
            pending, skipping = b"", True
        else:
            pending += last
    if pending:
        yield pending, False


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
