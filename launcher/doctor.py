"""`ollama-gpu doctor`: checks of this host's GPU stack as a table of small functions, rows out, one verdict.

Every check takes a `Ctx` (a `root` for system paths so tests build a fake filesystem, the environment Ollama would
get, our settings, a `Runner` for programs) and returns one `Row`; a check that raises becomes that check's
failure (`run_checks`), never a traceback. The verdict is a short list of rules over the rows (DESIGN.md principle
5: rows, not if-chains). `--probe` adds two live probes run as subprocesses under the shim, with its events
collected by a private `ShimEventServer`: `cuInit` + device list through the driver API, and the installation's own
GGML CUDA backend loaded and registered as a runner loads it.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import json
import os
import pwd
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from launcher import driverlib, shim_build
from launcher.events import Event
from launcher.evidence import HIDE_ALL_VALUES
from launcher.log_patterns import CUDA_ERROR_CAUSES, DLERROR_CAUSES, classify, generation_of
from launcher.nvml import Gpu, Nvml, NvmlFailure, NvmlState
from launcher.paths import current_user
from launcher.remedy_text import advice
from launcher.shim_events import PROCESS_END, ShimEventServer
from launcher.vocabulary import FILTER_VARS

Status = Literal["ok", "warn", "fail", "info"]
STATUSES: Final = ("ok", "warn", "fail", "info")

VERSION_TIMEOUT: Final = 10.0
PROBE_TIMEOUT: Final = 60.0
EVENT_SETTLE: Final = 2.0  # seconds to drain the shim's queued messages after a probe exited

# Variables that select devices or force a library: the operator's choice (DESIGN.md contract 3).
FILTER_KEYS: Final = (*FILTER_VARS, "NVIDIA_VISIBLE_DEVICES", "GGML_VK_VISIBLE_DEVICES", "OLLAMA_LLM_LIBRARY",
                      "OLLAMA_VULKAN", "HSA_OVERRIDE_GFX_VERSION", "OLLAMA_INTEL_GPU", "GGML_BACKEND_PATH")

# CUDA library directories Ollama ships, the runtime major they hold and the lowest NVIDIA driver branch that runs
# it: CUDA minor-version compatibility (a runtime needs a driver of at least its major, reference
# cuda-interposition.md §6, error 35): 12.x from 525, 13.0 from 580 (the H100 in the reference runs 13.x on 580).
# Generation D's own filter drops every device of the cuda_v12 dir below 550 (reference ollama-internals.md D.3).
CUDA_VARIANTS: Final[tuple[tuple[str, int, Mapping[str, int]], ...]] = (
    ("cuda_v11", 11, {"*": 450}),
    ("cuda_v12", 12, {"*": 525, "D": 550}),
    ("cuda_v13", 13, {"*": 580}),
)
# How each generation ships GPU code (reference A.1, B.3, C.3, D.3).
LAYOUTS: Final = {"0": "embedded", "A": "embedded", "B": "dirs", "C": "dirs", "D": "dirs"}
# Generations whose GPU path needs AVX (reference A, §7.5) or executes from OLLAMA_TMPDIR (A.1, A.3).
NEEDS_AVX: Final = frozenset({"0", "A"})
EXECS_FROM_TMP: Final = frozenset({"0", "A"})

CU_DEVICE_ATTRIBUTE_CC_MAJOR: Final = 75
CU_DEVICE_ATTRIBUTE_CC_MINOR: Final = 76


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


# --- check: NVML and driver ----------------------------------------------------------------------------------------

# Fixes for the NVML failures that are causes (launcher.nvml.UNAVAILABLE).
NVML_FIXES: Final = {
    "driver_library_mismatch": "reboot (sudo reboot), or reload the driver's kernel modules: sudo rmmod nvidia_uvm "
                               "nvidia_drm nvidia_modeset nvidia && sudo modprobe nvidia nvidia_uvm",
    "permission_denied": "make the device nodes readable and writable for the service user (see device_nodes)",
}


def check_nvml(ctx: Ctx) -> Row:
    """NVML: the driver version, the CUDA version it supports, and its GPUs."""
    state = ctx.driver
    data = state.to_dict()
    if state.cause is not None:
        return Row("nvml", "fail", f"NVML: {state.reason}", NVML_FIXES.get(state.cause, advice("cpu_fallback",
                   state.cause)), cause=state.cause, data=data)
    if not state.available:
        return Row("nvml", "info", f"NVML absent: {state.reason}", data=data)
    head = f"driver {state.driver_version}, CUDA {state.cuda_version}"
    if not state.gpus:
        return Row("nvml", "warn", f"{head}, but NVML lists no GPU",
                   "check `nvidia-smi`; in a VM or container make sure the GPU is passed through", data=data)
    gpus = "; ".join(_gpu_text(g) for g in state.gpus)
    return Row("nvml", "ok", f"{head}, {len(state.gpus)} GPU(s): {gpus}", data=data)


def _gpu_text(g: Gpu) -> str:
    parts = [p for p in (g.uuid, g.pci_bus_id) if p]
    if g.memory_total:
        parts.append(f"{g.memory_total / 2**30:.0f} GiB")
    if g.compute_capability:
        parts.append(f"cc {g.compute_capability}")
    if g.mig_mode is not None:
        parts.append("MIG on" if g.mig_mode else "MIG off")
    return f"[{g.index}] {g.name} ({', '.join(parts)})" if parts else f"[{g.index}] {g.name}"


# --- check: libcuda.so* as the loader would find it ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """One libcuda.so* file: where it is, how the loader reaches it, what it resolves to, whether it is a stub."""

    path: Path
    via: str  # 'LD_LIBRARY_PATH', 'ld.so.cache', 'trusted dir', 'known driver dir'
    real: Path
    stub: bool


def libcuda_candidates(ctx: Ctx, cache: Sequence[Path]) -> list[Candidate]:
    """Every libcuda.so* in the places the loader or Ollama look, in search order, each file once."""
    places: list[tuple[Path, str]] = []
    places += [(Path(d), "LD_LIBRARY_PATH") for d in re.split(r"[:;]", ctx.env.get("LD_LIBRARY_PATH", "")) if d]
    places += [(p.parent, "ld.so.cache") for p in cache if p.name.startswith("libcuda.so")]
    places += [(Path(d), "trusted dir") for d in driverlib.DEFAULT_DIRS]
    places += [(d, "known driver dir") for d in driverlib.search_dirs(ctx.root, ctx.settings.driver_lib_dirs)]
    seen: set[Path] = set()
    out: list[Candidate] = []
    for directory, via in places:
        for found in sorted(ctx.path(directory).glob("libcuda.so*")):
            system = directory / found.name
            if system in seen:
                continue
            seen.add(system)
            real = _system_realpath(ctx, found)
            out.append(Candidate(system, via, real, driverlib.is_stub_dir(system.parent)
                                 or driverlib.is_stub_dir(real.parent)))
    return out


def _system_realpath(ctx: Ctx, rooted: Path) -> Path:
    real = Path(os.path.realpath(rooted))
    with contextlib.suppress(ValueError):
        return Path("/") / real.relative_to(os.path.realpath(ctx.root))
    return real


def _ld_cache(ctx: Ctx) -> tuple[Path, ...]:
    def run(argv: Sequence[str]) -> tuple[int, str]:
        done = ctx.runner(argv, env=ctx.env, timeout=VERSION_TIMEOUT)
        return (done.returncode if done.returncode is not None else 1), done.stdout

    return driverlib.ld_cache(run)


def check_libcuda(ctx: Ctx) -> Row:
    """Which libcuda.so.1 the loader would load, every other copy, and whether a toolkit stub comes first."""
    cache = _ld_cache(ctx)
    found = driverlib.find_driver(ctx.env, root=ctx.root, cache=cache, extra_dirs=ctx.settings.driver_lib_dirs)
    cands = libcuda_candidates(ctx, cache)
    data = {"loader": str(found.loader_path) if found.loader_path else None, "via": found.loader_via,
            "real_dir": str(found.real_dir) if found.real_dir else None,
            "candidates": [{"path": str(c.path), "via": c.via, "real": str(c.real), "stub": c.stub} for c in cands]}
    listing = "; ".join(f"{c.path} ({c.via}{', STUB' if c.stub else ''})" for c in cands) or "none"
    for rule in LIBCUDA_RULES:
        row = rule(ctx, found, cands, listing)
        if row is not None:
            return Row(row.name, row.status, row.found, row.fix, row.cause, data)
    return Row("libcuda", "info", f"no libcuda.so* anywhere ({listing})", data=data)


LibcudaRule = Callable[[Ctx, driverlib.DriverFinding, list[Candidate], str], "Row | None"]


def _libcuda_stub_first(ctx: Ctx, found: driverlib.DriverFinding, cands: list[Candidate], listing: str) -> Row | None:
    if not found.stub_first:
        return None
    stub_dir = str(found.loader_path.parent) if found.loader_path else ""
    keep = [d for d in ctx.env.get("LD_LIBRARY_PATH", "").split(":") if d and not driverlib.is_stub_dir(Path(d))]
    fix = (f"export LD_LIBRARY_PATH={':'.join(keep)}" if found.loader_via == "LD_LIBRARY_PATH"
           else f"remove {stub_dir} from /etc/ld.so.conf.d/*.conf, then: sudo ldconfig")
    return Row("libcuda", "fail", f"the loader would load the toolkit stub {found.loader_path} "
               f"(via {found.loader_via}; cuInit returns 34); found: {listing}", fix, cause="stub_library")


def _libcuda_wsl(ctx: Ctx, found: driverlib.DriverFinding, cands: list[Candidate], listing: str) -> Row | None:
    wsl_dir = Path("/usr/lib/wsl/lib")
    if not ctx.wsl or found.loader_path is None or found.loader_path.parent == wsl_dir:
        return None
    if not ctx.path(wsl_dir / driverlib.SONAME).exists():
        return None
    return Row("libcuda", "fail", f"WSL2: the loader would load {found.loader_path} (a Linux driver library) "
               f"instead of {wsl_dir}/{driverlib.SONAME}; found: {listing}",
               f"export LD_LIBRARY_PATH={wsl_dir}:$LD_LIBRARY_PATH (and remove the Linux NVIDIA driver packages "
               "inside WSL)", cause="wsl_libcuda_path")


def _libcuda_not_on_path(ctx: Ctx, found: driverlib.DriverFinding, cands: list[Candidate], listing: str) -> Row | None:
    if not found.needs_dir or found.real_dir is None:
        return None
    cause = "wsl_libcuda_path" if str(found.real_dir).startswith("/usr/lib/wsl") else "libcuda_not_found"
    fix = (f"echo {found.real_dir} | sudo tee /etc/ld.so.conf.d/ollama-gpu-nvidia.conf && sudo ldconfig "
           f"(or export LD_LIBRARY_PATH={found.real_dir}:$LD_LIBRARY_PATH; "
           "ollama-gpu serve adds it by itself in mode auto)")
    return Row("libcuda", "warn", f"{driverlib.SONAME} exists in {found.real_dir} but the loader would not find "
               f"it; found: {listing}", fix, cause=cause)


def _libcuda_real(ctx: Ctx, found: driverlib.DriverFinding, cands: list[Candidate], listing: str) -> Row | None:
    if not found.loader_finds_real:
        return None
    later_stubs = [str(c.path) for c in cands if c.stub]
    if later_stubs:
        return Row("libcuda", "warn", f"the loader would load {found.loader_path} (via {found.loader_via}); stubs "
                   f"also present, later in the search: {', '.join(later_stubs)}; found: {listing}",
                   "keep toolkit stubs directories off LD_LIBRARY_PATH and ld.so.conf on this host")
    return Row("libcuda", "ok", f"the loader would load {found.loader_path} (via {found.loader_via}); "
               f"found: {listing}")


def _libcuda_missing(ctx: Ctx, found: driverlib.DriverFinding, cands: list[Candidate], listing: str) -> Row | None:
    if found.loader_path is not None:
        return None
    if not ctx.gpu_seen:
        return Row("libcuda", "info", f"no {driverlib.SONAME} the loader would find (no NVIDIA driver); "
                   f"found: {listing}")
    fix = ("containers: run with --gpus all (Docker) or the NVIDIA runtime class (Kubernetes); hosts: install "
           "the driver's user-space libraries (e.g. sudo apt install libnvidia-compute-580), or set "
           "OGPU_DRIVER_LIB_DIRS to the directory holding libcuda.so.1")
    return Row("libcuda", "fail", f"a GPU is present but no {driverlib.SONAME} can be found; found: {listing}",
               fix, cause="container_no_gpu_runtime" if ctx.container else "libcuda_not_found")


LIBCUDA_RULES: Final[tuple[LibcudaRule, ...]] = (
    _libcuda_stub_first, _libcuda_wsl, _libcuda_not_on_path, _libcuda_real, _libcuda_missing,
)


# --- check: device nodes and the service user ---------------------------------------------------------------------


def lookup_account(root: Path, name: str) -> Account | None:
    """The user and its groups: NSS on the real root, /etc/passwd and /etc/group under a fake one."""
    if root == Path("/"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            return None
        return Account(name, pw.pw_uid, frozenset(os.getgrouplist(name, pw.pw_gid)))
    return _account_from_files(root, name)


def _account_from_files(root: Path, name: str) -> Account | None:
    try:
        passwd = (root / "etc/passwd").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in passwd.splitlines():
        f = line.split(":")
        if len(f) >= 4 and f[0] == name:
            gids = {int(f[3])}
            with contextlib.suppress(OSError):
                for g in (root / "etc/group").read_text(encoding="utf-8").splitlines():
                    gf = g.split(":")
                    if len(gf) >= 4 and name in gf[3].split(","):
                        gids.add(int(gf[2]))
            return Account(name, int(f[2]), frozenset(gids))
    return None


def can_open_rw(st: os.stat_result, acct: Account) -> bool:
    """Whether `acct` may open a file with these permissions for reading and writing (as CUDA opens its nodes)."""
    if acct.uid == 0:
        return True
    if st.st_uid == acct.uid:
        bits = stat.S_IRUSR | stat.S_IWUSR
    elif st.st_gid in acct.gids:
        bits = stat.S_IRGRP | stat.S_IWGRP
    else:
        bits = stat.S_IROTH | stat.S_IWOTH
    return st.st_mode & bits == bits


def _group_name(root: Path, gid: int) -> str:
    if root == Path("/"):
        with contextlib.suppress(KeyError):
            return grp.getgrgid(gid).gr_name
        return str(gid)
    with contextlib.suppress(OSError):
        for line in (root / "etc/group").read_text(encoding="utf-8").splitlines():
            f = line.split(":")
            if len(f) >= 3 and f[2] == str(gid):
                return f[0]
    return str(gid)


def expected_nodes(ctx: Ctx) -> list[Path]:
    """The nodes CUDA opens: /dev/dxg on WSL; else /dev/nvidiactl, /dev/nvidia-uvm and every /dev/nvidiaN."""
    if ctx.wsl:
        return [Path("/dev/dxg")]
    return [Path("/dev/nvidiactl"), Path("/dev/nvidia-uvm"), *ctx.gpu_nodes]


def check_device_nodes(ctx: Ctx) -> Row:
    """The device nodes exist and the service user can open them read-write (permissions and groups)."""
    acct = lookup_account(ctx.root, ctx.user)
    if acct is None:
        return Row("device_nodes", "fail", f"user {ctx.user!r} does not exist", f"sudo useradd -r -s /bin/false "
                   f"-U -m -d /usr/share/ollama {ctx.user} (or pass --user with the service's user)")
    nodes = expected_nodes(ctx)
    present = {n: st for n in nodes if (st := _stat(ctx.path(n))) is not None}
    data = {"user": acct.name, "uid": acct.uid, "nodes": {str(n): _node_dict(ctx, present.get(n)) for n in nodes}}
    if not present:
        return _no_nodes(ctx, data)
    missing = [n for n in nodes if n not in present]
    denied = [n for n, st in present.items() if not can_open_rw(st, acct)]
    if denied:
        return Row("device_nodes", "fail", f"user {acct.name} cannot open {', '.join(map(str, denied))} read-write "
                   f"({_modes(ctx, denied, present)})", _permission_fix(ctx, acct, denied, present),
                   cause="permission_denied", data=data)
    if Path("/dev/nvidia-uvm") in missing:
        return Row("device_nodes", "fail", "/dev/nvidia-uvm is missing (nvidia_uvm not loaded or its node not "
                   "created); cuInit fails without it", "sudo modprobe nvidia-uvm && sudo nvidia-modprobe -u -c=0",
                   cause="uvm_not_loaded", data=data)
    if missing:
        return Row("device_nodes", "fail", f"missing: {', '.join(map(str, missing))}",
                   "sudo nvidia-modprobe -c=0 (or reinstall the driver); containers: --gpus all",
                   cause="container_no_gpu_runtime" if ctx.container else "permission_denied", data=data)
    return Row("device_nodes", "ok", f"{', '.join(map(str, present))}: user {acct.name} can open them",
               data=data)


def _no_nodes(ctx: Ctx, data: dict[str, Any]) -> Row:
    if ctx.driver.gpus:
        fix = ("containers: run with --gpus all (Docker) or the NVIDIA runtime class (Kubernetes); hosts: "
               "sudo nvidia-modprobe -c=0 -u")
        return Row("device_nodes", "fail", "NVML lists GPUs but no /dev/nvidia* node exists", fix,
                   cause="container_no_gpu_runtime" if ctx.container else "permission_denied", data=data)
    where = " (inside a container: is it started with --gpus all?)" if ctx.container else ""
    return Row("device_nodes", "info", f"no NVIDIA device nodes (/dev/nvidia*, /dev/dxg){where}", data=data)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def _node_dict(ctx: Ctx, st: os.stat_result | None) -> dict[str, Any] | None:
    if st is None:
        return None
    return {"mode": f"{stat.S_IMODE(st.st_mode):04o}", "uid": st.st_uid, "group": _group_name(ctx.root, st.st_gid)}


def _modes(ctx: Ctx, nodes: list[Path], present: Mapping[Path, os.stat_result]) -> str:
    return ", ".join(f"{n} {stat.S_IMODE(present[n].st_mode):04o} group {_group_name(ctx.root, present[n].st_gid)}"
                     for n in nodes)


def _permission_fix(ctx: Ctx, acct: Account, denied: list[Path], present: Mapping[Path, os.stat_result]) -> str:
    group_rw = [n for n in denied if present[n].st_mode & (stat.S_IRGRP | stat.S_IWGRP) == stat.S_IRGRP | stat.S_IWGRP]
    if group_rw:
        group = _group_name(ctx.root, present[group_rw[0]].st_gid)
        return f"sudo usermod -aG {group} {acct.name}, then restart the service (sudo systemctl restart ollama)"
    nodes = " ".join(map(str, denied))
    return (f"sudo chmod 0666 {nodes} (to keep it: options nvidia NVreg_DeviceFileMode=0666 in "
            "/etc/modprobe.d/nvidia.conf, or a udev rule)")


# --- checks: kernel modules and persistence -----------------------------------------------------------------------


def loaded_modules(ctx: Ctx) -> set[str] | None:
    """Names in /proc/modules, None when it cannot be read (some sandboxes hide it)."""
    text = ctx.read("/proc/modules")
    if text is None:
        return None
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def check_uvm(ctx: Ctx) -> Row:
    """nvidia_uvm is loaded (CUDA needs it; cuInit returns 999 without it or when it broke after suspend)."""
    if ctx.wsl:
        return Row("nvidia_uvm", "info", "WSL2: the driver runs on Windows; no Linux kernel modules are involved")
    mods = loaded_modules(ctx)
    if mods is None:
        return Row("nvidia_uvm", "info", "/proc/modules cannot be read here")
    if "nvidia_uvm" in mods:
        return Row("nvidia_uvm", "ok", "nvidia_uvm is loaded")
    if "nvidia" in mods:
        return Row("nvidia_uvm", "fail", "the nvidia module is loaded but nvidia_uvm is not",
                   "sudo modprobe nvidia-uvm (to load it at boot: echo nvidia-uvm | sudo tee "
                   "/etc/modules-load.d/nvidia-uvm.conf)", cause="uvm_not_loaded")
    if ctx.driver.gpus:
        return Row("nvidia_uvm", "info", "no nvidia modules in /proc/modules (a container sees the host's list)")
    return Row("nvidia_uvm", "info", "no nvidia kernel modules loaded (no NVIDIA driver)")


def check_persistence(ctx: Ctx) -> Row:
    """Persistence mode per GPU (off: the driver tears down between clients; the first init is slower)."""
    if not ctx.driver.gpus:
        return Row("persistence", "info", "no GPU to check")
    modes = {g.index: ctx.nvml.persistence.get(g.index) for g in ctx.driver.gpus}
    off = [i for i, m in modes.items() if m is False]
    data = {"persistence": {str(i): m for i, m in modes.items()}}
    if off:
        return Row("persistence", "warn", f"persistence mode off on GPU {', '.join(map(str, off))}",
                   "sudo systemctl enable --now nvidia-persistenced (or sudo nvidia-smi -pm 1)", data=data)
    if any(m is None for m in modes.values()):
        return Row("persistence", "info", "persistence mode unknown (NVML did not say)", data=data)
    return Row("persistence", "ok", "persistence mode on", data=data)


# --- check: device filters ----------------------------------------------------------------------------------------


def check_filters(ctx: Ctx) -> Row:
    """Device-filter and library-forcing variables in Ollama's environment (the operator's choice, never changed)."""
    set_ = {k: ctx.env[k] for k in FILTER_KEYS if k in ctx.env}
    data = {"set": set_}
    if not set_:
        return Row("device_filters", "ok", "none set", data=data)
    text = ", ".join(f"{k}={v!r}" for k, v in set_.items())
    hiding = [k for k in (*FILTER_VARS, "NVIDIA_VISIBLE_DEVICES") if set_.get(k, "x").strip() in
              (*HIDE_ALL_VALUES, "")]
    forced = set_.get("OLLAMA_LLM_LIBRARY", "").startswith("cpu")
    if hiding or forced:
        keys = [*hiding, *(["OLLAMA_LLM_LIBRARY"] if forced else [])]
        return Row("device_filters", "warn", f"{text}: CPU chosen by configuration",
                   f"if you want the GPU: unset {' '.join(keys)} (in the unit: systemctl edit ollama), or list them "
                   f"in OGPU_MAY_OVERRIDE={','.join(keys)}", cause="operator_forced_cpu", data=data)
    return Row("device_filters", "info", f"{text} (the operator's choice: ollama-gpu never changes them unless "
               "listed in OGPU_MAY_OVERRIDE)", data=data)


# --- the Ollama installation --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OllamaInstall:
    """The binary, what `--version` said, its generation and its library directory."""

    exe: Path | None
    version: str | None = None
    generation: str | None = None
    libdir: Path | None = None
    error: str = ""


def find_ollama(ctx: Ctx) -> OllamaInstall:
    """Resolve OGPU_OLLAMA on PATH, ask `ollama --version` (with a timeout), map it to a generation."""
    name = ctx.settings.ollama
    found = shutil.which(name, path=ctx.env.get("PATH", os.defpath))
    if found is None:
        return OllamaInstall(None, error=f"OGPU_OLLAMA={name} is not an executable (not found on PATH)")
    exe = Path(os.path.realpath(found))
    done = ctx.runner([str(exe), "--version"], env=ctx.env, timeout=VERSION_TIMEOUT)
    text = f"{done.stdout}\n{done.stderr}"
    m = re.search(r"version (?:is )?v?(\d+\.\d+(?:\.\d+)?(?:-[\w.]+)?)", text)
    libdir = next((d for d in (exe.parent.parent / "lib" / "ollama", exe.parent / "lib" / "ollama") if d.is_dir()),
                  None)
    if m is None:
        why = "timed out" if done.returncode is None else f"exit {done.returncode}: {_one_line(text)[:200]}"
        return OllamaInstall(exe, libdir=libdir, error=f"`{exe} --version` gave no version ({why})")
    return OllamaInstall(exe, m[1], generation_of(m[1]), libdir)


def check_ollama(ctx: Ctx) -> Row:
    """The Ollama binary, its version and its generation (unknown generation ⇒ observe only)."""
    inst = ctx.ollama
    data = {"exe": str(inst.exe) if inst.exe else None, "version": inst.version, "generation": inst.generation,
            "libdir": str(inst.libdir) if inst.libdir else None}
    if inst.exe is None:
        return Row("ollama", "fail", inst.error, "install Ollama (curl -fsSL https://ollama.com/install.sh | sh) "
                   "or set OGPU_OLLAMA=/path/to/ollama", data=data)
    if inst.version is None:
        return Row("ollama", "fail", inst.error, f"run `{inst.exe} --version` by hand; set OGPU_OLLAMA to a "
                   "working Ollama binary", data=data)
    if inst.generation is None:
        return Row("ollama", "warn", f"{inst.exe}: version {inst.version}, generation unknown: ollama-gpu only "
                   "observes it (mode observe)", "use an Ollama release the generation tables know, or update "
                   "ollama-gpu", data=data)
    return Row("ollama", "ok", f"{inst.exe}: version {inst.version}, generation {inst.generation}", data=data)


@dataclass(frozen=True, slots=True)
class Variant:
    """A CUDA library directory of the installation."""

    name: str  # cuda_v12, or "lib/ollama" for the flat v0.9.3–v0.11.10 layout
    path: Path
    cuda_major: int
    min_driver: int
    backend: Path | None  # libggml-cuda.so inside, if any


def cuda_variants(libdir: Path, generation: str | None) -> list[Variant]:
    """The CUDA dirs the installation ships, oldest first, with what each needs from the driver."""
    out: list[Variant] = []
    for name, major, mins in CUDA_VARIANTS:
        d = libdir / name
        if d.is_dir():
            out.append(Variant(name, d, major, mins.get(generation or "", mins["*"]), _backend_in(d)))
    flat = _backend_in(libdir)
    if not out and flat is not None:  # v0.9.3–v0.11.10: CUDA 12.8 installed flat in lib/ollama (reference B.3)
        out.append(Variant("lib/ollama", libdir, 12, 525, flat))
    return out


def _backend_in(d: Path) -> Path | None:
    return next(iter(sorted(d.glob("libggml-cuda.so*"))), None)


def driver_runs(facts: NvmlState, v: Variant) -> bool | None:
    """Whether this driver can run the variant's CUDA runtime; None when the driver is unknown."""
    major = driver_major(facts)
    if major is not None:
        return major >= v.min_driver
    cmaj = cuda_major(facts)
    return None if cmaj is None else cmaj >= v.cuda_major


