"""The shim event server in a thread, for tests and tools: collects every event; `wait_for` blocks until a
condition holds (the supervisor polls the server from its own loop instead)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from launcher.events import Event
from launcher.shim_events import ServerStats, ShimEventServer


class ServerThread:
    """Runs a ShimEventServer in a thread, collecting every event; `wait_for` blocks until a condition holds."""

    def __init__(self, server: ShimEventServer, tick: float = 0.02) -> None:
        self.server = server
        self._tick = tick
        self._events: list[Event] = []
        self._stats = ServerStats()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="shim-events", daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ServerThread:
        """Start listening (in the caller, so errors surface here) and polling in the thread."""
        self.server.__enter__()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and close the server."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.server.close()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                events = self.server.poll(self._tick)
                stats = self.server.stats()
                with self._cond:
                    self._events.extend(events)
                    self._stats = stats
                    self._cond.notify_all()
        except BaseException as exc:  # surfaced by wait_for, never lost
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def events(self) -> list[Event]:
        """Every event so far, in order."""
        with self._cond:
            return list(self._events)

    def stats(self) -> ServerStats:
        """The counters as of the last poll."""
        with self._cond:
            return self._stats

    def wait_for(
        self, predicate: Callable[[list[Event], ServerStats], bool], timeout: float = 30.0
    ) -> list[Event]:
        """Block until `predicate(events, stats)` holds; TimeoutError (with what was seen) if it never does."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._error is not None or predicate(self._events, self._stats), timeout
            )
            if self._error is not None:
                raise RuntimeError("shim event server thread failed") from self._error
            if not ok:
                raise TimeoutError(f"condition not met; events={[(e.kind, e.pid) for e in self._events][-20:]} "
                                   f"stats={self._stats}")
            return list(self._events)
