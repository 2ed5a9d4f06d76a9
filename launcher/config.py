"""Typed, frozen settings built from the configuration layers of DESIGN.md, with one-line errors for bad input.

Layers, lowest first: the packaged `config/ollama-gpu.env` (the defaults) < `/etc/ollama-gpu/ollama-gpu.env` <
`$XDG_CONFIG_HOME/ollama-gpu/ollama-gpu.env` < each `--env-file` in order < the environment < command-line flags.
Never `./.env`. Keys starting with `OGPU_` are ours; every other key in our files is collected for Ollama's
environment untouched (the real environment still wins over a file for those).
"""

from __future__ import annotations

import difflib
import enum
import importlib.resources
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from launcher.envfile import ConfigError as ConfigError  # re-exported: callers catch it from here
from launcher.envfile import UnreadableFileError, clip, load_env_file
from launcher.envfile import read_env_file as read_env_file  # re-exported: the reader lives in launcher.envfile
from launcher.ollama_host import OllamaHost, parse_ollama_host
from launcher.paths import Dirs, resolve_dirs

PREFIX: Final = "OGPU_"
# Not settings: OGPU_EVENTS is set by us for Ollama's runners (shim protocol v1); OGPU_SYSTEM_CONFIG, read from
# the environment only, moves the system file (for packagers with another prefix, and for tests).
RESERVED: Final = frozenset({"OGPU_EVENTS", "OGPU_SYSTEM_CONFIG"})
SYSTEM_FILE: Final = Path("/etc/ollama-gpu/ollama-gpu.env")


def system_file(env: Mapping[str, str]) -> Path:
    """The system-wide file: /etc/ollama-gpu/ollama-gpu.env unless OGPU_SYSTEM_CONFIG names another."""
    override = env.get("OGPU_SYSTEM_CONFIG", "")
    return Path(override) if override.startswith("/") else SYSTEM_FILE


DEFAULT = "default"
ENVIRONMENT = "environment"
COMMAND_LINE = "command line"


class Mode(enum.Enum):
    """What ollama-gpu may do (DESIGN.md, contract 1)."""

    AUTO = "auto"
    ADVISE = "advise"
    OBSERVE = "observe"
    OFF = "off"


# --- value parsers: each returns the typed value or raises ValueError("expected ...") -------------------------


