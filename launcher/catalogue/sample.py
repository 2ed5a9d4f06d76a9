"""A realistic log line built from a catalogue entry's format string, as the program that owns it prints it."""

from __future__ import annotations

import re
from typing import Final

from launcher.catalogue import Entry
from launcher.generations import parse_version

STAMP: Final = "2025-10-09T10:04:11.123Z"
JOURNAL_PREFIX: Final = "Oct 09 10:04:11 gpu-host ollama[2841]: "
_VERB = re.compile(r"%(?P<spec>[-+ #0]*\d*(?:\.\d+)?)(?P<len>hh|h|ll|l|z|j|t|L)?(?P<conv>[diouxXeEfgGcspvqT%])")
REPRESENTATIVE: Final = {"0.1": "0.1.32", "0.2-0.3": "0.3.14", "0.4-0.5": "0.5.7", "0.6-0.11": "0.11.11",
                         "0.12-0.24": "0.24.0", "0.30+": "0.32.15"}
_MODERN: Final = frozenset({"0.12-0.24", "0.30+"})  # ggml device naming: library=CUDA, not cuda

# Realistic slog values by key (what Ollama prints on a healthy NVIDIA host unless an entry says otherwise).
VALUES: Final = {
    "id": "GPU-9d2f6c0e-8f7a-4b1e-9c3d-2a1b0c9d8e7f", "filter_id": "", "compute": "8.6", "driver": "12.4",
    "name": "NVIDIA GeForce RTX 3090", "description": "NVIDIA GeForce RTX 3090", "total": "23.7 GiB",
    "available": "23.4 GiB", "free": "23.4 GiB", "variant": "v12", "pci_id": "0000:01:00.0", "type": "discrete",
    "libdirs": "ollama,cuda_v12", "error": "exit status 2", "model": "/root/.ollama/models/blobs/sha256-6a0746a1ec1a",
    "path": "/usr/lib/ollama/cuda_v12", "library": "cuda", "paths": "[/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15]",
    "runners": "[cpu cpu_avx cpu_avx2 cuda_v11 cuda_v12 rocm_v60102]", "count": "1", "gpu": "0", "device": "0",
    "duration": "1.2s", "libDirs": "[/usr/lib/ollama/cuda_v12]", "libDir": "/usr/lib/ollama/cuda_v12",
    "OLLAMA_LIBRARY_PATH": "[/usr/lib/ollama /usr/lib/ollama/cuda_v12]", "extra_envs": "map[]",
    "env": "map[CUDA_VISIBLE_DEVICES: HIP_VISIBLE_DEVICES: OLLAMA_DEBUG:false OLLAMA_LLM_LIBRARY: "
           "OLLAMA_NUM_PARALLEL:0]",
    "size": "4.1 GiB", "buffer": "CUDA0", "backend": "CUDA0", "layers.requested": "-1", "layers.model": "33",
    "layers.offload": "33", "layers.split": "", "memory.available": "[23.4 GiB]", "memory.required.full": "5.5 GiB",
    "total_vram": "23.7 GiB", "default_num_ctx": "4096", "gpu_count": "1", "compatible": "[cuda_v12 cpu]",
    "requested": "cuda", "cc": "860", "archs": "[500 600 610 700 750 800 860 890 900 1200]",
    "required_driver": "550 or newer", "runner.inference": "\"[{ID:GPU-9d2f Library:cuda}]\"", "runner.size": "5.5 GiB",
    "runner.vram": "5.5 GiB", "status": "exit status 2", "string": "exit status 2", "sys": "2", "exit": "2",
    "seconds": "2.51", "lines_captured": "12", "detail": "", "integrated": "false", "gfx": "gfx1030",
    "gfx_target": "gfx1031", "gpu_type": "gfx1031", "supported": "[gfx1030 gfx1100]", "supported_types": "[gfx1030]",
}
CMD: Final = {
    "0.1": "/tmp/ollama2833/runners/cuda_v11/ollama_llama_server --model /root/.ollama/models/blobs/sha256-6a07 "
           "--ctx-size 2048 --batch-size 512 --embedding --log-disable --n-gpu-layers 33 --port 41077",
    "0.2-0.3": "/tmp/ollama2833/runners/cuda_v12/ollama_llama_server --model /root/.ollama/models/blobs/sha256-6a07 "
               "--ctx-size 8192 --batch-size 512 --embedding --n-gpu-layers 33 --threads 8 --parallel 4 --port 41077",
    "0.4-0.5": "/usr/lib/ollama/runners/cuda_v12_avx/ollama_llama_server runner --model "
               "/root/.ollama/models/blobs/sha256-6a07 --ctx-size 8192 --batch-size 512 --n-gpu-layers 33 "
               "--threads 8 --parallel 4 --port 41077",
    "0.6-0.11": "/usr/local/bin/ollama runner --model /root/.ollama/models/blobs/sha256-6a07 --ctx-size 8192 "
                "--batch-size 512 --n-gpu-layers 33 --threads 8 --parallel 1 --port 41077",
    "0.12-0.24": "/usr/local/bin/ollama runner --ollama-engine --model /root/.ollama/models/blobs/sha256-6a07 "
                 "--port 41077",
    "0.30+": "/usr/lib/ollama/llama-server --model /root/.ollama/models/blobs/sha256-6a07 --port 41077 --host "
             "127.0.0.1 --no-webui --offline -c 4096 -np 1 --log-verbosity 4 --no-log-prefix --flash-attn auto",
}


