"""Build the native test doubles (mock libcuda.so.1, mock libnvidia-ml.so.1, fake libggml-cuda.so, probes) and the
shim, once per source hash.

Everything lands in `<tmp>/ogpu-native-<uid>/<hash>/`, built in a private temporary directory and renamed into place,
so concurrent test sessions are safe and a rerun with unchanged sources compiles nothing. Later issues reuse
`native_build()` for 2- and 4-device and MIG-style scenarios (the mock is configured by MOCKCUDA_* variables, see
mockcuda.c).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent
REPO: Final = HERE.parent.parent
SHIM_SRC: Final = REPO / "shim"
CFLAGS: Final = ("-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Werror")
SOURCES: Final = ("mockcuda.c", "mocknvml.c", "fakeboot.c", "mockggml_cuda.c", "probe.c", "probe_direct.c",
                   "helpers.c", "build.py")


@dataclass(frozen=True, slots=True)
class NativeBuild:
    """Paths of the built test doubles."""

    root: Path
    shim: Path  # libollama_gpu_shim.so
    mock_dir: Path  # holds libcuda.so.1
    mock_nvml_dir: Path  # holds libnvidia-ml.so.1 (mocknvml.c, scripted by MOCKNVML_STATE)
    mock_novareserve_dir: Path  # libcuda.so.1 without cuMemAddressReserve
    mock_stub_dir: Path  # .../stubs/libcuda.so.1 that is always a stub (error 34), like the CUDA toolkit's
    mock_fabric_dir: Path  # libcuda.so.1 whose cuInit returns 802 (NVSwitch fabric manager not running) by default
    fakeboot: Path  # libfakeboot.so: preloaded, adds FAKEBOOT_FILE's seconds to CLOCK_BOOTTIME (a scripted resume)
    ggml_cuda: Path  # libggml-cuda.so (DT_NEEDED libcuda.so.1)
    probe: Path
    probe_direct: Path  # linked against libcuda.so.1
    libcaller: Path  # RUNPATH $ORIGIN/deps; deps/libggml-dep.so beside it
    libscope: Path
    libnext_a: Path
    libnext_b: Path


class BuildError(RuntimeError):
    """A compile failed; the message holds the command and the compiler's output."""


def _cc() -> str:
    cc = os.environ.get("CC", "").strip()
    if cc:
        return cc
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return name
    raise BuildError("no C compiler (cc, gcc or clang) on PATH")


def _run(argv: list[str], cwd: Path) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BuildError(f"{shlex.join(argv)}\n{done.stdout}{done.stderr}")


def _source_hash(cc: str) -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (HERE / name).read_bytes())
    for p in sorted(SHIM_SRC.iterdir()):
        if p.is_file() and p.suffix in (".c", ".h", ".map", ".txt"):
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    version = subprocess.run([*shlex.split(cc), "--version"], capture_output=True, text=True, check=False).stdout
    h.update(cc.encode() + version.encode())
    return h.hexdigest()[:16]


def layout(root: Path) -> NativeBuild:
    """Where each double lives under a build root."""
    return NativeBuild(
        root=root,
        shim=root / "shim" / "libollama_gpu_shim.so",
        mock_dir=root / "mock",
        mock_nvml_dir=root / "mock-nvml",
        mock_novareserve_dir=root / "mock-novareserve",
        mock_stub_dir=root / "mock-stub" / "stubs",
        mock_fabric_dir=root / "mock-fabric",
        fakeboot=root / "fakeboot" / "libfakeboot.so",
        ggml_cuda=root / "ggml" / "libggml-cuda.so",
        probe=root / "probe",
        probe_direct=root / "probe_direct",
        libcaller=root / "helpers" / "libcaller.so",
        libscope=root / "helpers" / "libscope.so",
        libnext_a=root / "helpers" / "libnext_a.so",
        libnext_b=root / "helpers" / "libnext_b.so",
    )


