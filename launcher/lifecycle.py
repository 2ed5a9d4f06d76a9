"""The supervisor's states and every transition between them, in one table: no I/O, no clock, no imports of ours.

The supervisor decides *which* trigger applies (an exit with code 0, a spent crash budget, ...); this table alone
decides where that trigger leads from each state. A trigger that has no row for the current state is a bug of ours,
raised as `IllegalTransition` and never silently ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final


class State(enum.Enum):
    """Where the supervisor is; one value at a time."""

    STARTING = "starting"  # Ollama is spawned at the next tick (first start, after a backoff or a restart)
    WAITING_READY = "waiting_ready"  # spawned; /api/version or the discovery gate not through yet
    RUNNING = "running"  # answered and READY=1 sent
    RESTARTING = "restarting"  # the old Ollama was signalled; waiting (until a deadline, then KILL) for its exit
    STOPPING = "stopping"  # a stop was asked; waiting (until a deadline, then KILL) for Ollama's exit
    BACKOFF = "backoff"  # Ollama crashed; waiting out the delay before the next start
    STOPPED = "stopped"  # the end: run() returns the exit code


class Trigger(enum.Enum):
    """What happened, as far as the state machine cares."""

    SPAWNED = "spawned"
    SPAWN_FAILED = "spawn_failed"
    READY = "ready"
    RESTART = "restart"
    OLD_GONE = "old_gone"  # the Ollama being restarted has exited
    STOP = "stop"
    EXITED_CLEAN = "exited_clean"  # Ollama exited 0 by itself
    CRASHED = "crashed"  # Ollama died and the crash budget allows another start
    GAVE_UP = "gave_up"  # Ollama died and no restart is allowed (budget spent, or none configured)
    BACKOFF_OVER = "backoff_over"
    EXITED = "exited"  # Ollama's exit while stopping


S, T = State, Trigger
RUNNING_STATES: Final = (S.WAITING_READY, S.RUNNING)
TRANSITIONS: Final[Mapping[tuple[State, Trigger], State]] = {
    (S.STARTING, T.SPAWNED): S.WAITING_READY,
    (S.STARTING, T.SPAWN_FAILED): S.STOPPED,
    (S.STARTING, T.STOP): S.STOPPED,  # nothing runs: stopping is immediate
    (S.WAITING_READY, T.READY): S.RUNNING,
    **{(s, T.RESTART): S.RESTARTING for s in RUNNING_STATES},
    **{(s, T.STOP): S.STOPPING for s in RUNNING_STATES},
    **{(s, T.EXITED_CLEAN): S.STOPPED for s in RUNNING_STATES},
    **{(s, T.CRASHED): S.BACKOFF for s in RUNNING_STATES},
    **{(s, T.GAVE_UP): S.STOPPED for s in RUNNING_STATES},
    (S.RESTARTING, T.OLD_GONE): S.STARTING,
    (S.RESTARTING, T.STOP): S.STOPPING,  # TERM mid-restart: no new Ollama is started
    (S.BACKOFF, T.BACKOFF_OVER): S.STARTING,
    (S.BACKOFF, T.STOP): S.STOPPED,
    (S.STOPPING, T.EXITED): S.STOPPED,
}


class IllegalTransition(RuntimeError):
    """A trigger with no row for the current state: our bug."""

    def __init__(self, state: State, trigger: Trigger) -> None:
        super().__init__(f"no transition from {state.value} on {trigger.value}")
        self.state = state
        self.trigger = trigger


def next_state(state: State, trigger: Trigger) -> State:
    """The state `trigger` leads to from `state`; IllegalTransition where the table has no row."""
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise IllegalTransition(state, trigger) from None
