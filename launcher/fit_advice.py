"""The smallest change that makes a partly offloaded model fit, computed with the release line's own arithmetic.

Advised only: every candidate changes the model's behaviour (context, cache precision, parallel requests, weights),
so ollama-gpu never applies one. Two fit models, one per way the layer count is decided:

- `EstimateFit` replays Ollama's `EstimateGPULayers` (llm/memory.go, v0.1 to v0.12) on the figures of its own
  `offload` line: per-GPU minimum, one layer of buffer, the larger graph, layers placed while
  `free > overhead + used + layer`, the output layer (and the Ollama engine's projector) last. Before predicting it
  replays the load as it was and must reproduce the log's `layers.offload`; the reading of the figures that does so is
  kept (Ollama before v0.6.1 summed KV into `weights.repeating`), and a mismatch is said.
- `LlamaServerFit` follows llama-server's fit (v0.30+): layers on the device = (free - fit target - base) / per
  layer, with the per-layer weights and KV taken from the difference between the full-offload breakdown it printed
  and the buffers it then allocated.

- `LayoutFit` does the same for the Ollama engine's layout (0.11.5 to 0.24) against the `gpu memory` line's
  `available`; without that line (older layout lines) the candidates are listed unsized.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol

from launcher.memory_account import FIT_TARGET_DEFAULT, MemoryAccount

GIB: Final = 1 << 30
MIB: Final = 1 << 20
# Bytes per element of a KV cache type: llama.cpp's block sizes (ggml type traits) ...
LLAMA_KV_BYTES: Final = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
                         "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}
# ... and what Ollama's estimate assumes (fs/ggml/ggml.go `kvCacheBytesPerElement`).
OLLAMA_KV_BYTES: Final = {"f16": 2.0, "q8_0": 1.0, "q4_0": 0.5}
# Bits per weight of the common GGUF quantisations (llama.cpp's quantize table, 7B-class models).
QUANT_BPW: Final = (("Q8_0", 8.50), ("Q6_K", 6.56), ("Q5_K_M", 5.69), ("Q4_K_M", 4.85), ("Q4_0", 4.55),
                    ("Q3_K_M", 3.91), ("Q2_K", 3.35))
# Ollama prints sizes to one decimal (HumanBytes2): a "GiB" figure is known to +-51 MiB. A searched bound (the largest
# context, the largest weights) keeps this much margin where the figures are so rounded; llama-server's are in MiB.
ROUNDING_HEADROOM: Final = 64 * MIB
CTX_STEP: Final = 256
MIN_CTX: Final = 2048  # Ollama's floor for a useful context (and for any model with a projector)


def kv_bytes_per_token(n_layer: int, n_head_kv: int, head_k: int, head_v: int | None = None,
                       cache_type: str = "f16", table: dict[str, float] = LLAMA_KV_BYTES) -> int:
    """KV cache bytes per token: layers * kv_heads * (head_dim_k + head_dim_v) * bytes per element."""
    per = table.get(cache_type.lower(), 2.0)
    return int(n_layer * n_head_kv * (head_k + (head_v if head_v is not None else head_k)) * per)


def kv_per_token(acc: MemoryAccount) -> tuple[int, str] | None:
    """KV cache bytes per token and how it was found: from the model's metadata lines (layers, KV heads, head
    dimensions, the cache type) when the log prints them and they agree with the printed KV size, else the printed KV
    size over the context it was sized for. None when neither is in the log."""
    printed = acc.kv // acc.ctx_total if acc.kv and acc.ctx_total else None
    n_layer, heads = acc.meta_int("n_layer"), acc.meta_int("n_head_kv")
    head_k = acc.meta_int("n_embd_head_k")
    if head_k is None and acc.meta_int("n_embd") and acc.meta_int("n_head"):
        head_k = (acc.meta_int("n_embd") or 0) // (acc.meta_int("n_head") or 1)
    head_v = acc.meta_int("n_embd_head_v") or head_k
    swa = acc.meta.get("n_swa", "0") not in ("0", "") or acc.meta.get("is_swa_any", "0") not in ("0", "")
    if n_layer and heads and head_k and not swa:
        cache = acc.kv_type or "f16"
        table = OLLAMA_KV_BYTES if acc.release_line == "estimate" else LLAMA_KV_BYTES
        per = kv_bytes_per_token(n_layer, heads, head_k, head_v, cache, table)
        if printed is None or abs(per - printed) <= 0.05 * printed:
            return per, f"{n_layer} layers x {heads} KV heads x ({head_k} + {head_v}) x {table.get(cache, 2.0):g} B"
    if printed:
        return printed, f"the log's KV size over {acc.ctx_total} tokens"
    return None


@dataclass(frozen=True)
class Change:
    """What a candidate changes, as factors on the account's figures."""

    kv: float = 1.0  # factor on the KV cache
    weights: float = 1.0  # factor on the weights
    free: int = 0  # bytes of VRAM added to what is free
    overhead: int | None = None  # a new OLLAMA_GPU_OVERHEAD


