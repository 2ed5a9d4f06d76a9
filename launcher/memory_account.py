"""A memory account per model load: where its layers went, what full offload needed, and by how much it missed.

Built from the facts of `memory_lines` (and, in `serve`, NVML's per-process memory). Every figure is the log's own,
or None ("not in the log"); nothing is guessed. Which figures exist depends on the release line that printed them:

- `estimate` — Ollama's `offload` line (`llm/memory.go`, v0.1 to v0.12): Ollama decided the layer count itself.
- `layout` — the Ollama engine's `model weights`/`kv cache`/`compute graph` lines (v0.6 to v0.24).
- `llama-server` — llama.cpp's fit in `llama-server` (v0.30+): it measured free memory and chose the layers.
- `runner` — only the runner's own lines (`offloaded N/M`, buffer sizes): what was placed, not what was free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from launcher.memory_lines import RELEVANT_BYTES, Fact, parse_size, scan_line

# Ollama's own constant (discover/gpu.go `cudaMinimumMemory`, v0.1.x to v0.12; printed as `minimum` from v0.12).
CUDA_MINIMUM_MEMORY: Final = 457 << 20
# llama-server's default fit target (`--fit-target`, LLAMA_ARG_FIT_TARGET), MiB of free memory it leaves per device.
FIT_TARGET_DEFAULT: Final = 1024 << 20
MAX_ACCOUNTS: Final = 64


@dataclass
class Holder:
    """A process holding VRAM on the GPU (NVML, `serve` only)."""

    name: str
    pid: int
    used: int  # bytes


@dataclass
class MemoryAccount:
    """One model load. Sizes in bytes; None means the log does not say."""

    serial: int = 0  # the tracker's count of loads: a key that survives restarted line numbers
    release_line: str | None = None  # "estimate" | "layout" | "llama-server" | "runner" (its own lines only)
    version: str | None = None
    model: str | None = None
    first_line: int | None = None
    layers_gpu: int | None = None
    layers_total: int | None = None
    gpus: int = 1
    vram_total: int | None = None
    vram_free: int | None = None  # free at load
    vram_available: int | None = None  # what Ollama (or llama-server's fit) counted as usable
    holders: list[Holder] = field(default_factory=list)
    weights_repeating: int | None = None
    weights_nonrepeating: int | None = None
    weights_total: int | None = None
    repeating_includes_kv: bool = False  # Ollama up to v0.6.0 summed each layer's KV into memory.weights.repeating
    kv: int | None = None
    graph: int | None = None  # full offload
    graph_partial: int | None = None
    projector_weights: int | None = None
    projector_graph: int | None = None
    gpu_overhead: int | None = None
    minimum: int | None = None  # Ollama's per-GPU minimum (printed from v0.12; a constant before)
    fit_margin: int | None = None  # llama-server's fit target
    need_full: int | None = None
    shortfall: int | None = None
    on_gpu: dict[str, int] = field(default_factory=dict)  # weights/kv/graph actually placed on the GPU
    off_gpu: dict[str, int] = field(default_factory=dict)  # ... and on the host
    ctx_total: int | None = None  # context in force (all sequences)
    parallel: int | None = None
    kv_type: str | None = None
    flash_attn: str | None = None
    num_gpu: int | None = None
    engine: str | None = None  # "ollama" for --ollama-engine
    kv_quant_unsupported: bool = False  # Ollama said "kv cache type not supported by model"
    projector_in_argv: bool = False
    meta: dict[str, str] = field(default_factory=dict)  # print_info / llama_model_loader values
    lines: dict[str, int] = field(default_factory=dict)  # figure → line number it came from
    notes: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        """Fewer layers on the GPU than the model has (known only when the log says both)."""
        return self.layers_gpu is not None and self.layers_total is not None and self.layers_gpu < self.layers_total

    def meta_int(self, key: str) -> int | None:
        """A model metadata value as an int (None if absent or per-layer arrays)."""
        try:
            return int(self.meta[key])
        except (KeyError, ValueError):
            return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for `explain --json`, status and events."""
        out = asdict(self)
        out["partial"] = self.partial
        return out


def _n(value: object) -> int:
    """A fact's number (the scanner only stores ints there; anything else counts as 0, never raises)."""
    return value if isinstance(value, int) else 0


def _first(values: object) -> int | None:
    if isinstance(values, list):
        return sum(v for v in values if isinstance(v, int)) if values else None
    return values if isinstance(values, int) else None


