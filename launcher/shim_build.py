"""Compile the CUDA shim with the system's C compiler, cache it by content, and preflight it (DESIGN.md contract 2)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from launcher.config import package_dir
from launcher.log import get as get_logger

log = get_logger(__name__)

SHIM_NAME: Final = "libollama_gpu_shim.so"
PROTOCOL_VERSION: Final = 1  # shim event protocol; part of the cache key
BUILD_FILE: Final = "BUILD.txt"
SOURCE_SUFFIXES: Final = (".c", ".h", ".map", ".txt")  # what the package ships from shim/; all of it is hashed
COMPILERS: Final = ("cc", "gcc", "clang")

# Used until shim/BUILD.txt says otherwise. Paths are relative to the shim source directory (cc runs there).
DEFAULT_CFLAGS: Final = (
    "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden",
    "-Wl,--version-script=exports.map",
)
DEFAULT_LIBS: Final = ("-ldl", "-lpthread")

COMPILE_TIMEOUT: Final = 180.0
PROBE_TIMEOUT: Final = 20.0
STALE_TEMP_SECONDS: Final = 600.0

# The dlopen/dlsym probe runs in our own interpreter (present wherever we are, no compiler needed, so a prebuilt
# OGPU_SHIM can be checked on a host without cc). ctypes reaches dlopen/dlsym/dlerror through libc's PLT, i.e.
# through the shim's interposed versions: a name the shim watches (libggml*) that is missing, a real library,
# symbol lookups on a handle and on the global scope.
_PROBE: Final = r"""
import ctypes, json, os, sys
shim = os.path.realpath(sys.argv[1])
out = {"loaded": any(line.rstrip("\n").endswith(" " + shim) for line in open("/proc/self/maps"))}
libc = ctypes.CDLL("libc.so.6")
out["dlsym"] = bool(ctypes.cast(libc.getpid, ctypes.c_void_p).value)
out["dlsym_default"] = bool(ctypes.cast(ctypes.CDLL(None).strlen, ctypes.c_void_p).value)
missing = "libggml-ogpu-preflight-missing.so"
try:
    ctypes.CDLL(missing)
    out["dlerror"] = None
except OSError as exc:
    out["dlerror"] = str(exc)
out["dlerror_ok"] = bool(out["dlerror"]) and missing in out["dlerror"]
print(json.dumps(out))
"""


# --- errors: `str()` is the one line the operator sees ---------------------------------------------------------


class ShimError(Exception):
    """The shim cannot be provided; serve runs without it and reports this line once."""


class NoCompiler(ShimError):
    """No C compiler on this host (or $CC names one that is not there)."""


class CompileFailed(ShimError):
    """The compiler ran and failed; `command` and `stderr` are shown verbatim below the line."""

    def __init__(self, line: str, command: Sequence[str], stderr: str) -> None:
        super().__init__(line)
        self.command = tuple(command)
        self.stderr = stderr


class PreflightFailed(ShimError):
    """The library does not load cleanly; `preflight` holds every check with the loader's text."""

    def __init__(self, preflight: Preflight) -> None:
        super().__init__(f"shim preflight failed for {preflight.shim}: {preflight.message}")
        self.preflight = preflight


class Unsupported(ShimError):
    """The shim needs glibc; this host's C library is another (musl)."""


# --- running programs: one choke point a supervisor can replace with its child registry -------------------------


