"""`systemd install`/`uninstall`: write the unit (and an env file if absent) under a root, record it, undo exactly it.

What install wrote is recorded in a manifest beside the env file (each file's SHA-256 and each directory it
created); uninstall removes a file only while it is unchanged, then the manifest, then the directories it created
if they are empty. A plan is computed first, so `--dry-run` prints exactly what a real run writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from launcher.config import SPECS
from launcher.systemd_units import render_dropin, render_service

UNIT_DIR: Final = Path("etc/systemd/system")
DROPIN: Final = UNIT_DIR / "ollama.service.d" / "ollama-gpu.conf"
SERVICE: Final = UNIT_DIR / "ollama-gpu.service"
ENV_FILE: Final = Path("etc/ollama-gpu/ollama-gpu.env")
MANIFEST: Final = Path("etc/ollama-gpu/systemd-install.json")
ENABLED_LINK: Final = UNIT_DIR / "multi-user.target.wants" / "ollama-gpu.service"
FILE_MODE: Final = 0o644
DIR_MODE: Final = 0o755


class InstallError(Exception):
    """Install or uninstall cannot go on; `str()` is the one line for the operator."""


@dataclass(frozen=True, slots=True)
class FileWrite:
    """One file to write: its path under the root, its text and mode."""

    rel: Path
    text: str
    mode: int = FILE_MODE


@dataclass(slots=True)
class Plan:
    """Everything one run would do, in order: directories to create, files to write or remove, then commands."""

    mkdirs: list[Path] = field(default_factory=list)
    writes: list[FileWrite] = field(default_factory=list)
    removes: list[Path] = field(default_factory=list)
    kept: list[tuple[Path, str]] = field(default_factory=list)  # (file, why it stays)
    rmdirs: list[Path] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)


def sha256(text: str | bytes) -> str:
    """Hex SHA-256 of a text (UTF-8) or bytes."""
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def shown(rel: Path) -> str:
    """A path as it is on the target system (`/etc/...`)."""
    return "/" + rel.as_posix()


def env_template() -> str:
    """The env file written when none exists: every setting commented out with its doc and default."""
    lines = ["# /etc/ollama-gpu/ollama-gpu.env: settings of ollama-gpu, read by ollama-gpu itself (not by systemd).",
             "# Uncomment a line to change a default. Keys that do not start with OGPU_ (OLLAMA_HOST, ...) are",
             "# passed to Ollama's environment. Written by `ollama-gpu systemd install`; uninstall removes it only",
             "# while it is unchanged.", ""]
    for spec in SPECS:
        lines += [f"# {spec.key}: {spec.doc}", f"#{spec.key}={spec.default}", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Manifest:
    """What earlier installs wrote: file (as shown) -> sha256 of the text written, and the directories created."""

    files: dict[str, str]
    dirs: list[str]


def read_manifest(root: Path) -> Manifest:
    """The manifest of earlier installs under `root`, or an empty one."""
    path = root / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Manifest({}, [])
    except (OSError, ValueError) as exc:
        raise InstallError(f"{shown(MANIFEST)} cannot be read ({exc}); remove it by hand") from None
    files = data.get("files") if isinstance(data, dict) else None
    dirs = data.get("dirs") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not isinstance(dirs, list):
        raise InstallError(f"{shown(MANIFEST)} is not an ollama-gpu install manifest; remove it by hand")
    return Manifest({str(k): str(v) for k, v in files.items()}, [str(d) for d in dirs])


def _missing_dirs(root: Path, rels: Iterable[Path]) -> list[Path]:
    """Parent directories of `rels` that do not exist under `root`, outermost first."""
    out: list[Path] = []
    for rel in rels:
        for parent in reversed(rel.parents):
            if parent != Path(".") and not (root / parent).exists() and parent not in out:
                out.append(parent)
    return out


def plan_install(root: Path, exec_path: Path, *, standalone: bool, stop_grace: float, ready_timeout: float) -> Plan:
    """What `install` writes under `root`: the unit, the env file if absent, and the manifest."""
    manifest = read_manifest(root)
    files = dict(manifest.files)
    unit = FileWrite(SERVICE, render_service(exec_path, stop_grace, ready_timeout)) if standalone else \
        FileWrite(DROPIN, render_dropin(exec_path, stop_grace, ready_timeout))
    target = root / unit.rel
    if (target.exists() or target.is_symlink()) and shown(unit.rel) not in files:
        raise InstallError(f"{shown(unit.rel)} exists and was not written by `ollama-gpu systemd install`: "
                           "move it away first")
    writes = [unit]
    if not (root / ENV_FILE).exists():
        writes.append(FileWrite(ENV_FILE, env_template()))
    for write in writes:
        files[shown(write.rel)] = sha256(write.text)
    mkdirs = _missing_dirs(root, [w.rel for w in writes] + [MANIFEST])
    dirs = manifest.dirs + [shown(d) for d in mkdirs]
    doc = {"written_by": "ollama-gpu systemd install", "files": dict(sorted(files.items())), "dirs": dirs}
    writes.append(FileWrite(MANIFEST, json.dumps(doc, indent=2) + "\n"))
    commands = ["systemctl daemon-reload",
                "systemctl enable --now ollama-gpu.service" if standalone else "systemctl restart ollama.service"]
    return Plan(mkdirs=mkdirs, writes=writes, commands=commands)


def plan_uninstall(root: Path) -> Plan:
    """What `uninstall` removes under `root`: recorded files still as written, the manifest, then empty dirs."""
    if not (root / MANIFEST).exists():
        return Plan()
    manifest = read_manifest(root)
    files = manifest.files
    if shown(SERVICE) in files and (root / ENABLED_LINK).is_symlink():
        raise InstallError("ollama-gpu.service is still enabled: run `systemctl disable --now ollama-gpu.service` "
                           "first")
    plan = Plan()
    for name, digest in sorted(files.items()):
        rel = Path(name.lstrip("/"))
        path = root / rel
        if not path.is_file() or path.is_symlink():
            continue
        if sha256(path.read_bytes()) == digest:
            plan.removes.append(rel)
        else:
            plan.kept.append((rel, "changed since install"))
    plan.removes.append(MANIFEST)
    for name in reversed(manifest.dirs):
        plan.rmdirs.append(Path(name.lstrip("/")))
    plan.commands = ["systemctl daemon-reload"]
    if shown(DROPIN) in files:
        plan.commands.append("systemctl restart ollama.service")
    return plan


def apply(root: Path, plan: Plan) -> list[str]:
    """Carry the plan out; returns one line per change made."""
    done: list[str] = []
    for rel in plan.mkdirs:
        (root / rel).mkdir(mode=DIR_MODE)
        os.chmod(root / rel, DIR_MODE)  # not narrowed by the umask
        done.append(f"created {shown(rel)}/")
    for write in plan.writes:
        path = root / write.rel
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(write.text, encoding="utf-8")
        os.chmod(tmp, write.mode)
        tmp.replace(path)
        done.append(f"wrote {shown(write.rel)}")
    for rel in plan.removes:
        (root / rel).unlink(missing_ok=True)
        done.append(f"removed {shown(rel)}")
    for rel in plan.rmdirs:
        path = root / rel
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()
            done.append(f"removed {shown(rel)}/")
    return done


def describe(plan: Plan) -> str:
    """The dry run's text: each directory, then each file's exact content between markers, then removals."""
    out: list[str] = [f"mkdir {shown(rel)} (mode {DIR_MODE:04o})" for rel in plan.mkdirs]
    for write in plan.writes:
        out.append(f"--- {shown(write.rel)} (mode {write.mode:04o})")
        out.append(write.text.rstrip("\n"))
        out.append(f"--- end of {shown(write.rel)}")
    out += [f"rm {shown(rel)}" for rel in plan.removes]
    out += [f"keep {shown(rel)} ({why})" for rel, why in plan.kept]
    out += [f"rmdir {shown(rel)} (if empty)" for rel in plan.rmdirs]
    return "\n".join(out)


def unreachable(path: Path) -> list[str]:
    """Why another user (the service's `ollama`) could not run `path` or its script interpreter; empty when fine."""
    problems: list[str] = []
    targets = [path]
    try:
        with open(path, "rb") as stream:
            first = stream.readline(256)
        if first.startswith(b"#!"):
            targets.append(Path(first[2:].decode(errors="replace").split()[0]))
    except OSError:
        return [f"{path} does not exist or cannot be read"]
    for target in targets:
        real = target.resolve()
        for directory in reversed(real.parents):
            if directory != Path("/") and not os.stat(directory).st_mode & stat.S_IXOTH:
                problems.append(f"{directory} is closed to other users (needed for {target})")
                break
        mode = os.stat(real).st_mode if real.exists() else 0
        if mode & (stat.S_IROTH | stat.S_IXOTH) != stat.S_IROTH | stat.S_IXOTH:
            problems.append(f"{real} is not readable and executable by other users")
    return problems
