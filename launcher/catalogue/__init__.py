"""The message catalogue: every log statement of Ollama and the GGML/llama.cpp code it ships that bears on where a
model runs, as data (one JSON-lines file per source family), with provenance, release lines and the fact it yields.

An entry is one format string as it stands in the source. `fact` is the event kind the log parser must yield for a
line printed from it, or `irrelevant`. `at` maps each release line that prints it to `file:line@tag` (a source
statement), `fixture:<path>@<version>` (a real log) or `reference:<section>@<tag>` (reference/ollama-internals.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final

from launcher.generations import RELEASE_LINE_NAMES, generation_of, generations_of_lines

FAMILIES: Final = ("ollama_go", "ggml_c", "curated")  # extracted from Go; from C; added by hand (errors, runtime)
SHAPES: Final = frozenset({"slog", "goprintf", "c", "text"})
IRRELEVANT: Final = "irrelevant"
# The tags whose sources tools/catalogue_extract.py read, oldest first. Both sides of every generation boundary are
# here (v0.2.8/v0.3.0, v0.5.7/v0.5.8, v0.12.3/v0.12.4, v0.24.0/v0.30.0), so the versions between two neighbouring
# tags of this list belong to the generations of those two tags.
# Generation D runs upstream llama-server, whose GGML is not in Ollama's repository: its statements are cited from
# ggml-org/ggml at this tag (2026-08-21, the date of v0.33.0-rc2; D builds its own llama.cpp pin).
UPSTREAM_GGML_TAG: Final = "ggml-v0.21.0"
SAMPLED_TAGS: Final = ("v0.1.9", "v0.1.20", "v0.1.32", "v0.1.48", "v0.2.0", "v0.2.8", "v0.3.0", "v0.3.14", "v0.4.0",
                       "v0.4.7", "v0.5.7", "v0.5.8", "v0.5.13", "v0.6.0", "v0.6.8", "v0.11.11", "v0.12.0", "v0.12.3",
                       "v0.12.4", "v0.13.5", "v0.24.0", "v0.30.0", "v0.32.15", "v0.33.0-rc2")


class CatalogueError(ValueError):
    """A catalogue file that does not hold valid entries (names the file, line and problem)."""


@dataclass(frozen=True)
class Entry:
    """One log statement."""

    id: str
    family: str
    fmt: str
    shape: str
    at: Mapping[str, str]  # release line → provenance
    fact: str
    fields: tuple[str, ...] = ()
    func: str | None = None  # the C function whose name `%s: …` prints (__func__)
    args: tuple[str, ...] = ()  # realistic printf arguments, in order (after __func__)
    values: Mapping[str, str] = field(default_factory=dict)  # realistic slog values by key
    expect: Mapping[str, Any] = field(default_factory=dict)  # event data the fact must carry
    note: str = ""
    seen: tuple[str, ...] = ()  # the sampled tags whose sources hold the statement (extracted entries)

    @property
    def lines(self) -> tuple[str, ...]:
        """Release lines that print this statement, oldest first."""
        return tuple(x for x in RELEASE_LINE_NAMES if x in self.at)

    @property
    def relevant(self) -> bool:
        """Whether the statement yields a fact."""
        return self.fact != IRRELEVANT


def _entry(family: str, raw: Mapping[str, Any], where: str) -> Entry:
    try:
        at = dict(raw["at"])
        entry = Entry(id=str(raw["id"]), family=family, fmt=str(raw["fmt"]), shape=str(raw["shape"]), at=at,
                      fact=str(raw["fact"]), fields=tuple(raw.get("fields", ())), func=raw.get("func"),
                      args=tuple(str(a) for a in raw.get("args", ())), values=dict(raw.get("values", {})),
                      expect=dict(raw.get("expect", {})), note=str(raw.get("note", "")),
                      seen=tuple(str(t) for t in raw.get("seen", ())))
    except (KeyError, TypeError, ValueError) as exc:
        raise CatalogueError(f"{where}: {exc!r}") from None
    if entry.shape not in SHAPES:
        raise CatalogueError(f"{where}: unknown shape {entry.shape!r}")
    if set(entry.seen) - set(SAMPLED_TAGS):
        raise CatalogueError(f"{where}: seen names a tag the extraction did not read")
    unknown = set(at) - set(RELEASE_LINE_NAMES)
    if not at or unknown:
        raise CatalogueError(f"{where}: release lines {sorted(unknown) or 'missing'}")
    if not all("@" in p and p.split("@", 1)[1] for p in at.values()):
        raise CatalogueError(f"{where}: every provenance names its tag or version after '@'")
    return entry


def parse(family: str, text: str, name: str = "<text>") -> list[Entry]:
    """Entries of one JSON-lines catalogue file."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CatalogueError(f"{name}:{number}: {exc.msg}") from None
        if not isinstance(raw, dict):
            raise CatalogueError(f"{name}:{number}: not an object")
        out.append(_entry(family, raw, f"{name}:{number}"))
    return out


def printed_by(entry: Entry) -> frozenset[str]:
    """The generations whose versions print an extracted statement: those of every sampled tag from the first that
    holds it to the last (the versions between two neighbouring sampled tags share those tags' generations)."""
    if not entry.seen:
        return generations_of_lines(entry.lines)
    index = [SAMPLED_TAGS.index(t) for t in entry.seen]
    span = SAMPLED_TAGS[min(index) : max(index) + 1]
    return frozenset(g for g in (generation_of(t) for t in span) if g is not None)


def message_generations(entries: tuple[Entry, ...] | None = None) -> dict[str, frozenset[str]]:
    """Each Go slog message of the extracted sources → the generations whose versions print it (union over the
    entries that share the message). Only the `ollama_go` family: its statements were read at every sampled tag."""
    out: dict[str, frozenset[str]] = {}
    for e in entries if entries is not None else load(("ollama_go",)):
        if e.family == "ollama_go" and e.shape == "slog" and "%" not in e.fmt and not e.fmt.endswith((" ", "=")):
            out[e.fmt] = out.get(e.fmt, frozenset()) | printed_by(e)
    return out


def load(families: tuple[str, ...] = FAMILIES) -> tuple[Entry, ...]:
    """Every entry of the families (all by default); ids are unique."""
    entries: list[Entry] = []
    for family in families:
        name = f"{family}.jsonl"
        entries.extend(parse(family, resources.files(__package__).joinpath(name).read_text("utf-8"), name))
    seen: set[str] = set()
    for e in entries:
        if e.id in seen:
            raise CatalogueError(f"duplicate id {e.id}")
        seen.add(e.id)
    return tuple(entries)
