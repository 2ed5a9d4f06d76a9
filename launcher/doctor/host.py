"""Doctor's host checks: NVML, libcuda, device nodes, modules, filters, CPU flags, /tmp mounts, the shim."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from launcher import driverlib, shim_build
from launcher.doctor.context import VERSION_TIMEOUT, Account, Ctx, Row, _one_line
from launcher.evidence import HIDE_ALL_VALUES
from launcher.nvml import Gpu
from launcher.remedy_text import advice
from launcher.vocabulary import FILTER_VARS

# Variables that select devices or force a library: the operator's choice (DESIGN.md contract 3).
FILTER_KEYS: Final = (*FILTER_VARS, "NVIDIA_VISIBLE_DEVICES", "GGML_VK_VISIBLE_DEVICES", "OLLAMA_LLM_LIBRARY",
                      "OLLAMA_VULKAN", "HSA_OVERRIDE_GFX_VERSION", "OLLAMA_INTEL_GPU", "GGML_BACKEND_PATH")
# Generations whose GPU path needs AVX (reference A, §7.5) or executes from OLLAMA_TMPDIR (A.1, A.3).
NEEDS_AVX: Final = frozenset({"0", "A"})
EXECS_FROM_TMP: Final = frozenset({"0", "A"})


# --- check: NVML and driver ----------------------------------------------------------------------------------------

# Fixes for the NVML failures that are causes (their codes in launcher.error_codes.NVML).
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
        fix = f"if you want the GPU: unset {' '.join(keys)} (in the unit: systemctl edit ollama)"
        unlisted = [k for k in keys if k not in ctx.settings.may_override]
        if unlisted:
            fix += f", or list them in OGPU_MAY_OVERRIDE={','.join(sorted({*ctx.settings.may_override, *keys}))}"
        else:  # never ask for what is set already (issue 15)
            fix += f"; OGPU_MAY_OVERRIDE already lists {', '.join(keys)}: `ollama-gpu serve` in mode auto unsets them"
        return Row("device_filters", "warn", f"{text}: CPU chosen by configuration", fix, cause="operator_forced_cpu",
                   data=data)
    return Row("device_filters", "info", f"{text} (the operator's choice: ollama-gpu never changes them unless "
               "listed in OGPU_MAY_OVERRIDE)", data=data)


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
