"""The H100 partial-offload script (`benchmarks/gpu/partial/run_partial.py`) as a module, for the tests that check
its plan, predictions and table."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.cli_helpers import REPO


def load_run_partial() -> ModuleType:
    path = REPO / "benchmarks" / "gpu" / "partial" / "run_partial.py"
    spec = importlib.util.spec_from_file_location("run_partial", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["run_partial"] = mod
    spec.loader.exec_module(mod)
    return mod
