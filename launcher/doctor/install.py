"""Doctor's checks of the Ollama installation: the binary, its version and generation, its CUDA library directories."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from launcher.doctor.context import VERSION_TIMEOUT, Ctx, Row, _one_line, cuda_major, driver_major
from launcher.generations import generation_of
from launcher.nvml import NvmlState

# CUDA library directories Ollama ships, the runtime major they hold and the lowest NVIDIA driver branch that runs
# it: CUDA minor-version compatibility (a runtime needs a driver of at least its major, reference
# cuda-interposition.md §6, error 35): 12.x from 525, 13.0 from 580 (the H100 in the reference runs 13.x on 580).
# Generation D's own filter drops every device of the cuda_v12 dir below 550 (reference ollama-internals.md D.3).
CUDA_VARIANTS: Final[tuple[tuple[str, int, Mapping[str, int]], ...]] = (
    ("cuda_v11", 11, {"*": 450}),
    ("cuda_v12", 12, {"*": 525, "D": 550}),
    ("cuda_v13", 13, {"*": 580}),
)
# How each generation ships GPU code (reference A.1, B.3, C.3, D.3).
LAYOUTS: Final = {"0": "embedded", "A": "embedded", "B": "dirs", "C": "dirs", "D": "dirs"}


# --- the Ollama installation --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OllamaInstall:
    """The binary, what `--version` said, its generation and its library directory."""

    exe: Path | None
    version: str | None = None
    generation: str | None = None
    libdir: Path | None = None
    error: str = ""


def find_ollama(ctx: Ctx) -> OllamaInstall:
    """Resolve OGPU_OLLAMA on PATH, ask `ollama --version` (with a timeout), map it to a generation."""
    name = ctx.settings.ollama
    found = shutil.which(name, path=ctx.env.get("PATH", os.defpath))
    if found is None:
        return OllamaInstall(None, error=f"OGPU_OLLAMA={name} is not an executable (not found on PATH)")
    exe = Path(os.path.realpath(found))
    done = ctx.runner([str(exe), "--version"], env=ctx.env, timeout=VERSION_TIMEOUT)
    text = f"{done.stdout}\n{done.stderr}"
    m = re.search(r"version (?:is )?v?(\d+\.\d+(?:\.\d+)?(?:-[\w.]+)?)", text)
    libdir = next((d for d in (exe.parent.parent / "lib" / "ollama", exe.parent / "lib" / "ollama") if d.is_dir()),
                  None)
    if m is None:
        why = "timed out" if done.returncode is None else f"exit {done.returncode}: {_one_line(text)[:200]}"
        return OllamaInstall(exe, libdir=libdir, error=f"`{exe} --version` gave no version ({why})")
    return OllamaInstall(exe, m[1], generation_of(m[1]), libdir)


def check_ollama(ctx: Ctx) -> Row:
    """The Ollama binary, its version and its generation (unknown generation ⇒ observe only)."""
    inst = ctx.ollama
    data = {"exe": str(inst.exe) if inst.exe else None, "version": inst.version, "generation": inst.generation,
            "libdir": str(inst.libdir) if inst.libdir else None}
    if inst.exe is None:
        return Row("ollama", "fail", inst.error, "install Ollama (curl -fsSL https://ollama.com/install.sh | sh) "
                   "or set OGPU_OLLAMA=/path/to/ollama", data=data)
    if inst.version is None:
        return Row("ollama", "fail", inst.error, f"run `{inst.exe} --version` by hand; set OGPU_OLLAMA to a "
                   "working Ollama binary", data=data)
    if inst.generation is None:
        return Row("ollama", "warn", f"{inst.exe}: version {inst.version}, generation unknown: ollama-gpu only "
                   "observes it (mode observe)", "use an Ollama release the generation tables know, or update "
                   "ollama-gpu", data=data)
    return Row("ollama", "ok", f"{inst.exe}: version {inst.version}, generation {inst.generation}", data=data)


@dataclass(frozen=True, slots=True)
class Variant:
    """A CUDA library directory of the installation."""

    name: str  # cuda_v12, or "lib/ollama" for the flat v0.9.3–v0.11.10 layout
    path: Path
    cuda_major: int
    min_driver: int
    backend: Path | None  # libggml-cuda.so inside, if any


def cuda_variants(libdir: Path, generation: str | None) -> list[Variant]:
    """The CUDA dirs the installation ships, oldest first, with what each needs from the driver."""
    out: list[Variant] = []
    for name, major, mins in CUDA_VARIANTS:
        d = libdir / name
        if d.is_dir():
            out.append(Variant(name, d, major, mins.get(generation or "", mins["*"]), _backend_in(d)))
    flat = _backend_in(libdir)
    if not out and flat is not None:  # v0.9.3–v0.11.10: CUDA 12.8 installed flat in lib/ollama (reference B.3)
        out.append(Variant("lib/ollama", libdir, 12, 525, flat))
    return out


def _backend_in(d: Path) -> Path | None:
    return next(iter(sorted(d.glob("libggml-cuda.so*"))), None)


def driver_runs(facts: NvmlState, v: Variant) -> bool | None:
    """Whether this driver can run the variant's CUDA runtime; None when the driver is unknown."""
    major = driver_major(facts)
    if major is not None:
        return major >= v.min_driver
    cmaj = cuda_major(facts)
    return None if cmaj is None else cmaj >= v.cuda_major