def _build_shim(out: Path) -> None:
    """Through the real builder (launcher.shim_build) when it works; else the command shim/BUILD.txt documents."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        from launcher import shim_build

        built = shim_build.build(out.parent / "cache", dict(os.environ), src_dir=SHIM_SRC)
        shutil.copy2(built.path, out)
        return
    except ImportError:
        pass
    cc = shlex.split(_cc())
    _run([*cc, "-std=gnu11", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden",
          "-Wl,--version-script=exports.map", "-Wl,-z,now", "-Wl,-z,defs", "-o", str(out), "shim.c", "events.c",
          "-ldl", "-lpthread"], SHIM_SRC)


def _build_all(b: NativeBuild) -> None:
    cc = shlex.split(_cc())
    src = HERE
    lib = [*cc, *CFLAGS, "-shared", "-fPIC"]
    for d in (b.mock_dir, b.mock_nvml_dir, b.mock_novareserve_dir, b.mock_stub_dir, b.mock_fabric_dir,
              b.ggml_cuda.parent, b.libcaller.parent / "deps", b.fakeboot.parent):
        d.mkdir(parents=True, exist_ok=True)
    soname = "-Wl,-soname,libcuda.so.1"
    _run([*lib, soname, "-o", str(b.mock_dir / "libcuda.so.1"), str(src / "mockcuda.c"), "-lpthread"], src)
    _run([*lib, soname, "-DMOCKCUDA_NO_VA_RESERVE", "-o", str(b.mock_novareserve_dir / "libcuda.so.1"),
          str(src / "mockcuda.c"), "-lpthread"], src)
    _run([*lib, soname, "-DMOCKCUDA_ALWAYS_STUB", "-o", str(b.mock_stub_dir / "libcuda.so.1"),
          str(src / "mockcuda.c"), "-lpthread"], src)
    _run([*lib, soname, "-DMOCKCUDA_INIT_ERROR_DEFAULT=802", "-o", str(b.mock_fabric_dir / "libcuda.so.1"),
          str(src / "mockcuda.c"), "-lpthread"], src)
    _run([*lib, "-Wl,-soname,libnvidia-ml.so.1", "-o", str(b.mock_nvml_dir / "libnvidia-ml.so.1"),
          str(src / "mocknvml.c")], src)
    _run([*lib, "-o", str(b.fakeboot), str(src / "fakeboot.c"), "-ldl"], src)
    cuda = ["-L", str(b.mock_dir), "-l:libcuda.so.1"]
    _run([*lib, "-o", str(b.ggml_cuda), str(src / "mockggml_cuda.c"), *cuda, "-ldl"], src)
    _run([*cc, *CFLAGS, "-o", str(b.probe), str(src / "probe.c"), "-ldl", "-lpthread"], src)
    _run([*cc, *CFLAGS, "-o", str(b.probe_direct), str(src / "probe_direct.c"), *cuda], src)
    helpers = str(src / "helpers.c")
    hdir = b.libcaller.parent
    _run([*lib, "-DHELPER_CALLER", "-Wl,--enable-new-dtags", "-Wl,-rpath,$ORIGIN/deps", "-o", str(b.libcaller),
          helpers, "-ldl"], src)
    _run([*lib, "-DHELPER_DEP", "-o", str(hdir / "deps" / "libggml-dep.so"), helpers], src)
    _run([*lib, "-DHELPER_SCOPEDEP", "-o", str(hdir / "libscopedep.so"), helpers], src)
    _run([*lib, "-DHELPER_SCOPE", "-Wl,--enable-new-dtags", "-Wl,-rpath,$ORIGIN", "-o", str(b.libscope), helpers,
          "-L", str(hdir), "-lscopedep", "-ldl"], src)
    _run([*lib, "-DHELPER_NEXT_A", "-o", str(b.libnext_a), helpers, "-ldl"], src)
    _run([*lib, "-DHELPER_NEXT_B", "-o", str(b.libnext_b), helpers], src)
    _build_shim(b.shim)


@lru_cache(maxsize=1)
def native_build(cache_root: Path | None = None) -> NativeBuild:
    """The built doubles for the current sources, compiling them on a cache miss."""
    cc = _cc()
    base = cache_root or Path(tempfile.gettempdir()) / f"ogpu-native-{os.getuid()}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    final = base / _source_hash(cc)
    if (final / ".complete").exists():
        return layout(final)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=base))
    try:
        _build_all(layout(work))
        (work / ".complete").touch()
        try:
            work.rename(final)
        except OSError:  # another session won the race: use its (identical) build
            if not (final / ".complete").exists():
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(work)
    return layout(final)
