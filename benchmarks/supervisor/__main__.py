"""`python -m benchmarks.supervisor [--idle-seconds 60] [--others 300] [--mb 512] [--runs 5] [--nvml-dir D]`:
print a table.

What it measures, each with the server alone and under `ollama-gpu serve`:
- start latency: from exec to the first 200 of /api/version, median of --runs (target: ≤ 100 ms added);
- idle CPU % of one core and RSS of the supervisor over --idle-seconds with --others extra processes alive
  (targets ≤ 0.5 % and ≤ 40 MB);
- forwarding throughput: --mb MiB written by the server to stdout, read at the end of our pipe
  (target ≥ 100 MB/s).
The server is tests/programs/fake_server.py (a stand-in with no Ollama logic, so the figures are the supervisor's).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "tests" / "programs" / "fake_server.py"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(port: int) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/api/version", timeout=0.5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def base_env(tmp: Path, port: int, **extra: str) -> dict[str, str]:
    # PYTHONDONTWRITEBYTECODE dropped: an installed ollama-gpu has its bytecode compiled, so every start here
    # after the warm-up reads .pyc files too instead of compiling the sources again
    env = {k: v for k, v in os.environ.items() if not k.startswith("OGPU_") and k != "PYTHONDONTWRITEBYTECODE"}
    env.update(OLLAMA_HOST=f"127.0.0.1:{port}", HOME=str(tmp), RUNTIME_DIRECTORY=str(tmp / "run"),
               CACHE_DIRECTORY=str(tmp / "cache"), STATE_DIRECTORY=str(tmp / "state"), OGPU_LOG_FORMAT="json",
               OGPU_SYSTEM_CONFIG=str(tmp / "none"), PYTHONPATH=str(REPO), **extra)
    return env


def server(tmp: Path) -> Path:
    """The server both sides start, the same way: an executable that execs this interpreter on the fake server.
    (Started through its `#!/usr/bin/env python3` line instead, the supervised side alone would pay for the PATH
    lookup of python3, which on a machine with pyenv shims is a shell script: ~100 ms that are not ours.)"""
    exe = tmp / "ollama"
    if not exe.exists():
        exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
        exe.chmod(0o755)
    return exe


def command(supervised: bool, tmp: Path) -> list[str]:
    if supervised:
        return [sys.executable, "-m", "launcher.cli", "--ollama", str(server(tmp)), "serve"]
    return [str(server(tmp)), "serve"]


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_latency(tmp: Path, supervised: bool) -> float:
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(command(supervised, tmp), env=base_env(tmp, port), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=REPO)
    while not answers(port):
        if proc.poll() is not None:
            raise RuntimeError("server exited during start")
        time.sleep(0.002)
    elapsed = time.perf_counter() - t0
    stop(proc)
    return elapsed


def idle(tmp: Path, seconds: float, others: int, nvml_dir: Path | None = None,
         settings: tuple[str, ...] = ()) -> tuple[float, float]:
    sleepers = [subprocess.Popen(["sleep", str(seconds + 60)]) for _ in range(others)]
    port = free_port()
    extra = {"FAKE_CHILDREN": "2", **dict(kv.split("=", 1) for kv in settings)}
    if nvml_dir is not None:  # a libnvidia-ml.so.1 (e.g. tests/native's mock) so NVML sampling and health checks run
        extra["LD_LIBRARY_PATH"] = f"{nvml_dir}:{os.environ.get('LD_LIBRARY_PATH', '')}".rstrip(":")
    proc = subprocess.Popen(command(True, tmp), env=base_env(tmp, port, **extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        while not answers(port):
            time.sleep(0.01)
        time.sleep(1.0)  # let start-up work settle
        me = psutil.Process(proc.pid)
        cpu0 = sum(me.cpu_times()[:2])
        t0 = time.monotonic()
        peak = 0
        while time.monotonic() - t0 < seconds:
            peak = max(peak, me.memory_info().rss)
            time.sleep(1.0)
        cpu = sum(me.cpu_times()[:2]) - cpu0
        return 100.0 * cpu / (time.monotonic() - t0), peak / 2**20
    finally:
        stop(proc)
        for sleeper in sleepers:
            sleeper.kill()
        for sleeper in sleepers:
            sleeper.wait()


def throughput(tmp: Path, mb: int, supervised: bool) -> float:
    port = free_port()
    proc = subprocess.Popen(command(supervised, tmp), env=base_env(tmp, port, FAKE_OUTPUT_MB=str(mb)),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO)
    assert proc.stdout is not None
    total, t0 = 0, time.perf_counter()
    want = mb << 20
    while total < want:
        chunk = proc.stdout.read1(1 << 20)  # type: ignore[attr-defined]
        if not chunk:
            break
        total += len(chunk)
    elapsed = time.perf_counter() - t0
    stop(proc)
    return total / 2**20 / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--others", type=int, default=300)
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nvml-dir", type=Path, default=None,
                        help="a directory holding a libnvidia-ml.so.1 for the idle run (NVML sampling and the GPU "
                             "health checks then run; tests/native builds a mock one)")
    parser.add_argument("--idle-only", action="store_true", help="measure idle CPU and RSS only")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for the idle run, e.g. OGPU_HEALTH_INTERVAL=0 (repeatable)")
    opts = parser.parse_args()
    if opts.idle_only:
        tmp = Path(tempfile.mkdtemp(prefix="ogpu-bench-"))
        try:
            cpu, rss = idle(tmp, opts.idle_seconds, opts.others, opts.nvml_dir, tuple(opts.set))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        nvml = f", NVML from {opts.nvml_dir}" if opts.nvml_dir else ", no NVML"
        nvml += "".join(f", {kv}" for kv in opts.set)
        print(f"idle CPU over {opts.idle_seconds:g}s, {opts.others} other processes{nvml}: {cpu:.2f} % of a core "
              f"(target <= 0.5); peak RSS {rss:.1f} MiB")
        return
    tmp = Path(tempfile.mkdtemp(prefix="ogpu-bench-"))
    try:
        start_latency(tmp, True)  # compiles and caches the shim: start-up afterwards is the steady state
        pairs = [(start_latency(tmp, False), start_latency(tmp, True)) for _ in range(opts.runs)]
        bare = statistics.median(p[0] for p in pairs) * 1000
        supervised = statistics.median(p[1] for p in pairs) * 1000
        added = [1000 * (s - b) for b, s in pairs]
        cpu, rss = idle(tmp, opts.idle_seconds, opts.others, opts.nvml_dir)
        raw = throughput(tmp, opts.mb, False)
        fwd = throughput(tmp, opts.mb, True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [
        ("start to /api/version, alone (ms)", f"{bare:.1f}", ""),
        ("start to /api/version, under serve (ms)", f"{supervised:.1f}", ""),
        ("added start latency, median [min..max] (ms)",
         f"{statistics.median(added):.1f} [{min(added):.1f}..{max(added):.1f}]", "<= 100"),
        (f"idle CPU over {opts.idle_seconds:g}s, {opts.others} other processes (% of a core)", f"{cpu:.2f}", "<= 0.5"),
        ("supervisor peak RSS (MiB)", f"{rss:.1f}", "<= 40"),
        (f"stdout throughput alone ({opts.mb} MiB, MiB/s)", f"{raw:.0f}", ""),
        (f"stdout throughput through serve ({opts.mb} MiB, MiB/s)", f"{fwd:.0f}", ">= 100"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>22}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>22}  {target}")
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, runs={opts.runs}")


if __name__ == "__main__":
    main()
