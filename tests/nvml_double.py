"""The mock NVML (tests/native/mocknvml.c) from a test: a private copy of pynvml bound to it, and the state file a
test rewrites to move the "driver" from healthy to lost and back.

pynvml keeps the loaded library in a module global (`nvmlLib`) and dlopens `libnvidia-ml.so.1` by name, so a process
started with the mock's directory first on LD_LIBRARY_PATH (a `serve` under test) uses it as it is; inside the test
process a separate module instance is bound to the mock's path, leaving the shared `pynvml` untouched.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from tests.native.build import native_build

_copies = 0


def library() -> Path:
    """The built mock libnvidia-ml.so.1."""
    return native_build().mock_nvml_dir / "libnvidia-ml.so.1"


def mock_pynvml() -> ModuleType:
    """A pynvml module of its own whose NVML is the mock."""
    import pynvml

    global _copies
    _copies += 1
    name = f"pynvml_mock_{_copies}"
    spec = importlib.util.spec_from_file_location(name, pynvml.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pynvml builds its error classes through sys.modules[__name__]
    spec.loader.exec_module(module)
    module.nvmlLib = ctypes.CDLL(str(library()))
    return module


class NvmlScript:
    """The mock's state file (MOCKNVML_STATE): `set(**keys)` replaces the whole state atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set()

    def set(self, **keys: object) -> None:
        """Write `key=value` lines (see mocknvml.c) to a temporary file and rename it over the state file."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(f"{k}={v}\n" for k, v in keys.items()), encoding="utf-8")
        os.replace(tmp, self.path)
