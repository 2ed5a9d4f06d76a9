#!/usr/bin/env python3
"""Issue 17, item 4: a model that does not fit, its memory account and advice, and each advised change applied by
hand in a run of its own: predicted vs actual layers on the GPU, with a real llama.cpp CUDA runner under `serve`.

Builds on ../e2e (the stack: a generation-D Ollama simulator whose runner is the real llama-server, the machine's
driver, `ollama-gpu serve` around it). VRAM is reserved the way an operator's other work would hold it: a process
with a CUDA context and one allocation (hold_vram.py), sized so that about half the model's layers fit. Each
configuration is independent (its own holder, server and load); one that fails is reported and the rest go on.

usage (device machine, after ../e2e/device.sh build):
  run_partial.py --llama-bin /tmp/llama.cpp/build/bin --model /tmp/ogpu-e2e/models/rand-1b-f16.gguf \
                 --work /tmp/ogpu-partial --out $OUT --deadline 480
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from launcher.fit_advice import LLAMA_KV_BYTES, Change, advise, fit_model  # noqa: E402
from launcher.memory_account import MemoryAccount, accounts_of_text  # noqa: E402

GIB, MIB = 1 << 30, 1 << 20
HERE = Path(__file__).resolve().parent
MODEL = "bench:latest"
MOCK_ENV: dict[str, str] = {}  # --mode mock: the mock driver's device (its memory sets the split)
HOLD_NOTHING = False  # --mode mock: no VRAM to hold


@dataclass
class Config:
    """One run: what is set, how much VRAM is held, and the change it is to the baseline (for the prediction)."""

    name: str
    setting: str
    num_ctx: int
    hold: int
    change: Change = field(default_factory=Change)
    env: dict[str, str] = field(default_factory=dict)
    model: str = MODEL


@dataclass
class Row:
    name: str
    setting: str
    predicted: int | None = None
    predicted_fits: bool | None = None
    predicted_margin_mib: int | None = None
    actual: int | None = None
    total: int | None = None
    free_at_load_mib: int | None = None
    status_memory: str | None = None
    status_holders: list[Any] = field(default_factory=list)  # NVML's other processes holding VRAM, as serve saw
    advice_line: str | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def diff(self) -> int | None:
        return None if self.predicted is None or self.actual is None else self.actual - self.predicted


def last_load(text: str) -> MemoryAccount | None:
    """The last model load's account in a log (with a layer count), or None."""
    accs = [a for a in accounts_of_text(text) if a.layers_total is not None]
    return accs[-1] if accs else None


def plan(base: MemoryAccount, hold: int, num_ctx: int, quantised: str | None = None) -> list[Config]:
    """The configurations that apply each advised change to the baseline (plus two that test the arithmetic
    between the ends: half the way to the advised context, and 1 GiB of the held VRAM given back)."""
    candidates, _note = advise(base)
    out = [Config("baseline", f"num_ctx={num_ctx}, {hold // MIB} MiB held", num_ctx, hold)]
    ctx = next((c for c in candidates if c.name == "num_ctx"), None)
    if ctx is not None and "=" in ctx.setting:
        advised = int(ctx.setting.rsplit("=", 1)[1])
        out.append(Config("num_ctx", f"num_ctx={advised}", advised, hold, Change(kv=advised / num_ctx)))
        half = (advised + num_ctx) // 2 // 256 * 256
        if advised < half < num_ctx:
            out.append(Config("num_ctx_half", f"num_ctx={half}", half, hold, Change(kv=half / num_ctx)))
    cur = LLAMA_KV_BYTES.get((base.kv_type or "f16").lower(), 2.0)
    for kv in ("q8_0", "q4_0"):
        out.append(Config(f"kv_{kv}", f"OLLAMA_KV_CACHE_TYPE={kv}", num_ctx, hold, Change(kv=LLAMA_KV_BYTES[kv] / cur),
                          {"OLLAMA_KV_CACHE_TYPE": kv, "OLLAMA_FLASH_ATTENTION": "1"}))
    if hold > GIB:
        out.append(Config("free_1gib", f"{(hold - GIB) // MIB} MiB held (1 GiB freed)", num_ctx, hold - GIB,
                          Change(free=GIB)))
    out.append(Config("free_all", "the holder stopped", num_ctx, 0, Change(free=hold)))
    if quantised is not None:
        bpw = _bpw(base) or 16.0
        out.append(Config("quant_q8_0", "the same model in Q8_0", num_ctx, hold, Change(weights=8.5 / bpw),
                          model=quantised))
    return out


def _bpw(acc: MemoryAccount) -> float | None:
    text = acc.meta.get("file size", "")
    with contextlib.suppress(IndexError, ValueError):
        return float(text.split("(")[1].split()[0])
    return None


