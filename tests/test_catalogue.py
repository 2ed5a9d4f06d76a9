"""The message catalogue (issue 13 items 1, 2): every entry's line, built from its format string, gives its fact."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from launcher.catalogue import (
    FAMILIES,
    SAMPLED_TAGS,
    UPSTREAM_GGML_TAG,
    CatalogueError,
    Entry,
    load,
    message_generations,
    parse,
    printed_by,
)
from launcher.catalogue.coverage import TARGET, check, main, measure, render
from launcher.catalogue.sample import JOURNAL_PREFIX, printf, sample, version_line
from launcher.generations import RELEASE_LINE_NAMES
from launcher.log_patterns import ROWS
from launcher.ollama_logs import parse_text

ENTRIES = load()
PAIRS = [(e, line) for e in ENTRIES for line in e.lines]
RELEVANT = [(e, line) for e, line in PAIRS if e.relevant]
IRRELEVANT = [(e, line) for e, line in PAIRS if not e.relevant]
# Statements the parser does not read yet, each with the reason; the coverage command lists them too.
KNOWN_GAPS = {
    ("go.model_weights", "0.30+"): "D's memory summary is the server's estimate; the weights row is kept to B/C",
    ("go.compute_graph", "0.30+"): "D's memory summary is the server's estimate; the graph row is kept to B/C",
}
# Rows whose text is in no source the catalogue reads, with the reason (the coverage command lists them too).
ROWS_WITHOUT_ENTRY = {
    ("runner_crash", "SIGSEGV"): "the Go runtime's crash header (Go's own source, not Ollama's)",
    ("runner_crash", "SIGILL"): "the Go runtime's crash header",
    ("runner_crash", "SIGBUS"): "the Go runtime's crash header",
    ("runner_crash", "hipError"): "the HIP runtime's own error names, printed by ROCm, not by Ollama or GGML",
    ("nvml_failed", "Failed to initialize NVML"): "nvidia-smi's text, pasted beside Ollama's",
    ("gpu_dropped", "NVRM: Xid"): "the NVIDIA kernel module's message (dmesg/journal), not Ollama's",
    ("server_config", 'env="map['): "the `server config` line pasted from its `env=` on: a paste's cut, not a "
                                     "statement of its own",
}
SOURCE = re.compile(r"^[\w./+-]+\.(?:go|c|cpp|cu|cuh|h|patch):\d+@(?:ggml-)?v\d+\.\d+\.\d+(?:-rc\d+)?$")
FIXTURE = re.compile(r"^fixture:[\w./+-]+:\d+@\S+$")


def _id(pair: tuple[Entry, str]) -> str:
    return f"{pair[0].id}@{pair[1]}"


class TestData:
    def test_every_family_loads_and_ids_are_unique(self) -> None:
        """Each family file holds entries and no id repeats (load() raises on a duplicate)."""
        assert {e.family for e in ENTRIES} == set(FAMILIES)
        assert len({e.id for e in ENTRIES}) == len(ENTRIES)

    def test_every_entry_names_its_provenance(self) -> None:
        """Each release line of each entry cites a source statement at a tag, or the real log line that shows it."""
        bad = [(e.id, line, p) for e in ENTRIES for line, p in e.at.items()
               if not (SOURCE.match(p) or FIXTURE.match(p))]
        assert not bad

    def test_source_provenance_names_a_sampled_tag(self) -> None:
        """An extracted entry's `file:line@tag` cites a tag the extraction read, so it can be checked with git show."""
        tags = {p.rsplit("@", 1)[1] for e in ENTRIES if e.family != "curated" for p in e.at.values()
                if SOURCE.match(p)}
        assert tags <= {*SAMPLED_TAGS, UPSTREAM_GGML_TAG}

    def test_every_release_line_has_relevant_statements(self) -> None:
        """No release line is empty: each has tens of statements that bear on placement."""
        for line in RELEASE_LINE_NAMES:
            assert sum(1 for e, x in RELEVANT if x == line) >= 30, line

    def test_every_fact_is_a_kind_some_row_yields(self) -> None:
        """A relevant entry's fact is an event kind of the parser (a row's kind or one its builder names)."""
        kinds = {r.kind for r in ROWS} | {"no_gpu", "gpu_discovered"}  # inference compute builds either
        assert {e.fact for e in ENTRIES if e.relevant} <= kinds