class MemoryTracker:
    """Folds memory facts into accounts, one per model load, in log order. A `RecordTap` of the log parser: it reads
    the parser's records and the quiet lines (which the parser skips) that size a load."""

    def __init__(self) -> None:
        self.quiet = RELEVANT_BYTES
        self.accounts: list[MemoryAccount] = []
        self.config: dict[str, str] = {}
        self.version: str | None = None
        self.devices: dict[str, dict[str, object]] = {}  # discovery's `inference compute` per id
        self._started = False
        self.lines = 0
        self.errors = 0
        self.loads = 0

    def _current(self, number: int, *, new: bool = False) -> MemoryAccount:
        if new or not self.accounts:
            self.loads += 1
            acc = MemoryAccount(serial=self.loads, version=self.version, first_line=number)
            overhead = self.config.get("OLLAMA_GPU_OVERHEAD")
            if overhead is not None:
                try:
                    acc.gpu_overhead = int(overhead)
                except ValueError:
                    acc.gpu_overhead = parse_size(overhead)
            if len(self.devices) == 1:  # with several GPUs, which one the load used is for its own lines to say
                (device,) = self.devices.values()
                total = device.get("total")
                acc.vram_total = total if isinstance(total, int) else None
            self.accounts.append(acc)
            del self.accounts[:-MAX_ACCOUNTS]
            self._started = False
        return self.accounts[-1]

    def feed(self, number: int, text: str) -> MemoryAccount | None:
        """Read one cleaned line (a record); returns the account it changed, if any. Never raises."""
        self.lines += 1
        fact = scan_line(number, text)
        if fact is None:
            return None
        try:
            return self.apply(fact)
        except (KeyError, TypeError, ValueError, OverflowError):  # a fact we cannot fold is counted, never raised
            self.errors += 1
            return None

    def apply(self, fact: Fact) -> MemoryAccount | None:
        """Fold one fact in."""
        d = fact.data
        if fact.kind == "version":
            self.version = str(d["version"])
            return None
        if fact.kind == "config":
            self.config.update({k: str(v) for k, v in d.items()})
            return None
        if fact.kind == "device" and not self._started and not any(a.lines for a in self.accounts[-1:]):
            self.devices[str(d.get("id"))] = dict(d)
            return None
        if fact.kind == "offload":
            acc = self._current(fact.line, new=bool(self.accounts and ("offload" in self.accounts[-1].lines
                                                                     or self._started)))
            self._offload(acc, fact)
            return acc
        if fact.kind == "start":
            cur = self.accounts[-1] if self.accounts else None
            fresh = cur is None or self._started or ("offload" not in cur.lines and bool(cur.lines))
            acc = self._current(fact.line, new=fresh)
            self._started = True
            self._start(acc, fact)
            return acc
        if not self.accounts:
            if fact.kind == "device":
                self.devices[str(d.get("id"))] = dict(d)
                return None
            acc = self._current(fact.line)
        acc = self.accounts[-1]
        self._runner(acc, fact)
        return acc

    def _offload(self, acc: MemoryAccount, fact: Fact) -> None:
        d = fact.data
        acc.release_line = "estimate"
        acc.lines["offload"] = fact.line
        acc.layers_total = _first(d.get("layers.model"))
        acc.layers_gpu = _first(d.get("layers.offload"))
        avail = d.get("memory.available")
        if isinstance(avail, list):
            acc.gpus = max(1, len(avail))
        acc.vram_available = _first(avail)
        acc.gpu_overhead = _first(d.get("memory.gpu_overhead"))
        acc.need_full = _first(d.get("memory.required.full"))
        acc.kv = _first(d.get("memory.required.kv"))
        acc.weights_total = _first(d.get("memory.weights.total"))
        acc.weights_repeating = _first(d.get("memory.weights.repeating"))
        acc.weights_nonrepeating = _first(d.get("memory.weights.nonrepeating"))
        acc.graph = _first(d.get("memory.graph.full"))
        acc.graph_partial = _first(d.get("memory.graph.partial"))
        acc.projector_weights = _first(d.get("projector.weights"))
        acc.projector_graph = _first(d.get("projector.graph"))
        acc.minimum = CUDA_MINIMUM_MEMORY if str(d.get("library") or "").lower() in ("cuda", "rocm") else None
        acc.repeating_includes_kv = _repeating_includes_kv(acc.version)
        if acc.layers_gpu == 0 and acc.weights_total is not None:
            # With no GPU able to take a layer, Ollama's memory.required.full is the overflow alone: no graph, no
            # per-GPU minimum, no buffer layer (llm/memory.go). The need is summed from the parts instead.
            n = max(1, (acc.layers_total or 2) - 1)
            kv = acc.kv or 0
            layer = ((acc.weights_repeating or 0) - (kv if acc.repeating_includes_kv else 0)) // n + kv // n
            acc.need_full = (acc.weights_total - (kv if acc.repeating_includes_kv else 0) + kv
                             + (acc.projector_weights or 0) + (acc.projector_graph or 0)
                             + max(acc.graph or 0, acc.graph_partial or 0) + (acc.minimum or 0) + layer)
            acc.notes.append("no layer fit: the full-offload need is summed from the parts (Ollama's "
                             "memory.required.full then leaves out the graph and the per-GPU minimum)")
        if acc.need_full is not None and acc.vram_available is not None:
            acc.shortfall = acc.need_full + (acc.gpu_overhead or 0) - acc.vram_available

    def _start(self, acc: MemoryAccount, fact: Fact) -> None:
        d = fact.data
        acc.lines.setdefault("start", fact.line)
        acc.model = str(d["model"]) if "model" in d else acc.model
        for key in ("ctx_total", "parallel", "num_gpu"):
            value = d.get(key)
            if isinstance(value, int):
                setattr(acc, key, value)
        if isinstance(d.get("kv_type"), str):
            acc.kv_type = str(d["kv_type"])
        if isinstance(d.get("flash_attn"), str):
            acc.flash_attn = str(d["flash_attn"])
        acc.engine = str(d["engine"]) if "engine" in d else acc.engine
        acc.projector_in_argv = bool(d.get("projector")) or acc.projector_in_argv
        if d.get("runner") == "llama-server" and acc.release_line is None:
            acc.release_line = "llama-server"

    def _runner(self, acc: MemoryAccount, fact: Fact) -> None:
        d = fact.data
        kind = fact.kind
        if acc.release_line is None and kind in ("offloaded", "buffer"):
            acc.release_line = "runner"  # until an estimate, layout or fit line says more
        if kind == "kv_type_unsupported":
            acc.kv_quant_unsupported = True
        elif kind == "offloaded":
            acc.layers_gpu, acc.layers_total = _n(d["gpu"]), _n(d["total"])
            acc.lines["offloaded"] = fact.line
        elif kind == "buffer":
            part = {"model": "weights", "KV": "kv", "compute": "graph"}.get(str(d["part"]))
            if part is not None:
                where = acc.off_gpu if d["host"] else acc.on_gpu
                where[part] = where.get(part, 0) + _n(d["size"])
                acc.lines.setdefault(f"buffer.{part}", fact.line)
        elif kind == "layout":
            if acc.release_line in (None, "runner"):
                acc.release_line = "layout"
            device = str(d.get("device") or "")
            if d["part"] == "total":
                return
            where = acc.off_gpu if (not device or device.startswith("CPU")) else acc.on_gpu
            part = str(d["part"])
            where[part] = where.get(part, 0) + _n(d["size"])
            acc.lines.setdefault(f"layout.{part}", fact.line)
            both = acc.on_gpu.get(part, 0) + acc.off_gpu.get(part, 0)
            if part == "weights":
                acc.weights_total = both
            elif part == "kv":
                acc.kv = both
            elif part == "graph":
                acc.graph = acc.on_gpu.get("graph")
            if acc.vram_available is not None and acc.weights_total is not None:
                # buildLayout: all layers' weights and KV plus the GPU's graph, against free - minimum - overhead
                acc.need_full = acc.weights_total + (acc.kv or 0) + acc.on_gpu.get("graph", 0)
                acc.shortfall = acc.need_full - acc.vram_available
        elif kind == "gpu_memory":
            for key, attr in (("free", "vram_free"), ("available", "vram_available"), ("minimum", "minimum"),
                              ("overhead", "gpu_overhead")):
                if isinstance(d.get(key), int):
                    setattr(acc, attr, d[key])
            acc.lines["gpu_memory"] = fact.line
        elif kind == "meta":
            acc.meta.update({k: str(v) for k, v in d.items()})
        elif kind == "context":
            for key, value in d.items():
                if key == "n_ctx":
                    acc.ctx_total = int(str(value)) if str(value).isdigit() else acc.ctx_total
                elif key == "n_seq_max" and str(value).isdigit():
                    acc.parallel = int(str(value))
                elif key == "flash_attn":
                    acc.flash_attn = str(value)
        elif kind == "kv_size":
            acc.kv_type = str(d.get("type_k") or acc.kv_type)
            if isinstance(d.get("cells"), int):
                acc.ctx_total = _n(d["cells"])
            acc.meta["kv_size"] = str(d["size"])
        elif kind == "breakdown":
            if "breakdown" in acc.lines and fact.line == acc.lines.get("breakdown.last", -2) + 1:
                self._more_devices(acc, fact)  # the same table, one row per device
            if "breakdown" not in acc.lines:  # the first is for the initial parameters: full offload
                acc.release_line = "llama-server"
                # llama-server decides the layers: an `offload` estimate before it (a simulator prints one) is moot
                acc.weights_repeating = acc.weights_nonrepeating = acc.graph_partial = None
                acc.projector_weights = acc.projector_graph = None
                acc.lines.pop("offload", None)
                acc.lines["breakdown"] = acc.lines["breakdown.last"] = fact.line
                acc.vram_total, acc.vram_free = _n(d["total"]), _n(d["free"])
                acc.weights_total = _n(d["model"])
                acc.kv = _n(d["context"])
                acc.graph = _n(d["compute"])
                acc.need_full = _n(d["self"])
                if acc.fit_margin is None:
                    acc.fit_margin = FIT_TARGET_DEFAULT
                acc.shortfall = acc.need_full + acc.fit_margin - acc.vram_free
        elif kind == "fit":
            if "margin" in d:
                acc.fit_margin = _n(d["margin"])
            if "reduce" in d:
                acc.shortfall = _n(d["reduce"])
                acc.lines["fit.reduce"] = fact.line
            elif "leave" in d:
                acc.shortfall = -_n(d["leave"]) + _n(d["margin"])
            if "use" in d and acc.need_full is None:
                acc.need_full = _n(d["use"])
        elif kind in ("device_free", "device_info"):
            if acc.vram_free is None or kind == "device_free":
                acc.vram_free = _n(d["free"])
            if isinstance(d.get("total"), int):
                acc.vram_total = _n(d["total"])


    @staticmethod
    def _more_devices(acc: MemoryAccount, fact: Fact) -> None:
        """A further device's row of the first breakdown table: the account sums the devices."""
        d = fact.data
        acc.lines["breakdown.last"] = fact.line
        acc.gpus += 1
        for attr, key in (("vram_total", "total"), ("vram_free", "free"), ("weights_total", "model"), ("kv", "context"),
                          ("graph", "compute"), ("need_full", "self")):
            setattr(acc, attr, (getattr(acc, attr) or 0) + _n(d[key]))
        acc.shortfall = (acc.need_full or 0) + (acc.fit_margin or FIT_TARGET_DEFAULT) * acc.gpus - (acc.vram_free or 0)


