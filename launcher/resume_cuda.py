"""cuInit before and after a resume (issue 16): a pure fold of the events that say what cuInit returned (Ollama's
processes through the shim, the probe after a resume or after a reload of `nvidia_uvm`), so a resume is judged by
its change: ok→999 is the `uvm_not_loaded` case; ok→ok is a healthy resume (nothing to say); fail→fail is not news
of the resume (the verdicts already name that cause).

No clock, no OS: replayable like the board.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from launcher.events import Event, thaw

UVM: Final = "uvm_not_loaded"
MAX_INITS: Final = 64  # the newest cuInit results kept, with their times (enough to find the one before a resume)


def said(code: int | None) -> str:
    """cuInit's result as the change shows it: ok, the code, or unknown."""
    return "unknown" if code is None else "ok" if code == 0 else str(code)


def change(before: int | None, ok: bool, after: int | None) -> tuple[str, bool]:
    """("ok→999", news?): the change the resume made to cuInit. News is a failure that was not there before (or
    where nothing was known before); a healthy probe and an old failure are not news."""
    text = f"{said(before)}→{'ok' if ok else said(after) if after else 'fail'}"
    return text, (not ok) and (before is None or before == 0)


@dataclass
class ResumeCuda:
    """The newest cuInit result, the one before the latest resume, and the break that resume caused (if any)."""

    last_init: int | None = None  # newest cuInit result from Ollama's processes or a probe
    before: int | None = None  # the newest result from before the latest resume
    inits: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=MAX_INITS))  # (t, result)
    resume: str | None = None  # names the latest resume within the boot: the host's sleep total (BOOTTIME −
    # MONOTONIC, to 0.1 s: two resumes differ by a sleep) when the event has it, else the time it was seen
    probe: dict[str, Any] | None = None  # the newest probe (after a resume or a reload), with its change
    broken: dict[str, Any] | None = None  # the resume's break, until cuInit works again: cause, error, change, resume
    reload: dict[str, Any] | None = None  # the newest reload of nvidia_uvm: outcome, holders, stderr
    fixed_by_reload: str | None = None  # the reload key whose re-probe found CUDA working again

    def add(self, event: Event) -> bool:
        """Take an event; True when it was about cuInit, a resume or a reload."""
        kind = (event.source, event.kind)
        if kind == ("shim", "cu_init"):
            result = event.data.get("result")
            if isinstance(result, int):
                self.last_init = result
                self.inits.append((event.t, result))
                if result == 0:
                    self.broken = None  # CUDA works again (an operator's reload, a new discovery)
            return True
        if kind == ("supervisor", "resumed"):
            # The host slept some time after the previous check (`since`): a runner that failed between then and
            # this check may have done so after the wake, so it is not "before"; one that succeeded there still
            # shows CUDA worked (before the sleep, or after the wake).
            since = event.data.get("since")
            cut = float(since) if isinstance(since, (int, float)) else event.t
            earlier = next((r for t, r in reversed(self.inits) if t <= cut), None)
            window_ok = any(r == 0 for t, r in self.inits if cut < t <= event.t)
            self.before = 0 if window_ok else earlier
            gap = event.data.get("gap")
            self.resume = f"{float(gap):.1f}" if isinstance(gap, (int, float)) else f"t{event.t:.0f}"
            return True
        if kind == ("supervisor", "cuda_probe"):
            self._probe(event.data, event.t)
            return True
        if kind == ("supervisor", "uvm_reload"):
            self.reload = thaw(event.data)
            return True
        return False

    def _probe(self, data: Mapping[str, Any], t: float) -> None:
        if data.get("ok") is None:  # the probe could not run: shown, judged not
            self.probe = {**thaw(data), "before": said(self.before), "change": "unknown", "news": False}
            return
        ok = data.get("ok") is True
        code = data.get("cu_init") if isinstance(data.get("cu_init"), int) else None
        after = str(data.get("after") or "resume")
        before = self.before if after == "resume" else self.last_init
        text, news = change(before, ok, code)
        self.probe = {**thaw(data), "before": said(before), "change": text, "news": news}
        self.inits.append((t, 0 if ok else code if code is not None else -1))  # a later resume's "before"
        if ok:
            if after == "uvm_reload" and self.broken is not None:
                self.fixed_by_reload = str(data.get("key") or "")
            self.broken = None
            self.last_init = 0
            return
        if code is not None:
            self.last_init = code
        if after == "resume" and news:
            self.broken = {"cause": data.get("cause"), "error": data.get("error"), "change": text,
                           "resume": self.resume, "t": t}



COMMANDS: Final = "`sudo rmmod nvidia_uvm && sudo modprobe nvidia_uvm` (or reboot)"


def holders_text(holders: Any) -> str:
    """"pid 4242 (python3), pid 77" from the reload's holder list."""
    out = []
    for h in holders if isinstance(holders, (list, tuple)) else []:
        if isinstance(h, Mapping):
            name = h.get("name")
            out.append(f"pid {h.get('pid')}" + (f" ({name})" if name else ""))
    return ", ".join(out)


def reload_text(reload: Mapping[str, Any] | None, may_reload: bool) -> str:
    """What became of the automatic reload, or how to allow it."""
    if reload is None:
        return ("ollama-gpu reloads it itself once Ollama is idle and nothing holds the GPU." if may_reload else
                "To let ollama-gpu do this itself when nothing holds the GPU, set OGPU_MAY_RELOAD_UVM=1 "
                "(serve must run as root).")
    outcome = reload.get("outcome")
    if outcome == "held":
        who = holders_text(reload.get("holders"))
        refcnt = reload.get("refcnt")
        what = who or (f"nvidia_uvm's refcnt is {refcnt}" if refcnt else "a process")
        return f"Not reloaded automatically: {what} holds the GPU; stop it first (never unloaded while in use)."
    if outcome == "failed":
        return (f"The automatic reload failed at `{reload.get('step')}` (exit {reload.get('exit')}: "
                f"{reload.get('stderr') or 'no message'}); not retried.")
    if outcome == "reloaded":
        return "nvidia_uvm was reloaded automatically, but CUDA still fails: reboot."
    return f"Not reloaded automatically: {reload.get('reason') or outcome}."


def break_advice(state: ResumeCuda, may_reload: bool, row_text: str) -> str | None:
    """The status line for a resume that broke CUDA: what changed, the exact commands, and the reload's fate.
    `row_text` is the cause row's advice for causes other than uvm_not_loaded."""
    broken = state.broken
    if broken is None:
        return None
    head = f"after the host resumed, cuInit went {broken.get('change')} ({broken.get('error')})"
    if broken.get("cause") != UVM:
        return f"{head}: {row_text or 'run `ollama-gpu doctor --probe`'}"
    return (f"{head}: nvidia_uvm is broken by the suspend; run {COMMANDS}, then restart ollama-gpu. "
            + reload_text(state.reload, may_reload))