def predict(base: MemoryAccount, cfg: Config, row: Row) -> None:
    """The baseline account's fit model applied to the configuration's change."""
    model, _note = fit_model(base)
    if model is None:
        return
    p = model.predict(cfg.change)
    row.predicted, row.predicted_fits, row.predicted_margin_mib = p.layers, p.layers >= model.layers_total, \
        p.margin // MIB


def table(rows: list[Row], title: str = "") -> str:
    """Predicted vs actual layers on the GPU, one row per configuration."""
    head = f"{'configuration':<16} {'setting':<40} {'predicted':>9} {'actual':>9} {'diff':>5} {'free@load':>10}  note"
    out = [title, head] if title else [head]
    for r in rows:
        tot = f"/{r.total}" if r.total is not None else ""
        pred = f"{r.predicted}{tot}" if r.predicted is not None else "-"
        act = f"{r.actual}{tot}" if r.actual is not None else "-"
        diff = f"{r.diff:+d}" if r.diff is not None else "-"
        free = f"{r.free_at_load_mib} MiB" if r.free_at_load_mib is not None else "-"
        note = r.error or ("fits" if r.actual is not None and r.total is not None and r.actual >= r.total else "")
        out.append(f"{r.name:<16} {r.setting[:40]:<40} {pred:>9} {act:>9} {diff:>5} {free:>10}  {note}".rstrip())
    within = [r for r in rows if r.diff is not None]
    if within:
        ok = sum(1 for r in within if abs(r.diff or 0) <= 1)
        out.append(f"within one layer: {ok}/{len(within)} configurations")
    return "\n".join(out) + "\n"


# --- the device side ------------------------------------------------------------------------------------------


def nvml_free(index: int = 0) -> int:
    import pynvml

    pynvml.nvmlInit()
    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).free)
    finally:
        pynvml.nvmlShutdown()


