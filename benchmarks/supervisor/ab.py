"""`python -m benchmarks.supervisor.ab OTHER_TREE [--runs 20]`: start latency of this tree against another checkout
(e.g. `git worktree add /tmp/main main`), interleaved in a shuffled order so both see the same machine load.

Two figures per side, medians with [min..max]: exec to `/api/version` answering (the stand-in server of
`benchmarks.supervisor`), and exec to the moment the server is spawned (our own cost before Ollama starts).
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.supervisor.__main__ import REPO, answers, base_env, free_port, server, stop


def one_start(tree: Path | None, tmp: Path) -> tuple[float, float]:
    """(ms to the server's spawn, ms to /api/version); tree None: the bare server."""
    port = free_port()
    env = base_env(tmp, port)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    argv = [str(server(tmp)), "serve"] if tree is None else [sys.executable, "-m", "launcher.cli", "--ollama",
                                                             str(server(tmp)), "serve"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tree or REPO)
    spawned = 0.0 if tree is None else -1.0
    while not answers(port):
        if proc.poll() is not None:
            raise RuntimeError("the server exited during start")
        if spawned < 0:
            try:
                if any("fake_server" in " ".join(k.cmdline()) for k in psutil.Process(proc.pid).children()):
                    spawned = (time.perf_counter() - t0) * 1000
            except psutil.Error:
                pass
        time.sleep(0.001)
    answered = (time.perf_counter() - t0) * 1000
    stop(proc)
    return spawned, answered


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} [{min(values):.1f}..{max(values):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other checkout's root")
    parser.add_argument("--runs", type=int, default=20)
    opts = parser.parse_args()
    sides: dict[str, Path | None] = {"bare": None, "other": opts.other.resolve(), "this": REPO}
    tmps = {name: Path(tempfile.mkdtemp(prefix=f"ogpu-ab-{name}-")) for name in sides}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    try:
        for name, tree in sides.items():
            one_start(tree, tmps[name])  # compiles and caches each side's shim
        rng = random.Random(14)
        for _ in range(opts.runs):
            order = list(sides)
            rng.shuffle(order)
            for name in order:
                results[name].append(one_start(sides[name], tmps[name]))
    finally:
        for tmp in tmps.values():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'side':6s} {'exec to spawn (ms)':>28s} {'exec to /api/version (ms)':>30s}")
    for name, rows in results.items():
        spawn = "-" if name == "bare" else fmt([r[0] for r in rows])
        print(f"{name:6s} {spawn:>28s} {fmt([r[1] for r in rows]):>30s}")
    print(f"runs={opts.runs}, other={opts.other}")


if __name__ == "__main__":
    main()