@dataclass(frozen=True)
class Prediction:
    layers: int
    margin: int  # bytes left on the GPU(s) at that layer count (negative: short by that much)


@dataclass
class Candidate:
    """One advised change and what the release line's arithmetic predicts for it."""

    name: str  # short key: num_ctx, kv_cache_q8_0, num_parallel, gpu_overhead, free_vram, quantisation
    setting: str  # what to set, e.g. `num_ctx=12288` or `OLLAMA_KV_CACHE_TYPE=q8_0`
    layers: int | None = None
    layers_total: int | None = None
    margin: int | None = None
    fits: bool | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FitModel(Protocol):
    layers_total: int

    def predict(self, change: Change) -> Prediction: ...


@dataclass
class EstimateFit:
    """Ollama's EstimateGPULayers on the printed figures (per GPU equal shares of memory.available)."""

    acc: MemoryAccount
    includes_kv: bool
    # where the projector goes: "last" (Ollama engine, with the output layer), "first" (llama engine: its weights on
    # the first GPU), "first+graph" (up to v0.7.0: weights and graph on the first GPU, llm/memory.go gpuZeroOverhead)
    projector: str
    layers_total: int = 0
    calibrated: bool = False

    def __post_init__(self) -> None:
        self.layers_total = self.acc.layers_total or 0

    def predict(self, change: Change) -> Prediction:
        a = self.acc
        n = max(1, self.layers_total - 1)
        gpus = max(1, a.gpus)
        free = [((a.vram_available or 0) + change.free) / gpus] * gpus
        overhead = float(a.gpu_overhead or 0) if change.overhead is None else float(change.overhead)
        kv = float(a.kv or 0) * change.kv
        rep = float(a.weights_repeating or 0) - (float(a.kv or 0) if self.includes_kv else 0.0)
        layer = max(0.0, rep) / n * change.weights + kv / n
        proj_w, proj_g = float(a.projector_weights or 0), float(a.projector_graph or 0)
        last = float(a.weights_nonrepeating or 0) * change.weights + (proj_w + proj_g if self.projector == "last"
                                                                       else 0.0)
        gzo = {"last": 0.0, "first": proj_w, "first+graph": proj_w + proj_g}[self.projector]
        graph = float(max(a.graph or 0, a.graph_partial or 0))
        if gpus > 1:
            graph = float(a.graph_partial or a.graph or 0)
        minimum = float(a.minimum or 0)
        alloc = [0.0] * gpus
        space: list[int] = []
        for i in range(gpus):
            z = gzo if not space else 0.0
            if free[i] < overhead + z + graph + minimum + 2 * layer:
                continue
            space.append(i)
            alloc[i] += minimum + layer
        if space:
            alloc[space[0]] += gzo
        count = 0
        for i in range(n - 1, -1, -1):
            for j in range(len(space), 0, -1):
                g = space[i % j]
                if free[g] > overhead + alloc[g] + graph + layer:
                    alloc[g] += layer
                    count += 1
                    break
                space.pop(i % j)
        if last > 0:
            for j in range(len(space), 0, -1):
                g = space[count % j]
                if free[g] > overhead + alloc[g] + graph + last:
                    alloc[g] += last
                    count += 1
                    break
        full = count >= self.layers_total
        used = [x for x in alloc if x > 0]
        need = sum(used) + graph * len(used) + overhead * len(used)
        if not full:  # what is left beside the layers placed (positive, under one layer, when the replay is exact)
            return Prediction(count, int(sum(free[i] for i in range(gpus) if alloc[i] > 0) - need))
        return Prediction(count, int(sum(free) - need))


