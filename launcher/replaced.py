"""Shim messages from the processes of an Ollama that was replaced are not evidence about the one that runs now.

A restart (a remedy's, a crash's, a reload's) stops the old Ollama and starts a new one, but the old processes'
last shim messages may still be queued on the event socket when the new `ollama_started` resets the board. Read
after it, a discovery runner of the old environment (e.g. `CUDA_VISIBLE_DEVICES=-1`, cuInit 100) made the new
Ollama's first verdict `device_filter_hides_gpu` and raised advice whose reason said no filter was set (issue 15
item 6). Every shim message carries `t_ns`, the sender's CLOCK_MONOTONIC, the clock of our own event times: a
process of the new Ollama exists only after it was started, so a message sent before that belongs to a replaced one.
The start's time is taken just after the spawn returns; a runner of the new Ollama would have to start, load the
shim and send within that gap (Ollama initialises for milliseconds before it starts any runner).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from launcher.events import Event


@dataclass
class ReplacedFilter:
    """Decides, event by event, whether the board should see it."""

    started_ns: int | None = None  # when the current Ollama was started, in the shim's clock
    dropped: int = 0
    _stale_conns: set[int] = field(default_factory=set)

    def keep(self, event: Event) -> bool:
        """False for a shim message sent before the current Ollama started, and for that connection's end."""
        if event.source == "supervisor" and event.kind == "ollama_started":
            self.started_ns = int(event.t * 1e9)
            return True
        if event.source != "shim" or self.started_ns is None:
            return True
        conn = event.data.get("conn")
        sent = event.data.get("t_ns")
        if event.kind == "process_end" and isinstance(conn, int) and conn in self._stale_conns:
            self._stale_conns.discard(conn)
            self.dropped += 1
            return False
        if isinstance(sent, int) and not isinstance(sent, bool) and sent < self.started_ns:
            if isinstance(conn, int):
                self._stale_conns.add(conn)
            self.dropped += 1
            return False
        return True