def check_ollama_libs(ctx: Ctx) -> Row:
    """Which CUDA variants the installation ships and whether this driver is new enough for them."""
    inst = ctx.ollama
    if inst.exe is None:
        return Row("ollama_libs", "info", "no Ollama binary to inspect (see the ollama check)")
    if inst.libdir is None:
        if inst.generation in ("0", "A"):
            return Row("ollama_libs", "info", "generation A: the GPU runners are embedded in the binary")
        return Row("ollama_libs", "fail", f"no lib/ollama next to {inst.exe}",
                   "reinstall Ollama: curl -fsSL https://ollama.com/install.sh | sh",
                   cause="missing_gpu_runners" if ctx.gpu_seen else None)
    variants = cuda_variants(inst.libdir, inst.generation)
    others = sorted(p.name for p in inst.libdir.iterdir() if p.is_dir() and not p.name.startswith("cuda_v"))
    data = {"libdir": str(inst.libdir), "other_dirs": others, "variants": [
        {"name": v.name, "cuda_major": v.cuda_major, "min_driver": v.min_driver,
         "backend": str(v.backend) if v.backend else None, "driver_ok": driver_runs(ctx.driver, v)}
        for v in variants]}
    for rule in LIBS_RULES:
        row = rule(ctx, variants)
        if row is not None:
            return Row(row.name, row.status, row.found, row.fix, row.cause, data)
    return Row("ollama_libs", "info", "no rule matched", data=data)  # unreachable: the last rule always answers


