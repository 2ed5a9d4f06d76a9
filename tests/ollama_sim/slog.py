"""Go `log/slog` text lines and Gin access lines, written whole to the server's stderr under one lock."""

from __future__ import annotations

import datetime as _dt
import sys
import threading
from collections.abc import Iterable
from typing import TextIO

_LOCK = threading.Lock()
LEVELS = {"TRACE": -8, "DEBUG": -4, "INFO": 0, "WARN": 4, "ERROR": 8}


def _needs_quote(s: str) -> bool:
    """slog's TextHandler quotes empty strings and anything with a space, '=', '"' or a non-printable rune."""
    return s == "" or any(c in ' ="\\' or not c.isprintable() for c in s)


def quote(s: str) -> str:
    """Go strconv.Quote for the characters our values can contain."""
    out = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{out}"'


def value(v: object) -> str:
    """A value as slog's text handler renders it."""
    s = str(v)
    return quote(s) if _needs_quote(s) else s


def now_rfc3339() -> str:
    """time=... as Ollama prints it in UTC: millisecond precision and a Z."""
    t = _dt.datetime.now(_dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def format_line(level: str, source: str, msg: str, attrs: Iterable[tuple[str, object]] = ()) -> str:
    """One slog text line (no newline)."""
    parts = [f"time={now_rfc3339()}", f"level={level}", f"source={source}", f"msg={value(msg)}"]
    parts += [f"{k if not _needs_quote(k) else quote(k)}={value(v)}" for k, v in attrs]
    return " ".join(parts)


def gin_line(status: int, seconds: float, client: str, method: str, path: str) -> str:
    """Gin's default access log line, e.g. `[GIN] 2026/11/25 - 18:18:22 | 200 |  60.89µs | 127.0.0.1 | GET "/"`."""
    t = _dt.datetime.now(_dt.timezone.utc)
    if seconds < 1e-3:
        dur = f"{seconds * 1e6:.2f}µs"
    elif seconds < 1:
        dur = f"{seconds * 1e3:.6f}ms"
    else:
        dur = f"{seconds:.9f}s"
    return f"[GIN] {t:%Y/%m/%d - %H:%M:%S} | {status:3d} | {dur:>13} | {client:>15} | {method:<7}  {quote(path)}"


def write_raw(line: str, stream: TextIO | None = None) -> None:
    """Write one complete line; lines from runners and our own never interleave inside a line."""
    out = stream or sys.stderr
    with _LOCK:
        out.write(line if line.endswith("\n") else line + "\n")
        out.flush()


class Logger:
    """The server's slog logger: a minimum level from OLLAMA_DEBUG, lines to stderr."""

    def __init__(self, debug_env: str | None) -> None:
        d = (debug_env or "").strip().lower()
        if d in ("2", "trace"):
            self.min_level = LEVELS["TRACE"]
        elif d in ("1", "true", "debug", "t", "yes"):
            self.min_level = LEVELS["DEBUG"]
        else:
            self.min_level = LEVELS["INFO"]

    @property
    def level_name(self) -> str:
        """The level as the `server config` line shows it (OLLAMA_DEBUG:INFO)."""
        return {v: k for k, v in LEVELS.items()}[self.min_level]

    def enabled(self, level: str) -> bool:
        """Whether a line at `level` is printed."""
        return LEVELS[level] >= self.min_level

    def log(self, level: str, source: str, msg: str, *attrs: tuple[str, object]) -> None:
        """Print one slog line if the level is enabled."""
        if self.enabled(level):
            write_raw(format_line(level, source, msg, attrs))