@dataclass(frozen=True, slots=True)
class Completed:
    """A finished program. `returncode` None: killed at its timeout. Exec failures are 127 with the reason."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str


class Runner(Hashable, Protocol):
    """Runs one program to completion with stdin closed, capturing both streams as text (hashable: a cache key)."""

    def __call__(
        self, argv: Sequence[str], *, env: Mapping[str, str], timeout: float, cwd: Path | None = None
    ) -> Completed: ...


def run_process(
    argv: Sequence[str], *, env: Mapping[str, str], timeout: float, cwd: Path | None = None
) -> Completed:
    """The default Runner: subprocess.run with a timeout; never raises for the program's own failure."""
    try:
        proc = subprocess.run(
            list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return Completed(tuple(argv), None, _text(exc.stdout), _text(exc.stderr))
    except OSError as exc:
        return Completed(tuple(argv), 127, "", f"{argv[0]}: {exc.strerror or exc}")
    return Completed(tuple(argv), proc.returncode, _text(proc.stdout), _text(proc.stderr))


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", "replace")


# --- the compiler ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Compiler:
    """A C compiler: the argv prefix to run it, and what identifies its output (for the cache key)."""

    argv: tuple[str, ...]
    path: str  # realpath of the executable
    version: str  # `--version` output
    machine: str  # `-dumpmachine`, the target triple


def find_compiler(
    env: Mapping[str, str], runner: Runner = run_process, os_release_root: Path = Path("/"),
    cache_dir: Path | None = None,
) -> Compiler:
    """`$CC` if set (it may carry arguments, e.g. `ccache gcc`), else the first of cc, gcc, clang on `PATH`.
    With `cache_dir`, a compiler already identified (same binary: inode, size, mtime) is not run again."""
    path_var = env.get("PATH", os.defpath)
    wanted = env.get("CC", "").strip()
    if wanted:
        argv = shlex.split(wanted)
        exe = shutil.which(argv[0], path=path_var)
        if exe is None:
            raise NoCompiler(f"CC={wanted!r} is not an executable on PATH; unset CC or fix it")
        return _identify((exe, *argv[1:]), dict(env), runner, cache_dir)
    for name in COMPILERS:
        exe = shutil.which(name, path=path_var)
        if exe is not None:
            return _identify((exe,), dict(env), runner, cache_dir)
    raise NoCompiler(no_compiler_message(os_release_root))


def _identify(argv: tuple[str, ...], env: dict[str, str], runner: Runner, cache_dir: Path | None = None) -> Compiler:
    real = os.path.realpath(argv[0])
    ident = file_identity(real)
    record = cache_dir / "compilers" / f"{_digest([list(argv), real, ident])}.json" if cache_dir and ident else None
    if record is not None:
        known = read_record(record)
        if known is not None and known.get("argv") == list(argv) and known.get("identity") == ident:
            return Compiler(argv, real, str(known.get("version", "")), str(known.get("machine", "")))
    compiler = _identify_cached(argv, real, ident[2] if ident else 0, tuple(sorted(env.items())), runner)
    if record is not None:
        write_record(record, {"argv": list(argv), "identity": ident, "version": compiler.version,
                              "machine": compiler.machine})
    return compiler


def file_identity(path: str | Path) -> list[int] | None:
    """(inode, size, mtime ns) of a file, None when it cannot be read: what tells a changed binary from the same."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:24]


def read_record(path: Path) -> dict[str, Any] | None:
    """A small JSON record of ours, None when absent, unreadable, or writable by anyone but us (file or directory)."""
    try:
        for q in (path, path.parent):
            st = q.lstat()
            if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o022 or stat.S_ISLNK(st.st_mode):
                return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_record(path: Path, data: Mapping[str, Any]) -> None:
    """Write a record atomically; a cache that cannot be written is only slower, never an error."""
    try:
        _make_private_dirs(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except (OSError, ShimError) as exc:
        log.debug("cache_record_not_written", path=str(path), error=str(exc))


@functools.lru_cache(maxsize=8)
def _identify_cached(
    argv: tuple[str, ...], real: str, _mtime: int, env_items: tuple[tuple[str, str], ...], runner: Runner
) -> Compiler:
    """Probe a compiler once per process (and again if its binary changes)."""
    env = dict(env_items)
    version = runner([*argv, "--version"], env=env, timeout=30.0)
    if version.returncode != 0:
        raise NoCompiler(f"{' '.join(argv)} --version failed: {_one_line(version.stderr) or version.returncode}")
    machine = runner([*argv, "-dumpmachine"], env=env, timeout=30.0)
    return Compiler(argv=argv, path=real, version=version.stdout.strip(), machine=machine.stdout.strip())


def read_os_release(root: Path = Path("/")) -> dict[str, str]:
    """`/etc/os-release` (or `/usr/lib/os-release`) under `root` as a dict; empty when neither is readable."""
    for rel in ("etc/os-release", "usr/lib/os-release"):
        try:
            text = (root / rel).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        out: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key.strip()):
                parts = shlex.split(value, comments=False) if value.strip() else [""]
                out[key.strip()] = parts[0] if parts else ""
        return out
    return {}


# (os-release ID or ID_LIKE words, how to get a compiler there)
_INSTALL_HINTS: Final = (
    (("debian", "ubuntu"), "install one with `apt-get install gcc` (or build-essential)"),
    (("fedora", "rhel", "centos", "rocky", "almalinux", "amzn", "ol"), "install one with `dnf install gcc`"),
    (("arch", "manjaro", "endeavouros"), "install one with `pacman -S gcc`"),
    (("suse", "opensuse", "sles", "opensuse-leap", "opensuse-tumbleweed"), "install one with `zypper install gcc`"),
)


def no_compiler_message(root: Path = Path("/")) -> str:
    """The one line for a host without cc: what to install on this distribution, or that it is not supported."""
    info = read_os_release(root)
    words = {info.get("ID", "").lower(), *info.get("ID_LIKE", "").lower().split()} - {""}
    name = info.get("PRETTY_NAME") or info.get("NAME") or "this system"
    if "alpine" in words:
        return (f"no C compiler found, and the shim is not supported on {name} (musl libc): "
                "ollama-gpu runs without it")
    fallback = "set OGPU_SHIM to a prebuilt libollama_gpu_shim.so, or ollama-gpu runs without the shim"
    for ids, hint in _INSTALL_HINTS:
        if words & set(ids):
            return f"no C compiler found (tried $CC, cc, gcc, clang) on {name}: {hint}; or {fallback}"
    return f"no C compiler found (tried $CC, cc, gcc, clang): install gcc or clang; or {fallback}"


def libc_is_glibc() -> bool:
    """Whether this interpreter runs on glibc (the only C library the shim supports)."""
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


# --- sources and flags -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BuildSpec:
    """What to compile, from shim/BUILD.txt; paths relative to the source directory."""

    sources: tuple[str, ...]
    cflags: tuple[str, ...] = DEFAULT_CFLAGS
    libs: tuple[str, ...] = DEFAULT_LIBS


def shim_source_dir() -> Path:
    """The shim's C sources as installed with the package (`shim/` in the repository, for a bare checkout)."""
    return package_dir("launcher._shim", "shim")


def read_build_spec(src_dir: Path) -> BuildSpec:
    """Parse `BUILD.txt` (`sources:`, `cflags:`, `libs:` lines, `#` comments); without it, every *.c, default flags."""
    default_sources = tuple(sorted(p.name for p in src_dir.glob("*.c")))
    try:
        text = (src_dir / BUILD_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return BuildSpec(sources=default_sources)
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("sources", "cflags", "libs"):
            fields.setdefault(key.strip().lower(), []).extend(shlex.split(value))
    return BuildSpec(
        sources=tuple(fields.get("sources", default_sources)),
        cflags=tuple(fields.get("cflags", DEFAULT_CFLAGS)),
        libs=tuple(fields.get("libs", DEFAULT_LIBS)),
    )


def cache_key(src_dir: Path, spec: BuildSpec, compiler: Compiler) -> str:
    """Hash of every shipped source file, the compiler's identity, the flags and the protocol version."""
    files = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(src_dir.iterdir())
        if p.is_file() and p.suffix in SOURCE_SUFFIXES
    }
    blob = json.dumps(
        {
            "protocol": PROTOCOL_VERSION,
            "files": files,
            "spec": [spec.sources, spec.cflags, spec.libs],
            "compiler": [compiler.argv[1:], compiler.path, compiler.version, compiler.machine],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


# --- building ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Built:
    """A shim library ready to preflight: where it is and how we got it ('cache', 'built' or 'prebuilt')."""

    path: Path
    origin: str
    key: str | None = None


def build(
    cache_dir: Path,
    env: Mapping[str, str],
    *,
    src_dir: Path | None = None,
    runner: Runner = run_process,
    os_release_root: Path = Path("/"),
) -> Built:
    """The cached shim for these sources and this compiler, compiling it first on a miss.

    `<cache_dir>/shim/<key>/libollama_gpu_shim.so`. The compiler writes a temporary file in that directory, which
    is then renamed over the final name, so concurrent builds are safe (each rename installs a complete file).
    """
    compiler = find_compiler(env, runner, os_release_root, cache_dir)
    src = src_dir if src_dir is not None else shim_source_dir()
    spec = read_build_spec(src)
    if not spec.sources:
        raise ShimError(f"no shim sources (*.c) in {src}")
    key = cache_key(src, spec, compiler)
    out_dir = cache_dir / "shim" / key
    final = out_dir / SHIM_NAME
    if final.is_file():
        _check_owned(final)
        log.debug("shim_cache_hit", path=str(final), key=key)
        return Built(final, "cache", key)
    _make_private_dirs(out_dir)
    _remove_stale_temps(out_dir)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{SHIM_NAME}.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    command = [*compiler.argv, *spec.cflags, "-o", str(tmp), *spec.sources, *spec.libs]
    started = time.monotonic()
    try:
        done = runner(command, env=dict(env), timeout=COMPILE_TIMEOUT, cwd=src)
        if done.returncode != 0:
            why = "timed out" if done.returncode is None else f"exited {done.returncode}"
            raise CompileFailed(f"compiling the shim failed ({compiler.argv[0]} {why})", command, done.stderr)
        tmp.chmod(0o755)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(out_dir)
    log.info("shim_built", path=str(final), key=key, compiler=compiler.path,
             seconds=round(time.monotonic() - started, 3))
    return Built(final, "built", key)


def install_copy(src: Path, dest: Path) -> Path:
    """Copy `src` to `dest` atomically (temporary file in dest's directory, then rename); `dest` may be a dir."""
    target = dest / SHIM_NAME if dest.is_dir() else dest
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out)
            out.flush()
            os.fchmod(out.fileno(), 0o755)
            os.fsync(out.fileno())
        Path(tmp_name).replace(target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp_name).unlink()
    return target


def _make_private_dirs(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for p in (path, path.parent):
        st = p.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ShimError(f"{p} is not a directory of ours; remove it or choose another cache directory")
        if stat.S_IMODE(st.st_mode) & 0o022:
            p.chmod(0o700)


def _check_owned(path: Path) -> None:
    """A cached library goes into every process: refuse one that someone else could have written."""
    for p in (path, path.parent):
        st = p.lstat()
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o022:
            raise ShimError(f"{p} is not owned by us or is writable by others; remove {path.parent}")


def _remove_stale_temps(path: Path) -> None:
    """Temporary files of builds that were killed long ago (a running build's file is younger)."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for p in path.glob(f".{SHIM_NAME}.*.tmp"):
        with contextlib.suppress(OSError):
            if p.lstat().st_mtime < cutoff:
                p.unlink()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- preflight ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One preflight step: its name, whether it passed, and the loader's (or our) text when not."""

    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Preflight:
    """The result of test-loading a shim; `message` is the first failure's text ('' when ok)."""

    shim: Path
    checks: tuple[Check, ...] = field(default=())
    reused: bool = False  # the record of an identical passed preflight (`preflight_reusing`), not a new run

    @property
    def ok(self) -> bool:
        """All checks passed."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def message(self) -> str:
        """The first failing check's text."""
        return next((c.detail for c in self.checks if not c.ok), "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, for `shim path --json` and status."""
        return {
            "shim": str(self.shim), "ok": self.ok, "message": self.message, "reused": self.reused,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


def preflight_env(base: Mapping[str, str], shim: Path) -> dict[str, str]:
    """The probes' environment: ours minus OGPU_* (no event socket, no shim debug) with only the shim preloaded."""
    env = {k: v for k, v in base.items() if not k.startswith("OGPU_") and k not in ("LD_PRELOAD", "LD_AUDIT")}
    env.update({"LD_PRELOAD": str(shim), "LD_BIND_NOW": "1", "LC_ALL": "C"})
    return env


def preflight(
    shim: Path,
    env: Mapping[str, str],
    *,
    runner: Runner = run_process,
    true_program: str = "/bin/true",
    python: str = sys.executable,
) -> Preflight:
    """Test-load `shim` as DESIGN.md contract 2 says; never raises for a bad library, returns the loader's text.

    1. `LD_BIND_NOW=1 LD_PRELOAD=<shim> /bin/true`: must exit 0 and print nothing. ld.so only *warns* about a
       preload it cannot load (wrong ELF class, not an ELF, missing file) and runs the program anyway, so
       any output on stderr counts as failure; an unresolved symbol under LD_BIND_NOW exits 127.
    2. The dlopen/dlsym probe in our interpreter (see _PROBE): the shim is mapped, dlopen and dlsym work through
       it, and a failed dlopen still gives the caller the loader's own dlerror() text.
    """
    checks: list[Check] = []
    text = str(shim)
    if not shim.is_absolute() or re.search(r"[\s:]", text):
        checks.append(Check("path", False, f"{text}: LD_PRELOAD needs an absolute path without spaces or colons"))
        return Preflight(shim, tuple(checks))
    penv = preflight_env(env, shim)
    true_exe = true_program if Path(true_program).exists() else (shutil.which("true") or true_program)
    done = runner([true_exe], env=penv, timeout=PROBE_TIMEOUT)
    checks.append(_judge("bind_now", done))
    if not checks[-1].ok:
        return Preflight(shim, tuple(checks))
    done = runner([python, "-I", "-S", "-c", _PROBE, text], env=penv, timeout=PROBE_TIMEOUT)
    check = _judge("dlopen_dlsym", done, quiet=False)
    if check.ok:
        check = _judge_probe(done.stdout)
    checks.append(check)
    return Preflight(shim, tuple(checks))


def preflight_key(shim: Path, env: Mapping[str, str], python: str = sys.executable,
                  true_program: str = "/bin/true") -> dict[str, Any] | None:
    """What a passed preflight depends on: the shim file, the probes (their code and the programs run), the C
    library and dynamic loader this machine maps (read from our own process), and the loader path. None when one
    of them cannot be identified (then the preflight simply runs)."""
    parts: dict[str, Any] = {"probe": _digest([_PROBE, PROTOCOL_VERSION]),
                             "ld_library_path": env.get("LD_LIBRARY_PATH", "")}
    libs = _runtime_libs()
    if libs is None:
        return None
    for name, path in (("shim", str(shim)), ("python", os.path.realpath(python)),
                       ("true", os.path.realpath(true_program)), *libs):
        ident = file_identity(path)
        if ident is None:
            return None
        parts[name] = [path, ident]
    return parts


def _runtime_libs() -> list[tuple[str, str]] | None:
    """libc and the dynamic loader as mapped into this process (`/proc/self/maps`); None unless both are found."""
    found: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/maps").read_text().splitlines():
            fields = line.split(maxsplit=5)
            path = fields[5] if len(fields) == 6 else ""
            base = os.path.basename(path)
            if base.startswith(("libc.so", "libc-")):
                found.setdefault("libc", path)
            elif base.startswith(("ld-linux", "ld64.so")):
                found.setdefault("ld.so", path)
    return sorted(found.items()) if len(found) == 2 else None


def preflight_reusing(shim: Path, env: Mapping[str, str], cache_dir: Path, *,
                      runner: Runner = run_process) -> Preflight:
    """`preflight`, or the record of one that passed with exactly these inputs (`preflight_key`): a serve start on
    an unchanged machine then runs no probe. Failures are never recorded: they are tested again every start."""
    key = preflight_key(shim, env)
    record = cache_dir / "preflight" / f"{_digest(str(shim))}.json" if key is not None else None
    if record is not None:
        known = read_record(record)
        if known is not None and known.get("key") == key:
            return Preflight(shim, (Check("bind_now", True), Check("dlopen_dlsym", True)), reused=True)
    result = preflight(shim, env, runner=runner)
    if result.ok and record is not None:
        write_record(record, {"key": key})
    return result


def _judge(name: str, done: Completed, *, quiet: bool = True) -> Check:
    if done.returncode is None:
        return Check(name, False, f"{done.argv[0]} did not finish within {PROBE_TIMEOUT:g} s with the shim loaded")
    err = _one_line(done.stderr)
    if done.returncode != 0:
        return Check(name, False, err or f"{done.argv[0]} exited {done.returncode} with the shim loaded")
    if quiet and err:
        return Check(name, False, err)
    return Check(name, True)


def _judge_probe(stdout: str) -> Check:
    try:
        out = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Check("dlopen_dlsym", False, f"probe printed no result: {_one_line(stdout)!r}")
    if not out.get("loaded"):
        return Check("dlopen_dlsym", False, "the shim was not mapped into the probe process")
    if not (out.get("dlsym") and out.get("dlsym_default")):
        return Check("dlopen_dlsym", False, "dlsym through the shim did not find libc symbols")
    if not out.get("dlerror_ok"):
        return Check("dlopen_dlsym", False, f"a failed dlopen lost the loader's message: {out.get('dlerror')!r}")
    return Check("dlopen_dlsym", True)


def _one_line(text: str) -> str:
    """Loader output as one line (ld.so messages are usually one already)."""
    return " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())


# --- what serve uses ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resolved:
    """The shim serve would put into LD_PRELOAD, and its preflight (use it only when `ok`)."""

    built: Built
    preflight: Preflight

    @property
    def path(self) -> Path:
        """The library's path."""
        return self.built.path

    @property
    def ok(self) -> bool:
        """The preflight passed: the shim may go into Ollama's environment."""
        return self.preflight.ok

    def require(self) -> Path:
        """The path, or PreflightFailed with the loader's text."""
        if not self.ok:
            raise PreflightFailed(self.preflight)
        return self.path

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"path": str(self.path), "origin": self.built.origin, "key": self.built.key,
                "preflight": self.preflight.to_dict()}


def resolve(
    prebuilt: Path | None,
    cache_dir: Path,
    env: Mapping[str, str],
    *,
    src_dir: Path | None = None,
    runner: Runner = run_process,
    os_release_root: Path = Path("/"),
    reuse_preflight: bool = False,
) -> Resolved:
    """The prebuilt shim (OGPU_SHIM) or the cached build, preflighted (`reuse_preflight`: a passed preflight of the
    same inputs is reused, for `serve`; the diagnostic commands always test afresh).

    Raises ShimError when there is no library to test (no compiler, compile failure, musl, OGPU_SHIM missing);
    a library that fails its preflight comes back with `ok` False and the loader's text in `preflight.message`.
    """
    if prebuilt is not None:
        if not prebuilt.is_file():
            raise ShimError(f"OGPU_SHIM={prebuilt} is not a file")
        built = Built(prebuilt, "prebuilt")
    else:
        if not libc_is_glibc():
            raise Unsupported("the shim needs glibc and this system's C library is another (musl?): "
                              "ollama-gpu runs without it")
        built = build(cache_dir, env, src_dir=src_dir, runner=runner, os_release_root=os_release_root)
    if reuse_preflight:
        return Resolved(built, preflight_reusing(built.path, env, cache_dir, runner=runner))
    return Resolved(built, preflight(built.path, env, runner=runner))
