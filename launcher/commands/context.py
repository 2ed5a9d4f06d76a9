"""What every command receives: the effective settings, our logger and the environment it was started with."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from launcher.config import Settings


@dataclass(frozen=True, slots=True)
class Context:
    """Handed to `run(args, ctx)` of each command module."""

    settings: Settings
    log: Any  # structlog FilteringBoundLogger
    env: Mapping[str, str]
    reload: Callable[[], Settings] | None = None  # the same layers read again (SIGHUP); raises ConfigError
