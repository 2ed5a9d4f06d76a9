"""`python -m launcher.catalogue.coverage`: per release line, how many relevant catalogue statements the log parser
recognises, from a realistic line built from each format string (plain and under a journald prefix).

Also lists what the catalogue and the pattern rows say about each other: rows that no catalogue line reaches (a row
with no entry), relevant entries that no row reaches (an entry with no row), and irrelevant entries that produce
events anyway (noise). Exit status 0 when every release line is at or above the target, else 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from launcher.catalogue import Entry, load
from launcher.catalogue.sample import JOURNAL_PREFIX, sample, version_line
from launcher.events import Event
from launcher.generations import RELEASE_LINE_NAMES
from launcher.log_input import Line
from launcher.log_patterns import ROWS, Row
from launcher.ollama_logs import LogParser, parse_text

TARGET: Final = 0.95
QUIET_KINDS: Final = frozenset({"generation", "parse_summary"})


@dataclass(frozen=True)
class Check:
    """One entry on one release line: the line built, the events the parser gave, whether the fact was among them."""

    entry: Entry
    release: str
    text: str
    kinds: tuple[str, ...]
    ok: bool
    journald_ok: bool


def _events(lines: Sequence[str]) -> list[Event]:
    return [e for e in parse_text("\n".join(lines) + "\n") if e.kind not in QUIET_KINDS]


def _yields(entry: Entry, events: Iterable[Event]) -> bool:
    return any(e.kind == entry.fact and all(e.data.get(k) == v for k, v in entry.expect.items()) for e in events)


def check(entry: Entry, release: str) -> Check:
    """Build the entry's line for a release line (after that version's `Listening on` line) and parse it."""
    text = sample(entry, release)
    head = version_line(entry, release)
    base = len(_events([head]))  # the version line's own events come first
    events = _events([head, text])[base:]
    journald = _events([JOURNAL_PREFIX + head, JOURNAL_PREFIX + text])[base:]
    kinds = tuple(e.kind for e in events)
    if entry.relevant:
        return Check(entry, release, text, kinds, _yields(entry, events), _yields(entry, journald))
    return Check(entry, release, text, kinds, not events, not journald)


def rows_reached(entry: Entry, release: str) -> list[Row]:
    """The pattern rows whose regex turns the entry's line into an event (the row → entry link, computed)."""
    parser = LogParser()
    parser.feed(Line(1, version_line(entry, release)))
    return parser.rows_matching(sample(entry, release))


@dataclass
class Report:
    """Coverage per release line and the cross-references."""

    checks: list[Check] = field(default_factory=list)
    row_entries: dict[int, set[str]] = field(default_factory=dict)

    def line_score(self, release: str) -> tuple[int, int]:
        """(recognised, total) relevant statements of a release line; recognised means plain and journald."""
        rel = [c for c in self.checks if c.release == release and c.entry.relevant]
        return sum(c.ok and c.journald_ok for c in rel), len(rel)

    def misses(self) -> list[Check]:
        """Relevant entries not recognised."""
        return [c for c in self.checks if c.entry.relevant and not (c.ok and c.journald_ok)]

    def noise(self) -> list[Check]:
        """Irrelevant entries that produce events."""
        return [c for c in self.checks if not c.entry.relevant and not (c.ok and c.journald_ok)]

    def rows_without_entry(self) -> list[Row]:
        """Rows that no catalogue line reaches."""
        return [row for i, row in enumerate(ROWS) if not self.row_entries.get(i)]


def measure(entries: Iterable[Entry] | None = None) -> Report:
    """Check every entry on every release line that prints it."""
    report = Report()
    index = {id(row): i for i, row in enumerate(ROWS)}
    for entry in entries if entries is not None else load():
        for release in entry.lines:
            report.checks.append(check(entry, release))
            if entry.relevant:
                for row in rows_reached(entry, release):
                    report.row_entries.setdefault(index[id(row)], set()).add(entry.id)
    return report


def render(report: Report, verbose: bool = False) -> str:
    """The table an operator or reviewer reads."""
    out = ["release line   recognised / relevant   coverage   (irrelevant statements)"]
    for release in RELEASE_LINE_NAMES:
        ok, total = report.line_score(release)
        irrelevant = sum(1 for c in report.checks if c.release == release and not c.entry.relevant)
        pct = f"{100 * ok / total:5.1f} %" if total else "    - "
        out.append(f"{release:<14} {ok:>10} / {total:<10}   {pct}   ({irrelevant})")
    misses = report.misses()
    out.append(f"not recognised: {len(misses)}")
    out.extend(f"  {c.release:<10} {c.entry.id} (wants {c.entry.fact}; got {', '.join(c.kinds) or 'nothing'}"
               f"{'; only under a journald prefix' if c.ok and not c.journald_ok else ''})" for c in misses)
    noise = report.noise()
    out.append(f"irrelevant statements that produce events: {len(noise)}")
    out.extend(f"  {c.release:<10} {c.entry.id} → {', '.join(c.kinds)}" for c in noise)
    lonely = report.rows_without_entry()
    out.append(f"pattern rows no catalogue entry reaches: {len(lonely)}")
    out.extend(f"  {row.kind} ({row.msg or row.needle!r})" for row in lonely)
    if verbose:
        out.append("rows → entries:")
        for i, row in enumerate(ROWS):
            ids = sorted(report.row_entries.get(i, ()))
            out.append(f"  {row.kind} ({row.msg or row.needle!r}): {', '.join(ids) or '-'}")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the coverage table; exit 1 when a release line is below the target."""
    parser = argparse.ArgumentParser(prog="python -m launcher.catalogue.coverage", description=__doc__)
    parser.add_argument("--rows", action="store_true", help="also list, per pattern row, the entries it recognises")
    args = parser.parse_args(argv)
    report = measure()
    sys.stdout.write(render(report, verbose=args.rows))
    below = [r for r in RELEASE_LINE_NAMES if report.line_score(r)[1] and
             report.line_score(r)[0] / report.line_score(r)[1] < TARGET]
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
