"""Paste-proof input, as properties over every real fixture log: what a paste does to a log never changes the answer.

Wrapping at any terminal width >= 60, gluing neighbouring records onto one line, any supported prefix (journald,
docker, compose, kubectl, journald JSON) and CRLF line ends leave `explain`'s outcome and cause as they are on the
file itself; wrapping (a terminal's, or `fold`), prefixes, CRLF and Markdown leave its memory account of each load as
it is on the file, with line numbers that point at the pasted log's lines. Bounded and derandomized, so the file runs
in seconds and never flakes.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.commands.explain import explain_stream, explain_with_memory
from launcher.log_input import strip_prefixes
from launcher.memory_report import MemoryTee, report
from launcher.ollama_logs import parse_chunks

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


def _accounts(data: bytes) -> list[dict[str, Any]]:
    """`explain`'s memory account of every load (before it picks the ones worth showing), as JSON."""
    tee = MemoryTee()
    for _ in parse_chunks([data], tee):
        pass
    return [report(a) for a in tee.accounts()]


_BASE_ACCOUNTS: dict[Path, list[dict[str, Any]]] = {}


def _base_accounts(path: Path) -> list[dict[str, Any]]:
    if path not in _BASE_ACCOUNTS:
        _BASE_ACCOUNTS[path] = _accounts(path.read_bytes())
    return _BASE_ACCOUNTS[path]


def _starts(original: list[bytes], pasted: list[bytes]) -> list[int]:
    """The pasted line (1-based) each original line starts on: the paste only broke lines, so the pasted lines of
    one original line put back together are that line."""
    starts, at = [], 0
    for line in original:
        starts.append(at + 1)
        joined = pasted[at]
        at += 1
        while joined != line:
            assert at < len(pasted) and len(joined) < len(line), "the paste changed more than line breaks"
            joined += pasted[at]
            at += 1
    return starts


def _renumbered(accounts: list[dict[str, Any]], starts: list[int]) -> list[dict[str, Any]]:
    """The accounts with each line number taken back to the original log's; a number that is not where a record of
    the original starts in the paste fails here (the account must cite the pasted log's own lines)."""
    back = {n: i for i, n in enumerate(starts, 1)}
    out = []
    for a in accounts:
        lines = a["lines"]
        assert set(lines.values()) <= back.keys(), {k: v for k, v in lines.items() if v not in back}
        assert a["first_line"] is None or a["first_line"] in back
        out.append({**a, "lines": {k: back[v] for k, v in lines.items()},
                    "first_line": back.get(a["first_line"]) if a["first_line"] is not None else None})
    return out


def _fold(lines: list[str], width: int) -> list[bytes]:
    """`fold -w width` (coreutils: bytes as columns, a tab to the next multiple of 8), the way the issue's
    reproduction wraps a log."""
    fold = shutil.which("fold")
    assert fold is not None, "coreutils' fold is needed to wrap as the reproduction does"
    out = subprocess.run([fold, "-w", str(width)], input=_encode(lines), capture_output=True, check=True).stdout
    return out.split(b"\n")


def _raw(lines: list[str]) -> list[bytes]:
    return [x.encode("utf-8", "surrogateescape") for x in lines]


def _same_account(path: Path, pasted: list[str] | list[bytes], original: list[str], end: bytes = b"\n") -> None:
    raw = [x if isinstance(x, bytes) else x.encode("utf-8", "surrogateescape") for x in pasted]
    got = _accounts(end.join(raw))
    starts = _starts(_raw(original), raw)
    base = _renumbered(_base_accounts(path), list(range(1, len(original) + 1)))
    assert _renumbered(got, starts) == base


# Every h100-partial log and these shared fixtures size a load; the property below is not about empty accounts.
WITH_ACCOUNTS = ("ggml-real/llama-server-gpu.log", "ollama-real-gpu/healthy.server.log",
                 "ollama-real-cpu/cpu-basic.server.log",
                 "ollama-logs/partial_offload-insufficient_vram-unk-pr12000/server.log")


def test_the_memory_properties_cover_accounts() -> None:
    """The fixtures the memory properties run over include the logs that have an account: all of issue 17's H100
    runs (partial loads) and shared logs of each release line."""
    having = {i for p, i in zip(LOGS, IDS, strict=True) if _base_accounts(p)}
    sized = {i for p, i in zip(LOGS, IDS, strict=True) if any(a["layers_total"] for a in _base_accounts(p))}
    assert {i for i in IDS if i.startswith("h100-partial/")} <= sized
    assert set(WITH_ACCOUNTS) <= having
    assert len(having) >= 30 and len(sized) >= 20


