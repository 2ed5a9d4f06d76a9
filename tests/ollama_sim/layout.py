"""Where things are in an Ollama install: the executable, lib/ollama, GPU library dirs and their backends."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """An install seen from its resolved executable (`os.Executable` + `EvalSymlinks`, as Ollama does)."""

    exe: str

    @property
    def libdir(self) -> str:
        """`<exe dir>/../lib/ollama` (LibOllamaPath)."""
        return os.path.normpath(os.path.join(os.path.dirname(self.exe), "..", "lib", "ollama"))

    @property
    def llama_server(self) -> str:
        """Gen D's runner: OLLAMA_SIM_LLAMA_SERVER (a real binary, for GPU runs) or `lib/ollama/llama-server`."""
        return os.environ.get("OLLAMA_SIM_LLAMA_SERVER") or os.path.join(self.libdir, "llama-server")

    def gpu_dirs(self) -> list[str]:
        """Parent dirs of `lib/ollama/*/*ggml-*` (gen C/D discovery's libDirs), sorted by name."""
        found = {os.path.dirname(p) for p in glob.glob(os.path.join(self.libdir, "*", "*ggml-*"))}
        return sorted(found)

    @staticmethod
    def backend_in(gpudir: str) -> str:
        """The first non-base, non-CPU `libggml-*.so*` in a GPU dir (what gen D puts in GGML_BACKEND_PATH)."""
        for path in sorted(glob.glob(os.path.join(gpudir, "libggml-*.so*"))):
            base = os.path.basename(path)
            if not base.startswith(("libggml-base", "libggml-cpu")):
                return path
        return ""

    def cuda_dir_for(self, variant: str) -> str:
        """Gen B: `lib/ollama/cuda_<variant>` when it exists, else ''."""
        d = os.path.join(self.libdir, f"cuda_{variant}")
        return d if os.path.isdir(d) else ""
