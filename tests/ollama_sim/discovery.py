"""GPU discovery per generation: B in-process through libcuda, C bootstrap runners, D the llama-server probe triple."""

from __future__ import annotations

import glob
import json
import os
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tests.ollama_sim import cuda, procs, spawnspec, sysinfo

if TYPE_CHECKING:
    from tests.ollama_sim.server import Sim

PROBE_TIMEOUT = 30.0
LIBCUDA_GLOBS = ("usr/local/cuda*/targets/*/lib/libcuda.so*", "usr/lib/*-linux-gnu/nvidia/current/libcuda.so*",
                 "usr/lib/*-linux-gnu/libcuda.so*", "usr/lib/wsl/lib/libcuda.so*",
                 "usr/lib/wsl/drivers/*/libcuda.so*", "opt/cuda/lib*/libcuda.so*", "usr/local/cuda/lib*/libcuda.so*",
                 "usr/lib*/libcuda.so*", "usr/local/lib*/libcuda.so*")
_DEVICE_RE = re.compile(r"Device (\d+): (.+), compute capability (\d+)\.(\d+)")
_LIST_RE = re.compile(r"^\s+CUDA(\d+): (.+) \((\d+) MiB, (\d+) MiB free\)")
_ARCHS_RE = re.compile(r"CUDA : ARCHS = ([\d,]+)")


@dataclass(frozen=True)
class Gpu:
    """One usable GPU after discovery."""

    index: int
    uuid: str
    description: str
    cc: tuple[int, int]
    total: int
    free: int
    pci: str
    driver: int
    gpudir: str

    @property
    def compute(self) -> str:
        """"9.0"."""
        return f"{self.cc[0]}.{self.cc[1]}"

    @property
    def driver_text(self) -> str:
        """"13.0" from 13000."""
        return f"{self.driver // 1000}.{(self.driver % 1000) // 10}"


def _libdirs_attr(sim: Sim, gpudir: str) -> str:
    return "[" + " ".join(d for d in (sim.layout.libdir, gpudir) if d) + "]"


# ------------------------------------------------------------------------------------------------ B: in-process

def _libcuda_candidates(sim: Sim) -> list[str]:
    root = os.environ.get("OLLAMA_SIM_ROOT", "/")
    found: list[str] = sorted(glob.glob(os.path.join(sim.layout.libdir, "libcuda.so*")))
    for d in (p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p):
        found += sorted(glob.glob(os.path.join(d, "libcuda.so*")))
    for g in LIBCUDA_GLOBS:
        found += sorted(glob.glob(os.path.join(root, g)))
    seen: dict[str, str] = {}
    for p in found:
        seen.setdefault(os.path.realpath(p), p)
    return [p for p in seen if "PhysX" not in p]


_B_INIT_FAILURES: dict[int, str] = {100: "cuda_no_devices", 35: "cuda_mismatch", 803: "cuda_mismatch",
                                    999: "cuda_unknown"}


def discover_b(sim: Sim) -> list[Gpu]:
    """Gen B: the server dlopens libcuda itself (cgo), searching lib/ollama, LD_LIBRARY_PATH and fixed globs."""
    sim.line("looking")
    for path in _libcuda_candidates(sim):
        try:
            drv = cuda.Driver.open(path, required=cuda.REQUIRED_SYMBOLS)
        except cuda.DriverError as exc:
            sim.line("cuda_unable", path=path, error=str(exc))
            continue
        rc = drv.init()
        if rc != cuda.CUDA_SUCCESS:
            key = _B_INIT_FAILURES.get(rc, "cuda_unable")
            sim.line(key, path=path, error=f"cuda driver library init failure: {rc}")
            continue
        driver = drv.driver_version()
        return [Gpu(d.ordinal, d.uuid, d.name, d.cc, d.total, d.free, d.pci_bus_id, driver, "")
                for d in drv.devices()]
    return []


# ------------------------------------------------------------------------------------------ C: bootstrap runners

def _poll_info(child: procs.Child, port: int, deadline: float) -> list[dict[str, object]] | None:
    while time.monotonic() < deadline and child.proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=1) as r:
                return list(json.loads(r.read()))
        except OSError:
            time.sleep(0.01)
    return None


