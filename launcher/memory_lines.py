"""The memory and fit lines of an Ollama log, per release line, as typed facts (issue 17).

Separate from the verdict parser (`ollama_logs.py`), which skips these lines for speed: this module reads only the
lines that size a model load. Formats, as the sources print them:

- Ollama's estimate (`llm/memory.go` `EstimateGPULayers`, v0.1.x to v0.12.x): `msg="offload to cuda"` / `msg=offload`
  with `layers.*`, `memory.available`, `memory.gpu_overhead`, `memory.required.*`, `memory.weights.*`,
  `memory.graph.*`, `projector.*` (slog groups; sizes from `format.HumanBytes2`).
- Ollama engine layouts (v0.6 to v0.24): `msg="model weights" buffer=CUDA0|device=CUDA0 size=...`, `msg="kv cache"`,
  `msg="compute graph" backend=... buffer_type=...|device=...`, `msg="gpu memory" ... available= free= minimum=
  overhead=` (`server/sched.go`), `msg="offloaded N/M layers to GPU"`.
- llama.cpp, every runner: `load_tensors: offloaded N/M layers to GPU`, `<dev> model|KV|compute buffer size = X MiB`,
  `llama_kv_cache: size = X MiB (N cells, L layers, S/S seqs), K (f16): ..., V (f16): ...`, `print_info: n_layer = N`
  (older `llm_load_print_meta:`), the `llama_model_loader: - kv` metadata lines, `llama_context: n_ctx = N`.
- llama-server's fit (v0.30+, `common_params_fit_impl` at `--log-verbosity 4`): the `common_memory_breakdown_print`
  table (`total = free + (self = model + context + compute) + unaccounted`, MiB), `projected to use X MiB of device
  memory vs. Y MiB of free device memory`, `will leave X >= M MiB`, `cannot meet free memory target of M MiB, need to
  reduce device memory by X MiB`; `llama_prepare_model_devices|llama_model_load_from_file_impl: using device CUDA0
  (...) - X MiB free`.
- The load's settings: the runner's argv in `starting llama server|starting runner|starting llama-server cmd=...`
  (`--ctx-size`/`-c`, `--parallel`/`-np`, `--n-gpu-layers`/`-ngl`, `--flash-attn`, `--kv-cache-type`/
  `--cache-type-k`, `--ollama-engine`), and the `server config` line's OLLAMA_* values.

`scan_line` never raises: a line it cannot read gives None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

MIB: Final = 1 << 20
_UNITS: Final = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
                 "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}
_SIZE: Final = re.compile(r"^\s*(-?[\d.]+)\s*([KMGT]i?B|B)\s*$")
_SLOG_FIELD: Final = re.compile(r'(?:^|\s)([\w.]+)=("(?:[^"\\]|\\.)*"|\[[^\]]*\]|\S*)')
_OFFLOADED: Final = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
# `<dev> model|KV|compute buffer size = X MiB`; the old runner (llama.cpp of 2024) printed weights as
# `llm_load_tensors: <dev> buffer size = X MiB`, without the word `model`.
_BUFFER: Final = re.compile(r"(?:^|\s)([A-Za-z_][\w]*)\s+(?:(model|KV|compute|output|RS)\s+)?buffer size\s*=\s*"
                            r"([\d.]+)\s*MiB")
_KV_SIZE: Final = re.compile(r"size =\s*([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers,\s*(\d+)/(\d+) seqs\), "
                             r"K \((\w+)\):\s*([\d.]+) MiB, V \((\w+)\):\s*([\d.]+) MiB")
_KV_SELF: Final = re.compile(r"KV self size\s*=\s*([\d.]+) MiB, K \((\w+)\):\s*([\d.]+) MiB, V \((\w+)\)")
_META: Final = re.compile(r"^(?:print_info|llm_load_print_meta):\s+(\w+(?: \w+)?)\s*=\s*(.+?)\s*$")
_LOADER_KV: Final = re.compile(r"^llama_model_loader: - kv\s+\d+:\s+([\w.]+)\s+\w+\s+=\s+(\S+)")
_CONTEXT: Final = re.compile(r"^llama_(?:context|new_context_with_model):\s+(n_ctx|n_seq_max|flash_attn|type_k|type_v)"
                             r"\s*=\s*(\S+)")
_BREAKDOWN: Final = re.compile(r"\|\s+-\s+(\w+)\s+\(([^)]*)\)\s*\|\s*(\d+)\s*=\s*(\d+)\s*\+\s*\("
                               r"\s*(\d+)\s*=\s*(\d+)\s*\+"
                               r"\s*(\d+)\s*\+\s*(\d+)\s*\)\s*\+\s*(-?\d+)\s*\|")
_PROJECTED: Final = re.compile(r"projected to use (\d+) MiB of device memory vs\. (\d+) MiB of free device memory")
_LEAVE: Final = re.compile(r"will leave (-?\d+) >= (\d+) MiB of free device memory")
_CANNOT: Final = re.compile(r"cannot meet free memory target of (\d+) MiB, need to reduce device memory by (\d+) MiB")
_USING_DEVICE: Final = re.compile(r"using device (\w+) \(([^)]*)\)(?: \([^)]*\))? - (\d+) MiB free")
_DEVICE_INFO: Final = re.compile(r"^cmn\s+common_param:\s+-\s+(\w+)\s*:\s*(.*?)\s+\((\d+) MiB, (\d+) MiB free\)")
_VERSION: Final = re.compile(r"\(version ([0-9][\w.+-]*)\)")
_START_MSGS: Final = ("starting llama server", "starting runner", "starting llama-server")
_LAYOUT_MSGS: Final = ("model weights", "kv cache", "compute graph", "total memory")
HOST_DEVICES: Final = ("CPU", "BLAS", "Host")
CONFIG_KEYS: Final = ("OLLAMA_GPU_OVERHEAD", "OLLAMA_KV_CACHE_TYPE", "OLLAMA_FLASH_ATTENTION", "OLLAMA_NUM_PARALLEL",
                      "OLLAMA_CONTEXT_LENGTH", "LLAMA_ARG_FIT_TARGET", "OLLAMA_SCHED_SPREAD")
META_KEYS: Final = frozenset({"n_layer", "n_head", "n_head_kv", "n_embd", "n_embd_head_k", "n_embd_head_v",
                              "n_embd_k_gqa", "n_embd_v_gqa", "n_ctx_train", "file type", "file size", "n_expert",
                              "model params", "general.name", "arch", "n_swa", "is_swa_any"})
LOADER_SUFFIXES: Final = {"block_count": "n_layer", "attention.head_count_kv": "n_head_kv",
                          "attention.head_count": "n_head", "attention.key_length": "n_embd_head_k",
                          "attention.value_length": "n_embd_head_v", "embedding_length": "n_embd"}


def parse_size(text: str) -> int | None:
    """Bytes of a HumanBytes2 size (`23.6 GiB`, `512.0 MiB`, `0 B`); None when it is not one."""
    m = _SIZE.match(text.strip('"'))
    if m is None:
        return None
    try:
        return int(float(m.group(1)) * _UNITS[m.group(2)])
    except (ValueError, OverflowError):
        return None


def parse_sizes(text: str) -> list[int] | None:
    """A slog list of sizes (`[22.0 GiB 22.0 GiB]`) as bytes; None when any item is not a size."""
    inner = text.strip('"').strip("[]").split()
    if len(inner) % 2:
        return None
    out = []
    for i in range(0, len(inner), 2):
        size = parse_size(f"{inner[i]} {inner[i + 1]}")
        if size is None:
            return None
        out.append(size)
    return out


def slog_fields(text: str) -> dict[str, str]:
    """The key=value fields of a Go slog text line, quotes removed."""
    out: dict[str, str] = {}
    for m in _SLOG_FIELD.finditer(text):
        value = m.group(2)
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = value[1:-1].replace('\\"', '"')
        out[m.group(1)] = value
    return out


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Fact:
    """One thing a memory line says: a kind and its fields (sizes in bytes)."""

    kind: str
    line: int
    data: dict[str, object] = field(default_factory=dict)


def _argv_facts(cmd: str) -> dict[str, object]:
    """The settings of a runner's argv that size a load."""
    argv = cmd.split()  # Go's exec.Cmd.String(): the arguments joined by spaces, unquoted
    out: dict[str, object] = {}
    flags = {"--ctx-size": "ctx_total", "-c": "ctx_total", "--parallel": "parallel", "-np": "parallel",
             "--n-gpu-layers": "num_gpu", "-ngl": "num_gpu", "--kv-cache-type": "kv_type", "--cache-type-k": "kv_type",
             "--batch-size": "batch", "-b": "batch"}
    for i, arg in enumerate(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if arg in flags and nxt:
            value = _int(nxt) if flags[arg] not in ("kv_type",) else nxt
            if value is not None:
                out[flags[arg]] = value
        elif arg == "--flash-attn":
            out["flash_attn"] = nxt if nxt in ("on", "off", "auto") else "on"
        elif arg == "--ollama-engine":
            out["engine"] = "ollama"
        elif arg in ("--mmproj", "--projector"):
            out["projector"] = True
        elif arg == "--model" and nxt:
            out["model"] = nxt[:400]
    out.setdefault("runner", "llama-server" if "llama-server" in (argv[0] if argv else "") else "ollama")
    return out


def _slog_fact(number: int, text: str, msg: str) -> Fact | None:
    f = slog_fields(text)
    if msg.startswith("offload") and "layers.model" in f:
        data: dict[str, object] = {}
        for key in ("layers.requested", "layers.model", "layers.offload"):
            count = _int(f.get(key, ""))
            if count is not None:
                data[key] = count
        data["layers.split"] = f.get("layers.split", "")
        for key, raw in f.items():
            if key.startswith(("memory.", "projector.")):
                sized = parse_sizes(raw) if raw.startswith("[") else parse_size(raw)
                if sized is not None:
                    data[key] = sized
        data["library"] = f.get("library") or (msg.split()[-1] if msg.startswith("offload to") else None)
        return Fact("offload", number, data)
    if msg in _START_MSGS and "cmd" in f:
        return Fact("start", number, _argv_facts(f["cmd"]))
    if msg == "gpu memory":
        data = {k: parse_size(f.get(k, "")) for k in ("available", "free", "minimum", "overhead")}
        return Fact("gpu_memory", number, {"id": f.get("id"), **{k: v for k, v in data.items() if v is not None}})
    if msg == "inference compute":
        total, avail = parse_size(f.get("total", "")), parse_size(f.get("available", ""))
        if f.get("library", "").lower() in ("cpu", "") or total is None:
            return None
        return Fact("device", number, {"id": f.get("id"), "name": f.get("description") or f.get("name"),
                                       "total": total, "available": avail})
    if msg in _LAYOUT_MSGS:
        size = parse_size(f.get("size", ""))
        device = f.get("device") or f.get("buffer") or f.get("backend")
        if size is None:
            return None
        kind = {"model weights": "weights", "kv cache": "kv", "compute graph": "graph", "total memory": "total"}[msg]
        return Fact("layout", number, {"part": kind, "device": device, "size": size})
    if msg == "server config":
        env = f.get("env", "")
        data = {}
        for key in CONFIG_KEYS:
            m = re.search(rf"(?:\[|\s){key}:(\S*?)(?=\s|\]$|$)", env)
            if m is not None and m.group(1):
                data[key] = m.group(1)
        return Fact("config", number, data)
    if msg == "kv cache type not supported by model":  # llm/server.go: OLLAMA_KV_CACHE_TYPE ignored for this model
        return Fact("kv_type_unsupported", number, {"type": f.get("type", "")})
    m = _OFFLOADED.search(msg)
    if m is not None:
        return Fact("offloaded", number, {"gpu": int(m.group(1)), "total": int(m.group(2))})
    return None


def _host(device: str) -> bool:
    return device in HOST_DEVICES or device.startswith("CPU") or device.endswith("_Host")


def _runner_fact(number: int, text: str) -> Fact | None:
    m = _OFFLOADED.search(text) if "offloaded" in text else None
    if m is not None:
        return Fact("offloaded", number, {"gpu": int(m.group(1)), "total": int(m.group(2))})
    if "buffer size" in text:
        m = _BUFFER.search(text)
        if m is not None:
            part = m.group(2) or ("model" if text.startswith("llm_load_tensors") else "")
            if not part:
                return None
            return Fact("buffer", number, {"device": m.group(1), "part": part, "host": _host(m.group(1)),
                                           "size": int(float(m.group(3)) * MIB)})
    m = _META.match(text) if text.startswith(("print_info", "llm_load_print_meta")) else None
    if m is not None and m.group(1) in META_KEYS:
        return Fact("meta", number, {m.group(1): m.group(2)})
    if text.startswith("llama_model_loader: - kv"):
        m = _LOADER_KV.match(text)
        if m is not None:
            key = m.group(1)
            for suffix, name in LOADER_SUFFIXES.items():
                if key.endswith("." + suffix) and key.count(".") == suffix.count(".") + 1:
                    return Fact("meta", number, {name: m.group(2)})
        return None
    m = _CONTEXT.match(text) if text.startswith("llama_") else None
    if m is not None:
        return Fact("context", number, {m.group(1): m.group(2)})
    m = _KV_SIZE.search(text) if "cells" in text else None
    if m is not None:
        return Fact("kv_size", number, {"size": int(float(m.group(1)) * MIB), "cells": int(m.group(2)),
                                        "layers": int(m.group(3)), "seqs": int(m.group(5)), "type_k": m.group(6),
                                        "type_v": m.group(8)})
    m = _KV_SELF.search(text) if "KV self" in text else None
    if m is not None:
        return Fact("kv_size", number, {"size": int(float(m.group(1)) * MIB), "type_k": m.group(2),
                                        "type_v": m.group(4)})
    if text.startswith("common_memory_breakdown_print"):
        m = _BREAKDOWN.search(text)
        if m is not None:
            vals = [int(m.group(i)) * MIB for i in range(3, 10)]
            return Fact("breakdown", number, {"device": m.group(1), "name": m.group(2), "total": vals[0],
                                              "free": vals[1], "self": vals[2], "model": vals[3], "context": vals[4],
                                              "compute": vals[5], "unaccounted": vals[6]})
        return None
    if text.startswith("common_params_fit_impl"):
        for rx, kind in ((_PROJECTED, "projected"), (_LEAVE, "leave"), (_CANNOT, "cannot")):
            m = rx.search(text)
            if m is not None:
                a, b = int(m.group(1)) * MIB, int(m.group(2)) * MIB
                keys = {"projected": ("use", "free"), "leave": ("leave", "margin"), "cannot": ("margin", "reduce")}
                first, second = keys[kind]
                return Fact("fit", number, {first: a, second: b})
        return None
    m = _USING_DEVICE.search(text) if "using device" in text else None
    if m is not None:
        return Fact("device_free", number, {"device": m.group(1), "name": m.group(2),
                                            "free": int(m.group(3)) * MIB})
    m = _DEVICE_INFO.match(text) if text.startswith("cmn") else None
    if m is not None and not m.group(1).startswith("CPU"):
        return Fact("device_info", number, {"device": m.group(1), "name": m.group(2),
                                            "total": int(m.group(3)) * MIB, "free": int(m.group(4)) * MIB})
    return None


# Every line a fact can come from holds one of these: one scan rejects the rest (the bulk of a runner's output).
KEYWORDS: Final = ("msg=", "offloaded", "buffer size", "print_info:", "llm_load_print_meta:",
                   "llama_model_loader: - kv", "llama_context:", "llama_new_context_with_model:", "llama_kv_cache",
                   "KV self size",
                   "common_memory_breakdown_print", "common_params_fit_impl", "using device", "common_param:")
RELEVANT: Final = re.compile("|".join(re.escape(k) for k in KEYWORDS))
RELEVANT_BYTES: Final = re.compile("|".join(re.escape(k) for k in KEYWORDS).encode())
SLOG_MSGS: Final = frozenset({*_START_MSGS, *_LAYOUT_MSGS, "gpu memory", "inference compute", "server config",
                              "kv cache type not supported by model"})
_LLAMA_PREFIX: Final = re.compile(r"^\d+\.\d+\.\d+\.\d+ [IWEDT] ")  # llama.cpp's log prefix without --no-log-prefix


def scan_line(number: int, text: str) -> Fact | None:
    """The memory fact of one cleaned log line, or None. Never raises."""
    if RELEVANT.search(text) is None:
        return None
    if text[:1].isdigit():
        text = _LLAMA_PREFIX.sub("", text, count=1)
    try:
        i = text.find("msg=")
        if i >= 0 and (i == 0 or text[i - 1] == " "):
            j = i + 4
            if text.startswith('"', j):
                end = text.find('"', j + 1)
                msg = text[j + 1 : end if end >= 0 else None]
            else:
                end = text.find(" ", j)
                msg = text[j : end if end >= 0 else None]
            if msg.startswith("Listening on"):
                m = _VERSION.search(msg)
                return Fact("version", number, {"version": m.group(1)}) if m else None
            if msg in SLOG_MSGS or msg.startswith("offload") or "layers to GPU" in msg:
                return _slog_fact(number, text, msg)
            return None
        return _runner_fact(number, text)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError):
        return None
