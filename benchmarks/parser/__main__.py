"""`python -m benchmarks.parser [--size-mb N] [--memory]`: generate a log, stream it through parser and board (and,
with `--memory`, `explain`'s memory account in the same pass), print a table."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from launcher.evidence import Board
from launcher.log_input import read_chunks
from launcher.memory_report import MemoryTee
from launcher.ollama_logs import parse_chunks

T = "time=2026-11-25T18:18:22.581Z level=INFO source="
GIN = '[GIN] 2026/11/25 - 18:18:22 | 200 |  2.104s |  127.0.0.1 | POST     "/api/chat"'
# The server's start once, then model loads and their traffic, in the proportions of the real logs in
# shared/fixtures: mostly HTTP, server chatter and runner output that say nothing about the GPU (about one line in
# twenty is evidence, as there).
HEADER = [
    f'{T}routes.go:2008 msg="Listening on 127.0.0.1:11434 (version 0.32.15)"',
    f'{T}runner.go:60 msg="discovering available GPUs..."',
    f'{T}types.go:50 msg="inference compute" id=0 library=CUDA compute=8.9 name=CUDA0 description="NVIDIA RTX 4090" '
    'libdirs=ollama,cuda_v13 driver=13.0 pci_id=0000:01:00.0 type=discrete total="23.5 GiB" available="23.0 GiB"',
]
BLOCK = [
    *[GIN] * 40,
    f'{T}sched.go:1147 msg="disabling mmap for llama-server load by default" model=/m reason=cpu',
    f'{T}server.go:109 msg="using llama-server for model" model=/root/.ollama/models/blobs/sha256-2dcbd96a68172a9b2c',
    f'{T}llama_server.go:433 msg="starting llama-server" cmd="/usr/lib/ollama/llama-server --model /m --port 45043"',
    f'{T}sched.go:613 msg="system memory" total="23.5 GiB" free="23.1 GiB" free_swap="0 B"',
    *[f'{T}llama_server.go:1350 msg="waiting for llama-server to become available" status="llm server not '
      'responding"'] * 3,
    "ggml_cuda_init: found 1 CUDA devices (Total VRAM: 24079 MiB):",
    "  Device 0: NVIDIA GeForce RTX 4090, compute capability 8.9, VMM: yes, VRAM: 24079 MiB",
    "load_backend: loaded CUDA backend from /usr/lib/ollama/cuda_v13/libggml-cuda.so",
    "cmn  common_param: system_info: n_threads = 16 (n_threads_batch = 16) / 16 | CUDA : ARCHS = 890 | CPU : SSE3 = 1",
    *[f"llama_model_loader: - kv  {i:2d}:                       llama.context_length u32              = 2048"
      for i in range(30)],
    *[f"print_info: n_ctx_train           = {i}" for i in range(40)],
    "load_tensors: offloaded 33/33 layers to GPU",
    "load_tensors:        CUDA0 model buffer size =  4403.49 MiB",
    "load_tensors:   CPU_Mapped model buffer size =   308.23 MiB",
    *[f"llama_context: n_ctx         = {4096 + i}" for i in range(5)],
    "llama_kv_cache:      CUDA0 KV buffer size =   800.00 MiB",
    "sched_reserve:      CUDA0 compute buffer size =   378.04 MiB",
    f'{T}llama_server.go:1362 msg="llama-server started in 0.25 seconds"',
    *["srv  log_server_r: done request: POST /completion 127.0.0.1 200"] * 20,
    *["slot print_timing: id  0 | task 0 | prompt eval time =       5.77 ms /     6 tokens"] * 20,
    f'{T}model_recommendations.go:177 msg="model recommendations cache sleep scheduled" wait=4m1.8s',
    *[f"Jan 14 16:41:34 host ollama[16241]: {GIN}"] * 4,
    f'Jan 14 16:41:34 host ollama[16241]: {T}sched.go:481 msg="loaded runners" count=1',
]


def generate(path: Path, size_mb: int) -> int:
    """Write about `size_mb` MiB of log lines; returns the number of lines."""
    block = ("\n".join(BLOCK) + "\n").encode()
    target = size_mb << 20
    reps = max(1, 4096 // len(BLOCK))
    chunk = block * reps
    written = lines = 0
    with open(path, "wb") as f:
        f.write(("\n".join(HEADER) + "\n").encode())
        while written < target:
            f.write(chunk)
            written += len(chunk)
            lines += len(BLOCK) * reps
    return lines


def worker(path: str, memory: bool = False) -> None:
    """Stream one file through parser and board (and the memory tap) on one core; print JSON figures."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    t0, c0 = time.perf_counter(), time.process_time()
    events = lines = 0
    board = Board()
    tee = MemoryTee() if memory else None
    with open(path, "rb") as f:
        for event in parse_chunks(read_chunks(f), tee):
            events += 1
            board.add(event)
            if event.kind == "parse_summary":
                lines = int(event.data["lines"])
    verdict = board.verdict()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"lines": lines, "events": events, "seconds": elapsed, "cpu_seconds": cpu,
                      "peak_mb": peak_kb / 1024,
                      "outcome": verdict.outcome, "loads": len(tee.accounts()) if tee is not None else None}))


def main() -> int:
    """Generate, measure in a child process (clean peak RSS), delete, print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mb", type=int, default=1024, help="size of the generated log (default 1024 = 1 GiB)")
    ap.add_argument("--memory", action="store_true", help="read explain's memory account in the same pass")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.memory)
        return 0
    with tempfile.TemporaryDirectory(prefix="ogpu-bench-") as tmp:
        path = Path(tmp) / "generated.log"
        generate(path, args.size_mb)
        size = path.stat().st_size
        proc = subprocess.run([sys.executable, "-m", "benchmarks.parser", "--worker", str(path),
                               *(["--memory"] if args.memory else [])], capture_output=True, text=True, check=True)
    r = json.loads(proc.stdout)
    rows = [("log size", f"{size / (1 << 20):.0f} MiB"), ("lines", f"{r['lines']:,}"),
            ("events", f"{r['events']:,}"),
            ("seconds, wall (parse + board" + (" + memory)" if args.memory else ")"), f"{r['seconds']:.1f}"),
            ("seconds, CPU", f"{r['cpu_seconds']:.1f}"),
            ("lines/s, one core (CPU time)", f"{r['lines'] / r['cpu_seconds']:,.0f}"),
            ("lines/s, wall clock", f"{r['lines'] / r['seconds']:,.0f}"),
            ("MiB/s (CPU time)", f"{size / (1 << 20) / r['cpu_seconds']:.1f}"), ("peak RSS", f"{r['peak_mb']:.1f} MB"),
            ("verdict", r["outcome"])] + ([("memory accounts (loads)", f"{r['loads']:,}")] if args.memory else [])
    width = max(len(k) for k, _ in rows)
    print(f"{'measure':<{width}} | value")
    print(f"{'-' * width}-|-{'-' * 16}")
    for k, v in rows:
        print(f"{k:<{width}} | {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