LibsRule = Callable[[Ctx, list[Variant]], "Row | None"]


def _libs_llama_server(ctx: Ctx, variants: list[Variant]) -> Row | None:
    inst = ctx.ollama
    if inst.generation != "D" or inst.libdir is None or (inst.libdir / "llama-server").exists():
        return None
    return Row("ollama_libs", "fail", f"generation D without {inst.libdir}/llama-server: no model can run",
               "reinstall Ollama: curl -fsSL https://ollama.com/install.sh | sh", cause="missing_gpu_runners")


def _libs_none(ctx: Ctx, variants: list[Variant]) -> Row | None:
    if variants:
        return None
    where = ctx.ollama.libdir
    if not ctx.gpu_seen:
        return Row("ollama_libs", "info", f"{where}: no CUDA library directory (CPU-only install; no GPU here)")
    return Row("ollama_libs", "fail", f"{where}: no CUDA library directory (cuda_v12/cuda_v13) although a GPU is "
               "present", "install the official build (curl -fsSL https://ollama.com/install.sh | sh) or the "
               "distribution's CUDA package for Ollama", cause="missing_gpu_runners")


def _libs_no_driver(ctx: Ctx, variants: list[Variant]) -> Row | None:
    if any(driver_runs(ctx.driver, v) is not None for v in variants):
        return None
    names = ", ".join(f"{v.name} (driver ≥ {v.min_driver})" for v in variants)
    return Row("ollama_libs", "info", f"ships {names}; no driver version to compare")