@dataclass
class LlamaServerFit:
    """llama-server's fit: layers = (free - target - base) / per layer, linear in the layer count."""

    acc: MemoryAccount
    layers_total: int = 0
    per_weights: float = 0.0
    per_kv: float = 0.0
    base_weights: float = 0.0
    base_kv: float = 0.0
    compute: float = 0.0
    calibrated: bool = True

    def __post_init__(self) -> None:
        a = self.acc
        total = self.layers_total = a.layers_total or 0
        on = a.on_gpu
        model_full, ctx_full = float(a.weights_total or 0), float(a.kv or 0)
        n_gpu = a.layers_gpu or 0
        if 0 < n_gpu < total and "weights" in on:
            self.per_weights = max(0.0, (model_full - on["weights"]) / (total - n_gpu))
            self.per_kv = max(0.0, (ctx_full - on.get("kv", 0)) / (total - n_gpu))
            self.base_weights = max(0.0, on["weights"] - n_gpu * self.per_weights)
            self.base_kv = max(0.0, on.get("kv", 0) - n_gpu * self.per_kv)
            self.compute = float(on.get("graph", a.graph or 0))
        else:
            self.per_weights = model_full / max(1, total)
            n_layer = a.meta_int("n_layer") or max(1, total - 1)
            self.per_kv = ctx_full / max(1, n_layer)
            self.compute = float(a.graph or 0)

    def usable(self, change: Change) -> float:
        """What the layers, KV and graph may use: free at load less the fit target."""
        return float(self.acc.vram_free or 0) + change.free - float(self.acc.fit_margin or FIT_TARGET_DEFAULT)

    def predict(self, change: Change) -> Prediction:
        a = self.acc
        usable = self.usable(change)
        per = self.per_weights * change.weights + self.per_kv * change.kv
        base = self.base_weights * change.weights + self.base_kv * change.kv + self.compute
        full = (float(a.weights_total or 0) * change.weights + float(a.kv or 0) * change.kv
                + float(a.graph or self.compute))
        if full <= usable:
            return Prediction(self.layers_total, int(usable - full))
        n = int((usable - base) // per) if per > 0 else 0
        n = max(0, min(self.layers_total - 1, n))
        return Prediction(n, int(usable - (base + n * per)))


@dataclass
class LayoutFit(LlamaServerFit):
    """The Ollama engine's layout (llm/server.go `buildLayout`, v0.11.5 to v0.24): layers, each its weights and KV,
    packed from the last while they fit in free - minimum - OLLAMA_GPU_OVERHEAD - the GPU's graph (the `gpu memory`
    line's `available` less the `compute graph` on the GPU). The same linear model as llama-server's fit; the host's
    share of the weights includes the token embeddings, which never move, so per-layer costs err high."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.compute = float(self.acc.on_gpu.get("graph", 0))

    def usable(self, change: Change) -> float:
        a = self.acc
        given_back = float(a.gpu_overhead or 0) - float(change.overhead) if change.overhead is not None else 0.0
        return float(a.vram_available or 0) + change.free + given_back

    def predict(self, change: Change) -> Prediction:
        a = self.acc
        usable = self.usable(change)
        per = self.per_weights * change.weights + self.per_kv * change.kv
        base = self.base_weights * change.weights + self.base_kv * change.kv + self.compute
        full = float(a.weights_total or 0) * change.weights + float(a.kv or 0) * change.kv + self.compute
        if full <= usable:
            return Prediction(self.layers_total, int(usable - full))
        n = max(0, min(self.layers_total - 1, int((usable - base) // per) if per > 0 else 0))
        return Prediction(n, int(usable - (base + n * per)))


def fit_model(acc: MemoryAccount) -> tuple[FitModel | None, str]:
    """The release line's fit model for this account, or None and why it cannot be sized."""
    if acc.layers_total is None:
        return None, "the log does not say how many layers the model has"
    if acc.release_line == "estimate":
        if acc.vram_available is None or acc.weights_repeating is None:
            return None, "the offload line lacks memory.available or memory.weights"
        first = "last" if acc.engine == "ollama" else "first"
        places = [first, *[p for p in ("last", "first", "first+graph") if p != first]]
        kv_first = acc.repeating_includes_kv
        tries = [(kv_in, place) for place in places for kv_in in (kv_first, not kv_first)]
        placed = {"last": "with the output layer", "first": "on the first GPU",
                  "first+graph": "on the first GPU with its graph (Ollama up to 0.7.0)"}
        for kv_in, place in tries:
            model = EstimateFit(acc, kv_in, place)
            if model.predict(Change()).layers == acc.layers_gpu:
                model.calibrated = True
                said = []
                if kv_in != kv_first:
                    said.append("memory.weights.repeating " + ("includes" if kv_in else "excludes") + " the KV cache")
                if place != first and (acc.projector_weights or acc.projector_graph):
                    said.append(f"the projector is placed {placed[place]}")
                why = f"read so that the replay gives the log's {acc.layers_gpu} layers: " + "; ".join(said)
                return model, why if said else ""
        model = EstimateFit(acc, kv_first, first)
        got = model.predict(Change()).layers
        return model, f"replaying the load gives {got} layers, the log says {acc.layers_gpu}: predictions are rough"
    if acc.release_line == "llama-server":
        if acc.vram_free is None or acc.weights_total is None:
            return None, "the fit lines (memory breakdown, free memory) are not in the log"
        model_ls = LlamaServerFit(acc)
        got = model_ls.predict(Change()).layers
        if acc.layers_gpu is not None and abs(got - acc.layers_gpu) > 1:
            model_ls.calibrated = False
            return model_ls, (f"replaying the load gives {got} layers, the log says {acc.layers_gpu}: "
                              "predictions are rough")
        return model_ls, ""
    if acc.release_line == "layout":
        if acc.vram_available is None:
            return None, "the `gpu memory` line (free VRAM at load) is not in the log"
        if acc.layers_gpu is None or "weights" not in acc.on_gpu:
            return None, "the layout lines lack the layer count or the weights on the GPU"
        model_lo = LayoutFit(acc)
        got = model_lo.predict(Change()).layers
        if abs(got - acc.layers_gpu) > 1:
            model_lo.calibrated = False
            return model_lo, (f"replaying the load gives {got} layers, the log says {acc.layers_gpu}: "
                              "predictions are rough")
        return model_lo, ""
    return None, "this release line prints no free-memory figure for the load"


def _fmt(n: int | float | None) -> str:
    if n is None:
        return "not in the log"
    v = float(n)
    if abs(v) >= GIB:
        return f"{v / GIB:.1f} GiB"
    return f"{v / MIB:.0f} MiB"


def _candidate(model: FitModel, name: str, setting: str, change: Change, note: str = "") -> Candidate:
    p = model.predict(change)
    return Candidate(name, setting, p.layers, model.layers_total, p.margin, p.layers >= model.layers_total, note)


def _largest(fits: Callable[[float], bool], lo: float, hi: float, steps: int = 40) -> float | None:
    """The largest x in [lo, hi] with fits(x) (fits is monotone: true below some point); None if not even lo."""
    if not fits(lo):
        return None
    if fits(hi):
        return hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def headroom(acc: MemoryAccount) -> int:
    """The margin a searched bound keeps: the rounding of the figures it was computed from."""
    return ROUNDING_HEADROOM if acc.release_line in ("estimate", "layout") else 0


def _fits(model: FitModel, change: Change, keep: int) -> bool:
    p = model.predict(change)
    return p.layers >= model.layers_total and p.margin >= keep


def _ctx_candidate(acc: MemoryAccount, model: FitModel) -> Candidate | None:
    if not acc.ctx_total or not acc.kv:
        return None
    par = max(1, acc.parallel or 1)
    per_seq = acc.ctx_total // par
    if per_seq <= MIN_CTX:
        return None  # already at the floor: a smaller context is not the change to make
    floor = MIN_CTX

    keep = headroom(acc)

    def fits(c: float) -> bool:
        return _fits(model, Change(kv=c / per_seq), keep)

    best = _largest(fits, float(floor), float(per_seq))
    var = "num_ctx (or OLLAMA_CONTEXT_LENGTH)"
    if best is None:
        p = model.predict(Change(kv=floor / per_seq))
        return Candidate("num_ctx", f"{var}={floor}", p.layers, model.layers_total, p.margin, False,
                         f"even a {floor}-token context leaves layers on the CPU")
    ctx = int(best) // CTX_STEP * CTX_STEP if best >= CTX_STEP else int(best)
    if ctx >= per_seq:
        return None
    return _candidate(model, "num_ctx", f"{var}={ctx}", Change(kv=ctx / per_seq),
                      f"from {per_seq}; KV {_fmt(acc.kv)} → {_fmt((acc.kv or 0) * ctx / per_seq)}")


def _kv_candidates(acc: MemoryAccount, model: FitModel) -> list[Candidate]:
    cur = (acc.kv_type or "f16").lower()
    table = OLLAMA_KV_BYTES if acc.release_line == "estimate" else LLAMA_KV_BYTES
    out = []
    fa_off = (acc.flash_attn or "").lower() in ("off", "disabled", "0", "false")
    if acc.release_line == "estimate" and acc.flash_attn is None:
        fa_off = True
    for target in ("q8_0", "q4_0"):
        if target == cur or table.get(target, 2.0) >= table.get(cur, 2.0):
            continue
        if acc.kv_quant_unsupported:
            out.append(Candidate(f"kv_cache_{target}", f"OLLAMA_KV_CACHE_TYPE={target}", None, model.layers_total,
                                 None, False, "not for this model: the log says its KV cache type is not supported"))
            continue
        factor = table[target] / table.get(cur, 2.0)
        note = "needs flash attention: set OLLAMA_FLASH_ATTENTION=1" if fa_off else "with flash attention"
        out.append(_candidate(model, f"kv_cache_{target}", f"OLLAMA_KV_CACHE_TYPE={target}", Change(kv=factor), note))
    return out


def _quant_candidate(acc: MemoryAccount, model: FitModel) -> Candidate | None:
    keep = headroom(acc)
    best = _largest(lambda f: _fits(model, Change(weights=f), keep), 0.05, 1.0)
    if best is None:
        return Candidate("quantisation", "a smaller quantisation", None, model.layers_total, None, False,
                         "even a tenfold smaller quantisation would not fit: the KV cache, graph or projector alone "
                         "is too big")
    bpw = _bpw(acc)
    weights = acc.weights_total or ((acc.weights_repeating or 0) + (acc.weights_nonrepeating or 0))
    if bpw is None:
        return _candidate(model, "quantisation", f"weights at most {_fmt(weights * best)} (now {_fmt(weights)})",
                          Change(weights=best), f"a quantisation at most {best:.0%} of the current size")
    target = bpw * best
    names = [n for n, b in QUANT_BPW if b <= target]
    if not names:
        return Candidate("quantisation", f"≤ {target:.2f} bits per weight", None, model.layers_total, None, False,
                         "no common quantisation is that small")
    pick = dict(QUANT_BPW)[names[0]]
    return _candidate(model, "quantisation", f"the same model in {names[0]}", Change(weights=pick / bpw),
                      f"{bpw:.2f} → {pick:.2f} bits per weight")


def _bpw(acc: MemoryAccount) -> float | None:
    text = acc.meta.get("file size", "")
    if "BPW" in text:
        try:
            return float(text.split("(")[1].split()[0])
        except (IndexError, ValueError):
            return None
    return None


def advise(acc: MemoryAccount) -> tuple[list[Candidate], str]:
    """The candidates for a partial load, the ones that fit first (least behaviour change first); and a note on
    how they were sized."""
    model, note = fit_model(acc)
    if model is None:
        return _unsized(acc, note)
    out: list[Candidate] = []
    if acc.holders:
        freed = sum(h.used for h in acc.holders)
        names = ", ".join(f"{h.name} (pid {h.pid}, {_fmt(h.used)})" for h in acc.holders[:4])
        out.append(_candidate(model, "free_vram", f"stop or move {names}", Change(free=freed)))
    if acc.gpu_overhead:
        if acc.release_line == "llama-server":
            out.append(Candidate("gpu_overhead", "OLLAMA_GPU_OVERHEAD=0", acc.layers_gpu, model.layers_total, None,
                                 False, "no effect here: llama-server's fit measures free memory itself"))
        else:
            out.append(_candidate(model, "gpu_overhead", "OLLAMA_GPU_OVERHEAD=0", Change(overhead=0),
                                  f"now {_fmt(acc.gpu_overhead)}"))
    if (acc.parallel or 1) > 1 and acc.kv:
        out.append(_candidate(model, "num_parallel", "OLLAMA_NUM_PARALLEL=1", Change(kv=1 / (acc.parallel or 1)),
                              f"now {acc.parallel}"))
    out.extend(_kv_candidates(acc, model))
    ctx = _ctx_candidate(acc, model)
    if ctx is not None:
        out.append(ctx)
    quant = _quant_candidate(acc, model)
    if quant is not None:
        out.append(quant)
    order = ["free_vram", "gpu_overhead", "num_parallel", "kv_cache_q8_0", "num_ctx", "kv_cache_q4_0", "quantisation"]
    out.sort(key=lambda c: (not c.fits, order.index(c.name) if c.name in order else len(order)))
    return out, note


def _unsized(acc: MemoryAccount, why: str) -> tuple[list[Candidate], str]:
    """Candidates without numbers (the log lacks what sizes them), with what is off the GPU."""
    off = acc.off_gpu
    if acc.partial and off.get("weights"):
        why = (f"{why}; {(acc.layers_total or 0) - (acc.layers_gpu or 0)} of {acc.layers_total} layers and "
               f"{_fmt(off['weights'])} of weights are on the CPU")
    out = [Candidate("num_ctx", "a smaller num_ctx (or OLLAMA_CONTEXT_LENGTH)", note=why),
           Candidate("kv_cache_q8_0", "OLLAMA_KV_CACHE_TYPE=q8_0 with OLLAMA_FLASH_ATTENTION=1", note=why),
           Candidate("quantisation", "a smaller quantisation of the same model", note=why)]
    if off.get("graph"):
        out.insert(0, Candidate("graph", f"the {_fmt(off['graph'])} compute graph on the CPU (a vision projector's, "
                                         "typically): a smaller num_ctx or batch shrinks it", note=why))
    return out, why


def fully_offloaded(acc: MemoryAccount) -> bool:
    """Every layer of the load is on the GPU (as the log counts them): there is no shortfall to advise on."""
    return acc.layers_total is not None and acc.layers_gpu == acc.layers_total


def summary(acc: MemoryAccount, candidates: list[Candidate]) -> str:
    """One line for the `serve` advice log and `status`: what missed and the first change that fits."""
    lay = f"{acc.layers_gpu}/{acc.layers_total} layers on GPU" if acc.layers_total else "layers not in the log"
    if fully_offloaded(acc):
        return f"{lay}: the whole model is on the GPU, nothing to change"
    short = f"short by {_fmt(acc.shortfall)}" if acc.shortfall is not None and acc.shortfall > 0 else "partly offloaded"
    best = next((c for c in candidates if c.fits), None)
    if best is None:
        return f"{lay}, {short}; no single advised change fits it fully"
    return f"{lay}, {short}; smallest change that fits: {best.setting} (margin {_fmt(best.margin)})"



