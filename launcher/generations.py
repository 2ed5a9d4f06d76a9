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

# The library directories under lib/ollama whose base name OLLAMA_LLM_LIBRARY must equal in the generations whose
# discovery filters by it (discover/runner.go from v0.12.4: any other value skips every GPU library; CMakePresets.json
# OLLAMA_RUNNER_DIR, v0.12.4-v0.24.0). Earlier generations ignore a value that names no runner.
LIBRARY_DIRS: Final = {
    "C": frozenset({"cuda_v11", "cuda_v12", "cuda_v13", "cuda_jetpack5", "cuda_jetpack6", "rocm", "vulkan", "mlx",
                    "mlx_cuda_v12", "mlx_cuda_v13"}),
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

# Go source file names that log in some generations only, from every directory of the repository (`source=` prints
# the base name, so a name shared by two directories counts for both): the generations of the sampled tags from the
# first that has the file to the last. Printed by `tools/catalogue_extract.py GIT_DIR --source-files`.
SOURCE_FILE_GENS: Final = {
    "amd.go": frozenset({'D'}),
    "amd_common.go": frozenset({'0', 'A', 'B'}),
    "amd_hip_windows.go": frozenset({'0', 'A', 'B'}),
    "amd_linux.go": frozenset({'0', 'A', 'B'}),
    "amd_windows.go": frozenset({'0', 'A', 'B'}),
    "anthropic.go": frozenset({'C', 'D'}),
    "app.go": frozenset({'C', 'D'}),
    "app_darwin.go": frozenset({'C', 'D'}),
    "app_windows.go": frozenset({'C', 'D'}),
    "array.go": frozenset({'C', 'D'}),
    "assets.go": frozenset({'0', 'A'}),
    "backend.go": frozenset({'B'}),
    "base.go": frozenset({'C', 'D'}),
    "bytepairencoding.go": frozenset({'B', 'C', 'D'}),
    "cache.go": frozenset({'A', 'B', 'C', 'D'}),
    "causal.go": frozenset({'B', 'C'}),
    "claude_desktop.go": frozenset({'D'}),
    "client.go": frozenset({'C', 'D'}),
    "cloud_proxy.go": frozenset({'C', 'D'}),
    "cmd.go": frozenset({'C', 'D'}),
    "cogito.go": frozenset({'C', 'D'}),
    "cohere.go": frozenset({'D'}),
    "common.go": frozenset({'A'}),
    "compile.go": frozenset({'C', 'D'}),
    "convert_deepseek2.go": frozenset({'C', 'D'}),
    "convert_glm4moelite.go": frozenset({'C', 'D'}),
    "convert_glmocr.go": frozenset({'C', 'D'}),
    "cpu_common.go": frozenset({'0'}),
    "cpu_linux.go": frozenset({'C'}),
    "cpu_windows.go": frozenset({'C'}),
    "create.go": frozenset({'A', 'B', 'C', 'D'}),
    "cuda_common.go": frozenset({'0', 'A', 'B'}),
    "cuda_compat.go": frozenset({'D'}),
    "deepseek3.go": frozenset({'C', 'D'}),
    "deltanet.go": frozenset({'C'}),
    "device.go": frozenset({'C', 'D'}),
    "dynamic.go": frozenset({'C', 'D'}),
    "ext_server_common.go": frozenset({'0'}),
    "gdn_projections.go": frozenset({'D'}),
    "gemma.go": frozenset({'0', 'A'}),
    "gemma4.go": frozenset({'C', 'D'}),
    "getstarted_windows.go": frozenset({'0', 'A', 'B', 'C'}),
    "ggml.go": frozenset({'B', 'C', 'D'}),
    "glimmer.go": frozenset({'D'}),
    "glm46.go": frozenset({'C', 'D'}),
    "gpu_darwin.go": frozenset({'0', 'A', 'B', 'C'}),
    "gpu_kernel.go": frozenset({'D'}),
    "gpu_oneapi.go": frozenset({'0', 'A', 'B'}),
    "gpu_windows.go": frozenset({'A', 'B'}),
    "harmonyparser.go": frozenset({'B', 'C', 'D'}),
    "image.go": frozenset({'A', 'B', 'C'}),
    "imagegen.go": frozenset({'C', 'D'}),
    "imageprocessor.go": frozenset({'C'}),
    "inference_request_log.go": frozenset({'C', 'D'}),
    "launch.go": frozenset({'C', 'D'}),
    "lazy.go": frozenset({'B', 'C', 'D'}),
    "lfm2.go": frozenset({'C', 'D'}),
    "lifecycle.go": frozenset({'0', 'A', 'B', 'C'}),
    "llama.go": frozenset({'0', 'A', 'B', 'C'}),
    "llama_server.go": frozenset({'D'}),
    "llm.go": frozenset({'0'}),
    "logging.go": frozenset({'0', 'A', 'B', 'C'}),
    "logging_nonwindows.go": frozenset({'0', 'A', 'B', 'C'}),
    "logging_windows.go": frozenset({'0', 'A', 'B', 'C'}),
    "logrotate.go": frozenset({'C', 'D'}),
    "logutil.go": frozenset({'B'}),
    "mamba2.go": frozenset({'C'}),
    "media.go": frozenset({'D'}),
    "memory.go": frozenset({'0', 'A', 'B', 'C'}),
    "model_list_cache.go": frozenset({'D'}),
    "model_recommendations.go": frozenset({'C', 'D'}),
    "model_show_cache.go": frozenset({'C', 'D'}),
    "model_vision.go": frozenset({'C'}),
    "mtp.go": frozenset({'C', 'D'}),
    "native_probe.go": frozenset({'D'}),
    "native_probe_linux.go": frozenset({'D'}),
    "native_probe_windows.go": frozenset({'D'}),
    "olmo3.go": frozenset({'C', 'D'}),
    "olmo3_think.go": frozenset({'C', 'D'}),
    "paths.go": frozenset({'0', 'A', 'B', 'C'}),
    "payload.go": frozenset({'0', 'A'}),
    "pipeline.go": frozenset({'C', 'D'}),
    "prefix_cache.go": frozenset({'D'}),
    "process_text.go": frozenset({'B'}),
    "process_text_spm.go": frozenset({'B'}),
    "quantization.go": frozenset({'B', 'C', 'D'}),
    "qwen3.go": frozenset({'C', 'D'}),
    "qwen35.go": frozenset({'C', 'D'}),
    "qwen3_5.go": frozenset({'D'}),
    "qwen3coder.go": frozenset({'B', 'C', 'D'}),
    "qwen3vl.go": frozenset({'C', 'D'}),
    "recurrent_checkpoints.go": frozenset({'C', 'D'}),
    "rocm_windows.go": frozenset({'D'}),
    "rotating.go": frozenset({'D'}),
    "runner.go": frozenset({'A', 'B', 'C', 'D'}),
    "safetensors.go": frozenset({'0'}),
    "sentencepiece.go": frozenset({'B', 'C', 'D'}),
    "server_unix.go": frozenset({'C', 'D'}),
    "server_windows.go": frozenset({'C', 'D'}),
    "shim_darwin.go": frozenset({'0'}),
    "shim_ext_server.go": frozenset({'0'}),
    "shim_ext_server_linux.go": frozenset({'0'}),
    "shim_ext_server_windows.go": frozenset({'0'}),
    "speculate_stats.go": frozenset({'D'}),
    "status_memory.go": frozenset({'C', 'D'}),
    "template.go": frozenset({'B', 'C', 'D'}),
    "tokenizer_spm.go": frozenset({'B', 'C', 'D'}),
    "torch.go": frozenset({'0', 'A'}),
    "transfer.go": frozenset({'C', 'D'}),
    "type.go": frozenset({'B', 'C', 'D'}),
    "ui.go": frozenset({'C', 'D'}),
    "updater_darwin.go": frozenset({'C', 'D'}),
    "vocabulary.go": frozenset({'B', 'C', 'D'}),
    "vulkan.go": frozenset({'D'}),
    "vulkan_windows.go": frozenset({'D'}),
    "webview.go": frozenset({'C', 'D'}),
    "wordpiece.go": frozenset({'B', 'C', 'D'}),
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
    # (Go's `log.Printf` shape, `2024/01/14 19:50:06 gpu.go:94: …`, is no cue: every version sets Lshortfile and
    # net/http still logs through it.)
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
