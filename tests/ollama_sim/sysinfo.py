"""Host facts the logs print: CPU model, memory, thread count (read from /proc like llama.cpp and Ollama do)."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_model() -> str:
    """The first `model name` of /proc/cpuinfo, shortened the way llama.cpp's device_info shows it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def meminfo() -> tuple[int, int]:
    """(total, available) bytes from /proc/meminfo."""
    vals: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            vals[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return vals.get("MemTotal", 0), vals.get("MemAvailable", 0)


def threads() -> int:
    """Usable CPUs."""
    return len(os.sched_getaffinity(0)) or 1


def human_bytes2(n: float) -> str:
    """Ollama's format.HumanBytes2: "23.5 GiB", "512.0 MiB", "0 B"."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
