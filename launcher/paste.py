"""Logs as people paste them: rejoin wrapped records, split glued ones, drop Markdown and journald's JSON wrapping.

Works on physical lines (already split and cut by `log_input`) and yields records: `(number, text, pid, truncated)`,
where `number` is the physical line a record starts on. Nothing is dropped: a line this module does not understand
passes through as it came (less colours and control bytes); a line that is only Markdown (a code fence) becomes an
empty record, so line numbers still match the file.

A line continues the record before it when that record is incomplete and the line starts no record of its own.
Incomplete means one of: a slog line (or JSON object) with a quote still open; a line exactly as wide as the
terminal width, confirmed by two lines that wide; the single widest line, followed by a line that goes on mid-word;
a slog record followed by more `key=value` bits or one short token; under a paste prefix (journald, docker, compose,
kubectl), a line without it. What starts a record is `starts_record`; after a confirmed width or an open quote only
the starts no wrap can fake count (`_STRONG`). The width, the prefix and Markdown quoting are learned from the first
lines (`WINDOW_LINES`): a terminal never prints a line longer than its width, so the longest line is the width's only
candidate, and a later, longer line proves there was none. The width also tells `less -S`'s `>` chop mark from a
real `>`. A record broken by hand (shorter than the width) gets back the space the break took.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Final

from launcher.log_input import prefix_kind, scrub, strip_prefixes

WINDOW_LINES: Final = 2000  # physical lines read ahead to learn a terminal width
WINDOW_BYTES: Final = 1 << 20
MIN_WIDTH: Final = 60  # narrower "widths" are ordinary short lines, never a terminal's
MAX_JOIN: Final = 64  # at most this many physical lines make one record (a runaway quote stops here)
MAX_RECORD: Final = 16 * 1024  # nor longer than this many characters

Record = tuple[int, str, "int | None", bool]  # number (first physical line), text, pid, truncated


# What begins a record in any Ollama/GGML log, prefixed or not. Deliberately specific: a wrapped line's tail starts
# anywhere inside a record, so a loose rule (any word and a colon) would take tails for records.
_START: Final = re.compile(
    r"(?:time=\d{4}-"
    r"|\[GIN"
    r"|\{\""
    r"|\d{4}[/-]\d\d[/-]\d\d[T ]\d\d:\d\d"  # Go log date, ISO (journald short-iso), docker --timestamps
    r"|[A-Z][a-z]{2}\s[\s\d]\d\s\d\d:\d\d:\d\d"  # journald short, English month
    r"|[A-Z][a-z]{2}\s\d{4}-\d\d-\d\d\s"  # journald short-full
    r"|\[\s*\d+\.\d+[\]\s]"  # journald short-monotonic
    r"|[A-Za-z][\w.-]{0,62}\s+\|\s"  # docker compose
    r"|\[[a-z]+/[^\]\s]+\]\s"  # kubectl --prefix
    r"|[a-z][a-z0-9]*(?:_[a-z0-9]+)+:"  # llama.cpp/GGML: the printing function's name
    r"|(?:srv|slot|que|res|cmn|spec)\s"  # llama-server's module tags
    r"|(?:main|build|load|system_info|print_info|warning|error|Error|ERROR|panic|fatal error|version"
    r"|CUDA error|rocBLAS error|HIP error|ROCm error|signal arrived|SIG[A-Z]+|cuInit err|cudaSetDevice err):"
    r"|(?:level|source)="  # a slog line whose timestamp the paste left out
    r"|\[\d{9,11}\]\s"  # the old runner's "[1706635646] system info"
    r"|\d+\.\d\d\.\d{3}\.\d{3}\s[IWEDT]\s"  # llama-server's "0.00.178.962 I "
    r"|loading library\s"
    r"|(?:INFO|WARN|WARNING|ERROR|DEBUG)\s+\["  # old llama.cpp server: "INFO [main] build info"
    r"|goroutine\s\d"
    r"|[a-z_]+\(\):\s"  # glibc: "free(): invalid pointer"
    r"|\S+\.(?:c|cc|cpp|cu|h|go|m|mm):\d+:\s"  # a source location: "ggml-cuda.cu:90: GGML_ASSERT(...) failed"
    r"|-- (?:Boot|Logs begin|Journal begins|No entries|Reboot)"  # journalctl's own markers
    r"|\s+(?:Device\s\d+:|current device:|-\s)"  # ggml device list, CUDA error detail, list items
    r"|\s+/\S+\.go:\d+"  # Go stack frame file lines
    r"|$)"
)


# The starts a terminal's wrap cannot fake: after a line exactly as wide as the terminal, only these begin a record.
_SURE_STARTS: Final = (
    r"time=\d{4}-|(?:level|source)=\w|\[GIN|\{\"|\d{4}[/-]\d\d[/-]\d\d[T ]\d\d:\d\d"
    r"|[A-Z][a-z]{2}\s[\s\d]\d\s\d\d:\d\d:\d\d"
    r"|[A-Z][a-z]{2}\s\d{4}-\d\d-\d\d\s|\[(?:pod|deployment|statefulset|daemonset|job|replicaset)/|$")
_STRONG: Final = re.compile(  # and GGML's function heads, glibc's "free(): ..."
    rf"(?:{_SURE_STARTS}|[a-z][a-z0-9]*(?:_[a-z0-9]+)+:\s|[a-z_]+\(\):\s)")
# A line as wide as the terminal that also leaves a quote open goes on, even where the next line looks like a GGML
# function head (`server config`'s env wraps before `https_proxy: no_proxy:]"`): only a slog, GIN or prefix start
# ends it.
_SURE: Final = re.compile(rf"(?:{_SURE_STARTS})")


def starts_record(text: str) -> bool:
    """Whether a (display) line begins a record of its own, rather than continuing the one before it."""
    return text.startswith("time=") or _START.match(text) is not None


_MID_WORD_END: Final = re.compile(r"[a-z0-9]$|[:=] ?$")  # inside a word, or a label still waiting for its value
_MID_WORD_START: Final = re.compile(r"[a-z0-9]")
_TAIL_START: Final = re.compile(r"[:,.;)\]}=]|\s+[\d\"=]")  # no record starts with these
_SIZE: Final = re.compile(r"\d+(?:\.\d+)?\s?[KMGT]?i?B\b")  # `400.00 MiB`, `4.2 GiB`, `512B`


def _inside_size(before: str, after: str) -> bool:
    """Whether a break between `before` and `after` fell inside a size (`400.0` / `0 MiB`, `400.00 M` / `iB`)."""
    head = before[-12:]
    joined = head + after[:12]
    return any(m.start() < len(head) < m.end() for m in _SIZE.finditer(joined))
_NATIVE: Final = frozenset({"llama-server", "level"})  # prefixes llama-server prints itself, on its first line only
_SLOG_HEAD: Final = ("time=", "level=", "source=")
_LABEL: Final = re.compile(r'[^\s=":]+:\s')


def _slog_tail(record: str, text: str) -> bool:
    """A Go slog record goes on in a line that reads like more of its `key=value` pairs, or a lone token (a single
    wrapped line leaves no terminal width to learn)."""
    if not (record.startswith(_SLOG_HEAD) or record.find("msg=", 0, 200) >= 0) or _LABEL.match(text):
        return False  # ("NVRM: Xid ... pid=1234": a line that opens with a label is a record; a slog tail cannot)
    if "=" in text or '"' in text:
        return _key_value(text)  # (a quote alone is no tail: an open quote is handled as such)
    # words without `key=` are a record of their own; a short lone token ("[cpu]", "5.2") is a tail
    return " " not in text.strip() and len(text) <= 24 and "(" not in text


def _key_value(text: str) -> bool:
    """Whether `text` holds a `key=` (an `=` right after a word character) or begins with `=`."""
    i = text.find("=")
    while i >= 0:
        if i == 0 or text[i - 1].isalnum() or text[i - 1] in "_.":
            return True
        i = text.find("=", i + 1)
    return False


def _continues(text: str, strict: bool, prefix: str, sure: bool = False) -> bool:
    """Whether `text`, which follows an incomplete record, goes on with it. `strict`: the record ended exactly at
    the confirmed terminal width or inside a quoted value, so only a start no wrap can fake (`_STRONG`) begins a
    new one; `sure`: both at once, so only a start a quoted value cannot hold (`_SURE`) does."""
    if prefix:
        if prefix_kind(text) == prefix:
            return False
        if strict:
            return True  # the tails of a prefixed paste are the lines without the prefix
    elif strict:
        return (_SURE if sure else _STRONG).match(text) is None
    return not starts_record(text)


_QUOTED: Final = re.compile(r'"(?:[^"\\]|\\.)*"')


def quote_open(text: str) -> bool:
    """A slog line (or JSON object) whose last quoted value has not been closed: the record goes on."""
    if "msg=" not in text and not text.startswith("{"):
        return False
    if "\\" not in text:
        return text.count('"') % 2 == 1
    return '"' in _QUOTED.sub("", text)


# Markdown a paste picks up on the way into an issue: fences, quote markers, list bullets, bold, inline code.
_FENCE: Final = re.compile(r"\s{0,3}(?:```|~~~)")
_QUOTE_MARK: Final = re.compile(r"\s{0,3}(?:>[ \t]?)+")
_BULLET: Final = re.compile(r"\s{0,3}(?:[-*+]|\d{1,3}[.)])\s+")
_MARK_CHARS: Final = frozenset("`*>-+~ 0123456789")


# Bold as Markdown writes it: `**` opens after a space and closes before one. A glob's `libcuda.so**` is not bold.
_BOLD: Final = re.compile(r"(?<!\S)\*\*(?=\S)(.+?)(?<=\S)\*\*(?![\w*/])")
_BOLD_EDGE: Final = re.compile(r"^\*\*(?=\S)|(?<=[\"')\]}])\*\*$")


def _unbold(text: str) -> str:
    return _BOLD_EDGE.sub("", _BOLD.sub(r"\1", text))


_FUNC: Final = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+:\s")


def _clearly_starts(text: str) -> bool:
    """A record start no fragment of a line could fake (what a bullet or quote marker may stand before)."""
    return bool(text) and (_STRONG.match(text) is not None or _FUNC.match(text) is not None)


def strip_markdown(text: str, quoted: bool = False) -> str:
    """The line without Markdown remnants; a fence line becomes empty. Text that is not Markdown is unchanged.

    `quoted`: the paste is a Markdown quote (most lines start with `>`), so every line loses its markers; otherwise
    a marker goes only where a record clearly follows it (a wrapped line's tail may begin with `>` or `- `)."""
    if text[:1] in _MARK_CHARS:
        if _FENCE.match(text):
            return ""
        if text.lstrip(" ").startswith(">"):
            rest = text[_QUOTE_MARK.match(text).end():]  # type: ignore[union-attr]  # always matches here
            if quoted or _clearly_starts(_unbold(rest).strip("`")):
                text = rest
    if "**" in text:
        text = _unbold(text)
    if text.startswith("`") or text.endswith("`"):
        text = text.strip("`")
    if text[:1] in _MARK_CHARS:
        m = _BULLET.match(text)
        if m is not None:
            rest = text[m.end():].strip("`")
            if _clearly_starts(rest):
                text = rest
    return text


def _json_message(text: str) -> tuple[list[str], int | None] | None:
    """`journalctl -o json`: the MESSAGE (a string, or a byte array when it held control bytes) and `_PID`."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the decoder goes
        return None
    if not isinstance(obj, dict) or "MESSAGE" not in obj:
        return None
    msg = obj["MESSAGE"]
    if isinstance(msg, list) and all(isinstance(b, int) and 0 <= b < 256 for b in msg):
        msg = bytes(msg).decode("utf-8", "replace")
    if not isinstance(msg, str):
        return None  # null: journalctl leaves out messages over its size limit unless --all
    pid_text = obj.get("_PID") or obj.get("SYSLOG_PID")
    pid = int(pid_text[:9]) if isinstance(pid_text, str) and pid_text.isdigit() else None
    return [scrub(part) for part in msg.split("\n")], pid


class Display:
    """One physical line as a reader sees it: no colours, control bytes, CR or Markdown; JSON unwrapped."""

    __slots__ = ("final", "parts", "pid", "text", "truncated")

    def __init__(self, text: str, pid: int | None = None, truncated: bool = False,
                 parts: list[str] | None = None) -> None:
        self.text = text
        self.pid = pid
        self.truncated = truncated
        self.parts = parts  # journald JSON: the message's lines, already final (no prefix, never joined)
        self.final = parts is not None


def display(raw: bytes, quoted: bool = False) -> Display:
    """Decode and clean one physical line (without its newline); `quoted` as in `strip_markdown`."""
    text = raw.decode("utf-8", "replace")
    text = scrub(text)
    if text.startswith(("{", "\x1e{")) and '"MESSAGE"' in text:
        got = _json_message(text.lstrip("\x1e"))
        if got is not None:
            return Display(text, got[1], parts=got[0])
    if text:
        text = strip_markdown(text, quoted)
    if text.endswith("\u2026"):  # systemd's ellipsis (`systemctl status`, journalctl --no-full)
        return Display(text[:-1], truncated=True)
    return Display(text)


def _learn_width(lengths: list[int]) -> tuple[int | None, bool]:
    """The terminal width a paste was wrapped or chopped at, and whether it is confirmed: the longest line, if it is
    at least `MIN_WIDTH` long; confirmed when two lines or more are that long (else only a clear tail joins it)."""
    if not lengths:
        return None, False
    top = max(lengths)
    if top < MIN_WIDTH:
        return None, False
    return top, lengths.count(top) >= 2


class Joiner:
    """Physical lines in, records out; keeps one record back until the next line shows whether it goes on.

    Lines that start with one of `skip` (bytes) are counted and never decoded: the caller knows they carry nothing.
    Their continuations are skipped with them. A reader beside the caller may still want some of them: a skipped line
    that `tap` finds something in is decoded and joined with its continuations (exactly those skipping would skip)
    and handed to `on_tap` as `(number, text)` instead of being yielded, in its place in the order of records."""

    def __init__(self, skip: tuple[bytes, ...] = (), tap: re.Pattern[bytes] | None = None,
                 on_tap: Callable[[int, str], object] | None = None) -> None:
        self.skip = skip
        self.tap = tap if on_tap is not None else None
        self.on_tap = on_tap
        self.lines = 0  # physical lines read
        self.truncated = 0  # physical lines cut for length, chopped (`>`) or ellipsized (`…`)
        self.joined = 0  # physical lines that continued the record before them
        self.skipped = 0  # lines that started with `skip`, and their continuations
        self.tapped = 0  # skipped records handed to `on_tap`
        self.width: int | None = None  # the terminal width learned from the first lines, while it holds
        self.confirmed = False  # two lines or more were exactly that wide
        self.prefix = ""  # the prefix the records carry (`log_input.prefix_kind`), if they carry one
        self.quoted = False  # the paste is a Markdown quote: most lines start with `>`
        self.chop_marks = True  # a `>` in the width's last column is `less -S`'s mark (else a wrapped line's own)

    def records(self, lines: Iterable[tuple[bytes, bool]]) -> Iterator[Record]:
        """Records of a stream of `(physical line, cut)`. Reads the first `WINDOW_LINES` lines at once, to learn
        the terminal width; the counters are complete once the iterator is exhausted."""
        it = iter(lines)
        window: list[tuple[bytes, bool]] = []
        size = quoted = 0
        for item in it:
            window.append(item)
            size += len(item[0])
            quoted += item[0].lstrip(b" ").startswith(b">")
            if len(window) >= WINDOW_LINES or size >= WINDOW_BYTES:
                break
        self.quoted = quoted * 2 > sum(1 for raw, _ in window if raw.strip())
        lengths: list[int] = []
        gt_ends: list[int] = []  # the lengths of the lines that end in `>`
        kinds: dict[str, int] = {}
        plain = 0
        skip = self.skip
        for raw, _ in window:
            # (journald short-monotonic, "[ 1.2] h x[1]: ", starts like a quiet "[ 1/21]" line)
            if skip and raw.startswith(skip) and b"]: " not in raw[:80]:
                if raw.isascii():
                    lengths.append(len(raw) - raw.endswith(b"\r"))
                    if raw.rstrip(b"\r").endswith(b">"):
                        gt_ends.append(lengths[-1])
                plain += 1
            else:
                d = display(raw, self.quoted)
                if not d.final:
                    lengths.append(len(d.text))
                    if d.text.endswith(">"):
                        gt_ends.append(len(d.text))
                    if d.text:
                        kind = prefix_kind(d.text)
                        if kind:
                            kinds[kind] = kinds.get(kind, 0) + 1
                        elif starts_record(d.text):
                            plain += 1
        self.width, self.confirmed = _learn_width(lengths)
        # `less -S` ends every line it chops with `>`; a terminal's wrap leaves one there only by chance. With two
        # lines or more at the width, most of them without the mark, a `>` there is the wrapped line's own text.
        if self.confirmed:
            self.chop_marks = gt_ends.count(self.width or 0) * 2 > lengths.count(self.width or 0)
        # Records carry the prefix if most lines that start a record do (a wrapped paste has more tails than records).
        top = max(kinds, key=kinds.__getitem__, default="")
        self.prefix = top if top and kinds[top] >= 2 and kinds[top] >= plain else ""
        return self._run(chain(window, it))

    def _run(self, lines: Iterable[tuple[bytes, bool]]) -> Iterator[Record]:  # one hot loop
        # Under a paste prefix, raw bytes never start like a quiet line, except by accident (journald's
        # short-monotonic "[ 12.3]" looks like llama.cpp's "[ 1/21]"): the parser skips those by their text instead.
        pasted = self.prefix and self.prefix not in _NATIVE
        skip = self.skip if self.skip and not pasted else (b"\x00\x00no-skip",)
        width = self.width
        prefix = self.prefix
        confirmed = self.confirmed
        quoted = self.quoted
        chop_marks = self.chop_marks
        pend: str | None = None  # the held record's text (its physical lines joined)
        pend_last = ""  # its last physical line
        pend_count = 0  # how many physical lines it has
        pend_n = 0
        pend_pid: int | None = None
        pend_cut = False
        pend_len = 0  # length of the held record's last physical line (-1: not measured yet, see pend_raw)
        pend_raw = b""
        pend_skip = False  # the held "record" is a skipped line: its continuations are skipped too
        tap = self.tap
        on_tap = self.on_tap
        tap_text: str | None = None  # the held skipped record's text, when `tap` wants it (else never decoded)
        tap_last = ""
        tap_n = 0
        number = truncated = skipped = joined = tapped = 0
        for number, (raw, cut) in enumerate(lines, 1):  # number is read after the loop
            if raw.startswith(skip):
                if pend is not None:
                    if _plain(pend):
                        yield pend_n, pend, pend_pid, pend_cut
                    else:
                        yield from _finish(pend_n, pend, pend_pid, pend_cut)
                    pend = None
                if tap_text is not None:
                    tapped += _tap(on_tap, tap_n, tap_text)
                    tap_text = None
                if width is not None and len(raw) > width and _display_len(raw, quoted) > width:
                    width = None
                pend_skip, pend_len, pend_raw, pend_cut = True, -1, raw, cut
                if tap is not None and tap.search(raw) is not None:
                    text = raw.decode("utf-8", "replace")
                    if not (text[:1].isalpha() and text.isprintable() and "**" not in text
                            and text[-1] not in "`\u2026"):
                        d = display(raw, quoted)  # (as below: only such a line needs cleaning)
                        text = "" if d.final else d.text
                    if text:
                        tap_text, tap_last, tap_n = text, text, number
                skipped += 1
                if cut:
                    truncated += 1
                continue
            text = raw.decode("utf-8", "replace")
            if text.startswith("time=") and text.isprintable() and "**" not in text and text[-1] != "`" \
                    and not (pasted and confirmed and pend_len == width and pend is not None):
                # the common case: a plain slog line, a record start that needs no cleaning (except, in a prefixed
                # paste, after a line as wide as the terminal: a wrap that fell right before `time=`)
                if pend is not None:
                    if _plain(pend):
                        yield pend_n, pend, pend_pid, pend_cut
                    else:
                        yield from _finish(pend_n, pend, pend_pid, pend_cut)
                elif tap_text is not None:
                    tapped += _tap(on_tap, tap_n, tap_text)
                    tap_text = None
                pend_skip = False
                pend, pend_last, pend_count, pend_n, pend_pid, pend_cut = text, text, 1, number, None, cut
                pend_len = len(text)
                if cut:
                    truncated += 1
                if width is not None and pend_len > width:
                    width = None
                continue
            if text[:1].isalpha() and text.isprintable() and "**" not in text and text[-1] not in "`\u2026":
                d_pid, d_trunc, parts = None, False, None  # no Markdown, JSON or mark can start or end so
            else:
                d = display(raw, quoted)
                text, d_pid, d_trunc, parts = d.text, d.pid, d.truncated, d.parts
            if width is not None and len(text) > width:
                width = None
            start = parts is not None or not text
            if not start and not pend_cut and (pend is not None or pend_skip):
                if pend_len < 0:  # a skipped line, measured only now that it matters
                    pend_len = _display_len(pend_raw, quoted) if width is not None and len(pend_raw) >= width else 0
                # A line as wide as the widest is a wrap only if two were (confirmed): a single longest line is
                # too often a record followed by another (a version line, then the error that matters).
                at_width = confirmed and width is not None and pend_len == width
                open_quote = pend is not None and pend_count < 2 * MAX_JOIN and quote_open(pend)
                strict = at_width or open_quote
                # The widest line, seen once, followed by a line that goes on mid-word: a single wrapped line.
                mid_word = (not confirmed and width is not None and pend_len == width and pend is not None
                            and (_TAIL_START.match(text) is not None or (_MID_WORD_END.search(pend_last) is not None
                                                                        and _MID_WORD_START.match(text) is not None)
                                 or _inside_size(pend_last, text)))
                if (strict or mid_word or (prefix and prefix not in _NATIVE and prefix_kind(text) != prefix)
                        or (pend is not None and pend_count < 2 * MAX_JOIN and _slog_tail(pend, text))) \
                        and _continues(text, strict, prefix, at_width and open_quote):
                    joined += 1
                    if cut:
                        truncated += 1
                    if pend_skip:
                        skipped += 1
                        if tap_text is not None and len(tap_text) < MAX_RECORD:
                            if pend_len != width and not tap_last[-1:].isspace() and not text[:1].isspace():
                                tap_text += " "  # as a held record below
                            tap_text += text
                            tap_last = text
                        pend_len, pend_cut = len(text), cut
                        continue
                    assert pend is not None
                    if pend_len != width and not pend_last[-1:].isspace() and not text[:1].isspace():
                        pend += " "  # broken by hand where a space was: the space went with the break
                    pend += text
                    pend_last, pend_count, pend_len, pend_cut = text, pend_count + 1, len(text), cut or d_trunc
                    if len(pend) > MAX_RECORD:
                        pend_cut = True
                    continue
            if pend is not None:
                if pend.startswith("time=") and pend.find("time=", 5) < 0 and "]: " not in pend \
                        and pend.find("[GIN", 1) < 0:
                    yield pend_n, pend, pend_pid, pend_cut
                else:
                    yield from _finish(pend_n, pend, pend_pid, pend_cut)
                pend = None
            elif tap_text is not None:
                tapped += _tap(on_tap, tap_n, tap_text)
                tap_text = None
            pend_skip = False
            if cut or d_trunc:
                truncated += 1
            if parts is not None:
                for part in parts:
                    part_text, part_pid = strip_prefixes(part)
                    yield number, part_text, part_pid if part_pid is not None else d_pid, cut
                pend_len, pend_cut = 0, True
                continue
            n = len(text)
            if chop_marks and width is not None and n == width and text.endswith(">"):
                # `less -S` marks a chopped line with `>` in its last column; a wrapped line that ends in `>` by
                # chance was rejoined above before it got here, or is told by the other lines at the width.
                text = text[:-1]
                if not (cut or d_trunc):
                    truncated += 1
                d_trunc = True
            pend, pend_last, pend_count, pend_n, pend_pid, pend_cut, pend_len = (
                text, text, 1, number, d_pid, cut or d_trunc, n)
        if pend is not None:
            yield from _finish(pend_n, pend, pend_pid, pend_cut)
        elif tap_text is not None:
            tapped += _tap(on_tap, tap_n, tap_text)
        self.lines += number
        self.truncated += truncated
        self.skipped += skipped
        self.joined += joined
        self.tapped += tapped
        self.width = width


def _tap(on_tap: Callable[[int, str], object] | None, number: int, text: str) -> int:
    """Hand a skipped record that the tap wants to `on_tap`, finished as a yielded record is; returns 1."""
    if on_tap is None:
        pass
    elif "]: " not in text and " |" not in text[:100] and text.find("time=") < 0 and text.find("[GIN") < 0:
        on_tap(number, text)  # no prefix `_finish` could strip (`log_input._strip_prefix`), nothing glued on
    else:
        for piece in _finish(number, text, None, False):
            on_tap(piece[0], piece[1])
    return 1


def _display_len(raw: bytes, quoted: bool = False) -> int:
    """A physical line's length as a terminal showed it; -1 for journald JSON (never wrapped by us)."""
    if raw.startswith(b"time=") and raw.isascii() and b"**" not in raw and b"\x1b" not in raw \
            and not raw.endswith((b"\r", b"`")):
        return len(raw)
    d = display(raw, quoted)
    return -1 if d.final else len(d.text)


# Where a second record begins inside a line: the records were glued together when the paste lost its newlines.
_GLUE: Final = re.compile(
    r"(?<![_.])time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)\s+level="
    r"|(?<![\w.])time=\S+\s+(?:level|source)="  # a redacted or odd timestamp: only after a space or quote
    r"|\[GIN(?:-debug)?\]\s"
    r"|(?:[A-Z][a-z]{2}\s[\s\d]\d\s\d\d:\d\d:\d\d(?:\.\d+)?|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?"
    r"(?:Z|[+-]\d\d:?\d\d))\s\S+\s[^\s\[\]]+\[\d+\]:\s"
    r"|\d{4}/\d\d/\d\d\s\d\d:\d\d:\d\d\s\w+\.go:\d+:"
)


def split_glued(text: str) -> list[str]:
    """A line holding several records, cut where each record after the first begins; else the line alone."""
    if text.find("time=", 1) < 0 and text.find("[GIN", 1) < 0 and "]: " not in text and not (
            text[4:5] == "/" and text.find(text[:5], 5) > 0):
        return [text]
    cuts = [m.start() for m in _GLUE.finditer(text, 1)]
    if not cuts:
        return [text]
    out = []
    prev = 0
    for c in cuts:
        piece = text[prev:c].rstrip()
        if piece:
            out.append(piece)
        prev = c
    out.append(text[prev:])
    return out


def _plain(text: str) -> bool:
    """A single slog record needing no finishing: nothing glued on (no second `time=`, `[GIN`, journald prefix)."""
    return text.startswith("time=") and text.find("time=", 5) < 0 and "]: " not in text and text.find("[GIN", 1) < 0


def _finish(number: int, text: str, pid: int | None, truncated: bool) -> list[Record]:
    """The records of one held record: its prefix removed, cut where glued records begin."""
    if not text:
        return [(number, text, pid, truncated)]
    text, p = strip_prefixes(text)
    if p is not None:
        pid = p
    pieces = split_glued(text)
    if len(pieces) == 1:
        return [(number, text, pid, truncated)]
    out: list[Record] = []
    for piece in pieces:
        piece_text, piece_pid = strip_prefixes(piece)
        out.append((number, piece_text, piece_pid if piece_pid is not None else pid, truncated))
    return out
