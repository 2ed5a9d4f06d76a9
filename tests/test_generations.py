"""The generation leaf (issue 13 items 5, 6): version and release-line tables, the generation read from line shapes."""

from __future__ import annotations

import importlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher import log_patterns, proctree
from launcher.commands.explain import explain_stream
from launcher.generations import (
    GENERATIONS_OF_LINE,
    MIN_COMPUTE,
    OFFLOAD_LINE_TRUSTED,
    RELEASE_LINE_NAMES,
    RUNNER_ROWS,
    generation_of,
    release_line_of,
    shape_generations,
    source_file,
)
from launcher.ollama_logs import parse_text

SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
T = "time=2025-01-01T00:00:00.000Z level=INFO source=x.go:1 "


def real_logs_with_versions() -> Iterator[tuple[str, str, bytes]]:
    """(name, true generation, bytes) of every real fixture log whose Ollama version is known."""
    if not SHARED.is_dir():
        pytest.fail(f"shared fixtures not found at {SHARED}")
    for case in sorted((SHARED / "ollama-logs").iterdir()):
        meta = case / "case.json"
        if meta.is_file():
            version = json.loads(meta.read_text()).get("ollama_version")
            gen = generation_of(version) if version else None
            if gen is not None:
                yield case.name, gen, (case / "server.log").read_bytes()
    for log in sorted(SHARED.glob("ollama-real-*/*.server.log")):
        yield log.name, "D", log.read_bytes()  # built from v0.32.15 (fixtures README)


class TestTables:
    @pytest.mark.parametrize(("version", "line"), [("0.1.9", "0.1"), ("0.2.8", "0.2-0.3"), ("0.3.14", "0.2-0.3"),
                                                   ("0.5.7", "0.4-0.5"), ("v0.11.11", "0.6-0.11"),
                                                   ("0.12.3", "0.12-0.24"), ("0.24.0", "0.12-0.24"),
                                                   ("0.33.0-rc2", "0.30+"), ("banana", None)])
    def test_release_line_of_version(self, version: str, line: str | None) -> None:
        """Versions map to the catalogue's release lines; text that is no version maps to none."""
        assert release_line_of(version) == line

    def test_every_version_of_a_release_line_has_a_generation_of_that_line(self) -> None:
        """A release line's generations are exactly those of the versions it spans (0.2–0.3 straddles 0 and A)."""
        for line in RELEASE_LINE_NAMES:
            versions = [f"0.{minor}.{patch}" for minor in range(34) for patch in (0, 3, 7, 8, 12)
                        if release_line_of(f"0.{minor}.{patch}") == line]
            gens = {generation_of(v) for v in versions} - {None}
            assert gens == GENERATIONS_OF_LINE[line], line

    def test_consumers_share_the_leaf_tables(self) -> None:
        """The parser's rows, `/proc` classification and the board read the same objects (one place)."""
        log_tier = importlib.import_module("launcher.evidence.log_tier")
        log_facts = importlib.import_module("launcher.evidence.log_facts")
        assert log_patterns.OFFLOAD_LINE_TRUSTED is OFFLOAD_LINE_TRUSTED
        assert log_tier.OFFLOAD_LINE_TRUSTED is OFFLOAD_LINE_TRUSTED
        assert log_facts.MIN_COMPUTE is MIN_COMPUTE
        assert tuple(row[:5] for row in RUNNER_ROWS) == proctree.RUNNER_ROWS


class TestShapes:
    @pytest.mark.parametrize(("line", "gens"), [
        ("time=x level=INFO source=llama_server.go:1 msg=x", {"D"}),
        ("time=x level=INFO source=amd_linux.go:1 msg=x", {"0", "A", "B"}),
        (f'{T}msg="inference compute" id=GPU-1 library=CUDA compute=8.9 libdirs=ollama,cuda_v13', {"C", "D"}),
        (f'{T}msg="inference compute" id=GPU-1 library=cuda variant=v12 compute=8.9', {"0", "A", "B"}),
        ("llm_load_tensors: offloaded 33/33 layers to GPU", {"0", "A", "B"}),
        (f'{T}msg="starting llama server" cmd="/tmp/ollama1/runners/cuda_v12/ollama_llama_server --model /m"',
         {"0", "A"}),
    ])
    def test_shape_names_the_generations(self, line: str, gens: set[str]) -> None:
        """Source file names, message keys, Go's log.Printf shape, llama.cpp function names and runner argv."""
        found = shape_generations(line)
        assert found is not None and found[0] == frozenset(gens)

    def test_a_line_that_tells_nothing_gives_none(self) -> None:
        """A common message from a file every generation has is no evidence of the generation."""
        assert shape_generations(f'{T}msg="server config" env="map[]"') is None
        # every version's `ollama serve` sets log.Lshortfile, and net/http logs through Go's log package
        assert shape_generations("2025/10/09 10:04:11 server.go:3280: http: superfluous response.WriteHeader") is None
        assert source_file("no source here") is None


class TestParserInference:
    def test_no_version_line_generation_from_the_source_file(self) -> None:
        """Without a version line, a D-only source file names generation D, and the event says why."""
        events = parse_text('time=x level=INFO source=llama_server.go:812 msg="waiting for llama-server to start '
                            'responding"\n')
        gen = [e.data for e in events if e.kind == "generation"]
        assert gen and gen[0]["generation"] == "D" and gen[0]["from"] == "inferred"
        assert "llama_server.go" in gen[0]["basis"] or "llama-server" in gen[0]["basis"]

    def test_a_version_line_wins_over_shapes(self) -> None:
        """A printed version decides; shapes are not consulted afterwards."""
        text = (f'{T}msg="Listening on 127.0.0.1:11434 (version 0.13.5)"\n'
                'time=x level=INFO source=llama_server.go:1 msg="x"\n')
        summary = parse_text(text)[-1].data
        assert summary["generation"] == "C" and summary["generation_from"] == "version"

    def test_explain_note_says_the_generation_was_read_from_the_lines(self) -> None:
        """The operator sees which generation was inferred and from what (issue 13 item 5)."""
        log = (b'time=x level=INFO source=types.go:1 msg="inference compute" id=GPU-1 library=CUDA compute=8.9 '
               b'libdirs=ollama,cuda_v13 description="NVIDIA RTX" total="23 GiB" available="22 GiB"\n'
               b'time=x level=INFO source=llama_server.go:9 msg="starting llama-server" '
               b'cmd="/usr/lib/ollama/llama-server --model /m --port 1"\n')
        verdict = explain_stream(io.BytesIO(log))
        assert verdict.generation == "D"
        assert any("inferred from the shapes of its lines" in n for n in verdict.notes), verdict.notes

    def test_common_rows_note_only_when_lines_tell_nothing(self) -> None:
        """A log with no version and no telling shape says only common patterns were used."""
        verdict = explain_stream(io.BytesIO(b"ggml_cuda_init: found 1 CUDA devices:\n"))
        assert verdict.generation is None
        assert any("only common patterns were used" in n for n in verdict.notes), verdict.notes

    def test_inference_never_contradicts_a_real_log_version(self) -> None:
        """Each real log with its version line removed: the generation inferred is right or absent."""
        results = []
        for name, truth, text in real_logs_with_versions():
            stripped = b"\n".join(x for x in text.split(b"\n") if b"(version " not in x)
            results.append((name, truth, parse_text(stripped)[-1].data["generation"]))
        assert not [r for r in results if r[2] not in (None, r[1])]
        assert sum(1 for r in results if r[2] == r[1]) >= len(results) // 2  # and it usually finds one
