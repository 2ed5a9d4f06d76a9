"""Shim overhead, one command: instructions added per hooked call (callgrind, deterministic) and host time per launch.

    python3 benchmarks/shim_overhead/run.py                     # callgrind table on the mock driver
    python3 benchmarks/shim_overhead/run.py --timing            # + launch timing pairs on the mock driver
    python3 benchmarks/shim_overhead/run.py --timing --real     # + launch timing pairs on this machine's libcuda

Stdlib only (it also runs on the GPU machine, where the project's dependencies are not installed). The shim is
compiled with the command shim/BUILD.txt states; the mock driver and the benchmark programs with the same cc.

Callgrind counts guest instructions inside the benchmark's loop_* functions only (--toggle-collect), with and
without the shim preloaded; the difference divided by the number of calls is the cost of the wrapper, including
its share of the every-64th-call clock check and of the (at most every 250 ms) snapshot attempt, so the last
digit can move by a few hundredths between runs. OGPU_EVENTS points at a path nobody listens on: the wrappers are
installed and count, and a snapshot is attempted, exactly as with a server, minus the send.

Timing runs the same program without and with the shim in interleaved pairs (A B A B ...), each run reporting
the median of its samples; the table shows both medians per pair and the median, min and max of the differences.
Process-to-process noise (hundreds of ns on a GPU) hides a few ns, so it then also runs same-process pairs: bursts
through the driver's own cuLaunchKernel and through the shim's wrapper, alternating, and reports the median and
p10/p90 of the per-pair differences (plus the same run without the shim as a control, where both are the driver).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SHIM_SRC = REPO / "shim"
MOCK_SRC = REPO / "tests" / "native" / "mockcuda.c"
CALLS = ("launch", "launch_ptsz", "copy_async", "graph", "alloc_free", "attr")
WHAT = {
    "launch": "cuLaunchKernel",
    "launch_ptsz": "cuLaunchKernel_ptsz",
    "copy_async": "cuMemcpyHtoDAsync_v2",
    "graph": "cuGraphLaunch",
    "alloc_free": "cuMemAlloc_v2 + cuMemFree_v2 (pair)",
    "attr": "cuDeviceGetAttribute (not wrapped: control)",
}


def cc() -> list[str]:
    return shlex.split(os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), "cc"))


def sh(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]


def must(argv: list[str], **kw: object) -> str:
    done = sh(argv, **kw)
    if done.returncode != 0:
        sys.exit(f"failed: {shlex.join(argv)}\n{done.stdout}{done.stderr}")
    return done.stdout


def build_shim(out: Path) -> Path:
    """Compile shim/ exactly as shim/BUILD.txt says (its sources:, cflags:, libs: lines)."""
    fields: dict[str, list[str]] = {}
    for line in (SHIM_SRC / "BUILD.txt").read_text().splitlines():
        key, sep, value = line.split("#", 1)[0].strip().partition(":")
        if sep and key.strip() in ("sources", "cflags", "libs"):
            fields.setdefault(key.strip(), []).extend(shlex.split(value))
    so = out / "libollama_gpu_shim.so"
    must([*cc(), *fields["cflags"], "-o", str(so), *fields["sources"], *fields["libs"]], cwd=SHIM_SRC)
    return so


def build(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "mock").mkdir(exist_ok=True)
    flags = ["-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Werror"]
    mock = out / "mock" / "libcuda.so.1"
    must([*cc(), *flags, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(mock), str(MOCK_SRC),
          "-lpthread"])
    bench = out / "bench_calls"
    must([*cc(), *flags, "-o", str(bench), str(HERE / "bench_calls.c"), "-ldl"])
    timing = out / "launch_timing"
    must([*cc(), *flags, "-o", str(timing), str(HERE / "launch_timing.c"), "-ldl"])
    return {"shim": build_shim(out), "mock_dir": out / "mock", "bench": bench, "timing": timing}


def env_for(shim: Path | None, lib_dir: Path | None, events: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OGPU_", "LD_PRELOAD", "MOCKCUDA_"))}
    if lib_dir is not None:
        env["LD_LIBRARY_PATH"] = f"{lib_dir}:{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else str(lib_dir)
    env["OGPU_EVENTS"] = str(events)
    if shim is not None:
        env["LD_PRELOAD"] = str(shim)
    return env


def callgrind_ir(bench: Path, call: str, n: int, env: dict[str, str], tmp: Path) -> int:
    out = tmp / f"cg.{call}.{'shim' if 'LD_PRELOAD' in env else 'bare'}.out"
    must(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--toggle-collect=loop_*",
          str(bench), call, str(n)], env=env)
    m = re.search(r"^summary:\s+(\d+)", out.read_text(), re.M) or re.search(r"^totals:\s+(\d+)", out.read_text(),
                                                                             re.M)
    if not m:
        sys.exit(f"no summary in {out}")
    return int(m.group(1))


def callgrind_table(b: dict[str, Path], n: int, tmp: Path) -> list[dict[str, object]]:
    rows = []
    events = tmp / "nobody-listens.sock"
    for call in CALLS:
        bare = callgrind_ir(b["bench"], call, n, env_for(None, b["mock_dir"], events), tmp)
        shim = callgrind_ir(b["bench"], call, n, env_for(b["shim"], b["mock_dir"], events), tmp)
        rows.append({"call": call, "what": WHAT[call], "bare_ir_per_call": bare / n, "shim_ir_per_call": shim / n,
                     "added_ir_per_call": (shim - bare) / n})
    return rows


def timing_pairs(timing: Path, lib_dir: Path | None, shim: Path, pairs: int, tmp: Path) -> dict[str, object]:
    events = tmp / "nobody-listens.sock"
    bare_env, shim_env = env_for(None, lib_dir, events), env_for(shim, lib_dir, events)
    rows = []
    for _ in range(pairs):
        a = json.loads(must([str(timing)], env=bare_env))
        s = json.loads(must([str(timing)], env=shim_env))
        rows.append((a["median_ns"], s["median_ns"]))
    diffs = [s - a for a, s in rows]
    return {"pairs": rows, "median_added_ns": statistics.median(diffs), "min_added_ns": min(diffs),
            "max_added_ns": max(diffs), "median_bare_ns": statistics.median(a for a, _ in rows),
            "median_shim_ns": statistics.median(s for _, s in rows)}


def timing_inproc(timing: Path, lib_dir: Path | None, shim: Path, tmp: Path, samples: int = 3000) -> dict[str, object]:
    """Same-process pairs of bursts: the driver's own pointer vs the shim's wrapper (and a no-shim control)."""
    events = tmp / "nobody-listens.sock"
    argv = [str(timing), str(samples), "200", "inproc"]
    control = json.loads(must(argv, env=env_for(None, lib_dir, events)))
    shimmed = json.loads(must(argv, env=env_for(shim, lib_dir, events)))
    return {"shim": shimmed, "control": control}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--calls", type=int, default=200_000, help="calls per callgrind run (default 200000)")
    ap.add_argument("--timing", action="store_true", help="also time cuLaunchKernel in interleaved pairs")
    ap.add_argument("--real", action="store_true", help="time against this machine's libcuda, not the mock")
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ogpu-bench-"))
    try:
        b = build(tmp / "build")
        result: dict[str, object] = {}
        if not args.no_callgrind:
            if not shutil.which("valgrind"):
                sys.exit("valgrind is not installed (apt-get install valgrind)")
            rows = callgrind_table(b, args.calls, tmp)
            result["callgrind"] = rows
            print(f"instructions per call, valgrind --tool=callgrind on the mock driver, {args.calls} calls each")
            print(f"{'entry point':46} {'without':>9} {'with shim':>10} {'added':>8}")
            for r in rows:
                print(f"{r['what']:46} {r['bare_ir_per_call']:9.1f} {r['shim_ir_per_call']:10.1f} "
                      f"{r['added_ir_per_call']:8.1f}")
        if args.timing:
            lib_dir = None if args.real else b["mock_dir"]
            t = timing_pairs(b["timing"], lib_dir, b["shim"], args.pairs, tmp)
            result["timing"] = {**t, "driver": "system libcuda.so.1" if args.real else "mock"}
            print(f"\nhost time per cuLaunchKernel ({'real driver' if args.real else 'mock driver'}), "
                  f"{args.pairs} interleaved pairs, median of 300 bursts of 200 launches per run")
            print(f"{'pair':>4} {'without ns':>11} {'with ns':>9} {'added ns':>9}")
            for i, (a, s) in enumerate(t["pairs"], 1):  # type: ignore[arg-type]
                print(f"{i:4d} {a:11.1f} {s:9.1f} {s - a:9.1f}")
            print(f"added per launch: median {t['median_added_ns']:.1f} ns, min {t['min_added_ns']:.1f}, "
                  f"max {t['max_added_ns']:.1f} (medians: {t['median_bare_ns']:.1f} vs {t['median_shim_ns']:.1f})")
            ip = timing_inproc(b["timing"], lib_dir, b["shim"], tmp)
            result["timing_inproc"] = ip
            sh_, ct = ip["shim"], ip["control"]
            print(f"same process, {sh_['pairs']} alternating burst pairs (driver pointer vs wrapper): added "
                  f"median {sh_['median_added_ns']:.1f} ns (p10 {sh_['p10_added_ns']:.1f}, p90 "
                  f"{sh_['p90_added_ns']:.1f}); driver {sh_['driver_median_ns']:.1f} ns, wrapper "
                  f"{sh_['wrapper_median_ns']:.1f} ns; control without shim: {ct['median_added_ns']:.1f} ns")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