class TestEntries:
    @pytest.mark.parametrize("pair", RELEVANT, ids=[_id(p) for p in RELEVANT])
    def test_line_from_the_format_string_gives_the_fact(self, pair: tuple[Entry, str]) -> None:
        """The entry's line, after that version's `Listening on` line, yields its fact (plain and under journald)."""
        entry, line = pair
        result = check(entry, line)
        if (entry.id, line) in KNOWN_GAPS:
            assert not result.ok, f"{entry.id}@{line} is recognised now: remove it from KNOWN_GAPS"
            return
        assert result.ok, f"{result.text!r} gave {result.kinds}, wants {entry.fact} {dict(entry.expect)}"
        assert result.journald_ok, f"{JOURNAL_PREFIX + result.text!r} lost the fact"

    @pytest.mark.parametrize("pair", IRRELEVANT, ids=[_id(p) for p in IRRELEVANT])
    def test_irrelevant_statement_gives_no_event(self, pair: tuple[Entry, str]) -> None:
        """A statement that says nothing about placement produces no event: no false evidence from noise."""
        entry, line = pair
        result = check(entry, line)
        assert result.ok and result.journald_ok, f"{result.text!r} gave {result.kinds}"


class TestCoverage:
    def test_every_release_line_meets_the_target(self) -> None:
        """Relevant statements recognised / total >= 95 % on every release line (the issue's acceptance)."""
        report = measure()
        for line in RELEASE_LINE_NAMES:
            ok, total = report.line_score(line)
            assert total and ok / total >= TARGET, (line, ok, total)

    def test_command_prints_each_release_line_and_exits_0(self) -> None:
        """`python -m launcher.catalogue.coverage` prints one row per release line and succeeds."""
        proc = subprocess.run([sys.executable, "-m", "launcher.catalogue.coverage"], capture_output=True, text=True,
                              timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr
        for line in RELEASE_LINE_NAMES:
            assert re.search(rf"^{re.escape(line)}\s+\d+ / \d+\s+\d+\.\d %", proc.stdout, re.M), line
        assert "Traceback" not in proc.stderr

    def test_a_missed_statement_is_listed_and_fails_the_command(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An entry whose wording no row reads shows up under 'not recognised' and drops the line below target."""
        fake = parse("curated", '{"id": "t.unread", "fmt": "%s: the GPU went for a walk", "shape": "c", '
                                '"fact": "runner_crash", "func": "ggml_cuda_init", '
                                '"at": {"0.30+": "fixture:x.log:1@0.32.15"}}')
        report = measure(fake)
        assert report.line_score("0.30+") == (0, 1)
        text = render(report)
        assert "t.unread (wants runner_crash; got nothing)" in text
        assert main.__doc__  # the command's own entry point exists

    def test_rows_are_linked_to_the_entries_that_reach_them(self) -> None:
        """The row → entry link is computed from the entries' lines; only the rows listed here have no entry."""
        report = measure()
        index = next(i for i, r in enumerate(ROWS) if r.needle == "inference compute")
        assert len(report.row_entries[index]) >= 1
        lonely = {(r.kind, r.needle) for r in report.rows_without_entry()}
        assert lonely == set(ROWS_WITHOUT_ENTRY), "a row lost its entry, or gained one: update ROWS_WITHOUT_ENTRY"


class TestRowGenerations:
    def test_a_row_applies_to_every_generation_that_prints_its_lines(self) -> None:
        """A row reached by an entry lists every generation whose versions print the entry: otherwise a log of that
        generation would not be read, and, with no version line, the row would name the wrong generation."""
        from launcher.catalogue.coverage import rows_reached

        bad = set()
        for entry, line in RELEVANT:
            for row in rows_reached(entry, line):
                for gen in printed_by(entry) - row.gens:
                    if not any(gap_id == entry.id for gap_id, _ in KNOWN_GAPS):
                        bad.add((row.kind, row.needle or row.msg, entry.id, gen))
        assert not bad


class TestRobust:
    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(RELEVANT), st.integers(min_value=0, max_value=400), st.text(max_size=40))
    def test_a_cut_or_glued_catalogue_line_never_breaks_a_row(self, pair: tuple[Entry, str], cut: int,
                                                              junk: str) -> None:
        """Every row's builder survives its own line cut anywhere or with junk after it: no exception, and no
        line counted as unreadable (a builder that raised would count one)."""
        entry, line = pair
        text = sample(entry, line)
        for variant in (text[:cut], text + junk, text[:cut] + junk):
            summary = parse_text(variant + "\n")[-1]
            assert summary.data["unreadable_rows"] == 0, variant


class TestParse:
    @pytest.mark.parametrize(("text", "problem"), [
        ("{not json", "1:"),
        ('["a list"]', "not an object"),
        ('{"id": "x", "fmt": "f", "shape": "c", "fact": "irrelevant"}', "'at'"),
        ('{"id": "x", "fmt": "f", "shape": "c", "fact": "irrelevant", "at": {"0.99": "a.go:1@v0.1.9"}}', "0.99"),
        ('{"id": "x", "fmt": "f", "shape": "c", "fact": "irrelevant", "at": {"0.1": "a.go:1"}}', "tag"),
        ('{"id": "x", "fmt": "f", "shape": "perl", "fact": "irrelevant", "at": {"0.1": "a.go:1@v0.1.9"}}', "shape"),
        ('{"id": "x", "fmt": "f", "shape": "c", "fact": "irrelevant", "at": {"0.1": "a.go:1@v0.1.9"}, '
         '"seen": ["v9.9.9"]}', "seen"),
    ])
    def test_bad_entry_is_a_clear_error(self, text: str, problem: str) -> None:
        """A broken catalogue line names the file, the line and the problem, never a traceback from deep inside."""
        with pytest.raises(CatalogueError, match=re.escape(problem)) as err:
            parse("curated", text, "curated.jsonl")
        assert str(err.value).startswith("curated.jsonl")


class TestSample:
    def test_printf_fills_c_widths_and_precisions(self) -> None:
        """`%10s` pads, `%8.2f` rounds, `%zu` is an integer: the line looks as llama.cpp prints it."""
        assert printf("%s: %10s buffer size = %8.2f MiB\\n", ["llm_load_tensors", "CUDA0", "4403.4912"]) == \
            "llm_load_tensors:      CUDA0 buffer size =  4403.49 MiB\n"
        assert printf("%s - %zu MiB free", ["CUDA0", "23871"]) == "CUDA0 - 23871 MiB free"

    def test_slog_line_quotes_as_go_does(self) -> None:
        """Messages and values with spaces are quoted, one-word ones are not (Go slog's text handler)."""
        entry = next(e for e in ENTRIES if e.fmt == "inference compute")
        text = sample(entry, "0.12-0.24")
        assert 'msg="inference compute"' in text and "library=CUDA" in text and 'total="23.7 GiB"' in text
        assert text.startswith("time=") and " source=types.go:" in text

    def test_version_line_uses_the_cited_tag(self) -> None:
        """The line is tested under the version whose source the entry cites for that release line."""
        entry = next(e for e in ENTRIES if e.fmt == "inference compute")
        tag = entry.at["0.30+"].rsplit("@v", 1)[1]
        assert f"(version {tag})" in version_line(entry, "0.30+")


class TestMessageGenerations:
    def test_a_message_names_the_generations_of_the_tags_that_print_it(self) -> None:
        """`llama-server` discovery messages are D's; `inference compute` is every generation's from 0.1.3x."""
        table = message_generations()
        assert table["llama-server GPU discovery watchdog timed out"] == frozenset({"D"})
        assert {"A", "B", "C", "D"} <= table["inference compute"]

    def test_span_between_sampled_tags_is_included(self) -> None:
        """A statement seen at v0.5.8 and v0.11.11 is printed by everything between: generation B only."""
        entry = Entry(id="t", family="ollama_go", fmt="x", shape="slog", at={"0.6-0.11": "a.go:1@v0.11.11"},
                      fact="irrelevant", seen=("v0.5.8", "v0.11.11"))
        assert printed_by(entry) == frozenset({"B"})

    def test_inferred_generation_is_never_wrong_on_real_logs(self) -> None:
        """Every real fixture with a known version, its version line removed: the inferred generation is the true
        one, or none (never a wrong one)."""
        from tests.test_generations import real_logs_with_versions

        wrong = []
        for name, truth, text in real_logs_with_versions():
            stripped = b"\n".join(x for x in text.split(b"\n") if b"(version " not in x)
            summary = parse_text(stripped)[-1].data
            if summary["generation"] not in (None, truth):
                wrong.append((name, truth, summary["generation"]))
        assert not wrong
