"""Ollama server output of any generation → `Event(source="log")`, streaming, one line at a time, never raising."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import IO, Final, Protocol

from launcher.catalogue import message_generations
from launcher.events import Event, EventError
from launcher.generations import ALL, generation_of, shape_generations, slog_message
from launcher.log_input import Line, read_chunks, split_lines
from launcher.log_patterns import ROWS, Row
from launcher.paste import Joiner

TEXT_CHARS: Final = 300  # how much of a line an event keeps, for the evidence the board cites

# Lines that never carry GPU evidence; skipped before any pattern work (the bulk of a runner's output).
SKIP_PREFIXES: Final = ("[GIN]", "[ ", '{"timestamp"', "slot ", "que ", "srv ", "res ", "<|", "spec ")
# llama.cpp lines start with the printing function's name: those that never print evidence are skipped, and those
# that print evidence on one kind of line only are skipped unless the line holds that text.
QUIET_FUNCTIONS: Final = frozenset({
    "llama_model_loader", "print_info", "load", "llm_load_print_meta", "llm_load_vocab", "resolve_fused_ops",
    "common_memory_breakdown_print", "common_params_fit_impl", "common_fit_params", "cmn  common_init_",
    "cmn          init", "llama_model_quantize_impl", "llama_quantize", "common_chat_peg_parse", "init_tokenizer",
    "graph_reserve", "set_abort_callback", "llama_model_load", "llm_load_tensors: ggml ctx size",
})
# The same, as raw bytes: lines that start so are counted and skipped before they are even decoded.
QUIET_BYTES: Final = tuple(p.encode() for p in SKIP_PREFIXES) + tuple(f"{f}:".encode() for f in QUIET_FUNCTIONS)
FUNCTION_NEEDS: Final = {"llama_context": ("buffer size",), "sched_reserve": ("buffer size",),
                         "llama_kv_cache": ("buffer size",), "llama_kv_cache_init": ("buffer size",),
                         "llama_new_context_with_model": ("buffer size", "failed to"),
                         "cmn  common_param": ("verbosity",)}


def _needle_regex(needles: Iterable[str]) -> re.Pattern[str]:
    """One regex that finds any needle, built as a trie so that a line is scanned once, not once per needle."""
    trie: dict[str, dict] = {}  # type: ignore[type-arg]
    for word in needles:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:  # type: ignore[type-arg]
        alts = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        if "" in node:
            return "(?:" + body + ")?"
        return body

    return re.compile(emit(trie))


_BY_NEEDLE: Final[dict[str, tuple[Row, ...]]] = {}
_BY_MSG: Final[dict[str, tuple[Row, ...]]] = {}
for _row in ROWS:
    if _row.msg is not None:
        _BY_MSG[_row.msg] = (*_BY_MSG.get(_row.msg, ()), _row)
    else:
        _BY_NEEDLE[_row.needle] = (*_BY_NEEDLE.get(_row.needle, ()), _row)
_NEEDLES: Final = _needle_regex(_BY_NEEDLE)


_slog_msg = slog_message
_MESSAGES: Final = message_generations()  # slog message → generations whose sources print it (the catalogue)


class LogParser:
    """Feeds on lines; returns the events each line proves. Tracks the version and the generation it implies."""

    def __init__(self) -> None:
        self.version: str | None = None
        self.generation: str | None = None
        self.generation_from: str | None = None  # "version", "inferred", or None while unknown
        self.version_unknown = False  # a version was printed that no generation row knows: common rows only
        self._possible: frozenset[str] = ALL
        self._open = True  # whether line shapes may still narrow the generation (no version, not yet one left)
        self.lines = 0
        self.truncated = 0
        self.errors = 0

    def _applies(self, row: Row) -> bool:
        if row.gens is ALL or row.gens == ALL:
            return True
        if self.generation_from == "version":
            return self.generation in row.gens
        if self.version_unknown:  # a version newer than the tables: its own generation's rows once the lines show it
            return self.generation_from == "inferred" and self.generation in row.gens
        return True

    def _candidates(self, text: str) -> list[Row]:
        msg = _slog_msg(text)
        if msg is not None:
            rows = list(_BY_MSG.get(msg, ()))
            hay = msg
        else:
            if text.startswith(SKIP_PREFIXES):
                return []
            head, sep, rest = text.partition(":")
            if sep and len(head) < 40:
                if head in QUIET_FUNCTIONS:
                    return []
                needs = FUNCTION_NEEDS.get(head)
                if needs is not None and not any(n in rest for n in needs):
                    return []
            rows = []
            hay = text
        for needle in _NEEDLES.findall(hay):
            rows.extend(_BY_NEEDLE.get(needle, ()))
        return rows

    def rows_matching(self, text: str) -> list[Row]:
        """The rows that would turn `text` into an event now (for the catalogue's row → entry links)."""
        out = []
        for row in self._candidates(text):
            if self._applies(row):
                m = row.regex.search(text)
                if m is not None and row.event_data(m) is not None:
                    out.append(row)
        return out

    def feed(self, line: Line) -> list[Event]:
        """Events for one line; a line that matches nothing gives none. Never raises on any text."""
        return self.feed_text(line.number, line.text, line.pid, line.truncated)

    def feed_text(self, number: int, text: str, pid: int | None = None, truncated: bool = False) -> list[Event]:
        """`feed` without building a `Line` first: the hot path, where almost every line matches nothing."""
        self.lines += 1
        if truncated:
            self.truncated += 1
        if not text:
            return []
        try:
            shaped = self._shape(number, text, pid, truncated) if self._open and text[0] != "[" else None
            rows = self._candidates(text)
            if not rows:
                return shaped or []
            events = self._match(Line(number, text, pid, truncated), text, rows)
            return shaped + events if shaped else events
        except (EventError, ValueError, IndexError, TypeError, OverflowError, RecursionError):
            self.errors += 1  # a row that cannot read an odd line is that line's loss, never the parse's
            return []

    def _match(self, line: Line, text: str, rows: list[Row]) -> list[Event]:
        out: list[Event] = []
        seen: set[str] = set()
        for row in rows:
            if row.kind in seen or not self._applies(row):
                continue
            m = row.regex.search(text)
            if m is None:
                continue
            data = row.event_data(m)
            if data is None:
                continue
            kind = data.pop("kind", row.kind)
            seen.add(row.kind)
            if row.kind == "version":
                out.extend(self._on_version(line, str(data.get("version", ""))))
            elif row.gens != ALL and self.generation_from != "version":
                out.extend(self._infer(line, row.gens, f"a {row.kind} line of this form"))
            out.append(self._event(line, kind, data))
        return out

    def _event(self, line: Line, kind: str, data: dict[str, object]) -> Event:
        clean = {k: v for k, v in data.items() if v is not None}
        return Event(source="log", kind=kind, t=float(line.number), pid=line.pid,
                     data={"line": line.number, "text": line.text[:TEXT_CHARS], **clean})

    def _shape(self, number: int, text: str, pid: int | None, truncated: bool) -> list[Event] | None:
        """A line whose shape (source file, message key, runner command line) exists in some generations only."""
        found = shape_generations(text, _MESSAGES)
        if found is None:
            return None
        gens, basis = found
        return self._infer(Line(number, text, pid, truncated), gens, basis) or None

    def _on_version(self, line: Line, version: str) -> list[Event]:
        gen = generation_of(version)
        self.version = version[:40]
        if gen is None:
            self.version_unknown = True
            self.generation, self.generation_from, self._possible = None, None, ALL
        else:
            self.version_unknown = False
            self.generation, self.generation_from, self._possible = gen, "version", frozenset({gen})
            self._open = False
        return [self._event(line, "generation", {"generation": gen, "from": "version", "version": self.version,
                                                  "known": gen is not None})]

    def _infer(self, line: Line, gens: frozenset[str], basis: str) -> list[Event]:
        """A line that exists only in some generations is evidence of the generation (no version printed)."""
        narrowed = self._possible & gens or gens
        if narrowed == self._possible:
            return []
        self._possible = narrowed
        if len(narrowed) != 1:
            return []
        (gen,) = narrowed
        self._open = False
        if gen == self.generation:
            return []
        self.generation, self.generation_from = gen, "inferred"
        return [self._event(line, "generation", {"generation": gen, "from": "inferred", "known": True,
                                                  "basis": f"{basis}, line {line.number}"})]

    def summary(self) -> Event:
        """One closing event: how much was read and what the generation ended up as."""
        return Event(source="log", kind="parse_summary", t=float(self.lines), data={
            "lines": self.lines, "truncated": self.truncated, "unreadable_rows": self.errors,
            "version": self.version, "generation": self.generation, "generation_from": self.generation_from,
            "version_unknown": self.version_unknown})


def parse_lines(lines: Iterable[Line]) -> Iterator[Event]:
    """Events of already split lines, then the closing `parse_summary` event."""
    parser = LogParser()
    for line in lines:
        yield from parser.feed(line)
    yield parser.summary()


class RecordTap(Protocol):
    """A reader of the records the parser reads, beside it (the memory account of `explain`)."""

    @property
    def quiet(self) -> re.Pattern[bytes]:
        """Which quiet lines (`QUIET_BYTES`, skipped by the parser) it reads too: those this finds something in."""
        ...

    def feed(self, number: int, text: str) -> object:
        """One record: the physical line it starts on, its text (rejoined, prefix and Markdown removed)."""
        ...


def parse_chunks(chunks: Iterable[bytes], tap: RecordTap | None = None) -> Iterator[Event]:
    """Events of a byte stream given in any chunking (the result does not depend on where chunks split).

    The stream may be a paste: `launcher.paste` rejoins wrapped records and splits glued ones first. `tap` reads
    the same records in the same pass, in order, with the quiet ones it asks for; the events do not depend on it."""
    parser = LogParser()
    feed = parser.feed_text
    if tap is None:
        joiner = Joiner(QUIET_BYTES)
        for record in joiner.records(split_lines(chunks)):  # QUIET_BYTES lines are counted, never decoded
            events = feed(*record)
            if events:
                yield from events
    else:
        take = tap.feed
        joiner = Joiner(QUIET_BYTES, tap.quiet, take)  # the quiet lines it asks for go to it alone, rejoined
        for record in joiner.records(split_lines(chunks)):
            take(record[0], record[1])
            events = feed(*record)
            if events:
                yield from events
    parser.lines, parser.truncated = joiner.lines, joiner.truncated
    yield parser.summary()


def tap_records(chunks: Iterable[bytes], tap: RecordTap) -> None:
    """Feed `tap` what `parse_chunks` would feed it, without parsing (a log's memory account on its own)."""
    take = tap.feed
    for record in Joiner(QUIET_BYTES, tap.quiet, take).records(split_lines(chunks)):
        take(record[0], record[1])


def parse_stream(stream: IO[bytes]) -> Iterator[Event]:
    """Events of a binary stream, read in fixed-size chunks: memory stays flat whatever the size."""
    return parse_chunks(read_chunks(stream))


def parse_text(text: str | bytes) -> list[Event]:
    """Events of a whole log held in memory (tests, small inputs)."""
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    return list(parse_chunks([raw]))