def _libs_too_old(ctx: Ctx, variants: list[Variant]) -> Row | None:
    if any(driver_runs(ctx.driver, v) for v in variants):
        return None
    need = min(v.min_driver for v in variants)
    return Row("ollama_libs", "fail", f"driver {ctx.driver.driver_version} is older than every CUDA variant shipped: "
               + ", ".join(f"{v.name} needs ≥ {v.min_driver}" for v in variants),
               f"install NVIDIA driver {need} or newer (e.g. sudo ubuntu-drivers install, or sudo apt install "
               f"nvidia-driver-{max(v.min_driver for v in variants)})", cause="driver_too_old")


def _libs_usable(ctx: Ctx, variants: list[Variant]) -> Row | None:
    usable = [v for v in variants if driver_runs(ctx.driver, v)]
    text = ", ".join(f"{v.name} ({'ok' if v in usable else f'needs driver ≥ {v.min_driver}'})" for v in variants)
    missing_backend = [v.name for v in usable if v.backend is None]
    if missing_backend and len(missing_backend) == len(usable):
        return Row("ollama_libs", "fail", f"{text}; but no libggml-cuda.so in {', '.join(missing_backend)}",
                   "reinstall Ollama: curl -fsSL https://ollama.com/install.sh | sh", cause="missing_gpu_runners")
    if usable[-1] is not variants[-1]:
        return Row("ollama_libs", "warn", f"{text}: Ollama will use {usable[-1].name}",
                   f"for {variants[-1].name}: install NVIDIA driver {variants[-1].min_driver} or newer")
    return Row("ollama_libs", "ok", f"{text} (driver {ctx.driver.driver_version})")


