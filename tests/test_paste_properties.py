"""Paste-proof input, as properties over every real fixture log: what a paste does to a log never changes the answer.

Wrapping at any terminal width >= 60, gluing neighbouring records onto one line, any supported prefix (journald,
docker, compose, kubectl, journald JSON) and CRLF line ends leave `explain`'s outcome and cause as they are on the
file itself. Bounded and derandomized, so the file runs in seconds and never flakes.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.commands.explain import explain_stream
from launcher.log_input import strip_prefixes

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
OWN = Path(__file__).resolve().parent / "fixtures"  # real logs kept in this repository (issue 17's H100 runs)
LOGS = sorted([*FIXTURES.glob("ollama-logs/*/server.log"), *FIXTURES.glob("ollama-real-cpu/*.log"),
               *FIXTURES.glob("ollama-real-gpu/*.log"), *FIXTURES.glob("ggml-real/*.log")]) + sorted(
    OWN.glob("h100-partial/*.log"))
IDS = [str(p.relative_to(FIXTURES if p.is_relative_to(FIXTURES) else OWN)) for p in LOGS]

PROPERTY = settings(max_examples=4, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Record starts a glued paste can be cut at again (`launcher.paste._GLUE`): a slog line, a GIN line, a Go log line.
GLUABLE = ("time=", "[GIN] ", "[GIN-debug] ")
SLOG_TIME = re.compile(r"time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)\s+level=")


def _verdict(data: bytes) -> tuple[str, str]:
    v = explain_stream(io.BytesIO(data))
    return v.outcome, v.cause


_BASE: dict[Path, tuple[str, str]] = {}


def _base(path: Path) -> tuple[str, str]:
    if path not in _BASE:
        _BASE[path] = _verdict(path.read_bytes())
    return _BASE[path]


def _lines(path: Path) -> list[str]:
    """The fixture as text lines, line ends removed (CRLF fixtures too)."""
    return [x.rstrip("\r") for x in path.read_bytes().decode("utf-8", "surrogateescape").split("\n")]


def _encode(lines: list[str], end: str = "\n") -> bytes:
    return end.join(lines).encode("utf-8", "surrogateescape")


def wrap(lines: list[str], width: int) -> list[str]:
    """What a terminal `width` columns wide does to long lines when they are copied out of it."""
    out = []
    for line in lines:
        if len(line) <= width:
            out.append(line)
        else:
            out.extend(line[i : i + width] for i in range(0, len(line), width))
    return out


def glue(lines: list[str], picks: list[int], sep: str) -> list[str]:
    """Glue some records onto the line before them (each pick chooses one of the gluable places).

    A slog line whose timestamp a fixture redacted (`time=...`) is told from text only after a space or a quote."""
    def gluable(i: int) -> bool:
        line, before = lines[i], lines[i - 1]
        if not before.strip():
            return False
        if line.startswith("time=") and not SLOG_TIME.match(line):
            return bool(sep) or not (before[-1].isalnum() or before[-1] in "_.")
        return line.startswith(GLUABLE) or _go_log(line)

    places = [i for i in range(1, len(lines)) if gluable(i)]
    chosen = {places[p % len(places)] for p in picks} if places else set()
    out: list[str] = []
    for i, line in enumerate(lines):
        if i in chosen:
            out[-1] = out[-1] + sep + line
        else:
            out.append(line)
    return out


def _go_log(line: str) -> bool:
    return len(line) > 20 and line[4] == "/" and line[:4].isdigit() and line[7] == "/" and ".go:" in line[19:40]


PREFIXES: dict[str, Callable[[int, str], str]] = {
    "journald-short": lambda i, s: f"Jan 14 16:{i // 60 % 60:02d}:{i % 60:02d} gpu-host ollama[16241]: {s}",
    "journald-short-iso": lambda i, s: f"2025-01-14T16:41:{i % 60:02d}+0100 gpu-host ollama[16241]: {s}",
    "journald-short-precise": lambda i, s: f"Jan 14 16:41:{i % 60:02d}.{i:06d} gpu-host ollama[16241]: {s}",
    "journald-short-full": lambda i, s: f"Tue 2025-01-14 16:41:{i % 60:02d} CET gpu-host ollama[16241]: {s}",
    "journald-short-unix": lambda i, s: f"1736869294.{i:06d} gpu-host ollama[16241]: {s}",
    "journald-short-iso-precise": lambda i, s: f"2025-01-14T16:41:34.{i:06d}+01:00 gpu-host ollama[16241]: {s}",
    "journald-short-monotonic": lambda i, s: f"[{i:>7d}.123456] gpu-host ollama[16241]: {s}",
    "docker-timestamps": lambda i, s: f"2025-01-14T16:41:34.{i:09d}Z {s}",
    "compose": lambda i, s: f"ollama-1  | {s}",
    "compose-v1-timestamps": lambda i, s: f"ollama_1  | 2025-01-14T16:41:34.{i:09d}Z {s}",
    "kubectl-prefix": lambda i, s: f"[pod/ollama-7c9d8b5f4-x2x9z/ollama] {s}",
    "kubectl-prefix-timestamps": lambda i, s: f"[pod/ollama-0/ollama] 2025-01-14T16:41:34.{i:09d}Z {s}",
}


def _journal_json(i: int, s: str, as_bytes: bool) -> str:
    msg: object = list(s.encode("utf-8", "surrogateescape")) if as_bytes else s
    return json.dumps({"__CURSOR": f"s=abc;i={i:x}", "__REALTIME_TIMESTAMP": str(1736869294000000 + i),
                       "_PID": "16241", "SYSLOG_IDENTIFIER": "ollama", "MESSAGE": msg}, separators=(",", ":"))


@pytest.mark.parametrize("path", LOGS, ids=IDS)
class TestEveryFixture:
    def test_fixtures_are_found(self, path: Path) -> None:
        """The shared fixtures are there (a missing ../shared/ fails here, not silently)."""
        assert path.is_file()

    @PROPERTY
    @given(width=st.integers(min_value=60, max_value=400))
    def test_terminal_wrapping_changes_nothing(self, path: Path, width: int) -> None:
        """Lines wrapped at any terminal width >= 60 read as the records they were."""
        assert _verdict(_encode(wrap(_lines(path), width))) == _base(path)

    def test_common_terminal_widths_change_nothing(self, path: Path) -> None:
        """The widths terminals are usually left at, and the narrowest we claim, every one of them (beside the
        drawn ones above)."""
        lines = _lines(path)
        for width in (60, 61, 72, 80, 100, 120, 132, 160, 200):
            assert _verdict(_encode(wrap(lines, width))) == _base(path), width

    @PROPERTY
    @given(picks=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=8),
           sep=st.sampled_from(["", " ", "  "]))
    def test_gluing_neighbouring_records_changes_nothing(self, path: Path, picks: list[int], sep: str) -> None:
        """Records glued onto the line before them are cut apart again."""
        assert _verdict(_encode(glue(_lines(path), picks, sep))) == _base(path)

    @PROPERTY
    @given(kind=st.sampled_from(["journald-short", "journald-short-iso", "journald-short-precise"]),
           picks=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=8),
           sep=st.sampled_from(["", " "]))
    def test_gluing_journald_lines_changes_nothing(self, path: Path, kind: str, picks: list[int], sep: str) -> None:
        """journalctl lines glued together are cut at each journald prefix, and each keeps its pid."""
        add = PREFIXES[kind]
        lines = [add(i, s) for i, s in enumerate(_lines(path))]
        places = sorted({1 + p % (len(lines) - 1) for p in picks}) if len(lines) > 1 else []
        out: list[str] = []
        for i, line in enumerate(lines):
            if i in places and out and strip_prefixes(out[-1])[0].strip():
                out[-1] = out[-1] + sep + line
            else:
                out.append(line)
        assert _verdict(_encode(out)) == _base(path)

    @PROPERTY
    @given(kind=st.sampled_from(sorted(PREFIXES)))
    def test_any_supported_prefix_changes_nothing(self, path: Path, kind: str) -> None:
        """journalctl, docker, compose and kubectl prefixes on every line are read through."""
        add = PREFIXES[kind]
        assert _verdict(_encode([add(i, s) for i, s in enumerate(_lines(path))])) == _base(path)

    @PROPERTY
    @given(as_bytes=st.booleans())
    def test_journald_json_changes_nothing(self, path: Path, as_bytes: bool) -> None:
        """`journalctl -o json`, MESSAGE as a string or as a byte array, reads as the plain log."""
        assert _verdict(_encode([_journal_json(i, s, as_bytes) for i, s in enumerate(_lines(path))])) == _base(path)

    @PROPERTY
    @given(quote=st.sampled_from(["> ", ">", "> > "]), fence=st.sampled_from(["```", "```log", "~~~"]))
    def test_markdown_quote_and_fence_change_nothing(self, path: Path, quote: str, fence: str) -> None:
        """A log pasted in a fenced block, or quoted line by line in an issue, reads as the log."""
        lines = _lines(path)
        assert _verdict(_encode([fence, *lines, "```"])) == _base(path)
        assert _verdict(_encode([quote + x for x in lines])) == _base(path)

    def test_crlf_changes_nothing(self, path: Path) -> None:
        """Windows line ends read as the same log."""
        assert _verdict(_encode(_lines(path), "\r\n")) == _base(path)

    @PROPERTY
    @given(kind=st.sampled_from(sorted(PREFIXES)), width=st.integers(min_value=60, max_value=300))
    def test_prefixed_then_wrapped_changes_nothing(self, path: Path, kind: str, width: int) -> None:
        """`journalctl` (or docker) output wrapped by the terminal it was shown in: prefix first, then wrap."""
        add = PREFIXES[kind]
        lines = wrap([add(i, s) for i, s in enumerate(_lines(path))], width)
        assert _verdict(_encode(lines, "\r\n")) == _base(path)
