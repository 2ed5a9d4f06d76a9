"""The mock CUDA driver and fake GGML CUDA backend of tests/native: their build helper, or their sources via cc.

Only their sources are used (one mock driver, one fake backend): libcuda.so.1, the variant without
cuMemAddressReserve, and libggml-cuda.so with DT_NEEDED on libcuda.so.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.ollama_sim.install import _compile

NATIVE = Path(__file__).resolve().parents[1] / "native"


@dataclass(frozen=True)
class NativeLibs:
    """Directories and files a test puts on (or leaves off) the loader's path."""

    driver_dir: Path  # holds libcuda.so.1
    no_va_driver_dir: Path  # holds a libcuda.so.1 lacking cuMemAddressReserve
    ggml_cuda: Path  # libggml-cuda.so


def _need(path: Path | None, what: str) -> Path:
    if path is None:
        raise RuntimeError(f"cc could not build {what} from {NATIVE}")
    return path


def build() -> NativeLibs:
    """tests/native's own build (native_build()); if that fails as a whole (e.g. the shim does not compile yet),
    the two sources the simulator needs are compiled here with the same roles."""
    try:
        from tests.native.build import native_build

        b = native_build()
        return NativeLibs(b.mock_dir, b.mock_novareserve_dir, b.ggml_cuda)
    except Exception:  # any failure of the other build: compile just our two below
        pass
    so = ["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-lpthread"]
    driver = _need(_compile("libcuda.so.1", [NATIVE / "mockcuda.c"], so), "libcuda.so.1")
    no_va = _need(_compile("libcuda.so.1", [NATIVE / "mockcuda.c"], [*so, "-DMOCKCUDA_NO_VA_RESERVE"]),
                  "libcuda.so.1 (no cuMemAddressReserve)")
    ggml = _need(_compile("libggml-cuda.so", [NATIVE / "mockggml_cuda.c"],
                          ["-shared", "-fPIC", f"-L{driver.parent}", "-l:libcuda.so.1", "-ldl"]), "libggml-cuda.so")
    return NativeLibs(driver.parent, no_va.parent, ggml)
