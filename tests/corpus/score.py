"""Score `explain` on the labelled real logs in tests/corpus (README.md there says how they were taken and split).

    python -m tests.corpus.score [--split dev|heldout|all] [--json]

Each case's server.log goes through the same library path as `ollama-gpu explain --json` (parse, feed the board,
judge). Scored: cases labelled high or medium; for causes, those whose labelled cause is not `unknown`. A false
alarm is a healthy GPU case (outcome gpu, cause none) given cpu_fallback, crash or partial_offload. A traceback is
any exception out of the library: it is counted, printed with its case, and never stops the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from launcher.commands.explain import explain_stream
from launcher.vocabulary import CAUSES, OUTCOMES

CORPUS: Final = Path(__file__).resolve().parent
INDEX: Final = CORPUS / "INDEX.json"
SPLITS: Final = ("dev", "heldout")
CONFIDENCES: Final = ("high", "medium", "low")
SCORED: Final = ("high", "medium")
ALARMS: Final = ("cpu_fallback", "crash", "partial_offload")
# Causes that DESIGN.md lists (issue 13 adds them) but launcher/vocabulary.py may not have yet: a label may use
# them; a verdict cannot, so such a case is a cause miss until the vocabulary grows.
PLANNED_CAUSES: Final = frozenset({"fabric_manager_not_running", "container_gpu_access_lost", "gpu_lost"})
LABEL_FIELDS: Final = ("source", "ollama_version", "os", "gpu_vendor", "outcome", "cause", "cause_evidence",
                       "confidence")


class CorpusError(Exception):
    """A case folder or the index is malformed (a labelling mistake, not a parser result)."""


@dataclass(frozen=True)
class Case:
    """One labelled log: its folder name, split and labels."""

    name: str
    split: str
    outcome: str
    cause: str
    confidence: str
    source: str
    ollama_version: str | None
    log: Path

    @property
    def scored(self) -> bool:
        return self.confidence in SCORED

    @property
    def cause_scored(self) -> bool:
        return self.scored and self.cause != "unknown"

    @property
    def healthy(self) -> bool:
        return self.outcome == "gpu" and self.cause == "none"


@dataclass(frozen=True)
class Result:
    """What `explain` said about one case, and how that compares with the labels."""

    case: Case
    outcome: str | None  # None: the library raised
    cause: str | None
    error: str | None = None

    @property
    def outcome_right(self) -> bool:
        return self.outcome == self.case.outcome

    @property
    def cause_right(self) -> bool:
        return self.cause == self.case.cause

    @property
    def right(self) -> bool:
        """Right as the corpus test demands: outcome, and the cause where the label names one."""
        return self.outcome_right and (self.case.cause == "unknown" or self.cause_right)

    @property
    def false_alarm(self) -> bool:
        return self.case.healthy and self.outcome in ALARMS


@dataclass(frozen=True)
class Totals:
    """The score of one set of results."""

    cases: int
    outcomes_right: int
    outcomes_scored: int
    causes_right: int
    causes_scored: int
    false_alarms: int
    healthy: int
    tracebacks: int

    def line(self) -> str:
        outcomes = _pct(self.outcomes_right, self.outcomes_scored)
        return (f"outcomes {self.outcomes_right}/{self.outcomes_scored} ({outcomes})"
                f", causes {self.causes_right}/{self.causes_scored} ({_pct(self.causes_right, self.causes_scored)})"
                f", false alarms {self.false_alarms}/{self.healthy} healthy, tracebacks {self.tracebacks}"
                f" ({self.cases} cases)")


def _pct(good: int, total: int) -> str:
    return f"{100 * good / total:.0f} %" if total else "n/a"


def load_index(path: Path = INDEX) -> dict[str, str]:
    """Case name -> split, checked."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorpusError(f"{path}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and v in SPLITS for k, v in data.items()):
        raise CorpusError(f"{path}: must map each case name to one of {SPLITS}")
    return data