def _bootstrap(sim: Sim, gpudir: str, extra: dict[str, str]) -> list[dict[str, object]] | None:
    port = procs.free_port()
    values = {"exe": sim.layout.exe, "port": str(port), "libdir": sim.layout.libdir, "gpudir": gpudir,
              **extra}
    argv, env = spawnspec.spawn(sim.gen, "bootstrap", os.environ, values,
                                frozenset({"validate"} if extra else set()))
    sim.line("starting", cmd=" ".join(argv))
    started = time.monotonic()
    child = sim.children.spawn(argv, env, forward=sim.log.enabled("TRACE"))
    info = _poll_info(child, port, started + PROBE_TIMEOUT)
    if info is None and child.proc.poll() is not None:
        sim.line("discovery_failure", OLLAMA_LIBRARY_PATH=_libdirs_attr(sim, gpudir),
                 extra_envs=_map(extra), error=f"runner crashed: {child.status_text()}")
    child.kill()
    sim.line("bootstrap_took", duration=_dur(time.monotonic() - started),
             OLLAMA_LIBRARY_PATH=_libdirs_attr(sim, gpudir), extra_envs=_map(extra))
    return info


_EXTRA_NAMES = {"visible": "CUDA_VISIBLE_DEVICES", "one": "GGML_CUDA_INIT"}


def _map(extra: dict[str, str]) -> str:
    return "map[" + " ".join(f"{_EXTRA_NAMES.get(k, k)}:{v}" for k, v in extra.items()) + "]"


def _dur(seconds: float) -> str:
    return f"{seconds * 1000:.6f}ms"


def discover_c(sim: Sim) -> list[Gpu]:
    """Gen C: one bootstrap runner per GPU library dir asked on GET /info, then one validation runner per device."""
    sim.line("discovering")
    best: list[Gpu] = []
    for gpudir in sim.layout.gpu_dirs() or [""]:
        info = _bootstrap(sim, gpudir, {}) or []
        gpus = []
        for d in info:
            fid = str(d["filter_id"])
            check = _bootstrap(sim, gpudir, {"visible": fid, "one": "1"})
            if not check:
                sim.line("filtering_device", id=d["id"], libdir=gpudir, pci_id=d["pci_id"], library="CUDA")
                continue
            gpus.append(Gpu(int(fid), str(d["id"]), str(d["description"]), _cc(str(d["compute"])),
                            int(str(d["total"])), int(str(d["free"])), str(d["pci_id"]), int(str(d["driver"])),
                            gpudir))
        if len(gpus) >= len(best):  # newest dir (reverse lexical) covering all GPUs wins
            best = gpus
    return best


def _cc(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major or 0), int(minor or 0)


# ----------------------------------------------------------------------------------------- D: llama-server probes

def _probe(sim: Sim, kind: str, gpudir: str, extra: dict[str, str],
           until: Callable[[str], bool] | None) -> tuple[str, str | None]:
    """Run one discovery process; return its output and an error text (None when it worked)."""
    values = {"exe": sim.layout.exe, "llama_server": sim.layout.llama_server, "port": str(_d_probe_port()),
              "libdir": sim.layout.libdir, "gpudir": gpudir, "backend": sim.layout.backend_in(gpudir) if gpudir
              else "", "lib_dir_args": [x for d in (sim.layout.libdir, gpudir) if d for x in ("--lib-dir", d)],
              **extra}
    conditions = frozenset(({"gpu"} if gpudir else set()) | ({"validate"} if extra else set()))
    argv, env = spawnspec.spawn(sim.gen, kind, os.environ, values, conditions)
    try:
        child = sim.children.spawn(argv, env, forward=sim.log.enabled("TRACE"))
    except OSError as exc:
        return "", (f"llama-server binary not found (checked: {argv[0]}). Run 'cmake -S llama/server --preset cpu "
                    f"&& cmake --build --preset cpu' first" if kind != "gpu_discover" else str(exc))
    if until is not None:
        ok = child.wait_line(until, PROBE_TIMEOUT)
        out = "\n".join(child.lines)
        child.kill()
        if not ok:
            return out, f"llama-server exited before system_info: {child.status_text()}"
        sim.line("probe_stopped", exit="unknown", libDirs=_libdirs_attr(sim, gpudir))
        return out, None
    out = child.output(PROBE_TIMEOUT)
    return out, None if child.proc.returncode == 0 else child.status_text()


