"""Our structured log: structlog key-value events, console on a terminal, JSON lines otherwise; `logger=ollama-gpu`.

Only this module touches structlog's global configuration, from `configure()`. structlog itself (~90 ms of imports,
asyncio among them) is imported at the first line actually logged, not before: `serve` spawns Ollama first.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Final, Protocol, TextIO, cast

if TYPE_CHECKING:
    import structlog

LOGGER_NAME: Final = "ollama-gpu"
LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _add_logger_name(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Tag every line so an operator (or a parser) tells ours from Ollama's in one shared stream."""
    event_dict.setdefault("logger", LOGGER_NAME)
    return event_dict


class LogStream(Protocol):
    """Where our lines go: a text file, or the output writer shared with Ollama's bytes (`output.SharedStream`)."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...

    def isatty(self) -> bool: ...


def wants_console(fmt: str, stream: LogStream, env: MutableMapping[str, str] | None = None) -> bool:
    """The renderer choice: 'console' and 'json' are forced; 'auto' is console exactly when `stream` is a TTY."""
    if fmt == "console":
        return True
    if fmt == "json":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _colors(env: MutableMapping[str, str], stream: LogStream) -> bool:
    """Colour only a terminal that can show it; NO_COLOR and FORCE_COLOR as everyone reads them."""
    if env.get("NO_COLOR"):
        return False
    if env.get("FORCE_COLOR"):
        return True
    try:
        return stream.isatty() and env.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


def configure(fmt: str = "auto", level: str = "info", stream: LogStream | None = None) -> Any:
    """Set up our log for this process (applied at the first line logged) and return our logger."""
    global _pending, _level
    with _lock:
        _pending = (fmt, level, stream if stream is not None else sys.stderr)
        _level = LEVELS.get(level, logging.INFO)
    if "structlog" in sys.modules:  # already in use in this process: the new set-up takes effect now
        _apply()
    return get()


def _apply() -> None:
    """Configure structlog with the pending set-up, if any (the first caller does it; later ones find none)."""
    global _pending
    with _lock:
        params, _pending = _pending, None
        if params is None:
            return
        import structlog

        fmt, level, out = params
        renderer: structlog.typing.Processor
        if wants_console(fmt, out):
            renderer = structlog.dev.ConsoleRenderer(colors=_colors(dict(os.environ), out))
        else:
            renderer = structlog.processors.JSONRenderer(sort_keys=False, ensure_ascii=False)
        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                _add_logger_name,
                structlog.processors.format_exc_info,
                renderer,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
            logger_factory=structlog.WriteLoggerFactory(file=cast(TextIO, out)),  # it only writes and flushes
            cache_logger_on_first_use=False,
        )


class _Logger:
    """Our logger before structlog is needed: the first attribute asked for (`info`, `bind`, …) imports and
    configures structlog, then every call goes to structlog's logger of this name."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        if LEVELS.get(attr, logging.CRITICAL) < _level:
            return _dropped  # below the configured level: no line, and no reason to import structlog for it
        if _pending is not None:
            _apply()
        import structlog

        return getattr(structlog.get_logger(self._name), attr)


def _dropped(*_args: Any, **_kw: Any) -> None:
    return None


_lock = threading.Lock()
_pending: tuple[str, str, LogStream] | None = None
_level = logging.NOTSET  # the configured level (NOTSET until `configure`: structlog's defaults then decide)


def get(name: str = LOGGER_NAME) -> Any:
    """Our logger (a structlog FilteringBoundLogger once used)."""
    return _Logger(name)