def _label(folder: Path) -> dict[str, Any]:
    try:
        loaded = json.loads((folder / "case.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorpusError(f"{folder.name}: case.json: {exc}") from exc
    if not isinstance(loaded, dict):
        raise CorpusError(f"{folder.name}: case.json must hold one JSON object")
    label: dict[str, Any] = loaded
    missing = [f for f in LABEL_FIELDS if f not in label]
    if missing:
        raise CorpusError(f"{folder.name}: case.json lacks {missing}")
    if label["outcome"] not in OUTCOMES:
        raise CorpusError(f"{folder.name}: outcome {label['outcome']!r} is not in the vocabulary")
    if label["cause"] not in CAUSES and label["cause"] not in PLANNED_CAUSES:
        raise CorpusError(f"{folder.name}: cause {label['cause']!r} is not in the vocabulary")
    if label["confidence"] not in CONFIDENCES:
        raise CorpusError(f"{folder.name}: confidence {label['confidence']!r} is not one of {CONFIDENCES}")
    if label["confidence"] == "low" and label["cause"] != "unknown" and not label["cause_evidence"]:
        raise CorpusError(f"{folder.name}: a low case must say in cause_evidence what the paste lacks")
    if not folder.name.startswith(f"{label['outcome']}-{label['cause']}-"):
        raise CorpusError(f"{folder.name}: the name must start with <outcome>-<cause>-")
    return label


def load_cases(corpus: Path = CORPUS, index: dict[str, str] | None = None) -> list[Case]:
    """Every case folder, with its split from the index (a folder missing from the index, or the reverse, is an
    error: every case must have been assigned before anyone looks at scores)."""
    index = load_index(corpus / "INDEX.json") if index is None else index
    folders = sorted(p for p in corpus.iterdir() if p.is_dir() and (p / "case.json").exists())
    names = {p.name for p in folders}
    unassigned = sorted(names - index.keys())
    stale = sorted(index.keys() - names)
    if unassigned or stale:
        raise CorpusError(f"INDEX.json out of step: unassigned {unassigned}, no such case {stale}")
    out = []
    for folder in folders:
        label = _label(folder)
        if not (folder / "server.log").is_file():
            raise CorpusError(f"{folder.name}: no server.log")
        out.append(Case(name=folder.name, split=index[folder.name], outcome=label["outcome"], cause=label["cause"],
                        confidence=label["confidence"], source=label["source"],
                        ollama_version=label["ollama_version"], log=folder / "server.log"))
    return out


def judge_case(case: Case) -> Result:
    """Run `explain`'s library path on one case; an exception is a result, not a crash of the scorer."""
    try:
        with open(case.log, "rb") as stream:
            verdict = explain_stream(stream)
    except Exception as exc:  # a traceback is what we count, not a reason to stop
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return Result(case=case, outcome=None, cause=None, error=detail)
    return Result(case=case, outcome=verdict.outcome, cause=verdict.cause)


def judge_all(cases: Sequence[Case]) -> list[Result]:
    return [judge_case(c) for c in cases]


def totals(results: Sequence[Result]) -> Totals:
    scored = [r for r in results if r.case.scored]
    cause_scored = [r for r in results if r.case.cause_scored]
    healthy = [r for r in results if r.case.healthy]
    return Totals(cases=len(results),
                  outcomes_right=sum(r.outcome_right for r in scored), outcomes_scored=len(scored),
                  causes_right=sum(r.cause_right for r in cause_scored), causes_scored=len(cause_scored),
                  false_alarms=sum(r.false_alarm for r in healthy), healthy=len(healthy),
                  tracebacks=sum(r.error is not None for r in results))


def _mark(r: Result) -> str:
    if r.error is not None:
        return "TRACEBACK"
    if r.false_alarm:
        return "FALSE ALARM"
    if not r.case.scored:
        return "low"
    return "ok" if r.right else "MISS"


def _rows(results: Sequence[Result]) -> Iterator[str]:
    width = max((len(r.case.name) for r in results), default=4)
    yield f"{'case':{width}}  split    conf    expected (outcome/cause)                  got"
    for r in results:
        expected = f"{r.case.outcome}/{r.case.cause}"
        got = f"{r.outcome}/{r.cause}" if r.error is None else r.error.splitlines()[-1][:60]
        yield f"{r.case.name:{width}}  {r.case.split:7}  {r.case.confidence:6}  {expected:40}  {got}  [{_mark(r)}]"


def report(results: Sequence[Result]) -> str:
    """The table, then the totals per split and overall."""
    lines = list(_rows(results))
    lines.append("")
    for split in SPLITS:
        part = [r for r in results if r.case.split == split]
        if part:
            lines.append(f"{split:8} {totals(part).line()}")
    lines.append(f"{'all':8} {totals(results).line()}")
    return "\n".join(lines) + "\n"


def as_json(results: Sequence[Result]) -> str:
    per_split: dict[str, dict[str, int]] = {
        split: asdict(totals([r for r in results if r.case.split == split])) for split in SPLITS}
    per_split["all"] = asdict(totals(results))
    data = {
        "cases": [{"case": r.case.name, "split": r.case.split, "confidence": r.case.confidence,
                   "expected": {"outcome": r.case.outcome, "cause": r.case.cause},
                   "got": {"outcome": r.outcome, "cause": r.cause}, "error": r.error,
                   "outcome_right": r.outcome_right, "cause_right": r.cause_right, "false_alarm": r.false_alarm}
                  for r in results],
        "totals": per_split,
    }
    return json.dumps(data, indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.corpus.score", description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=(*SPLITS, "all"), default="all", help="which half to score (default all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    try:
        cases = load_cases()
    except CorpusError as exc:
        sys.stderr.write(f"corpus: {exc}\n")
        return 2
    if args.split != "all":
        cases = [c for c in cases if c.split == args.split]
    results = judge_all(cases)
    sys.stdout.write(as_json(results) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
