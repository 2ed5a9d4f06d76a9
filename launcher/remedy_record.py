"""What a remedy did, as `status` shows it: each variable changed, its value, path entries added or dropped, when, why.

One shape for every remedy, whether applied to the first environment before Ollama starts (a driver directory added
to `LD_LIBRARY_PATH`), at discovery, when idle, or only advised; `status --json` carries it as is and `status` prints
it as a table.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Final

from launcher.remedies import changes_of

# Variables whose value is a ':'-separated list, where "which entry was added or dropped" is the useful part.
PATH_LISTS: Final = frozenset({"LD_LIBRARY_PATH", "PATH"})


def _entries(value: str | None) -> list[str]:
    return [e for e in (value or "").split(":") if e]


def variable_changes(before: Mapping[str, str], patch: Mapping[str, str | None]) -> list[dict[str, Any]]:
    """Each patched variable: `set` or `unset`, the new value, the previous one, and for path lists the entries
    added and removed (in order)."""
    out = []
    for key, value in sorted(patch.items()):
        old = before.get(key)
        item: dict[str, Any] = {"key": key, "action": "unset" if value is None else "set", "value": value,
                                "previous": old}
        if key in PATH_LISTS:
            new_entries, old_entries = _entries(value), _entries(old)
            item["added"] = [e for e in new_entries if e not in old_entries]
            item["removed"] = [e for e in old_entries if e not in new_entries]
        out.append(item)
    return out


def stamp(wall: float) -> str:
    """A wall-clock time as status shows it: ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(wall, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def remedy_record(*, subject: str, cause: str, patch: Mapping[str, str | None] | None, before: Mapping[str, str],
                  when: str, reason: str, at: float, advice: str | None = None,
                  instruction: str | None = None) -> dict[str, Any]:
    """One remedy for `status`: `changes` (readable `SET K=V` / `UNSET K`), `variables` (structured), `when` (the
    moment: `before start`, `now`, `when idle`), `at` (UTC), and `reason` (why it was applied or only advised)."""
    patch = patch or {}
    return {"subject": subject, "cause": cause, "changes": list(changes_of(patch)),
            "variables": variable_changes(before, patch), "when": when, "at": stamp(at), "reason": reason,
            "advice": advice, "instruction": instruction}