def _quote(value: str) -> str:
    """Go slog's text handler: quote a value with a space, '=', '"' or nothing in it."""
    if value == "" or any(c in value for c in ' ="\\') or not value.isprintable():
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def unescape(fmt: str) -> str:
    """A C or Go string literal's escapes, resolved."""
    return (fmt.replace("\\\\", "\x00").replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"')
            .replace("\x00", "\\"))


def _one(spec: str, conv: str, value: str) -> str:
    if conv in "diouxX":
        try:
            return ("%" + spec + ("d" if conv in "iu" else conv)) % int(float(value))
        except ValueError:
            return value
    if conv in "eEfgG":
        try:
            return ("%" + spec + conv) % float(value)
        except ValueError:
            return value
    if conv == "q":
        return '"' + value + '"'
    return ("%" + spec + "s") % value


def printf(fmt: str, args: list[str]) -> str:
    """`fmt` with C/Go verbs filled from `args` (missing arguments get a neutral default)."""
    queue = list(args)

    def fill(m: re.Match[str]) -> str:
        conv = m["conv"]
        if conv == "%":
            return "%"
        default = {"s": "CUDA0", "v": "[cuda_v12]", "p": "0x7f3a2c000000", "c": "x", "T": "string"}.get(conv, "1")
        return _one(m["spec"], conv, queue.pop(0) if queue else default)

    return _VERB.sub(fill, unescape(fmt))


def _source(entry: Entry, line: str) -> tuple[str, str]:
    where = entry.at.get(line, "x.go:1@")
    path = where.split("@", 1)[0]
    file, _, number = path.rpartition(":")
    return file.rsplit("/", 1)[-1] or "x.go", number if number.isdigit() else "1"


def text_of(entry: Entry, line: str) -> str:
    """The message text alone: the format filled with the entry's arguments (for slog, the `msg`)."""
    args = list(entry.args)
    if entry.func and entry.fmt.startswith("%s"):
        args.insert(0, entry.func)
    if entry.shape == "slog" and args and entry.fmt.endswith((" ", "=")) and not _VERB.search(entry.fmt):
        return unescape(entry.fmt) + args[0]  # Go string concatenation: "offload to " + library
    return printf(entry.fmt, args).strip("\n").split("\n", 1)[0]


def sample(entry: Entry, line: str) -> str:
    """One line as the release line `line` prints it."""
    if entry.shape == "slog":
        file, number = _source(entry, line)
        parts = [f"time={STAMP} level=INFO source={file}:{number} msg={_quote(text_of(entry, line))}"]
        for key in entry.fields:
            value = entry.values.get(key)
            if value is None:
                value = CMD[line] if key == "cmd" else VALUES.get(key, "1")
                if key == "library" and line in _MODERN:
                    value = "CUDA"
            parts.append(f"{_quote(key) if ' ' in key else key}={value if value.startswith('[') else _quote(value)}")
        return " ".join(parts)
    if entry.shape == "goprintf":
        file, number = _source(entry, line)
        return f"2024/01/14 19:50:06 {file}:{number}: {text_of(entry, line)}"
    return text_of(entry, line)


def version_line(entry: Entry, line: str) -> str:
    """The `Listening on` line of the version whose source the entry cites for `line`."""
    tag = entry.at[line].rsplit("@", 1)[1].lstrip("v")
    if parse_version(tag) is None:  # a real log of that release line whose version is not a tag (upstream builds)
        tag = REPRESENTATIVE[line]
    if entry.shape == "goprintf":
        return f"2024/01/14 19:50:06 routes.go:1019: Listening on 127.0.0.1:11434 (version {tag})"
    return f'time={STAMP} level=INFO source=routes.go:1 msg="Listening on 127.0.0.1:11434 (version {tag})"'