class Holder:
    """hold_vram.py as a child: started, waited for, stopped by closing its stdin (then killed)."""

    def __init__(self, size: int) -> None:
        self.proc: subprocess.Popen[str] | None = None
        if size <= 0:
            return
        self.proc = subprocess.Popen([sys.executable, str(HERE / "hold_vram.py"), str(size)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("held"):
            self.stop()
            raise RuntimeError(f"hold_vram: {line or 'no answer'}")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def _status_memory(srv: Any) -> dict[str, Any] | None:
    """The memory block of the first runner that has one in `ollama-gpu status --json`."""
    runners = (srv.status() or {}).get("runners") or []
    return next((r["memory"] for r in runners if isinstance(r.get("memory"), dict)), None)


def run_config(stack: Any, cfg: Config, logs: Path) -> tuple[Row, MemoryAccount | None]:
    """One independent run: holder, `ollama-gpu serve`, one load, the log read back; everything stopped after."""
    from benchmarks.gpu.e2e.stack import Server, wait_for

    row = Row(cfg.name, cfg.setting)
    t0 = time.monotonic()
    holder: Holder | None = None
    srv = None
    acc = None
    try:
        holder = Holder(0 if HOLD_NOTHING else cfg.hold)
        srv = Server(stack, f"partial-{cfg.name}", {**MOCK_ENV, **cfg.env})
        if not srv.wait_ready(90):
            raise RuntimeError("server not ready in 90 s")
        code, reply = srv.load(cfg.model, num_ctx=cfg.num_ctx, timeout=240)
        if code != 200:
            raise RuntimeError(f"load: HTTP {code} {str(reply)[:200]}")
        # the runner's last buffer lines reach the parser, then status and our advice line (up to 15 s)
        mem = wait_for(lambda: _status_memory(srv), 15, 0.5)
        row.status_memory = mem.get("summary") if isinstance(mem, dict) else None
        row.status_holders = list(mem.get("holders") or []) if isinstance(mem, dict) else []
        advice = [e for e in srv.our_lines() if e.get("event") == "partial_offload_advice"]
        row.advice_line = advice[-1].get("advice") if advice else None
    except Exception as exc:  # one configuration's failure is printed and the next one runs
        row.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        if srv is not None:
            with contextlib.suppress(Exception):
                srv.stop()
            log = srv.dir / "stderr.log"
            if log.exists():
                shutil.copyfile(log, logs / f"{cfg.name}.server.log")
                acc = last_load(log.read_text(encoding="utf-8", errors="replace"))
        if holder is not None:
            holder.stop()
    if acc is not None:
        row.actual, row.total = acc.layers_gpu, acc.layers_total
        row.free_at_load_mib = acc.vram_free // MIB if acc.vram_free is not None else None
    elif row.error is None:
        row.error = "no `offloaded N/M layers` line in the log"
    row.seconds = round(time.monotonic() - t0, 1)
    return row, acc


def quantise(llama_bin: Path, model: Path, work: Path) -> Path | None:
    """The model in Q8_0 with llama-quantize, when the build has it (else None: that configuration is skipped)."""
    tool = llama_bin / "llama-quantize"
    if not tool.exists():
        return None
    out = work / "model-q8_0.gguf"
    if not out.exists():
        done = subprocess.run([str(tool), str(model), str(out), "Q8_0"], capture_output=True, text=True,
                              timeout=180, check=False)
        if done.returncode != 0:
            print(f"llama-quantize failed rc={done.returncode}: {done.stderr[-300:]}", flush=True)
            return None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("real", "mock"), default="real",
                    help="mock: the simulator's runner and the mock driver (a smoke test of this script, no GPU)")
    ap.add_argument("--llama-bin", type=Path)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ogpu-partial"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--num-ctx", type=int, default=16384)
    ap.add_argument("--target-free-mib", type=int, default=0,
                    help="free VRAM to leave at load; 0: the fit target + the weights + half the KV cache + 300 MiB")
    ap.add_argument("--deadline", type=float, default=480, help="start no configuration after this many seconds")
    args = ap.parse_args()
    t0 = time.monotonic()
    from benchmarks.gpu.e2e.stack import Stack

    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.work / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    models = {"bench": args.model}
    q8 = quantise(args.llama_bin, args.model, args.work) if args.llama_bin is not None else None
    if q8 is not None:
        models["bench-q8"] = q8
    stack = Stack.build(args.mode, args.work / "stack", args.llama_bin, models)
    if args.mode == "mock":  # the mock driver reports its memory less 512 MiB free; nothing can be held on it
        global MOCK_ENV, HOLD_NOTHING  # a smoke-test switch, set once before any run
        MOCK_ENV = {"MOCKCUDA_DEVICES": f"mem_mib={args.target_free_mib + 512 or 1568}"}
        HOLD_NOTHING = True
    free0 = nvml_free() if args.mode == "real" else 0
    # rand-1b: 16 layers, 16 KV heads, head dims 128 + 128, f16: 128 KiB a token, 2 GiB at 16384. Leaving the fit
    # target + the weights + half the KV + 300 MiB puts about half the layers on the GPU, and some advised changes fit
    # fully while others stay partial (both kinds test the prediction).
    kv = 16 * 16 * 256 * 2 * args.num_ctx
    need = args.model.stat().st_size + kv + 300 * MIB
    target = args.target_free_mib * MIB or (GIB + args.model.stat().st_size + kv // 2 + 300 * MIB)
    hold = max(0, free0 - target)
    print(f"free {free0 // MIB} MiB, full offload ~{need // MIB} MiB, leaving {target // MIB} MiB: holding "
          f"{hold // MIB} MiB", flush=True)
    rows: list[Row] = []
    base_row, base = run_config(stack, Config("baseline", f"num_ctx={args.num_ctx}, {hold // MIB} MiB held",
                                              args.num_ctx, hold), logs)
    rows.append(base_row)
    print(table(rows), flush=True)
    results: dict[str, Any] = {"free_before_mib": free0 // MIB, "hold_mib": hold // MIB, "num_ctx": args.num_ctx}
    if base is None or not base.partial:
        results["problem"] = "the baseline did not load partly; no prediction to check"
    else:
        from launcher.memory_report import render, report

        results["baseline_account"] = report(base)
        print("\n".join(render([base])), flush=True)
        predict(base, Config("baseline", "", args.num_ctx, hold), base_row)
        for cfg in plan(base, hold, args.num_ctx, "bench-q8:latest" if q8 is not None else None)[1:]:
            if time.monotonic() - t0 > args.deadline:
                rows.append(Row(cfg.name, cfg.setting, error="skipped: deadline"))
                continue
            row, _acc = run_config(stack, cfg, logs)
            predict(base, cfg, row)
            rows.append(row)
            print(table(rows[-1:]).splitlines()[1], flush=True)
    text = table(rows, f"issue 17 on {machine()}: predicted (from the baseline's account) vs actual layers on GPU")
    print(text, flush=True)
    (args.out / "partial_table.txt").write_text(text)
    results["rows"] = [{**asdict(r), "diff": r.diff} for r in rows]
    (args.out / "partial_results.json").write_text(json.dumps(results, indent=2, default=str))
    with tarfile.open(args.out / "partial-logs.tgz", "w:gz") as tar:
        tar.add(logs, arcname="partial-logs")
    return 0 if rows and all(r.error is None for r in rows) else 1


def machine() -> str:
    with contextlib.suppress(Exception):
        import pynvml

        pynvml.nvmlInit()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        pynvml.nvmlShutdown()
        return name.decode() if isinstance(name, bytes) else str(name)
    return "unknown GPU"


if __name__ == "__main__":
    sys.exit(main())
