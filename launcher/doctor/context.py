"""Doctor's data and context: the `Row` a check returns, the `Ctx` every check receives, NVML's adapted report."""

from __future__ import annotations

import contextlib
import functools
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from launcher import shim_build
from launcher.nvml import Nvml, NvmlFailure, NvmlState
from launcher.paths import current_user

if TYPE_CHECKING:
    from launcher.doctor.install import OllamaInstall

Status = Literal["ok", "warn", "fail", "info"]
STATUSES: Final = ("ok", "warn", "fail", "info")

VERSION_TIMEOUT: Final = 10.0


# --- rows and context ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One check's result: what was found, the fix (exact commands) when not ok, and a cause when it blocks the GPU."""

    name: str
    status: Status
    found: str
    fix: str = ""
    cause: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"name": self.name, "status": self.status, "found": self.found, "fix": self.fix,
                "cause": self.cause, "data": dict(self.data)}


@dataclass(frozen=True, slots=True)
class NvmlReport:
    """NVML's state of this host (`launcher.nvml`, the one choke point) and each GPU's persistence mode."""

    state: NvmlState
    persistence: Mapping[int, bool | None] = field(default_factory=dict)


NvmlSource = Callable[[], NvmlReport]


@dataclass(frozen=True, slots=True)
class DoctorSettings:
    """The settings doctor reads (from `launcher.config.Settings`), and where shim builds are cached."""

    ollama: str = "ollama"
    shim: Path | None = None
    cache_dir: Path | None = None
    driver_lib_dirs: tuple[Path, ...] = ()
    ollama_env: Mapping[str, str] = field(default_factory=dict)
    may_override: frozenset[str] = frozenset()  # OGPU_MAY_OVERRIDE: advice never asks to list what is listed


@dataclass(frozen=True, slots=True)
class Account:
    """The service user: name, uid and every group it is in."""

    name: str
    uid: int
    gids: frozenset[int]


class Ctx:
    """What every check receives; derived facts are computed once and shared between checks."""

    def __init__(
        self,
        *,
        root: Path = Path("/"),
        env: Mapping[str, str],
        settings: DoctorSettings,
        runner: shim_build.Runner = shim_build.run_process,
        nvml: NvmlSource | None = None,
        user: str | None = None,
        probe: bool = False,
        backend: Path | None = None,
        python: str = sys.executable,
    ) -> None:
        self.root = root
        self.settings = settings
        self.runner = runner
        self.user = user or current_user()
        self.probe = probe
        self.backend = backend
        self.python = python
        self._nvml = nvml or nvml_report
        self.env = ollama_environment(env, settings.ollama_env)
        self.probes: dict[str, Row] = {}
        self.shim_result: tuple[shim_build.Resolved | None, str] | None = None

    def path(self, system_path: str | Path) -> Path:
        """A system path under `root`."""
        return self.root / str(system_path).lstrip("/")

    def read(self, system_path: str) -> str | None:
        """A system file's text, None when it cannot be read."""
        try:
            return self.path(system_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    @functools.cached_property
    def nvml(self) -> NvmlReport:
        """NVML's report (asked once)."""
        try:
            return self._nvml()
        except Exception as exc:  # a broken NVML binding is a fact about this host, not our crash
            return NvmlReport(NvmlState(False, reason=f"NVML query failed: {type(exc).__name__}: {exc}"))

    @property
    def driver(self) -> NvmlState:
        """NVML's state: available or why not, the driver and CUDA versions, the GPUs."""
        return self.nvml.state

    @functools.cached_property
    def ollama(self) -> OllamaInstall:
        """The Ollama binary, its version and generation, and its library directory."""
        from launcher.doctor.install import find_ollama  # install.py imports this module

        return find_ollama(self)

    @functools.cached_property
    def wsl(self) -> bool:
        """Running under WSL2 (the driver lives on Windows, reached through /dev/dxg and /usr/lib/wsl/lib)."""
        release = (self.read("/proc/sys/kernel/osrelease") or "").lower()
        return "microsoft" in release or "wsl" in release or self.path("/dev/dxg").exists()

    @functools.cached_property
    def container(self) -> bool:
        """Inside a container (Docker, Podman, or systemd-nspawn's `container` variable)."""
        return (self.path("/.dockerenv").exists() or self.path("/run/.containerenv").exists()
                or bool(self.env.get("container")))

    @functools.cached_property
    def gpu_nodes(self) -> list[Path]:
        """/dev/nvidia0, /dev/nvidia1, … (system paths)."""
        dev = self.path("/dev")
        with contextlib.suppress(OSError):
            return sorted(Path("/dev") / p.name for p in dev.iterdir() if re.fullmatch(r"nvidia\d+", p.name))
        return []

    @property
    def gpu_seen(self) -> bool:
        """Any sign of an NVIDIA GPU or its driver: NVML lists a GPU, a device node exists (or /dev/dxg), or the
        probe loaded a real driver that found a device or failed for another reason than "no device"."""
        if self.driver.gpus or self.gpu_nodes or (self.wsl and self.path("/dev/dxg").exists()):
            return True
        probed = self.probes.get("probe_cuinit")
        result = probed.data.get("result") if probed is not None else None
        if not isinstance(result, Mapping):
            return False
        return bool(result.get("devices")) or result.get("cu_init") not in (None, 0, 34, 100)


def ollama_environment(env: Mapping[str, str], from_files: Mapping[str, str]) -> dict[str, str]:
    """Ollama's environment as serve builds it: ours, plus keys from our env files that the environment lacks."""
    out = dict(env)
    for key, value in from_files.items():
        out.setdefault(key, value)
    return out


# --- NVML (launcher.nvml is the one choke point; this only adapts its answer) ---------------------------------------


def nvml_report() -> NvmlReport:
    """Open NVML through `launcher.nvml`, read the state and each GPU's persistence mode, close it."""
    nv = Nvml()
    try:
        state = nv.open()
        persistence = {i: _persistence(nv, h) for i, h in nv.handles} if state.available else {}
    finally:
        nv.close()
    return NvmlReport(state, persistence)


def _persistence(nv: Nvml, handle: Any) -> bool | None:
    # Through the choke point's own call (no second wrapper): NVML_FEATURE_ENABLED is 1.
    mode = nv._call("nvmlDeviceGetPersistenceMode", handle)
    return None if isinstance(mode, NvmlFailure) else int(mode) == 1


def driver_major(state: NvmlState) -> int | None:
    """580 from "580.159.04"."""
    m = re.match(r"(\d+)", state.driver_version or "")
    return int(m[1]) if m else None


def cuda_major(state: NvmlState) -> int | None:
    """13 from "13.0"."""
    m = re.match(r"(\d+)", state.cuda_version or "")
    return int(m[1]) if m else None


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