def _choice(*names: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in names:
            raise ValueError(f"expected one of {', '.join(names)}")
        return value

    return parse


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected a boolean (1/0, true/false, yes/no, on/off)")


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise ValueError(f"expected a whole number from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise ValueError(f"expected a whole number from {lo} to {hi}")
        return value

    return parse


def _seconds(lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        raw = text.strip().removesuffix("s")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"expected seconds from {lo:g} to {hi:g}") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise ValueError(f"expected seconds from {lo:g} to {hi:g}")
        return value

    return parse


def _text(text: str) -> str:
    value = text.strip()
    if not value or "\0" in value:
        raise ValueError("expected a non-empty value")
    return value


def _optional_path(text: str) -> Path | None:
    value = text.strip()
    if not value:
        return None
    if not value.startswith("/"):
        raise ValueError("expected an absolute path, or nothing")
    return Path(value)


def _dir_list(text: str) -> tuple[Path, ...]:
    parts = [p for p in re.split(r"[:,]", text.strip()) if p.strip()]
    for part in parts:
        if not part.strip().startswith("/"):
            raise ValueError("expected absolute directories separated by ':'")
    return tuple(Path(p.strip()) for p in parts)


_HOST_PORT = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>[0-9]{1,5})\Z")


def _host_port(text: str) -> tuple[str, int] | None:
    """`host:port` or `[v6]:port`, or nothing (off)."""
    value = text.strip()
    if not value:
        return None
    m = _HOST_PORT.match(value)
    if m is None or not 1 <= int(m["port"]) <= 65535:
        raise ValueError("expected host:port (e.g. 127.0.0.1:9835 or [::1]:9835), or nothing for off")
    return (m["v6"] or m["host"], int(m["port"]))


_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _var_list(text: str) -> frozenset[str]:
    names = [n for n in re.split(r"[,\s]+", text.strip()) if n]
    for name in names:
        if not _VAR_NAME.match(name):
            raise ValueError("expected environment variable names separated by commas")
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class Spec:
    """One setting: its key, textual default, parser and the one-line doc printed in the packaged file."""

    key: str
    default: str
    parse: Callable[[str], Any]
    doc: str

    @property
    def attr(self) -> str:
        """The Settings attribute: OGPU_STOP_GRACE -> stop_grace."""
        return self.key.removeprefix(PREFIX).lower()

    @property
    def flag(self) -> str:
        """The command-line flag: OGPU_STOP_GRACE -> --stop-grace."""
        return "--" + self.attr.replace("_", "-")


SPECS: Final[tuple[Spec, ...]] = (
    Spec("OGPU_MODE", "auto", _choice("auto", "advise", "observe", "off"),
         "auto: observe, fix, restart within budgets; advise: report fixes, never restart; "
         "observe: shim and verdicts only; off: exec `ollama serve` unchanged"),
    Spec("OGPU_OLLAMA", "ollama", _text, "the Ollama binary: a path, or a name looked up on PATH"),
    Spec("OGPU_MAY_OVERRIDE", "", _var_list,
         "operator variables (e.g. CUDA_VISIBLE_DEVICES, OLLAMA_LLM_LIBRARY) that remedies may change; "
         "empty: never change the operator's choices"),
    Spec("OGPU_REQUIRE_GPU", "false", _bool, "exit 4 when no usable GPU is found instead of serving on the CPU"),
    Spec("OGPU_RESTART_MAX", "5", _int_range(0, 1000),
         "crash loop: restarts of a crashing Ollama within OGPU_RESTART_WINDOW before giving up with exit 5; "
         "0: never restart, exit with Ollama's own code"),
    Spec("OGPU_RESTART_WINDOW", "300", _seconds(1, 86400), "seconds over which crash restarts are counted"),
    Spec("OGPU_RESTART_BACKOFF", "1", _seconds(0, 3600), "first delay before restarting a crashed Ollama; doubles"),
    Spec("OGPU_RESTART_BACKOFF_MAX", "30", _seconds(0, 3600), "longest delay between crash restarts"),
    Spec("OGPU_REMEDY_MAX", "3", _int_range(0, 100),
         "restarts with a corrected environment, in all (kept in the state directory across restarts)"),
    Spec("OGPU_STOP_GRACE", "10", _seconds(0, 3600),
         "grace period: seconds between TERM and KILL of Ollama's process group on stop"),
    Spec("OGPU_READY_TIMEOUT", "120", _seconds(1, 86400), "seconds to wait for Ollama's /api/version after start"),
    Spec("OGPU_GPU_WAIT", "30", _seconds(0, 3600),
         "boot race: seconds to wait for the NVIDIA driver before starting Ollama, on a machine with NVIDIA hardware "
         "whose driver is not ready yet; 0: never wait"),
    Spec("OGPU_HEALTH_INTERVAL", "5", _int_range(0, 3600),
         "seconds between two per-GPU health checks (NVML, in its own thread); 0: no health checks"),
    Spec("OGPU_MAY_RELOAD_UVM", "false", _bool,
         "after a resume broke nvidia_uvm (cuInit 999): reload it (modprobe -r, modprobe) when Ollama is idle and "
         "nothing holds the GPU, then restart Ollama once; needs root; false: advise the commands only"),
    Spec("OGPU_DRIVER_LIB_DIRS", "", _dir_list,
         "extra directories to search for the driver's libcuda.so.1, ':'-separated, searched first"),
    Spec("OGPU_SHIM", "", _optional_path, "a prebuilt shim library to use instead of compiling one (absolute path)"),
    Spec("OGPU_RECORD", "", _optional_path,
         "append every event (log, shim, proc, supervisor) as JSON lines to this file, for replay and bug reports"),
    Spec("OGPU_METRICS_ADDR", "", _host_port,
         "serve Prometheus metrics on http://host:port/metrics (e.g. 127.0.0.1:9835); empty: off"),
    Spec("OGPU_LOG_FORMAT", "auto", _choice("auto", "console", "json"),
         "our log lines: console on a terminal and JSON lines otherwise (auto), or forced"),
    Spec("OGPU_LOG_LEVEL", "info", _choice("debug", "info", "warning", "error"), "our log level"),
)
SPEC_BY_KEY: Final = {spec.key: spec for spec in SPECS}


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """Something worth one log line that does not stop us, e.g. an unknown OGPU_ key (`level` "warning"), or an
    optional file skipped because we may not read it (another user's ~/.config: `level` "debug")."""

    where: str
    key: str | None
    message: str
    suggestion: str | None = None
    level: str = "warning"


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective configuration. Attributes mirror SPECS; `sources` says where each value came from."""

    mode: Mode
    ollama: str
    may_override: frozenset[str]
    require_gpu: bool
    restart_max: int
    restart_window: float
    restart_backoff: float
    restart_backoff_max: float
    remedy_max: int
    stop_grace: float
    ready_timeout: float
    gpu_wait: float
    health_interval: int
    may_reload_uvm: bool
    driver_lib_dirs: tuple[Path, ...]
    shim: Path | None
    record: Path | None
    metrics_addr: tuple[str, int] | None
    log_format: str
    log_level: str
    sources: Mapping[str, str]  # OGPU_ key -> 'default' | 'FILE:LINE' | 'environment' | 'command line'
    raw: Mapping[str, str]  # OGPU_ key -> text as given
    ollama_env: Mapping[str, str]  # non-OGPU keys from our files, for Ollama's environment
    ollama_env_sources: Mapping[str, str]
    files: tuple[Path, ...]  # the files read, lowest layer first
    host: OllamaHost
    dirs: Dirs
    warnings: tuple[ConfigWarning, ...] = field(default=())


def packaged_file() -> Path:
    """The defaults file shipped inside the package (config/ollama-gpu.env in the repository, used as it is when
    ollama-gpu runs from a checkout that was not installed)."""
    return package_dir("launcher._config", "config") / "ollama-gpu.env"


def package_dir(package: str, repo_dir: str) -> Path:
    """A data folder shipped as a package (pyproject's package-dir), or its repository folder in a bare checkout."""
    try:
        return Path(str(importlib.resources.files(package)))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / repo_dir


def user_file(env: Mapping[str, str]) -> Path | None:
    """$XDG_CONFIG_HOME/ollama-gpu/ollama-gpu.env, with XDG's default of ~/.config."""
    base = env.get("XDG_CONFIG_HOME", "")
    if not base.startswith("/"):
        home = env.get("HOME", "")
        if not home.startswith("/"):
            return None
        base = str(Path(home) / ".config")
    return Path(base) / "ollama-gpu" / "ollama-gpu.env"


def nearest_key(key: str) -> str | None:
    """The valid OGPU_ key closest to a misspelt one, if any is close."""
    found = difflib.get_close_matches(key.upper(), list(SPEC_BY_KEY), n=1, cutoff=0.6)
    return found[0] if found else None


@dataclass(slots=True)
class _Layers:
    raw: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    ollama_env: dict[str, str] = field(default_factory=dict)
    ollama_env_sources: dict[str, str] = field(default_factory=dict)
    warnings: list[ConfigWarning] = field(default_factory=list)

    def put(self, key: str, value: str, where: str) -> None:
        if key in RESERVED:
            return
        if key.startswith(PREFIX):
            if key not in SPEC_BY_KEY:
                hint = nearest_key(key)
                message = "unknown setting" + (f"; did you mean {hint}?" if hint else "")
                shown = key if len(key) <= 80 else clip(key)
                self.warnings.append(ConfigWarning(where, shown, message, hint))
                return
            self.raw[key] = value
            self.sources[key] = where
        else:
            self.ollama_env[key] = value
            self.ollama_env_sources[key] = where


def load_settings(
    env: Mapping[str, str],
    env_files: Sequence[Path] = (),
    cli: Mapping[str, str] | None = None,
    *,
    defaults_file: Path | None = None,
    uid: int | None = None,
) -> Settings:
    """Build Settings from every layer; ConfigError (one line) on any bad input."""
    layers = _Layers()
    for spec in SPECS:
        layers.raw[spec.key] = spec.default
        layers.sources[spec.key] = DEFAULT
    files: list[Path] = []

    packaged = defaults_file or packaged_file()
    for key, value, _line in read_env_file(packaged, required=False):
        layers.put(key, value, DEFAULT)
    files.append(packaged)

    # Optional files: a missing one is skipped quietly; one we may not read is skipped too (the system file with a
    # warning, since an administrator wrote it for us; the user's file at debug level: with HOME pointing at another
    # user's home, as `sudo -u ollama` leaves it, that is normal). Anything else wrong with them is an error.
    optional: list[tuple[Path | None, str]] = [(system_file(env), "warning"), (user_file(env), "debug")]
    for path, level in optional:
        if path is None:
            continue
        try:
            found = load_env_file(path)
        except UnreadableFileError as exc:
            layers.warnings.append(ConfigWarning(str(path), None, f"{exc.expected}: skipped", level=level))
            continue
        if found is None:
            continue
        for key, value, line in found:
            layers.put(key, value, f"{path}:{line}")
        files.append(path)
    for path in env_files:
        for key, value, line in read_env_file(path, required=True):
            layers.put(key, value, f"{path}:{line}")
        files.append(path)

    for key, value in env.items():
        if key.startswith(PREFIX):
            layers.put(key, value, ENVIRONMENT)
    for key, value in (cli or {}).items():
        layers.put(key, value, COMMAND_LINE)

    values: dict[str, Any] = {}
    for spec in SPECS:
        text = layers.raw[spec.key]
        try:
            values[spec.attr] = spec.parse(text)
        except ValueError as exc:
            raise ConfigError(layers.sources[spec.key], spec.key, text, str(exc)) from None

    # The Ollama environment: files first, the real environment wins (it is what Ollama would see anyway).
    host = parse_ollama_host(env.get("OLLAMA_HOST", layers.ollama_env.get("OLLAMA_HOST")))
    dirs = resolve_dirs(env, os.geteuid() if uid is None else uid, host.slug)
    return Settings(
        **{**values, "mode": Mode(values["mode"])},
        sources=dict(layers.sources),
        raw=dict(layers.raw),
        ollama_env=dict(layers.ollama_env),
        ollama_env_sources=dict(layers.ollama_env_sources),
        files=tuple(files),
        host=host,
        dirs=dirs,
        warnings=tuple(layers.warnings),
    )


def log_warnings(log: Any, warnings: Iterable[ConfigWarning]) -> None:
    """One log line per configuration warning, at its level (a skipped unreadable user file is a debug line)."""
    for warning in warnings:
        if warning.level == "warning":
            log.warning("config_warning", where=warning.where, key=warning.key, problem=warning.message,
                        suggestion=warning.suggestion)
        else:
            log.debug("config_file_skipped", path=warning.where, problem=warning.message)


def json_value(key: str, value: Any) -> Any:
    """A parsed setting as JSON: numbers and booleans as themselves, sets and tuples as lists, paths as strings, a
    mode by its name, the metrics address as {"host", "port"}; None stays null."""
    if key == "OGPU_METRICS_ADDR" and value is not None:
        return {"host": value[0], "port": value[1]}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, tuple):
        return [json_value(key, v) for v in value]
    return value


def describe(settings: Settings) -> dict[str, Any]:
    """Every effective setting with its typed value, the text it was parsed from and its source; the Ollama env from
    our files; the directories."""
    return {
        "settings": {
            spec.key: {"value": json_value(spec.key, getattr(settings, spec.attr)), "text": settings.raw[spec.key],
                       "source": settings.sources[spec.key]}
            for spec in SPECS
        },
        "ollama_env": {
            key: {"value": value, "source": settings.ollama_env_sources[key]}
            for key, value in sorted(settings.ollama_env.items())
        },
        "ollama_host": settings.host.netloc,
        "directories": {
            "runtime": str(settings.dirs.runtime),
            "cache": str(settings.dirs.cache),
            "state": str(settings.dirs.state),
            "instance": settings.dirs.instance,
        },
        "files": [str(p) for p in settings.files],
        "warnings": [
            {"where": w.where, "key": w.key, "message": w.message, "suggestion": w.suggestion}
            for w in settings.warnings if w.level == "warning"
        ],
        "files_skipped": [{"path": w.where, "reason": w.message} for w in settings.warnings if w.level != "warning"],
    }


def iter_cli_overrides(namespace: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """(OGPU_ key, text) for each setting flag given on the command line."""
    for spec in SPECS:
        value = namespace.get(spec.attr)
        if value is not None:
            yield spec.key, value
