"""Where the dynamic loader would find the driver's `libcuda.so.1`, and where it really is on this machine.

Scans take a `root` directory so tests build a fake filesystem instead of depending on this machine's toolkit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SONAME: Final = "libcuda.so.1"

# Where drivers put libcuda.so.1, in the order we try them: container toolkit, WSL, NixOS, distributions.
KNOWN_DIRS: Final = (
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
    "/usr/lib/wsl/lib",
    "/run/opengl-driver/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu/nvidia/current",
    "/usr/lib64",
    "/usr/lib64/nvidia",
    "/usr/lib/nvidia",
    "/usr/lib",
)
KNOWN_GLOBS: Final = ("/usr/lib/nvidia-*", "/usr/lib/wsl/drivers/*")
# glibc's trusted directories, searched after the cache.
DEFAULT_DIRS: Final = ("/lib", "/usr/lib", "/lib64", "/usr/lib64")

_CACHE_LINE = re.compile(r"^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)\s*$")


def is_stub_dir(path: Path) -> bool:
    """A CUDA toolkit `stubs` directory: its libcuda.so links programs but fails at run time (error 34)."""
    return "stubs" in path.parts


def parse_ld_cache(text: str) -> tuple[Path, ...]:
    """Paths of the sonames listed by `ldconfig -p` (the cache the loader consults)."""
    out = []
    for line in text.splitlines():
        match = _CACHE_LINE.match(line)
        if match:
            out.append(Path(match.group(3)))
    return tuple(out)


def ld_cache(run: Callable[[Sequence[str]], tuple[int, str]]) -> tuple[Path, ...]:
    """The loader cache via `ldconfig -p` (through `run`, which returns (exit code, stdout)); empty on failure."""
    for ldconfig in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"):
        try:
            code, out = run([ldconfig, "-p"])
        except OSError:
            continue
        if code == 0:
            return parse_ld_cache(out)
    return ()


def _under(root: Path, path: str | Path) -> Path:
    return root / str(path).lstrip("/")


def _split_path_list(value: str) -> list[str]:
    # ld.so accepts ':' and ';' in LD_LIBRARY_PATH; empty entries mean the current directory, which we skip.
    return [p for p in re.split(r"[:;]", value) if p]


@dataclass(frozen=True, slots=True)
class DriverFinding:
    """What the loader would pick for libcuda.so.1, and where a real driver library lives."""

    loader_path: Path | None  # what dlopen("libcuda.so.1") would load, None if nothing
    loader_via: str  # 'LD_LIBRARY_PATH', 'cache', 'default', or '' when not found
    real_dir: Path | None  # the first directory with a real (non-stub) libcuda.so.1
    stub_first: bool  # the loader would take a toolkit stub

    @property
    def loader_finds_real(self) -> bool:
        """The loader would load a real driver library."""
        return self.loader_path is not None and not self.stub_first

    @property
    def needs_dir(self) -> bool:
        """A real driver exists, but the loader would not find any libcuda.so.1."""
        return self.loader_path is None and self.real_dir is not None


def find_driver(
    env: Mapping[str, str],
    *,
    root: Path = Path("/"),
    cache: Iterable[Path] = (),
    extra_dirs: Sequence[Path] = (),
) -> DriverFinding:
    """Resolve libcuda.so.1 as ld.so would (LD_LIBRARY_PATH, cache, trusted dirs), then look for a real one."""
    loader_path: Path | None = None
    via = ""
    for entry in _split_path_list(env.get("LD_LIBRARY_PATH", "")):
        candidate = _under(root, entry) / SONAME
        if candidate.exists():
            loader_path, via = Path(entry) / SONAME, "LD_LIBRARY_PATH"
            break
    if loader_path is None:
        for path in cache:
            if path.name == SONAME and _under(root, path).exists():
                loader_path, via = path, "cache"
                break
    if loader_path is None:
        for entry in DEFAULT_DIRS:
            if (_under(root, entry) / SONAME).exists():
                loader_path, via = Path(entry) / SONAME, "default"
                break

    real_dir: Path | None = None
    on_path = [Path(e) for e in _split_path_list(env.get("LD_LIBRARY_PATH", ""))]
    for directory in search_dirs(root, [*extra_dirs, *on_path]):
        if not is_stub_dir(directory) and (_under(root, directory) / SONAME).exists():
            real_dir = directory
            break
    stub_first = loader_path is not None and is_stub_dir(loader_path.parent)
    return DriverFinding(loader_path=loader_path, loader_via=via, real_dir=real_dir, stub_first=stub_first)


def search_dirs(root: Path, extra_dirs: Sequence[Path] = ()) -> list[Path]:
    """`extra_dirs` first (the operator's OGPU_DRIVER_LIB_DIRS, then LD_LIBRARY_PATH's entries), then the known
    driver locations (globs expanded under root)."""
    out: list[Path] = [Path(d) for d in extra_dirs]
    out.extend(Path(d) for d in KNOWN_DIRS)
    for pattern in KNOWN_GLOBS:
        parent, _, leaf = pattern.rpartition("/")
        base = _under(root, parent)
        if base.is_dir():
            out.extend(Path(parent) / p.name for p in sorted(base.glob(leaf)) if p.is_dir())
    return list(dict.fromkeys(out))
