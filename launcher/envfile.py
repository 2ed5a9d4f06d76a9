"""Reading one KEY=VALUE configuration file safely: regular files only, size and line caps, values cut when echoed.

Every layer file (the packaged defaults, /etc/ollama-gpu/ollama-gpu.env, the user's file, each --env-file) goes
through `read_env_file`, so `--env-file /dev/zero` or a FIFO is one line and exit 2, never an unbounded read.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
from pathlib import Path
from typing import Final

from dotenv.parser import parse_stream

MAX_FILE_BYTES: Final = 1024 * 1024  # a configuration file of more than 1 MiB is a mistake, not a configuration
MAX_LINE_BYTES: Final = 64 * 1024  # one line (a KEY=VALUE); Linux caps one environment string at 128 KiB
SHOWN_CHARS: Final = 80  # an echoed value is cut to this many characters
_BARE_EXPORT: Final = re.compile(r"export(?:\s+#.*|\s*)\Z")


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` quoted as Python does, cut to `limit` characters with '… (N bytes)' when longer."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text.encode('utf-8', 'surrogateescape'))} bytes)"


class ConfigError(Exception):
    """Bad configuration: `str()` is the one line the operator sees; nothing is started."""

    def __init__(self, where: str, key: str | None, value: str | None, expected: str) -> None:
        self.where, self.key, self.value, self.expected = where, key, value, expected
        subject = f" {key if len(key) <= SHOWN_CHARS else clip(key)}={clip(value or '')}:" if key is not None else ""
        super().__init__(f"{where}:{subject} {expected}")


class UnreadableFileError(ConfigError):
    """The file exists but we may not read it (EACCES): an error for a named file; an optional one is skipped."""


_KINDS: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_capped(path: Path, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """The bytes of a regular file of at most `limit` bytes; None when it does not exist.

    Opened non-blocking (a FIFO without a writer must not hang us) and checked with fstat, so what is read is what
    was checked; read at most `limit` + 1 bytes, so a file that grows while we read is still refused.
    """
    where = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except (FileNotFoundError, NotADirectoryError):  # HOME=/dev/null: no such file either
        return None
    except PermissionError:
        raise UnreadableFileError(where, None, None, "cannot be read (permission denied)") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket (or a device with no driver): stat says which
            try:
                what = _not_regular(os.stat(path).st_mode) or "not a regular file"
            except OSError:
                what = "not a regular file"
            raise ConfigError(where, None, None, f"is {what}, not a regular file") from None
        raise ConfigError(where, None, None, f"cannot be read ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        kind = _not_regular(st.st_mode)
        if kind is not None:
            raise ConfigError(where, None, None, f"is {kind}, not a regular file")
        if st.st_size > limit:
            raise ConfigError(where, None, None, f"is {st.st_size} bytes, more than the limit of {limit} bytes")
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise ConfigError(where, None, None, f"is more than the limit of {limit} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(where, None, None, f"cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)


def _check_lines(path: Path, data: bytes) -> None:
    """Refuse an over-long line or a NUL byte (no environment variable can hold one), naming file:line."""
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise ConfigError(f"{path}:{line}", None, None, "contains a NUL byte: expected KEY=VALUE text")
    lines = data.split(b"\n")
    if max(map(len, lines)) <= MAX_LINE_BYTES:
        return
    number, longest = next((n, len(b)) for n, b in enumerate(lines, start=1) if len(b) > MAX_LINE_BYTES)
    raise ConfigError(f"{path}:{number}", None, None,
                      f"line is {longest} bytes, more than the limit of {MAX_LINE_BYTES} bytes")


def read_env_file(path: Path, *, required: bool) -> list[tuple[str, str, int]]:
    """(key, value, line) for each assignment in an env file; a missing file is an error only when `required`."""
    found = load_env_file(path)
    if found is None:
        if required:
            raise ConfigError(str(path), None, None, "no such file")
        return []
    return found


def load_env_file(path: Path) -> list[tuple[str, str, int]] | None:
    """(key, value, line) for each assignment, None when the file does not exist; ConfigError for a file that is
    not a regular file, too big, not UTF-8 text or malformed (UnreadableFileError when permission is denied).

    Values are literal (no ${VAR} expansion), as in systemd's EnvironmentFile=. `export KEY=VALUE` is accepted; a
    line without '=' (a bare `export`, `export KEY`, `KEY`) is an error: it would otherwise pass an empty variable
    to Ollama.
    """
    data = read_capped(path)
    if data is None:
        return None
    _check_lines(path, data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), None, None, f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    out: list[tuple[str, str, int]] = []
    for binding in parse_stream(io.StringIO(text)):
        original = binding.original.string
        # python-dotenv counts blank lines before a binding into it: the key sits after them.
        line = binding.original.line + original[: len(original) - len(original.lstrip())].count("\n")
        if binding.key is not None and binding.value is not None and not binding.error:
            out.append((binding.key, binding.value, line))
            continue
        where, shown = f"{path}:{line}", original.strip()
        if _BARE_EXPORT.match(shown):  # python-dotenv reads `export # x` as a comment, `export ` as junk
            raise ConfigError(where, None, None, "a bare `export`: expected KEY=VALUE (or export KEY=VALUE)")
        if binding.error:
            raise ConfigError(where, None, None, f"cannot parse {clip(shown)}: expected KEY=VALUE")
        if binding.key is None:
            continue  # blank line or comment
        raise ConfigError(where, None, None, f"{clip(shown)} has no '=': expected KEY=VALUE")
    return out
