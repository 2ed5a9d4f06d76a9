"""The `Event`, the one currency of every source, and its record/replay in JSON lines (DESIGN.md principle 1)."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Final, Literal, TypeAlias

Source: TypeAlias = Literal["log", "shim", "proc", "nvml", "supervisor"]
SOURCES: Final = ("log", "shim", "proc", "nvml", "supervisor")

JSONValue: TypeAlias = Any  # what json.dumps accepts; checked at construction


class EventError(ValueError):
    """An event, or a line that should hold one, is not valid; `reason` is a short stable label for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _check_json(value: object, where: str) -> None:
    """Raise EventError unless `value` is plain JSON data (no NaN, string keys only)."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EventError("bad data", f"{where}: non-finite number")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, item in value.items():
            if not isinstance(k, str):
                raise EventError("bad data", f"{where}: non-string key {k!r}")
            _check_json(item, f"{where}.{k}")
        return
    raise EventError("bad data", f"{where}: {type(value).__name__} is not JSON data")


def _freeze(value: JSONValue) -> JSONValue:
    """Lists become tuples so that an event's data cannot change under the board."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return _FrozenDict({k: _freeze(v) for k, v in value.items()})
    return value


def thaw(value: Any) -> Any:
    """An event's frozen data as plain, mutable JSON data again (status documents, reports)."""
    if isinstance(value, Mapping):
        return {str(k): thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


class _FrozenDict(dict):  # type: ignore[type-arg]
    """A dict that refuses mutation and can be hashed; JSON-serialises as a dict."""

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("event data is immutable")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


@dataclass(frozen=True, slots=True)
class Event:
    """One observation: `source` saw `kind` at monotonic time `t`, about process `pid`, with `data`."""

    source: Source
    kind: str
    t: float
    pid: int | None = None
    data: Mapping[str, JSONValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise EventError("bad source", f"{self.source!r} is not one of {', '.join(SOURCES)}")
        if not isinstance(self.kind, str) or not self.kind:
            raise EventError("bad kind", "kind must be a non-empty string")
        if isinstance(self.t, bool) or not isinstance(self.t, (int, float)) or not math.isfinite(self.t):
            raise EventError("bad t", f"t must be a finite number, not {self.t!r}")
        if self.pid is not None and (isinstance(self.pid, bool) or not isinstance(self.pid, int) or self.pid < 0):
            raise EventError("bad pid", f"pid must be a non-negative integer or null, not {self.pid!r}")
        if not isinstance(self.data, Mapping):
            raise EventError("bad data", "data must be a mapping")
        _check_json(self.data, "data")
        object.__setattr__(self, "t", float(self.t))
        object.__setattr__(self, "data", _freeze(self.data))

    def to_dict(self) -> dict[str, JSONValue]:
        """The event as plain JSON data."""
        return {"source": self.source, "kind": self.kind, "t": self.t, "pid": self.pid, "data": self.data}

    def to_json(self) -> str:
        """One line of JSON, no newline inside."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, obj: object) -> Event:
        """Build an event from parsed JSON; EventError when it is not one."""
        if not isinstance(obj, Mapping):
            raise EventError("not an object")
        extra = set(obj) - {"source", "kind", "t", "pid", "data"}
        if extra:
            raise EventError("unknown field", ", ".join(sorted(extra)))
        try:
            return cls(source=obj["source"], kind=obj["kind"], t=obj["t"], pid=obj.get("pid"), data=obj.get("data", {}))
        except KeyError as exc:
            raise EventError("missing field", str(exc.args[0])) from None

    @classmethod
    def from_json(cls, line: str) -> Event:
        """Parse one JSON line; EventError when it is not an event."""
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise EventError("not JSON", str(exc)) from None
        return cls.from_dict(obj)


def now() -> float:
    """The clock every live source stamps events with (monotonic seconds)."""
    return time.monotonic()


def record(events: Iterable[Event], out: IO[str]) -> int:
    """Write events to `out` as JSON lines; returns how many were written."""
    n = 0
    for event in events:
        out.write(event.to_json())
        out.write("\n")
        n += 1
    return n


class Replay:
    """Reads events back from JSON lines; bad lines are skipped and counted by reason, never raised."""

    def __init__(self, stream: Iterable[str]) -> None:
        self._stream = stream
        self.bad: Counter[str] = Counter()
        self.bad_lines: list[int] = []  # first few line numbers, for the message
        self.read = 0

    def __iter__(self) -> Iterator[Event]:
        for lineno, raw in enumerate(self._stream, start=1):
            line = raw.strip()
            if not line:
                continue
            self.read += 1
            try:
                yield Event.from_json(line)
            except EventError as exc:
                self.bad[exc.reason] += 1
                if len(self.bad_lines) < 20:
                    self.bad_lines.append(lineno)

    @property
    def skipped(self) -> int:
        """How many lines were not events."""
        return sum(self.bad.values())