def _d_probe_port() -> int:
    return 49152 + int(time.time()) % 16383


def _triple(sim: Sim, gpudir: str, extra: dict[str, str]) -> tuple[list[Gpu], str | None]:
    started = time.monotonic()
    verbose, err = _probe(sim, "probe_verbose", gpudir, extra, lambda x: "system_info:" in x)
    if err:
        return [], err
    listing, err = _probe(sim, "probe_list", gpudir, extra, None)
    if err:
        return [], f"--list-devices failed: {err}"
    sim.line("device_discovery_took", duration=_dur(time.monotonic() - started), libDirs=_libdirs_attr(sim, gpudir))
    native, _ = _probe(sim, "gpu_discover", gpudir, extra, None)
    report = json.loads(native.strip().splitlines()[-1]) if native.strip() else {}
    ccs = {int(m[1]): (int(m[3]), int(m[4])) for m in _DEVICE_RE.finditer(verbose)}
    archs_m = _ARCHS_RE.search(verbose)
    archs = {int(a) for a in archs_m[1].split(",")} if archs_m else set()
    by_ordinal = {int(d["ordinal"]): d for d in report.get("devices", [])}
    gpus = []
    for line in listing.splitlines():
        m = _LIST_RE.match(line)
        if not m:
            continue
        idx = int(m[1])
        if idx not in ccs:  # CUDA did not initialise in the probe (e.g. driver too old): real Ollama says why only
            continue        # at TRACE; the dir simply reports no CUDA device
        cc = ccs[idx]
        if archs and cc[0] * 100 + cc[1] * 10 not in archs:
            sim.line("skip_arch", device=f"CUDA{idx}", cc=cc[0] * 100 + cc[1] * 10,
                     archs="[" + " ".join(str(a) for a in sorted(archs)) + "]", libDirs=_libdirs_attr(sim, gpudir))
            continue
        nat = by_ordinal.get(idx, {})
        gpus.append(Gpu(idx, str(nat.get("uuid", idx)), m[2], cc, int(m[3]) << 20, int(m[4]) << 20,
                        str(nat.get("pci_bus_id", "")), int(report.get("driver", 0)), gpudir))
    sim.line("bootstrap_took", duration=_dur(time.monotonic() - started),
             OLLAMA_LIBRARY_PATH=_libdirs_attr(sim, gpudir), extra_envs=_map(extra))
    return gpus, None


def discover_d(sim: Sim) -> list[Gpu]:
    """Gen D: per GPU dir, `llama-server --verbose` (killed at system_info), `--list-devices`, `gpu-discover`;
    then the same triple per CUDA device with CUDA_VISIBLE_DEVICES=<index> and GGML_CUDA_INIT=1."""
    sim.line("discovering")
    best: list[Gpu] = []
    for gpudir in sim.layout.gpu_dirs() or [""]:
        gpus, err = _triple(sim, gpudir, {})
        if err:
            sim.line("discovery_failure", OLLAMA_LIBRARY_PATH=_libdirs_attr(sim, gpudir), extra_envs="map[]",
                     error=err, detail="")
            continue
        kept = []
        for g in gpus:
            extra = {"visible": str(g.index), "one": "1"}
            checked, err = _triple(sim, gpudir, extra)
            if checked and not err:
                kept.append(g)
        if len(kept) >= len(best) and kept:
            best = kept
    return best


DISCOVERY: dict[str, Callable[[Sim], list[Gpu]]] = {
    "in_process": discover_b, "bootstrap_runner": discover_c, "llama_server": discover_d,
}


def total_memory() -> tuple[int, int]:
    """Host memory for the CPU `inference compute` line."""
    return sysinfo.meminfo()
