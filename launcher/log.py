"""Our structured log: structlog key-value events, console on a terminal, JSON lines otherwise; `logger=ollama-gpu`.

Only this module touches structlog's global configuration, once per process, from `configure()`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import IO, Any, Final

import structlog

LOGGER_NAME: Final = "ollama-gpu"
LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _add_logger_name(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Tag every line so an operator (or a parser) tells ours from Ollama's in one shared stream."""
    event_dict.setdefault("logger", LOGGER_NAME)
    return event_dict


def wants_console(fmt: str, stream: IO[str], env: MutableMapping[str, str] | None = None) -> bool:
    """The renderer choice: 'console' and 'json' are forced; 'auto' is console exactly when `stream` is a TTY."""
    if fmt == "console":
        return True
    if fmt == "json":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _colors(env: MutableMapping[str, str], stream: IO[str]) -> bool:
    """Colour only a terminal that can show it; NO_COLOR and FORCE_COLOR as everyone reads them."""
    if env.get("NO_COLOR"):
        return False
    if env.get("FORCE_COLOR"):
        return True
    try:
        return stream.isatty() and env.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


def configure(
    fmt: str = "auto", level: str = "info", stream: IO[str] | None = None
) -> structlog.typing.FilteringBoundLogger:
    """Set up structlog for this process and return our bound logger."""
    out = stream if stream is not None else sys.stderr
    console = wants_console(fmt, out)
    renderer: structlog.typing.Processor
    if console:
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
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    return get()


def get() -> structlog.typing.FilteringBoundLogger:
    """Our logger (after `configure`)."""
    return structlog.get_logger(LOGGER_NAME)