LIBS_RULES: Final[tuple[LibsRule, ...]] = (_libs_llama_server, _libs_none, _libs_no_driver, _libs_too_old,
                                           _libs_usable)


# --- checks: CPU and temporary directories ------------------------------------------------------------------------


def cpu_flags(ctx: Ctx) -> set[str] | None:
    """The x86 `flags` of the first CPU in /proc/cpuinfo; None when absent (not x86, or unreadable)."""
    for line in (ctx.read("/proc/cpuinfo") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return None


def check_avx(ctx: Ctx) -> Row:
    """AVX/AVX2/AVX-512 (generation A disables the GPU without AVX; later ones only run the CPU part slower)."""
    flags = cpu_flags(ctx)
    if flags is None:
        return Row("cpu_avx", "info", "no x86 flags in /proc/cpuinfo (not x86, or unreadable)")
    have = [f for f in ("avx", "avx2", "avx512f") if f in flags]
    data = {"flags": have}
    if "avx" in flags:
        return Row("cpu_avx", "ok", " ".join(have), data=data)
    if ctx.ollama.generation in NEEDS_AVX:
        return Row("cpu_avx", "fail", f"no AVX: Ollama {ctx.ollama.version} disables GPU inference without it",
                   "expose AVX to the VM (CPU model `host`, e.g. virsh edit: <cpu mode='host-passthrough'/>), or "
                   "upgrade Ollama to 0.5.8 or newer", cause="cpu_lacks_avx", data=data)
    return Row("cpu_avx", "warn", "no AVX: the CPU parts of a model run slowly",
               "expose AVX to the VM (CPU model `host`)", data=data)


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of /proc/self/mountinfo: the mount point and its per-mount options."""

    point: str
    options: frozenset[str]


def parse_mountinfo(text: str) -> list[Mount]:
    """Mount points (octal escapes decoded) and per-mount options (field 6, where noexec is)."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 6:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), f[4])
            out.append(Mount(point, frozenset(f[5].split(","))))
    return out


def mount_of(mounts: Iterable[Mount], path: str) -> Mount | None:
    """The mount a path lives on: the last-mounted longest mount point that contains it."""
    best: Mount | None = None
    for m in mounts:
        inside = path == m.point or path.startswith(m.point.rstrip("/") + "/")
        if inside and (best is None or len(m.point) >= len(best.point)):
            best = m
    return best


def _real_dir(ctx: Ctx, path: str) -> str:
    if ctx.root != Path("/"):
        return path
    return os.path.realpath(path)


def check_tmp(ctx: Ctx) -> Row:
    """Whether OLLAMA_TMPDIR, TMPDIR and /tmp allow executing (generation A runs its runners from there)."""
    mounts = parse_mountinfo(ctx.read("/proc/self/mountinfo") or "")
    if not mounts:
        return Row("tmp_exec", "info", "/proc/self/mountinfo cannot be read")
    dirs = {k: ctx.env[k] for k in ("OLLAMA_TMPDIR", "TMPDIR") if ctx.env.get(k)}
    dirs["/tmp"] = "/tmp"
    noexec = {k: d for k, d in dirs.items() if (m := mount_of(mounts, _real_dir(ctx, d))) and "noexec" in m.options}
    data = {"dirs": dirs, "noexec": sorted(noexec)}
    if not noexec:
        return Row("tmp_exec", "ok", ", ".join(f"{d} allows exec" for d in dirs.values()), data=data)
    used = next(k for k in ("OLLAMA_TMPDIR", "TMPDIR", "/tmp") if k in dirs)
    text = ", ".join(f"{d} is mounted noexec" for d in noexec.values())
    fix = ("sudo install -d -o ollama -g ollama /var/lib/ollama/tmp, then set OLLAMA_TMPDIR=/var/lib/ollama/tmp "
           "(e.g. in /etc/ollama-gpu/ollama-gpu.env)")
    if used in noexec and ctx.ollama.generation in EXECS_FROM_TMP:
        return Row("tmp_exec", "fail", f"{text}: this Ollama extracts and runs its runners there", fix,
                   cause="tmp_noexec", data=data)
    return Row("tmp_exec", "warn", f"{text} (harmless for this Ollama generation; generation A and a shim cached "
               "there need exec)", fix, data=data)


# --- check: the shim ----------------------------------------------------------------------------------------------


def check_shim(ctx: Ctx) -> Row:
    """The shim serve would preload (OGPU_SHIM or the cached build) and its preflight."""
    resolved, error = resolve_shim(ctx)
    if resolved is None:
        return Row("shim", "warn", f"no shim: {error}; serve runs without it (verdicts from logs and NVML)",
                   "install a C compiler (e.g. sudo apt install gcc) or set OGPU_SHIM to a prebuilt "
                   "libollama_gpu_shim.so; then: ollama-gpu shim build", data={"error": error})
    data = resolved.to_dict()
    if not resolved.ok:
        return Row("shim", "fail", f"{resolved.path} ({resolved.built.origin}) fails its preflight: "
                   f"{resolved.preflight.message}", "ollama-gpu shim build (or fix OGPU_SHIM); serve runs "
                   "without the shim until then", data=data)
    return Row("shim", "ok", f"{resolved.path} ({resolved.built.origin}), preflight passed", data=data)


def resolve_shim(ctx: Ctx) -> tuple[shim_build.Resolved | None, str]:
    """The resolved shim, or None and why (cached on the context for the probes)."""
    if ctx.shim_result is not None:
        return ctx.shim_result
    result: tuple[shim_build.Resolved | None, str]
    cache_dir = ctx.settings.cache_dir
    if cache_dir is None and ctx.settings.shim is None:
        result = (None, "no cache directory for shim builds")
    else:
        try:
            result = (shim_build.resolve(ctx.settings.shim, cache_dir or Path(tempfile.gettempdir()), ctx.env,
                                         runner=ctx.runner), "")
        except shim_build.CompileFailed as exc:
            result = (None, f"{exc}: {_one_line(exc.stderr)[:300]}")
        except (shim_build.ShimError, OSError) as exc:
            result = (None, str(exc))
    ctx.shim_result = result
    return result


# --- probes (--probe) ---------------------------------------------------------------------------------------------

# The driver probe: dlopen libcuda.so.1 by soname (as cudart and Ollama's gpu-discover do), cuInit, the devices,
# and a primary context per device (what exclusive-process mode or MIG may refuse). Prints one JSON line.
CUINIT_PROBE: Final = r"""
import ctypes, json, sys
out = {"stage": "dlopen"}
def done():
    print(json.dumps(out)); sys.exit(0)
def mapped(part):
    try:
        return sorted({l.split()[-1] for l in open("/proc/self/maps") if part in l.split()[-1]})
    except OSError:
        return []
try:
    cu = ctypes.CDLL("libcuda.so.1")
except OSError as exc:
    out["error"] = str(exc); done()
out["libcuda"] = mapped("libcuda")
def text(code):
    s = ctypes.c_char_p()
    for fn in ("cuGetErrorName", "cuGetErrorString"):
        try:
            if getattr(cu, fn)(code, ctypes.byref(s)) == 0 and s.value:
                return s.value.decode(errors="replace")
        except AttributeError:
            pass
    return ""
def call(fn, *args):
    try:
        return getattr(cu, fn)(*args)
    except AttributeError:
        return None
out["stage"] = "cuInit"
r = cu.cuInit(0)
out["cu_init"] = r
if r != 0:
    out["error"] = "cuInit returned %d %s" % (r, text(r)); done()
v = ctypes.c_int()
if call("cuDriverGetVersion", ctypes.byref(v)) == 0:
    out["driver_api"] = v.value
out["stage"] = "devices"
n = ctypes.c_int()
r = cu.cuDeviceGetCount(ctypes.byref(n))
if r != 0:
    out["error"] = "cuDeviceGetCount returned %d %s" % (r, text(r)); done()
devs = []
for i in range(n.value):
    d = ctypes.c_int()
    dev = {"ordinal": i, "get": cu.cuDeviceGet(ctypes.byref(d), i)}
    name = ctypes.create_string_buffer(256)
    if call("cuDeviceGetName", name, 256, d) == 0:
        dev["name"] = name.value.decode(errors="replace")
    mem = ctypes.c_size_t()
    if call("cuDeviceTotalMem_v2", ctypes.byref(mem), d) == 0:
        dev["total_mem"] = mem.value
    cc = [ctypes.c_int(), ctypes.c_int()]
    if call("cuDeviceGetAttribute", ctypes.byref(cc[0]), 75, d) == 0 and \
       call("cuDeviceGetAttribute", ctypes.byref(cc[1]), 76, d) == 0:
        dev["cc"] = "%d.%d" % (cc[0].value, cc[1].value)
    u = (ctypes.c_ubyte * 16)()
    if call("cuDeviceGetUuid", u, d) == 0:
        h = bytes(u).hex()
        dev["uuid"] = "GPU-%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])
    bus = ctypes.create_string_buffer(32)
    if call("cuDeviceGetPCIBusId", bus, 32, d) == 0:
        dev["pci_bus_id"] = bus.value.decode(errors="replace")
    ctx = ctypes.c_void_p()
    r = call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), d)
    dev["ctx"] = r
    if r == 0:
        call("cuCtxSetCurrent", ctx)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        if call("cuMemGetInfo_v2", ctypes.byref(free), ctypes.byref(total)) == 0:
            dev["free_mem"] = free.value
        call("cuCtxSetCurrent", None)
        if call("cuDevicePrimaryCtxRelease_v2", d) is None:
            call("cuDevicePrimaryCtxRelease", d)
    elif r is not None:
        dev["ctx_error"] = "cuDevicePrimaryCtxRetain returned %d %s" % (r, text(r))
    devs.append(dev)
out["devices"] = devs
out["stage"] = "done"
done()
"""

# The backend probe: what a runner does (ggml-backend-reg.cpp load_backend): dlopen(RTLD_NOW|RTLD_LOCAL), the
# optional ggml_backend_score, ggml_backend_init, then the registry's device count. The registry is
# `struct ggml_backend_reg { int api_version; struct ggml_backend_reg_i iface; void *context; }` with iface =
# {get_name, get_device_count, get_device, get_proc_address} (ggml-backend-impl.h); its pointers are only called
# when they point into executable memory, so a backend with another layout reports that instead of crashing.
BACKEND_PROBE: Final = r"""
import ctypes, json, os, sys
path = sys.argv[1]
out = {"stage": "dlopen", "backend": path}
def done():
    sys.stdout.flush(); sys.stderr.flush(); print(json.dumps(out)); sys.exit(0)
def executable(addr):
    try:
        for line in open("/proc/self/maps"):
            f = line.split()
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            if lo <= addr < hi:
                return "x" in f[1]
    except OSError:
        pass
    return False
try:
    lib = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
except OSError as exc:
    out["error"] = str(exc); done()
out["stage"] = "score"
try:
    score = lib.ggml_backend_score
    score.restype = ctypes.c_int
    out["score"] = score()
    if out["score"] == 0:
        out["error"] = "ggml_backend_score returned 0: not supported on this system"; done()
except AttributeError:
    out["score"] = None
out["stage"] = "init"
try:
    init = lib.ggml_backend_init
except AttributeError:
    out["error"] = "failed to find ggml_backend_init in %s" % path; done()
init.restype = ctypes.c_void_p
reg = init()
if not reg:
    out["error"] = "ggml_backend_init returned NULL"; done()
out["api_version"] = ctypes.c_int.from_address(reg).value
p = ctypes.sizeof(ctypes.c_void_p)
fns = [ctypes.c_void_p.from_address(reg + p * (1 + i)).value or 0 for i in range(2)]
out["registry_callable"] = all(executable(f) for f in fns)
if out["registry_callable"]:
    out["name"] = ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_void_p)(fns[0])(reg).decode(errors="replace")
    out["devices"] = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p)(fns[1])(reg)
out["stage"] = "done"
done()
"""

_FOUND_DEVICES = re.compile(r"ggml_cuda_init: found (\d+) CUDA devices")
_CUDA_FAILED = re.compile(r"ggml_cuda_init: failed to initialize CUDA: (.*)")


@dataclass(frozen=True, slots=True)
class ProbeRun:
    """A probe's JSON answer, its exit, its stderr, and what the shim reported from inside it."""

    result: Mapping[str, Any] | None
    returncode: int | None
    stderr: str
    events: tuple[Mapping[str, Any], ...]
    shim: str | None  # the shim that was preloaded, None when none could be


def probe_env(ctx: Ctx, shim: Path | None, socket_path: Path | None, extra_libs: Sequence[Path] = ()) -> dict[str, str]:
    """Ollama's environment with the shim preloaded and OGPU_EVENTS at our server; extra library dirs first."""
    env = {k: v for k, v in ctx.env.items() if not k.startswith("OGPU_")}
    if extra_libs:
        old = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
        env["LD_LIBRARY_PATH"] = ":".join([*map(str, extra_libs), *old])
    if shim is not None:
        rest = [p for p in re.split(r"[ :]", env.get("LD_PRELOAD", "")) if p and Path(p) != shim]
        env["LD_PRELOAD"] = " ".join([str(shim), *rest])
        if socket_path is not None:
            env["OGPU_EVENTS"] = str(socket_path)
    return env


def run_probe(ctx: Ctx, script: str, args: Sequence[str], extra_libs: Sequence[Path] = ()) -> ProbeRun:
    """Run one probe script under the shim (when it passed its preflight) with a private event server."""
    resolved, _why = resolve_shim(ctx)
    shim = resolved.path if resolved is not None and resolved.ok else None
    with tempfile.TemporaryDirectory(prefix="ogpu-doctor-") as tmp:
        sock = Path(tmp) / "events" / "probe.sock"
        server = _event_server(sock) if shim is not None else None
        try:
            done = ctx.runner([ctx.python, "-I", "-S", "-c", script, *args],
                              env=probe_env(ctx, shim, sock if server else None, extra_libs), timeout=PROBE_TIMEOUT)
            events = drain(server) if server is not None else []
        finally:
            if server is not None:
                server.close()
    return ProbeRun(_last_json(done.stdout), done.returncode, done.stderr, tuple(_event_dict(e) for e in events),
                    str(shim) if shim else None)


def _event_server(sock: Path) -> ShimEventServer | None:
    """A private event server for one probe; None (the probe runs without events) when it cannot listen."""
    try:
        return ShimEventServer(sock).start()
    except OSError:  # ShimEventsError (path too long) or a socket error
        return None


def drain(server: ShimEventServer, settle: float = EVENT_SETTLE, quiet: float = 0.3) -> list[Event]:
    """Everything the (already exited) probe sent: its connections are queued in the kernel, so poll until each
    one has ended, nothing came for `quiet` seconds, or `settle` passes."""
    events: list[Event] = []
    start = last = time.monotonic()
    while (now := time.monotonic()) < start + settle:
        batch = server.poll(0.05)
        events.extend(batch)
        if batch:
            last = now
            continue
        opened = {e.data.get("conn") for e in events if e.kind != PROCESS_END}
        ended = {e.data.get("conn") for e in events if e.kind == PROCESS_END}
        if (events and opened <= ended) or now - last >= quiet:
            break
    return [e for e in events if e.kind != PROCESS_END]


# Per-message bookkeeping, and the probe's argv (our own script, not evidence).
_BOOKKEEPING: Final = frozenset({"pid", "seq", "t_ns", "start_time", "conn", "v", "ev", "argv"})


def _event_dict(e: Event) -> dict[str, Any]:
    return {"kind": e.kind, **{k: _plain(v) for k, v in e.data.items() if k not in _BOOKKEEPING}}


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    return v


def _last_json(stdout: str) -> Mapping[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                return obj
    return None


def _probe_failure(name: str, run: ProbeRun, data: dict[str, Any]) -> Row:
    """A probe that printed no answer: it crashed, timed out or could not start."""
    if run.returncode is None:
        what = f"did not finish within {PROBE_TIMEOUT:g} s"
    elif run.returncode > 128:
        what = f"was killed by signal {run.returncode - 128}"
    else:
        what = f"exited {run.returncode}"
    return Row(name, "fail", f"the probe {what}: {_one_line(run.stderr)[-400:]}",
               "rerun `ollama-gpu doctor --probe` with OGPU_LOG_LEVEL=debug; check dmesg for the driver's "
               "messages", cause="unknown", data=data)


def check_probe_cuinit(ctx: Ctx) -> Row:
    """Live: cuInit and the device list through the driver API, under the shim."""
    gpu = ctx.gpu_seen
    run = run_probe(ctx, CUINIT_PROBE, [])
    row = _cuinit_row(run, gpu_expected=gpu)
    ctx.probes[row.name] = row
    return row


def _cuinit_row(run: ProbeRun, *, gpu_expected: bool = True) -> Row:
    name = "probe_cuinit"
    res = run.result
    data: dict[str, Any] = {"result": res, "shim": run.shim, "shim_events": list(run.events)}
    if res is None:
        return _probe_failure(name, run, data)
    if res.get("stage") == "dlopen":
        err = str(res.get("error", ""))
        if not gpu_expected:  # no GPU and no driver: nothing to load is the expected answer
            return Row(name, "info", f"dlopen(libcuda.so.1) failed: {err} (no NVIDIA GPU or driver here)", data=data)
        return Row(name, "fail", f"dlopen(libcuda.so.1) failed: {err}", advice("cpu_fallback", "libcuda_not_found"),
                   cause=classify(err, DLERROR_CAUSES, "libcuda_not_found"), data=data)
    if res.get("error"):
        err = str(res["error"])
        cause = classify(err, CUDA_ERROR_CAUSES)
        return Row(name, "fail", f"{err} (libcuda: {', '.join(res.get('libcuda') or []) or '?'})",
                   advice("cpu_fallback", cause), cause=cause, data=data)
    devs = res.get("devices") or []
    data["devices"] = len(devs)
    refused = [d for d in devs if d.get("ctx_error")]
    listing = "; ".join(f"{d.get('ordinal')}: {d.get('name', '?')} (cc {d.get('cc', '?')}, "
                        f"{d.get('pci_bus_id', '?')})" for d in devs)
    if not devs:
        return Row(name, "fail", "cuInit succeeded but no device is visible", advice("cpu_fallback",
                   "device_filter_hides_gpu"), cause="device_filter_hides_gpu", data=data)
    if refused:
        errs = "; ".join(str(d["ctx_error"]) for d in refused)
        return Row(name, "warn", f"cuInit 0, {len(devs)} device(s): {listing}; context refused: {errs} "
                   "(exclusive-process mode or MIG?)", "nvidia-smi -q -d COMPUTE (compute mode); a busy "
                   "exclusive-process GPU refuses a second context", data=data)
    return Row(name, "ok", f"cuInit 0, driver API {res.get('driver_api')}, {len(devs)} device(s): {listing}",
               data=data)


def backend_to_probe(ctx: Ctx) -> Path | None:
    """--backend, else the newest shipped libggml-cuda.so this driver can run (the newest when unknown)."""
    if ctx.backend is not None:
        return ctx.backend
    inst = ctx.ollama
    if inst.libdir is None:
        return None
    variants = [v for v in cuda_variants(inst.libdir, inst.generation) if v.backend is not None]
    usable = [v for v in variants if driver_runs(ctx.driver, v) is not False]
    pick = (usable or variants)[-1:] if variants else []
    return pick[0].backend if pick else None


def check_probe_backend(ctx: Ctx) -> Row:
    """Live: load the installation's GGML CUDA backend and register it as a runner would, under the shim."""
    backend = backend_to_probe(ctx)
    if backend is None:
        return Row("probe_backend", "info", "no libggml-cuda.so to probe (pass --backend PATH)")
    extra = [d for d in (backend.parent.parent, backend.parent) if any(d.glob("libggml-base.so*"))]
    extra = extra or [backend.parent]
    run = run_probe(ctx, BACKEND_PROBE, [str(backend)], extra)
    return _backend_row(run, backend, gpu_expected=ctx.gpu_seen)


def _backend_row(run: ProbeRun, backend: Path, *, gpu_expected: bool = True) -> Row:
    name = "probe_backend"
    res = run.result
    data: dict[str, Any] = {"backend": str(backend), "result": res, "shim": run.shim,
                            "shim_events": list(run.events), "log": _ggml_lines(run.stderr)}
    if res is None:
        return _probe_failure(name, run, data)
    err = str(res.get("error", ""))
    if res.get("stage") == "dlopen":
        cause = classify(err, DLERROR_CAUSES, "backend_load_failed")
        if cause == "libcuda_not_found" and not gpu_expected:
            return Row(name, "info", f"dlopen({backend}) failed: {err} (no NVIDIA GPU or driver here)", data=data)
        return Row(name, "fail", f"dlopen({backend}) failed: {err}", advice("cpu_fallback", cause), cause=cause,
                   data=data)
    if err:
        return Row(name, "fail", f"{backend}: {err}", advice("cpu_fallback", "backend_load_failed"),
                   cause="backend_load_failed", data=data)
    count, how = _device_count(res, run.stderr)
    data["devices"] = count
    failed = _CUDA_FAILED.search(run.stderr)
    if not count:
        why = failed[1] if failed else "no device registered"
        cause = classify(why, CUDA_ERROR_CAUSES)
        return Row(name, "fail", f"{backend} loaded and registered (api {res.get('api_version')}) with 0 devices: "
                   f"ggml_cuda_init: {why}", advice("cpu_fallback", cause), cause=cause, data=data)
    return Row(name, "ok", f"{backend}: registered, {count} CUDA device(s) ({how}); "
               + "; ".join(ln.strip() for ln in data["log"] if "Device" in ln), data=data)


def _device_count(res: Mapping[str, Any], stderr: str) -> tuple[int | None, str]:
    if res.get("registry_callable") and isinstance(res.get("devices"), int):
        return int(res["devices"]), "ggml_backend_reg_dev_count"
    m = _FOUND_DEVICES.search(stderr)
    if m:
        return int(m[1]), "from ggml_cuda_init's line"
    return (0 if _CUDA_FAILED.search(stderr) else None), "from ggml_cuda_init's line"


def _ggml_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "ggml" in ln or ln.startswith("  Device")][:20]


# --- the table of checks, running them, the verdict ---------------------------------------------------------------

Check = Callable[[Ctx], Row]

CHECKS: Final[tuple[tuple[str, Check], ...]] = (
    ("nvml", check_nvml),
    ("libcuda", check_libcuda),
    ("device_nodes", check_device_nodes),
    ("nvidia_uvm", check_uvm),
    ("persistence", check_persistence),
    ("device_filters", check_filters),
    ("ollama", check_ollama),
    ("ollama_libs", check_ollama_libs),
    ("cpu_avx", check_avx),
    ("tmp_exec", check_tmp),
    ("shim", check_shim),
)
PROBES: Final[tuple[tuple[str, Check], ...]] = (
    ("probe_cuinit", check_probe_cuinit),
    ("probe_backend", check_probe_backend),
)


def run_checks(ctx: Ctx, checks: Sequence[tuple[str, Check]] | None = None) -> list[Row]:
    """Every check in order (the probes too with ctx.probe); a check that raises is that check's failure."""
    table = list(checks if checks is not None else (*CHECKS, *(PROBES if ctx.probe else ())))
    rows = []
    for name, check in table:
        try:
            rows.append(check(ctx))
        except Exception as exc:  # one broken check must not hide the others
            rows.append(Row(name, "fail", f"the check itself failed: {type(exc).__name__}: {exc}",
                            "please report this with `ollama-gpu doctor --json` output"))
    return rows


@dataclass(frozen=True, slots=True)
class Verdict:
    """What Ollama would do on this host, in the project's vocabulary."""

    outcome: str
    cause: str
    says: str
    proven: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"outcome": self.outcome, "cause": self.cause, "says": self.says, "proven": self.proven,
                "advice": advice(self.outcome, self.cause)}