def check_ollama_libs(ctx: Ctx) -> Row:
    """Which CUDA variants the installation ships and whether this driver is new enough for them."""
    inst = ctx.ollama
    if inst.exe is None:
        return Row("ollama_libs", "info", "no Ollama binary to inspect (see the ollama check)")
    if inst.libdir is None:
        if inst.generation in ("0", "A"):
            return Row("ollama_libs", "info", "generation A: the GPU runners are embedded in the binary")
        return Row("ollama_libs", "fail", f"no lib/ollama next to {inst.exe}",
                   "reinstall Ollama: curl -fsSL https://ollama.com/install.sh | sh",
                   cause="missing_gpu_runners" if ctx.gpu_seen else None)
    variants = cuda_variants(inst.libdir, inst.generation)
    others = sorted(p.name for p in inst.libdir.iterdir() if p.is_dir() and not p.name.startswith("cuda_v"))
    data = {"libdir": str(inst.libdir), "other_dirs": others, "variants": [
        {"name": v.name, "cuda_major": v.cuda_major, "min_driver": v.min_driver,
         "backend": str(v.backend) if v.backend else None, "driver_ok": driver_runs(ctx.driver, v)}
        for v in variants]}
    for rule in LIBS_RULES:
        row = rule(ctx, variants)
        if row is not None:
            return Row(row.name, row.status, row.found, row.fix, row.cause, data)
    return Row("ollama_libs", "info", "no rule matched", data=data)  # unreachable: the last rule always answers


LibsRule = Callable[[Ctx, list[Variant]], "Row | None"]


def _libs_llama_server(ctx: Ctx, variants: list[Variant]) -> Row | None:
    inst = ctx.ollama
    if inst.generation != "D" or inst.libdir is None or (inst.libdir / "llama-server").exists():
        return None
    return Row("ollama_libs", "fail", f"generation D without {inst.libdir}/llama-server: no model can run",
               "reinstall Ollama: curl -fsSL https://ollama.com/install.sh | sh", cause="missing_gpu_runners")


def _libs_none(ctx: Ctx, variants: list[Variant]) -> Row | None:
    if variants:
        return None
    where = ctx.ollama.libdir
    if not ctx.gpu_seen:
        return Row("ollama_libs", "info", f"{where}: no CUDA library directory (CPU-only install; no GPU here)")
    return Row("ollama_libs", "fail", f"{where}: no CUDA library directory (cuda_v12/cuda_v13) although a GPU is "
               "present", "install the official build (curl -fsSL https://ollama.com/install.sh | sh) or the "
               "distribution's CUDA package for Ollama", cause="missing_gpu_runners")


def _libs_no_driver(ctx: Ctx, variants: list[Variant]) -> Row | None:
    if any(driver_runs(ctx.driver, v) is not None for v in variants):
        return None
    names = ", ".join(f"{v.name} (driver ≥ {v.min_driver})" for v in variants)
    return Row("ollama_libs", "info", f"ships {names}; no driver version to compare")


def _libs_too_old(ctx: Ctx, variants: list[Variant]) -> Row | None:
    if any(driver_runs(ctx.driver, v) for v in variants):
        return None
    need = min(v.min_driver for v in variants)
    return Row("ollama_libs", "fail", f"driver {ctx.driver.driver_version} is older than every CUDA variant shipped: "
               + ", ".join(f"{v.name} needs ≥ {v.min_driver}" for v in variants),
               f"install NVIDIA driver {need} or newer (e.g. sudo ubuntu-drivers install, or sudo apt install "
               f"nvidia-driver-{max(v.min_driver for v in variants)})", cause="driver_too_old")


def _libs_usable(ctx: Ctx, variants: list[Variant]) -> Row | None:
    usable = [v for v in variants if driver_runs(ctx.driver, v)]
    text = ", ".join(f"{v.name} ({'ok' if v in usable else f'needs driver ≥ {v.min_driver}'})" for v in variants)
    missing_backend = [v.name for v in usable if v.backend is None]
    if missing_backend and len(missing_backend) == len(usable):
        return Row("ollama_libs", "fail", f"{text}; but no libggml-cuda.so in {', '.join(missing_backend)}",
                   "reinstall Ollama: curl -fsSL https://ollama.com/install.sh | sh", cause="missing_gpu_runners")
    if usable[-1] is not variants[-1]:
        return Row("ollama_libs", "warn", f"{text}: Ollama will use {usable[-1].name}",
                   f"for {variants[-1].name}: install NVIDIA driver {variants[-1].min_driver} or newer")
    return Row("ollama_libs", "ok", f"{text} (driver {ctx.driver.driver_version})")


LIBS_RULES: Final[tuple[LibsRule, ...]] = (_libs_llama_server, _libs_none, _libs_no_driver, _libs_too_old,
                                           _libs_usable)
