"""Every exit code of every ollama-gpu command, defined once (DESIGN.md, runtime layout)."""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    """Exit codes of `serve` and of the supervisor-facing commands."""

    OK = 0
    FAILED = 1  # a command's own check failed (`shim build`, `doctor`): said in one line
    USAGE = 2  # bad usage or configuration: nothing was started
    NOT_RUNNING = 3  # `status`: no supervisor running
    NO_GPU_REQUIRED = 4  # OGPU_REQUIRE_GPU set and no usable GPU
    CRASH_LOOP = 5  # crash loop gave up; systemd's Restart= takes over
    INTERNAL = 70  # our own bug (sysexits EX_SOFTWARE): logged as one `internal_error` line


class VerdictExit(enum.IntEnum):
    """Exit codes of `status` and `explain`, derived from the verdict."""

    GOOD = 0  # `gpu` (including degraded) or `cpu_expected`
    BAD = 1  # `cpu_fallback`, `partial_offload`, `crash`
    UNREADABLE = 2  # input could not be read
    UNKNOWN = 3  # not running, or outcome `unknown`


def signal_exit(signum: int) -> int:
    """Exit code of a process stopped by signal `signum` (128 + n, as shells report it)."""
    return 128 + signum


_OUTCOME_EXIT = {
    "gpu": VerdictExit.GOOD,
    "cpu_expected": VerdictExit.GOOD,
    "cpu_fallback": VerdictExit.BAD,
    "partial_offload": VerdictExit.BAD,
    "crash": VerdictExit.BAD,
    "unknown": VerdictExit.UNKNOWN,
}


def verdict_exit(outcome: str) -> int:
    """Exit code for a verdict outcome; an outcome we do not know is `unknown`."""
    return int(_OUTCOME_EXIT.get(outcome, VerdictExit.UNKNOWN))
