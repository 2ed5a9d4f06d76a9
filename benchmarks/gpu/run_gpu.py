"""The shim on a real GPU (issue #4): build it there, run three workloads with and without it, check the events.

    python3 benchmarks/gpu/run_gpu.py --out "$OUT"          # on the device machine (stdlib only; no structlog)

Workloads: a PyTorch matmul loop, a CuPy kernel loop, and raw_launches.cu (nvcc, static cudart) launching a known
number of kernels. Each runs without the shim and then with it and a receiver (a self-contained SOCK_SEQPACKET
server below, checking protocol v1's basics: one JSON object per message, v == 1, seq increasing from 1, pid ==
SO_PEERCRED pid). Checks: hello, cu_init 0, a device event whose name matches nvidia-smi (and UUID / PCI bus id
where the program queried them), the raw program's launch count exact, and identical stdout and exit codes.
Then the launch-time benchmark of benchmarks/shim_overhead (interleaved pairs, real driver).
Writes gpu_summary.txt, gpu_results.json and events.jsonl to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "shim_overhead"))
import run as overhead  # noqa: E402  (benchmarks/shim_overhead/run.py: build_shim, timing_pairs)

RAW_LAUNCHES = 10000


class Receiver:
    """Minimal protocol-v1 server: records every message per connection, with the peer's pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.conns: list[dict[str, Any]] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(str(path))
        self.listener.listen(128)
        self.stop = False
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        live: dict[socket.socket, dict[str, Any]] = {}
        while not self.stop:
            ready, _, _ = select.select([self.listener, *live], [], [], 0.05)
            for s in ready:
                if s is self.listener:
                    c, _ = self.listener.accept()
                    pid, _uid, _gid = struct.unpack("3i", c.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
                    rec = {"peer_pid": pid, "messages": [], "bad": [], "closed": False}
                    with self.lock:
                        self.conns.append(rec)
                    live[c] = rec
                    continue
                rec = live[s]
                data = s.recv(8192)
                if not data:
                    s.close()
                    del live[s]
                    with self.lock:
                        rec["closed"] = True
                    continue
                self.check(rec, data)

    @staticmethod
    def check(rec: dict[str, Any], data: bytes) -> None:
        try:
            msg = json.loads(data.decode("utf-8"))
            problems = []
            if len(data) > 4096:
                problems.append("oversize")
            if msg.get("v") != 1:
                problems.append("v")
            seq_ok = msg.get("seq") == len(rec["messages"]) + 1
            if not seq_ok:
                problems.append(f"seq {msg.get('seq')} after {len(rec['messages'])}")
            if msg.get("pid") != rec["peer_pid"]:
                problems.append("pid")
            if problems:
                rec["bad"].append({"problems": problems, "raw": data.decode("utf-8", "replace")[:300]})
            rec["messages"].append(msg)
        except (UnicodeDecodeError, ValueError) as exc:
            rec["bad"].append({"problems": [str(exc)], "raw": repr(data[:300])})

    def settle(self, since: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The connections opened since index `since`, once all of them (and a sentinel of ours) are closed."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.connect(str(self.path))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                new = self.conns[since:]
                mine = [c for c in new if c["peer_pid"] == os.getpid()]
                if mine and all(c["closed"] for c in new):
                    return [c for c in new if c["peer_pid"] != os.getpid()]
            time.sleep(0.02)
        raise TimeoutError("connections did not close")

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.listener.close()


def nvidia_smi() -> dict[str, str]:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,uuid,pci.bus_id,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout.splitlines()[0]
    name, uuid, bus, driver = (x.strip() for x in out.split(","))
    return {"name": name, "uuid": uuid, "pci_bus_id": bus, "driver": driver}


def norm_bus(bus: str) -> str:
    """nvidia-smi says 00000000:00:06.0, CUDA 0000:00:06.0: compare bus:device.function, case-insensitively."""
    return bus.lower().split(":", 1)[1] if bus.count(":") == 2 else bus.lower()


def run(argv: list[str], env: dict[str, str], timeout: float = 300) -> dict[str, Any]:
    t0 = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr[-3000:],
            "seconds": round(time.monotonic() - t0, 2)}


def merged(conns: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for c in conns for m in c["messages"] if m.get("ev") == kind]


def judge(name: str, bare: dict[str, Any], shim: dict[str, Any], conns: list[dict[str, Any]], smi: dict[str, str],
          expect_launches: int | None) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    checks["outputs_identical"] = (bare["rc"], bare["stdout"]) == (shim["rc"], shim["stdout"])
    checks["exit_ok"] = bare["rc"] == 0
    checks["hello"] = bool(merged(conns, "hello"))
    inits = [m["result"] for m in merged(conns, "cu_init")]
    checks["cu_init_0"] = 0 in inits
    devices = [m for m in merged(conns, "device") if m.get("ordinal") == 0]
    last = devices[-1] if devices else {}
    checks["device_name_matches"] = last.get("name") == smi["name"]
    if "uuid" in last:
        checks["device_uuid_matches"] = last["uuid"].lower() == smi["uuid"].lower()
    if "pci_bus_id" in last:
        checks["device_bus_matches"] = norm_bus(last["pci_bus_id"]) == norm_bus(smi["pci_bus_id"])
    snaps = merged(conns, "snapshot")
    final = snaps[-1] if snaps else {}
    launches = final.get("launches", {})
    if expect_launches is not None:
        checks["launch_count_exact"] = launches.get("kernel", 0) + launches.get("kernel_ex", 0) == expect_launches
    checks["protocol_clean"] = not any(c["bad"] for c in conns)
    checks["bye"] = bool(merged(conns, "bye"))
    return {
        "workload": name, "ok": all(checks.values()), "checks": checks, "cu_init": inits, "device": last,
        "final_snapshot": final, "connections": len(conns),
        "dlopen": [{k: m.get(k) for k in ("name", "ok", "path", "error")} for m in merged(conns, "dlopen")],
        "cuda_errors": merged(conns, "cuda_error"), "bare": bare, "shim": {k: shim[k] for k in ("rc", "seconds")},
        "bad": [b for c in conns for b in c["bad"]][:5],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")))
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--skip", nargs="*", default=[], help="workloads to skip: torch cupy raw timing")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ogpu-gpu-"))
    summary: list[str] = []
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S")}
    shim = overhead.build_shim(work)
    smi = nvidia_smi()
    results["nvidia_smi"] = smi
    summary.append(f"nvidia-smi: {smi}")
    sock = work / "ev.sock"
    recv = Receiver(sock)
    base = {k: v for k, v in os.environ.items() if not k.startswith("OGPU_") and k != "LD_PRELOAD"}
    shim_env = {**base, "LD_PRELOAD": str(shim), "OGPU_EVENTS": str(sock)}
    workloads: list[tuple[str, list[str], int | None]] = []
    py = sys.executable
    if "torch" not in args.skip:
        workloads.append(("torch_matmul", [py, str(HERE / "workloads.py"), "torch"], None))
    if "cupy" not in args.skip:
        workloads.append(("cupy_kernel", [py, str(HERE / "workloads.py"), "cupy"], None))
    if "raw" not in args.skip:
        exe = work / "raw_launches"
        nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
        done = subprocess.run([nvcc, "-O2", "-arch=sm_90", "-o", str(exe), str(HERE / "raw_launches.cu")],
                              capture_output=True, text=True, check=False)
        results["nvcc"] = {"rc": done.returncode, "stderr": done.stderr[-2000:]}
        if done.returncode == 0:
            workloads.append(("raw_nvcc", [str(exe), str(RAW_LAUNCHES)], RAW_LAUNCHES))
        else:
            summary.append(f"raw_nvcc: nvcc failed: {done.stderr[-500:]}")
    results["workloads"] = []
    for name, argv, expect in workloads:
        bare = run(argv, base)
        since = len(recv.conns)
        shimmed = run(argv, shim_env)
        conns = recv.settle(since)
        with open(args.out / "events.jsonl", "a") as fh:
            for c in conns:
                for m in c["messages"]:
                    fh.write(json.dumps({"workload": name, **m}) + "\n")
        r = judge(name, bare, shimmed, conns, smi, expect)
        results["workloads"].append(r)
        failed = [k for k, v in r["checks"].items() if not v]
        summary.append(f"{name}: {'OK' if r['ok'] else 'FAIL ' + ','.join(failed)}; cu_init {r['cu_init']}; "
                       f"device {r['device']}; launches {r['final_snapshot'].get('launches')}; "
                       f"mem {r['final_snapshot'].get('mem')}; copies {r['final_snapshot'].get('copies')}; "
                       f"dlopen {[(d['name'], d['ok']) for d in r['dlopen']]}; conns {r['connections']}; "
                       f"seconds bare {bare['seconds']} shim {shimmed['seconds']}; stdout {bare['stdout'].strip()!r}")
    recv.close()
    if "timing" not in args.skip:
        tb = work / "launch_timing"
        subprocess.run([*overhead.cc(), "-O2", "-o", str(tb), str(HERE.parent / "shim_overhead" / "launch_timing.c"),
                        "-ldl"], check=True)
        t = overhead.timing_pairs(tb, None, shim, args.pairs, work)
        results["timing"] = t
        summary.append("launch timing (real driver, interleaved pairs, ns/launch without -> with): " +
                       ", ".join(f"{a:.1f}->{s:.1f}" for a, s in t["pairs"]))
        ip = overhead.timing_inproc(tb, None, shim, work)
        results["timing_inproc"] = ip
        summary.append(f"same-process pairs (driver pointer vs wrapper): {ip['shim']}; control {ip['control']}")
        summary.append(f"added per cuLaunchKernel: median {t['median_added_ns']:.1f} ns (min {t['min_added_ns']:.1f}, "
                       f"max {t['max_added_ns']:.1f}); medians {t['median_bare_ns']:.1f} vs {t['median_shim_ns']:.1f}")
    (args.out / "gpu_results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.out / "gpu_summary.txt").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(w["ok"] for w in results["workloads"]) else 1


if __name__ == "__main__":
    sys.exit(main())
