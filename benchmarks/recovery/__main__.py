"""`python -m benchmarks.recovery [--runs 5]`: how fast `serve` decides and recovers, on the simulator + mock driver.

Each run starts `ollama-gpu serve` over a simulated Ollama 0.32.15 (generation D) with CUDA_VISIBLE_DEVICES=-1 listed
in OGPU_MAY_OVERRIDE, so discovery runs on the CPU, the remedy restarts Ollama without the filter, and discovery
finds the GPU. From the recording (OGPU_RECORD):
- evidence -> verdict: for every verdict the supervisor announced, the time from the event that made the board's
  answer what it announced (found by replaying the recording through a fresh board) to the announcement
  (target <= 250 ms);
- fallback -> verified GPU: from the CPU verdict to the GPU verdict after the restart, and the same minus the time
  the simulator itself took to start again (target <= 2 s + the simulator's start).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from launcher.events import Event, Replay
from launcher.evidence import Board
from tests.ollama_sim import native
from tests.test_serve_remedies import Run


def _subject_verdict(board: Board, subject: str) -> tuple[str, str] | None:
    live = board.live()
    if subject == "discovery":
        v = live.discovery
    else:
        pid = int(subject.split()[1])
        found = [v for (p, _st), v in live.runners.items() if p == pid]
        if not found:
            return None
        v = found[0]
    return v.outcome, v.cause


def decision_latencies(events: list[Event]) -> list[float]:
    """Seconds from the deciding event to each announced verdict change."""
    out = []
    board = Board()
    inputs: list[Event] = []
    for event in events:
        if event.source == "supervisor" and event.kind == "verdict":
            want = (event.data["outcome"], event.data["cause"])
            if want[0] == "unknown":
                continue
            replay = Board()
            deciding = None
            for candidate in inputs:
                replay.add(candidate)
                if _subject_verdict(replay, str(event.data["subject"])) == want:
                    deciding = candidate
                    break
            if deciding is not None:
                out.append(event.t - deciding.t)
            continue
        if event.source == "supervisor" and event.kind in ("decision",):
            continue
        board.add(event)
        inputs.append(event)
    return out


def recovery(events: list[Event]) -> tuple[float, float] | None:
    """(CPU verdict -> GPU verdict, the same minus the simulator's restart-to-answer time)."""
    cpu_t = gpu_t = start_t = ready_t = None
    for e in events:
        if e.source != "supervisor":
            continue
        if e.kind == "verdict" and e.data.get("subject") == "discovery":
            if e.data["outcome"] == "cpu_expected" and cpu_t is None:
                cpu_t = e.t
            elif e.data["outcome"] == "gpu" and cpu_t is not None and gpu_t is None:
                gpu_t = e.t
        elif e.kind == "ollama_started" and cpu_t is not None and start_t is None:
            start_t = e.t
        elif e.kind == "state" and e.data.get("to") == "running" and start_t is not None and ready_t is None:
            ready_t = e.t
    if cpu_t is None or gpu_t is None:
        return None
    sim_start = (ready_t - start_t) if start_t is not None and ready_t is not None else 0.0
    return gpu_t - cpu_t, gpu_t - cpu_t - sim_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    opts = parser.parse_args()
    libs = native.build()
    latencies: list[float] = []
    recoveries: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="ogpu-recovery-") as tmp:
        cache = Path(tmp) / "cache"
        for i in range(opts.runs):
            base = Path(tmp) / f"run{i}"
            record = base / "events.jsonl"
            run = Run(base, libs, cache, flags=("--may-override", "CUDA_VISIBLE_DEVICES"),
                      CUDA_VISIBLE_DEVICES="-1", OGPU_RECORD=str(record))
            run.ready()
            run.wait_status(lambda s: s["discovery"]["outcome"] == "gpu" and s["ready"], "recovered")
            run.stop()
            with open(record, encoding="utf-8") as stream:
                events = list(Replay(stream))
            latencies += decision_latencies(events)
            got = recovery(events)
            if got is not None:
                recoveries.append(got)
    ms = [1000 * x for x in latencies]
    rows = [
        (f"evidence -> verdict, {len(ms)} verdicts (ms): median [min..max]",
         f"{statistics.median(ms):.0f} [{min(ms):.0f}..{max(ms):.0f}]" if ms else "n/a", "<= 250"),
    ]
    if recoveries:
        total = [r[0] for r in recoveries]
        own = [r[1] for r in recoveries]
        rows += [
            (f"fallback -> verified GPU, {len(total)} runs (s): median [min..max]",
             f"{statistics.median(total):.2f} [{min(total):.2f}..{max(total):.2f}]", ""),
            ("  the same minus the simulator's own restart (s)",
             f"{statistics.median(own):.2f} [{min(own):.2f}..{max(own):.2f}]", "<= 2"),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>22}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>22}  {target}")


if __name__ == "__main__":
    main()
