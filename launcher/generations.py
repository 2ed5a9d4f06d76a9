"""What we know about Ollama's generations, in one leaf: versions, release lines, compute minimums, ROCm targets,
runner command-line shapes, which offload lines prove placement, and the line shapes that tell a generation apart.

Generations (reference/ollama-internals.md): "0" = 0.1.x–0.2.x, A = 0.3.0–0.5.7, B = 0.5.8–0.12.3,
C = 0.12.4–0.24.x, D = 0.30.0 and later. Release lines are the catalogue's coarser, version-named grouping
(launcher/catalogue). The log parser, `/proc` classification and the evidence board import from here; this module
imports nothing from the launcher.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

GENERATIONS: Final = ("0", "A", "B", "C", "D")
ALL: Final = frozenset(GENERATIONS)

# (first version, first version not included, generation). v0.25–v0.29 were never tagged; v0.34+ is not known yet.
VERSION_TABLE: Final = (
    ((0, 0, 0), (0, 3, 0), "0"),
    ((0, 3, 0), (0, 5, 8), "A"),
    ((0, 5, 8), (0, 12, 4), "B"),
    ((0, 12, 4), (0, 26, 0), "C"),
    ((0, 30, 0), (0, 34, 0), "D"),
)

# Release lines of the message catalogue: (name, first version, first version not included).
RELEASE_LINES: Final = (
    ("0.1", (0, 0, 0), (0, 2, 0)),
    ("0.2-0.3", (0, 2, 0), (0, 4, 0)),
    ("0.4-0.5", (0, 4, 0), (0, 6, 0)),
    ("0.6-0.11", (0, 6, 0), (0, 12, 0)),
    ("0.12-0.24", (0, 12, 0), (0, 30, 0)),
    ("0.30+", (0, 30, 0), (1, 0, 0)),
)
RELEASE_LINE_NAMES: Final = tuple(name for name, _, _ in RELEASE_LINES)
# The generations that share a release line (a line's versions straddle a generation boundary in three places).
GENERATIONS_OF_LINE: Final = {
    "0.1": frozenset({"0"}), "0.2-0.3": frozenset({"0", "A"}), "0.4-0.5": frozenset({"A", "B"}),
    "0.6-0.11": frozenset({"B"}), "0.12-0.24": frozenset({"B", "C"}), "0.30+": frozenset({"D"}),
}

# Whether the runner's `offloaded N/M layers to GPU` proves placement (reference A.5 trap: in the gen 0/A llama.cpp
# `llama_supports_gpu_offload()` is a compile-time constant, so the line is printed even after CUDA init failed).
OFFLOAD_LINE_TRUSTED: Final = {"0": False, "A": False, "B": True, "C": True, "D": True}

# Lowest CUDA compute capability any generation's bundled CUDA build runs on (reference A.4, B.4, D.3: 5.0).
MIN_COMPUTE: Final = {"0": 5.0, "A": 5.0, "B": 5.0, "C": 5.0, "D": 5.0}

# gfx targets of the ROCm builds Ollama shipped (Dockerfile / CMake presets of each era); an AMD GPU outside the list
# is dropped unless HSA_OVERRIDE_GFX_VERSION is set. "0"/A: ROCm 5.7–6.1; B on: ROCm 6.x with RDNA1/3.5/4 added.
ROCM_TARGETS: Final = {
    "0": frozenset({"gfx900", "gfx906", "gfx908", "gfx90a", "gfx940", "gfx941", "gfx942", "gfx1030", "gfx1100",
                    "gfx1101", "gfx1102"}),
    "A": frozenset({"gfx900", "gfx906", "gfx908", "gfx90a", "gfx940", "gfx941", "gfx942", "gfx1030", "gfx1100",
                    "gfx1101", "gfx1102"}),
}

# Process classification rows for `/proc`, first match wins: (class, basename of argv[0] or None, argv[1] or None,
# required flag, forbidden flag, generations that start such a process).
RUNNER_ROWS: Final = (
    ("model_runner", "ollama_llama_server", None, None, None, frozenset({"0", "A"})),
    ("discovery_runner", "llama-server", None, "--list-devices", None, frozenset({"D"})),
    ("model_runner", "llama-server", None, "--model", None, frozenset({"D"})),
    ("discovery_runner", "llama-server", None, None, None, frozenset({"D"})),
    ("quantize", "llama-quantize", None, None, None, frozenset({"D"})),
    ("mlx_runner", None, "runner", "--mlx-engine", None, frozenset({"D"})),
    ("model_runner", None, "runner", "--model", None, frozenset({"B", "C"})),
    ("discovery_runner", None, "runner", None, None, frozenset({"C"})),
    ("gpu_discover", None, "gpu-discover", None, None, frozenset({"D"})),
    ("server", None, "serve", None, None, ALL),
)

# Runner command lines as the server logs them (`starting llama server cmd=…` and its successors): shape → the
# generations that print it. Searched in the command text.
RUNNER_CMD_SHAPES: Final = (
    (re.compile(r"libext_server"), frozenset({"0"})),
    (re.compile(r"[/\\]ollama_llama_server(?:\.exe)?\b"), frozenset({"0", "A"})),
    (re.compile(r"[/\\]llama-server(?:\.exe)?\b"), frozenset({"D"})),
    (re.compile(r"\bollama(?:\.exe)?\"? runner\b(?!.*--mlx-engine)"), frozenset({"B", "C"})),
)

# Go source files that print log lines in some release lines only (from `git grep -l slog` at the catalogue's
# representative tags; a file printed by every line tells nothing and is absent). slog prints `source=<file>:<line>`.
SOURCE_FILE_LINES: Final = {
    "amd.go": ("0.30+",),
    "amd_common.go": ("0.1", "0.2-0.3", "0.4-0.5", "0.6-0.11"),
    "amd_hip_windows.go": ("0.1", "0.2-0.3", "0.4-0.5", "0.6-0.11"),
    "amd_linux.go": ("0.1", "0.2-0.3", "0.4-0.5", "0.6-0.11"),
    "amd_windows.go": ("0.1", "0.2-0.3", "0.4-0.5", "0.6-0.11"),
    "cpu_common.go": ("0.1",),
    "cpu_linux.go": ("0.12-0.24",),
    "cuda_common.go": ("0.1", "0.2-0.3", "0.4-0.5", "0.6-0.11"),
    "cuda_compat.go": ("0.30+",),
    "device.go": ("0.12-0.24", "0.30+"),
    "ext_server_common.go": ("0.1",),
    "ggml.go": ("0.4-0.5", "0.6-0.11", "0.12-0.24"),
    "gpu_oneapi.go": ("0.1", "0.2-0.3", "0.4-0.5", "0.6-0.11"),
    "gpu_windows.go": ("0.2-0.3", "0.4-0.5", "0.6-0.11"),
    "llama_server.go": ("0.30+",),
    "llm.go": ("0.1",),
    "memory.go": ("0.1", "0.2-0.3", "0.4-0.5", "0.6-0.11", "0.12-0.24"),
    "native_probe.go": ("0.30+",),
    "native_probe_linux.go": ("0.30+",),
    "payload.go": ("0.1", "0.2-0.3"),
    "rocm_windows.go": ("0.30+",),
    "shim_ext_server.go": ("0.1",),
    "shim_ext_server_linux.go": ("0.1",),
    "vulkan.go": ("0.30+",),
}

# Message shapes that tell generations apart: (needle, regex, generations). The needle is a plain substring test so
# that a line without it costs no regex.
KEY_SHAPES: Final = (
    ("inference compute", re.compile(r"\blibrary=(?:cuda|rocm|oneapi|metal)\b"), frozenset({"0", "A", "B"})),
    ("inference compute", re.compile(r"\blibrary=(?:CUDA|ROCm|Vulkan|Metal)\b"), frozenset({"C", "D"})),
    ("inference compute", re.compile(r"\blibdirs="), frozenset({"C", "D"})),
    ("inference compute", re.compile(r"\bvariant=\"?v1\d"), frozenset({"A", "B"})),
    ("ggml_init_cublas", re.compile(r"^ggml_init_cublas: "), frozenset({"0"})),
    # llama.cpp renamed llm_load_tensors to llama_model::load_tensors; Ollama vendored the rename in v0.5.13
    ("llm_load_tensors:", re.compile(r"^llm_load_tensors: "), frozenset({"0", "A", "B"})),
    ("load_tensors:", re.compile(r"^load_tensors: "), frozenset({"B", "C", "D"})),
    (".go:", re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \w+\.go:\d+: "), frozenset({"0"})),  # Go log.Printf
)


def parse_version(text: str) -> tuple[int, int, int] | None:
    """`0.12.4`, `0.30.0-rc2`, `v0.1.9` → a tuple; None when it is not a version."""
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return int(m[1]), int(m[2]), int(m[3] or 0)


def generation_of(version: str) -> str | None:
    """The generation of an Ollama version, or None when the table does not know it."""
    v = parse_version(version)
    if v is None:
        return None
    for first, stop, gen in VERSION_TABLE:
        if first <= v < stop:
            return gen
    return None


def release_line_of(version: str) -> str | None:
    """The catalogue release line of an Ollama version, or None."""
    v = parse_version(version)
    if v is None:
        return None
    for name, first, stop in RELEASE_LINES:
        if first <= v < stop:
            return name
    return None


def generations_of_lines(lines: tuple[str, ...] | list[str]) -> frozenset[str]:
    """The generations that print lines of these release lines."""
    out: frozenset[str] = frozenset()
    for line in lines:
        out |= GENERATIONS_OF_LINE.get(line, frozenset())
    return out


SOURCE_FILE_GENS: Final = {name: generations_of_lines(lines) for name, lines in SOURCE_FILE_LINES.items()}


def source_file(text: str) -> str | None:
    """The `source=<file>:<line>` file name of a slog line (path stripped), or None."""
    i = text.find(" source=")
    if i < 0:
        return None
    j = i + 8
    end = text.find(":", j)
    if end < 0 or end - j > 80:
        return None
    name = text[j:end]
    return name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]


def slog_message(text: str) -> str | None:
    """The `msg=` value of a Go slog line, or None when the line is not one."""
    i = text.find("msg=")
    if i < 0 or (i > 0 and text[i - 1] != " "):
        return None
    j = i + 4
    if text.startswith('"', j):
        end = text.find('"', j + 1)
        return text[j + 1 : end if end >= 0 else None]
    end = text.find(" ", j)
    return text[j : end if end >= 0 else None]


def shape_generations(text: str, messages: Mapping[str, frozenset[str]] | None = None,
                      ) -> tuple[frozenset[str], str] | None:
    """The generations a line's shape allows, and what showed it (message, source file, message key, command line),
    or None when the shape tells nothing. `messages` maps a slog message to the generations whose sources print it
    (the catalogue's table)."""
    if messages:
        msg = slog_message(text)
        gens = messages.get(msg) if msg else None
        if gens and gens != ALL:
            return gens, f"message {msg!r}"
    name = source_file(text)
    if name is not None:
        gens = SOURCE_FILE_GENS.get(name)
        if gens is not None:
            return gens, f"source file {name}"
    for needle, regex, gens in KEY_SHAPES:
        if needle in text and regex.search(text):
            return gens, f"line shape {regex.pattern}"
    if "cmd=" in text or "Loading Dynamic llm server" in text:
        for regex, gens in RUNNER_CMD_SHAPES:
            if regex.search(text):
                return gens, "runner command line"
    return None