def _repeating_includes_kv(version: str | None) -> bool:
    """Ollama before v0.6.1 added each layer's KV to memory.weights.repeating (llm/memory.go, commit 033cec232)."""
    if version is None:
        return False
    parts = []
    for piece in version.split("-")[0].split(".")[:3]:
        try:
            parts.append(int(piece))
        except ValueError:
            return False
    return tuple(parts) < (0, 6, 1)


def accounts_of_lines(lines: Iterable[tuple[int, str]]) -> list[MemoryAccount]:
    """Every load's account in a log given as (line number, cleaned text)."""
    tracker = MemoryTracker()
    for number, text in lines:
        tracker.feed(number, text)
    return [a for a in tracker.accounts if a.release_line is not None or a.layers_total is not None]


def attach_holders(acc: MemoryAccount, processes: Iterable[Mapping[str, Any]], own_pids: Iterable[int]) -> None:
    """NVML's per-process memory: processes not ours (Ollama and its runners) that hold VRAM, largest first."""
    mine = set(own_pids)
    held = [Holder(str(p.get("name") or "?"), int(p["pid"]), int(p["used"])) for p in processes
            if isinstance(p.get("pid"), int) and isinstance(p.get("used"), int) and p["pid"] not in mine
            and p["used"] > 0]
    acc.holders = sorted(held, key=lambda h: -h.used)


def accounts_of_text(raw: bytes | str) -> list[MemoryAccount]:
    """Every load's account in a whole log, from the records `explain`'s parser reads (a paste's wrapped lines
    rejoined, glued ones split; journald, docker and Markdown remnants removed)."""
    from launcher.ollama_logs import tap_records

    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    tracker = MemoryTracker()
    tap_records([data], tracker)
    return [a for a in tracker.accounts if a.release_line is not None or a.layers_total is not None]