VerdictRule = Callable[[Ctx, Sequence[Row]], "Verdict | None"]


def _forced_cpu(ctx: Ctx, rows: Sequence[Row]) -> Verdict | None:
    if any(r.cause == "operator_forced_cpu" for r in rows):
        return Verdict("cpu_expected", "operator_forced_cpu", "the configuration chooses the CPU", False)
    return None


def _no_gpu(ctx: Ctx, rows: Sequence[Row]) -> Verdict | None:
    if ctx.gpu_seen or any(r.cause == "driver_library_mismatch" for r in rows):
        return None
    return Verdict("cpu_expected", "none", "no NVIDIA GPU or driver on this host: Ollama runs on the CPU", False)


def _blocked(ctx: Ctx, rows: Sequence[Row]) -> Verdict | None:
    row = next((r for r in rows if r.cause and r.status in ("fail", "warn")), None)
    if row is None:
        return None
    return Verdict("cpu_fallback", row.cause or "unknown", f"a GPU is present but {row.name}: {row.found}",
                   row.name.startswith("probe_"))


def _proven(ctx: Ctx, rows: Sequence[Row]) -> Verdict | None:
    probes = [r for r in rows if r.name.startswith("probe_") and r.status != "info"]
    if probes and all(r.status == "ok" for r in probes):
        return Verdict("gpu", "none", "the probes initialised CUDA and the GGML backend registered the GPU", True)
    return None


