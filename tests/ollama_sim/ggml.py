"""Runner-side backend loading as ggml does it: silent directory scans, GGML_BACKEND_PATH loaded loudly, real dlopen.

A backend is a shared library found by name (`libggml-<name>[-variant].so`). It is opened with libc's dlopen (so the
loader, LD_LIBRARY_PATH and an LD_PRELOAD shim all see it), its `ggml_backend_init` is called (the fake CUDA backend
from tests/native initialises CUDA there and prints ggml_cuda_init's lines), and on success the loader's
`load_backend: loaded X backend from PATH` line is printed. CUDA devices are then read from the driver library the
backend itself pulled in (dlopen with RTLD_NOLOAD: never a second driver).
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tests.ollama_sim import cuda

# ggml_backend_load_all_from_path's order (upstream ggml-backend-reg.cpp), reduced to the two we ship.
BACKEND_ORDER = ("cuda", "cpu")
DISPLAY = {"cuda": "CUDA", "cpu": "CPU"}


@dataclass
class Backend:
    """One loaded backend library."""

    name: str
    path: str
    lib: ctypes.CDLL


@dataclass
class Loaded:
    """What a runner has after loading backends: libraries, CUDA devices and what the driver said."""

    backends: list[Backend] = field(default_factory=list)
    cuda_devices: list[cuda.Device] = field(default_factory=list)
    cu_init: int | None = None
    driver: int = 0

    def has(self, name: str) -> bool:
        """Whether a backend of that name is loaded."""
        return any(b.name == name for b in self.backends)


def _name_of(path: str) -> str:
    base = os.path.basename(path)
    for name in BACKEND_ORDER:
        if base.startswith(f"libggml-{name}"):
            return name
    return base.removeprefix("libggml-").split(".")[0].split("-")[0]


def _candidates(directory: str, name: str) -> list[str]:
    return sorted(glob.glob(os.path.join(directory, f"libggml-{name}-*.so"))
                  + glob.glob(os.path.join(directory, f"libggml-{name}.so")))


def load_one(path: str, *, silent: bool, emit: Callable[[str], None], announce: bool = True) -> Backend | None:
    """ggml_backend_load: dlopen, find ggml_backend_init, call it; print failures unless silent."""
    try:
        lib = cuda.dlopen(path)
    except OSError as exc:
        if not silent:
            emit(f"load_backend: failed to load {path}: {exc}")
        return None
    init = getattr(lib, "ggml_backend_init", None)
    if init is None:
        if not silent:
            emit(f"load_backend: failed to find ggml_backend_init in {path}")
        return None
    score = getattr(lib, "ggml_backend_score", None)
    if score is not None:
        score.restype = ctypes.c_int
        if score() == 0:
            return None
    init.restype = ctypes.c_void_p
    if not init():
        emit(f"load_backend: failed to initialize backend from {path}")
        return None
    name = _name_of(path)
    if announce:
        emit(f"load_backend: loaded {DISPLAY.get(name, name.upper())} backend from {path}")
    return Backend(name, path, lib)


def load_all(scan_dirs: Sequence[str], backend_path: str | None, emit: Callable[[str], None], *,
             announce_scanned: bool = True) -> Loaded:
    """Scan `scan_dirs` silently for each known backend (best candidate per name), then load GGML_BACKEND_PATH."""
    out = Loaded()
    for name in BACKEND_ORDER:
        for directory in scan_dirs:
            found = None
            for path in _candidates(directory, name):
                found = load_one(path, silent=True, emit=emit, announce=announce_scanned)
                if found:
                    break
            if found:
                out.backends.append(found)
                break
    if backend_path:
        extra = load_one(backend_path, silent=False, emit=emit)
        if extra:
            out.backends.append(extra)
    if out.has("cuda"):
        _read_cuda_devices(out)
    return out


def _read_cuda_devices(out: Loaded) -> None:
    """Ask the driver the CUDA backend linked against (already loaded: RTLD_NOLOAD) which devices it sees."""
    try:
        lib = ctypes.CDLL("libcuda.so.1", mode=os.RTLD_NOW | os.RTLD_NOLOAD)
    except OSError:
        return
    drv = cuda.Driver(lib, "libcuda.so.1")
    out.cu_init = drv.init()
    if out.cu_init == cuda.CUDA_SUCCESS:
        out.driver = drv.driver_version()
        out.cuda_devices = drv.devices()
