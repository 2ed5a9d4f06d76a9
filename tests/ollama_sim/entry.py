"""The default install behind the `ollama` script: made once per generation under the temp dir, then reused."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tests.ollama_sim import install, native


def default_prefix(tmp: Path) -> Path:
    """$TMPDIR/ollama-sim-<uid>/<generation>, created (under a lock) if missing, with the tiny model."""
    gen = os.environ.get("OLLAMA_SIM_GENERATION", "D").strip().upper() or "D"
    root = tmp / f"ollama-sim-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    prefix = root / gen
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (prefix / "bin" / "ollama").exists():
            try:
                backend: Path | None = native.build().ggml_cuda
            except RuntimeError:
                backend = None
            inst = install.make_install(prefix, gen, cuda_backend=backend)
            inst.add_model("tiny")
    return prefix