def _expected(ctx: Ctx, rows: Sequence[Row]) -> Verdict | None:
    return Verdict("gpu", "none", "nothing stands in the way of the GPU (not proven: run with --probe)", False)


VERDICT_RULES: Final[tuple[VerdictRule, ...]] = (_forced_cpu, _no_gpu, _blocked, _proven, _expected)


def verdict(ctx: Ctx, rows: Sequence[Row]) -> Verdict:
    """The first rule that decides."""
    for rule in VERDICT_RULES:
        v = rule(ctx, rows)
        if v is not None:
            return v
    raise AssertionError("the last verdict rule always decides")


def exit_code(rows: Sequence[Row]) -> int:
    """0 when no check failed, 1 when one did."""
    return 1 if any(r.status == "fail" for r in rows) else 0


# --- output -------------------------------------------------------------------------------------------------------

MARKS: Final = {"ok": "✓", "warn": "!", "fail": "✗", "info": "·"}
ASCII_MARKS: Final = {"ok": "ok", "warn": "!", "fail": "X", "info": "-"}


def marks_for(encoding: str | None) -> Mapping[str, str]:
    """Unicode marks when the output can carry them, ASCII otherwise."""
    try:
        "".join(MARKS.values()).encode(encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return ASCII_MARKS
    return MARKS


def render_text(rows: Sequence[Row], v: Verdict, user: str, marks: Mapping[str, str] = MARKS) -> str:
    """The table an operator reads: a mark, the check, what was found, and the fix under each failed check."""
    width = max(len(r.name) for r in rows) if rows else 8
    out = [f"ollama-gpu doctor (service user: {user})"]
    for r in rows:
        out.append(f"{marks[r.status]:>2} {r.name:<{width}}  {r.found}")
        if r.fix and r.status in ("fail", "warn"):
            out.append(f"   {'':<{width}}  fix: {r.fix}")
    out.append("")
    out.append(f"verdict: {v.outcome} (cause: {v.cause}) — {v.says}")
    if v.cause != "none":
        out.append(f"what to do: {advice(v.outcome, v.cause)}")
    return "\n".join(out) + "\n"


def render_json(rows: Sequence[Row], v: Verdict, ctx: Ctx) -> str:
    """One JSON object."""
    obj = {"user": ctx.user, "probe": ctx.probe, "checks": [r.to_dict() for r in rows], "verdict": v.to_dict(),
           "exit_code": exit_code(rows)}
    return json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n"


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
