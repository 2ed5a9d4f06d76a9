"""Build a simulated Ollama install (`bin/ollama`, `lib/ollama/...`) in a directory, so tests can break it physically.

    prefix/bin/ollama                         the simulator (an ELF embedding Python; a script if that cannot be built)
    prefix/lib/ollama/llama-server            gen D only: the same ELF, dispatching on its name
    prefix/lib/ollama/libggml-cpu.so          a trivial CPU backend built here with cc
    prefix/lib/ollama/cuda_vNN/libggml-cuda.so  the fake GGML CUDA backend from tests/native, copied (when given)

Run as a module to make one by hand: `python -m tests.ollama_sim.install PREFIX [--generation D] [--cuda-backend F]`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.ollama_sim import gguf, models
from tests.ollama_sim.gens import GENERATIONS

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _cache_dir() -> Path:
    d = Path(tempfile.gettempdir()) / f"ollama-sim-build-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def _compile(name: str, sources: list[Path], args: list[str]) -> Path | None:
    """cc into the build cache (keyed by sources, args and Python); None if the compiler fails."""
    key = hashlib.sha256(b"".join(s.read_bytes() for s in sources) + " ".join(args).encode()
                         + sys.version.encode()).hexdigest()[:16]
    out = _cache_dir() / key / name
    if out.exists():
        return out
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    cmd = ["cc", "-O1", "-Wall", "-o", str(tmp), *map(str, sources), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.stderr.write(f"ollama-sim: {' '.join(cmd)} failed:\n{res.stderr}")
        return None
    tmp.replace(out)
    return out


def build_launcher() -> Path | None:
    """The embedded-Python ELF launcher for this Python, or None (then installs use a script)."""
    cfg = sysconfig.get_config_vars()
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    libdir = str(cfg.get("LIBDIR") or "")
    args = [f"-I{cfg['INCLUDEPY']}", f'-DSIM_REPO="{REPO}"', f"-L{libdir}", f"-lpython{ver}{sys.abiflags}",
            f"-Wl,-rpath,{libdir}", "-ldl", "-lm", "-lpthread"]
    if not cfg.get("Py_ENABLE_SHARED"):
        args += ["-Wl,--export-dynamic", *str(cfg.get("LIBS") or "").split()]
    if not Path(str(cfg["INCLUDEPY"]), "Python.h").exists():
        return None
    return _compile("ollama-launcher", [HERE / "launcher.c"], args)


def build_cpu_backend() -> Path:
    """libggml-cpu.so (trivial: exports ggml_backend_score/init)."""
    out = _compile("libggml-cpu.so", [HERE / "fake_cpu_backend.c"], ["-shared", "-fPIC",
                                                                     "-fvisibility=hidden"])
    if out is None:
        raise RuntimeError("cc could not build the simulator's CPU backend")
    return out


def _script(path: Path) -> None:
    path.write_text(f"#!{sys.executable}\n# ollama simulator (TEST DOUBLE)\nimport sys\n"
                    f"sys.path.insert(0, {str(REPO)!r})\nfrom tests.ollama_sim.main import main\n"
                    "sys.exit(main(__file__, sys.argv[1:]))\n")
    path.chmod(0o755)


@dataclass(frozen=True)
class Install:
    """A simulated install and the paths a test breaks or inspects."""

    prefix: Path
    generation: str

    @property
    def ollama(self) -> Path:
        """bin/ollama."""
        return self.prefix / "bin" / "ollama"

    @property
    def libdir(self) -> Path:
        """lib/ollama."""
        return self.prefix / "lib" / "ollama"

    @property
    def llama_server(self) -> Path:
        """lib/ollama/llama-server (gen D)."""
        return self.libdir / "llama-server"

    @property
    def cuda_dir(self) -> Path:
        """The generation's newest CUDA library dir (cuda_v13 for C/D, cuda_v12 for B)."""
        return self.libdir / GENERATIONS[self.generation].cuda_dirs[-1]

    @property
    def cuda_backend(self) -> Path:
        """cuda_vNN/libggml-cuda.so."""
        return self.cuda_dir / "libggml-cuda.so"

    def env(self, **extra: str) -> dict[str, str]:
        """A minimal environment for `bin/ollama serve`, like the fixtures' runs (PATH, HOME, OLLAMA_*)."""
        home = self.prefix / "home"
        home.mkdir(exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
               "OLLAMA_MODELS": str(self.prefix / "models"), "OLLAMA_SIM_GENERATION": self.generation}
        env.update(extra)
        return env

    def add_model(self, name: str = "tiny", data: bytes | None = None) -> models.Model:
        """Install a model (default: a tiny llama GGUF like the fixtures' one) under OLLAMA_MODELS."""
        if data is None:
            tmp = self.prefix / ".model.gguf"
            data = gguf.tiny_llama(tmp, size_mib=1.0).read_bytes()
            tmp.unlink()
        return models.install(self.prefix / "models", name, data)


def make_install(prefix: Path, generation: str = "D", *, cuda_backend: Path | None = None) -> Install:
    """Create the install tree; `cuda_backend` (tests/native's libggml-cuda.so) is copied into the CUDA dir."""
    inst = Install(prefix, generation)
    inst.ollama.parent.mkdir(parents=True, exist_ok=True)
    inst.libdir.mkdir(parents=True, exist_ok=True)
    launcher = build_launcher()
    progs = [inst.ollama] + ([inst.llama_server] if generation == "D" else [])
    for prog in progs:
        if launcher is not None:
            shutil.copy2(launcher, prog)
            prog.chmod(0o755)
        else:
            _script(prog)
    shutil.copy2(build_cpu_backend(), inst.libdir / "libggml-cpu.so")
    if cuda_backend is not None:
        inst.cuda_dir.mkdir(exist_ok=True)
        shutil.copy2(cuda_backend, inst.cuda_backend)
    (prefix / "models").mkdir(exist_ok=True)
    return inst


def main(argv: list[str] | None = None) -> int:
    """CLI: make an install and print its bin/ollama."""
    ap = argparse.ArgumentParser(prog="python -m tests.ollama_sim.install", description=__doc__.splitlines()[0])
    ap.add_argument("prefix", type=Path)
    ap.add_argument("--generation", default="D", choices=sorted(GENERATIONS))
    ap.add_argument("--cuda-backend", type=Path, help="libggml-cuda.so to copy into lib/ollama/cuda_vNN/")
    ap.add_argument("--model", default="tiny", help="model name to install (empty: none)")
    a = ap.parse_args(argv)
    inst = make_install(a.prefix.resolve(), a.generation, cuda_backend=a.cuda_backend)
    if a.model:
        inst.add_model(a.model)
    print(inst.ollama)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
