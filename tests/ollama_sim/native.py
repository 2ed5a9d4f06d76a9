"""The mock CUDA driver and fake GGML CUDA backend of tests/native: their build helper, or their sources via cc.

Only their sources are used (one mock driver, one fake backend): libcuda.so.1, the variant without
cuMemAddressReserve, and libggml-cuda.so with DT_NEEDED on libcuda.so.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NATIVE = Path(__file__).resolve().parents[1] / "native"


@dataclass(frozen=True)
class NativeLibs:
    """Directories and files a test puts on (or leaves off) the loader's path."""

    driver_dir: Path  # holds libcuda.so.1
    no_va_driver_dir: Path  # holds a libcuda.so.1 lacking cuMemAddressReserve
    ggml_cuda: Path  # libggml-cuda.so
    stub_dir: Path  # .../stubs/libcuda.so.1, always a stub (CUDA error 34)


def build() -> NativeLibs:
    """tests/native's own build (native_build(), cached by source hash)."""
    from tests.native.build import native_build

    b = native_build()
    return NativeLibs(b.mock_dir, b.mock_novareserve_dir, b.ggml_cuda, b.mock_stub_dir)