def test_a_folded_paste_keeps_its_advice() -> None:
    """The issue's reproduction: `fold -w 80` of the H100 baseline keeps the account `explain` shows and its advice
    (it was "no single advised change fits it fully", most figures null, when the account read physical lines)."""
    path = OWN / "h100-partial" / "baseline.server.log"
    _, plain = explain_with_memory(io.BytesIO(path.read_bytes()))
    _, folded = explain_with_memory(io.BytesIO(b"\n".join(_fold(_lines(path), 80))))
    assert [report(a)["summary"] for a in folded] == [report(a)["summary"] for a in plain]
    assert "smallest change that fits: num_ctx" in report(folded[0])["summary"]
    assert folded[0].vram_free is not None and folded[0].kv is not None


@pytest.mark.parametrize("path", LOGS, ids=IDS)
class TestMemoryAccountEveryFixture:
    def test_fold_keeps_the_account(self, path: Path) -> None:
        """`fold -w` at 60, 80 and 120 columns: the same account, citing the folded log's lines."""
        lines = _lines(path)
        for width in (60, 80, 120):
            _same_account(path, _fold(lines, width), lines)

    @PROPERTY
    @given(width=st.integers(min_value=60, max_value=400))
    def test_any_terminal_width_keeps_the_account(self, path: Path, width: int) -> None:
        """A terminal of any width from 60 columns: the same account."""
        lines = _lines(path)
        _same_account(path, wrap(lines, width), lines)

    def test_terminal_wrap_keeps_the_account(self, path: Path) -> None:
        """A terminal 60, 80 or 120 characters wide (characters, not bytes): the same account."""
        lines = _lines(path)
        for width in (60, 80, 120):
            _same_account(path, wrap(lines, width), lines)

    @pytest.mark.parametrize("kind", sorted(PREFIXES))
    def test_prefix_keeps_the_account(self, path: Path, kind: str) -> None:
        """journald, docker, compose and kubectl prefixes on every line: the same account, the same line numbers."""
        add = PREFIXES[kind]
        lines = _lines(path)
        prefixed = [add(i, s) for i, s in enumerate(lines)]
        assert _renumbered(_accounts(_encode(prefixed)), list(range(1, len(lines) + 1))) == _renumbered(
            _base_accounts(path), list(range(1, len(lines) + 1)))

    def test_crlf_keeps_the_account(self, path: Path) -> None:
        """Windows line ends: the same account."""
        lines = _lines(path)
        _same_account(path, lines, lines, b"\r\n")

    @pytest.mark.parametrize("kind", ["journald-short", "docker-timestamps", "compose", "kubectl-prefix"])
    def test_prefixed_then_wrapped_keeps_the_account(self, path: Path, kind: str) -> None:
        """`journalctl` or `docker logs` shown in a terminal (prefix first, then the wrap; CRLF): the same account.
        97 columns wraps a `will leave 80524 >= 1024 MiB` line right after its `>`, which must not read as
        `less -S`'s chop mark."""
        add = PREFIXES[kind]
        lines = _lines(path)
        for width in (60, 97, 132):
            prefixed = [add(i, s) for i, s in enumerate(lines)]
            pasted = wrap(prefixed, width)
            got = _accounts(_encode(pasted, "\r\n"))
            base = _renumbered(_base_accounts(path), list(range(1, len(lines) + 1)))
            assert _renumbered(got, _starts(_raw(prefixed), _raw(pasted))) == base, width

    def test_markdown_keeps_the_account(self, path: Path) -> None:
        """A fenced block or a quote in an issue: the same account (a fence line keeps the numbers)."""
        lines = _lines(path)
        base = _renumbered(_base_accounts(path), list(range(1, len(lines) + 1)))
        assert _renumbered(_accounts(_encode(["```", *lines, "```"])), list(range(2, len(lines) + 2))) == base
        assert _renumbered(_accounts(_encode(["> " + x for x in lines])), list(range(1, len(lines) + 1))) == base

    def test_the_tap_changes_no_event(self, path: Path) -> None:
        """Reading the memory account beside the parser leaves the parser's events as they are, plain or folded."""
        lines = _lines(path)
        for data in (path.read_bytes(), b"\n".join(_fold(lines, 80))):
            assert list(parse_chunks([data], MemoryTee())) == list(parse_chunks([data]))
