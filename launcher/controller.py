"""The loop closer of `serve`: every event to the board, verdicts to the policy, decisions to the supervisor.

Events arrive from two threads (the loop: shim, /proc, supervisor; the parser thread: log lines), so the board is
fed under a lock; verdicts are judged and acted on only in the loop's thread (`tick`), where restarts are safe.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from launcher.config import Mode, Settings
from launcher.directives import Directive, Fail, RestartWith, View
from launcher.environment import with_patch
from launcher.events import Event, now
from launcher.evidence import Board, LiveVerdicts, Verdict
from launcher.gpu_health import OK
from launcher.health_board import HealthBoard, read_boot_id
from launcher.policy import Action, Decision, Situation, decide
from launcher.remedies import RemedyContext
from launcher.remedy_record import remedy_record
from launcher.replaced import ReplacedFilter
from launcher.restarts import RemedyBudget
from launcher.verdict_log import is_pending, verdict_log

JUDGE_INTERVAL = 0.05  # seconds between two judgements while events keep arriving
DISCOVERY_GRACE = 30.0  # READY waits at most this long after /api/version for the discovery verdict
UNKNOWN_VERSION_GRACE = 1.0  # ... and this long for a version line (unknown generation: observe, do not wait)
# Ollama answers its API only once discovery is logged, so its discovery lines are at most a parse away; a verdict the
# shim and /proc settled before those lines waits this long for them (they carry the filter's reading).
DISCOVERY_LINES_GRACE = 3.0
GENERATIONS_WITH_START_DISCOVERY = frozenset({"A", "B", "C", "D"})
ADVICE_LOG_KEYS = ("subject", "cause", "reason", "instruction", "advice", "changes")
# Memory stays bounded however long Ollama runs: the newest decisions, remedies and advice are kept, and per-runner
# entries go with their process.
MAX_DECISIONS = 256
MAX_APPLIED = 64
MAX_ADVISED = 64
MAX_RUNNERS = 32


def _key(verdict: Verdict) -> tuple[str, str]:
    return verdict.outcome, verdict.cause


@dataclass
class Controller:
    """Feeds the board and turns verdict changes into decisions for the supervisor."""

    settings: Settings
    budget: RemedyBudget
    log: Any
    record: Callable[[Event], None] = lambda _e: None
    remedy_context: Callable[[Mapping[str, str], str | None, bool], RemedyContext] | None = None
    board: Board = field(default_factory=Board)
    health: HealthBoard = field(default_factory=HealthBoard)
    verdicts: LiveVerdicts | None = None
    applied: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_APPLIED))
    advised: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    decisions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_DECISIONS))
    failed_require_gpu: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _replaced: ReplacedFilter = field(default_factory=ReplacedFilter)
    wall: Callable[[], float] = time.time  # when a remedy was applied or advised, as status shows it (UTC)
    _dirty: bool = False
    _last_judged: float = 0.0
    _seen: dict[str, tuple[str, str]] = field(default_factory=dict)
    _decided: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    _late_gpu_done: bool = False
    boot_id: str = field(default_factory=lambda: read_boot_id())

    # --- events (any thread) --------------------------------------------------------------------------------

    def sink(self, event: Event) -> None:
        """Take one event from any source (a replaced Ollama's late shim messages are recorded, not judged)."""
        with self._lock:
            self.health.add(event)  # GPU health is the machine's, whichever Ollama runs
            if self._replaced.keep(event):
                self.board.add(event)
                if event.source == "supervisor" and event.kind == "ollama_started":
                    self._seen.clear()
                    self._decided.clear()
                self._dirty = True
        self.record(event)

    # --- the loop's thread ------------------------------------------------------------------------------------

    def tick(self, view: View, t: float) -> list[Directive]:
        """Judge (at most every JUDGE_INTERVAL while events arrive); what the supervisor should do about it."""
        if not self._dirty or t - self._last_judged < JUDGE_INTERVAL:
            return []
        with self._lock:
            self._dirty = False
            self._last_judged = t
            verdicts = self.board.live()
            generation = self.board.facts.generation
        self.verdicts = verdicts
        out: list[Directive] = []
        subjects = [("discovery", "discovery", verdicts.discovery)]
        newest = list(verdicts.runners.items())[-MAX_RUNNERS:]  # an ended runner's verdict stays until pushed out
        subjects += [(f"runner {pid}", "runner", v) for (pid, _st), v in newest]
        self._forget_gone({subject for subject, _w, _v in subjects})
        for subject, which, verdict in subjects:
            if self._seen.get(subject) != _key(verdict):
                self._seen[subject] = _key(verdict)
                self._emit_verdict(subject, verdict)
                if verdict.cause == "none":  # healthy now: earlier advice for it no longer applies
                    self.advised = {k: v for k, v in self.advised.items() if k[0] != subject}
            decided = (*_key(verdict), generation or "")  # a generation learnt later is a new situation
            if self._decided.get(subject) == decided:
                continue
            self._decided[subject] = decided
            out.extend(self._act(view, which, subject, verdict, generation))
        out.extend(self._check_require_gpu(verdicts, generation))
        out.extend(self._late_gpu(view, verdicts, generation))
        return out

    def _late_gpu(self, view: View, verdicts: LiveVerdicts, generation: str | None) -> list[Directive]:
        """Issue 16: Ollama discovered no GPU, and NVML listed healthy GPUs only later (a driver that came up after
        Ollama started): restart Ollama once, when idle, so its discovery sees them. Mode auto only, once per boot
        (the budget keeps the boot id, so a systemd restart does not repeat it)."""
        if self._late_gpu_done or not self.health.gpus_appeared or self.health.state != OK:
            return []
        if verdicts.discovery.outcome not in ("cpu_expected", "cpu_fallback"):
            return []
        self._late_gpu_done = True
        patch: dict[str, str | None] = {"ogpu_gpu_appeared_boot": self.boot_id}
        reason = "the GPU became available after Ollama started without it"
        item = remedy_record(subject="discovery", cause=verdicts.discovery.cause, patch=None, before=view.plan.env,
                             when="when idle", reason=reason, at=time.time(),
                             instruction="restart Ollama (or ollama-gpu) so that its discovery sees the GPU")
        if self.settings.mode is not Mode.AUTO or generation is None:  # advise; unknown generation: observe only
            self.advised[("discovery", "gpu_appeared")] = item
            self.log.warning("advice", subject="discovery", cause=verdicts.discovery.cause, reason=reason,
                             instruction=item["instruction"])
            return []
        allowed, why = self.budget.allows(patch)
        if not allowed:
            self.log.info("late_gpu_restart_skipped", reason=why)
            return []
        self.budget.record(patch, verdicts.discovery.cause)
        self.applied.append(item)
        self.log.warning("remedy", subject="discovery", cause=verdicts.discovery.cause, when="when idle",
                         reason=reason)
        return [RestartWith(view.plan, "the GPU became available after Ollama started", immediately=False)]

    def _forget_gone(self, subjects: set[str]) -> None:
        """A runner's entries end once it is no longer among the newest MAX_RUNNERS the board lists."""
        for table in (self._seen, self._decided):
            for subject in [s for s in table if s not in subjects]:
                del table[subject]
        self.advised = {k: v for k, v in self.advised.items() if k[0] in subjects or not k[0].startswith("runner ")}

    def _emit_verdict(self, subject: str, verdict: Verdict) -> None:
        level, fields = verdict_log(subject, verdict)
        getattr(self.log, level)("verdict", **fields)
        self.record(Event("supervisor", "verdict", now(), None, {"subject": subject, **verdict.to_dict()}))

    def _act(self, view: View, which: str, subject: str, verdict: Verdict,
             generation: str | None) -> list[Directive]:
        situation = Situation(verdict, which, self.settings.mode, generation, ready=view.ready,
                              runner_alive=view.runner_alive, t=now())
        cuda = bool(self.verdicts and self.verdicts.cuda_discovered)
        ctx = self.remedy_context(view.plan.env, generation, cuda) if self.remedy_context else RemedyContext(
            env=view.plan.env, may_override=self.settings.may_override, generation=generation, cuda_discovered=cuda)
        if self.verdicts is not None:  # the GPUs in UUIDs, for device-filter remedies
            ctx = replace(ctx, gpus=self.verdicts.gpus, cuda_saw=self.verdicts.cuda_saw)
        decision = decide(situation, ctx, self.budget)
        self.record(decision.event)
        self.decisions.append(dict(decision.event.data))
        if decision.action is Action.NOTHING:
            return []
        if decision.action is Action.ADVISE or decision.patch is None:
            self._advise(subject, decision, view.plan.env)
            return []
        return [self._apply(view, subject, decision)]

    def _advise(self, subject: str, decision: Decision, before: Mapping[str, str]) -> None:
        plan = decision.plan
        item = remedy_record(subject=subject, cause=decision.cause, patch=plan.patch if plan else None,
                             before=before, when="advised only", reason=decision.reason, at=self.wall(),
                             advice=plan.advice if plan else None, instruction=plan.instruction if plan else None)
        if (subject, decision.cause) not in self.advised:
            self.log.warning("advice", **{k: item[k] for k in ADVICE_LOG_KEYS})
        self.advised[(subject, decision.cause)] = item
        while len(self.advised) > MAX_ADVISED:
            del self.advised[next(iter(self.advised))]

    def _apply(self, view: View, subject: str, decision: Decision) -> Directive:
        patch = decision.patch or {}
        plan = with_patch(view.plan, patch, f"remedy for {decision.cause}")
        immediately = decision.action is Action.APPLY_NOW
        self.budget.record(patch, decision.cause)
        item = remedy_record(subject=subject, cause=decision.cause, patch=patch, before=view.plan.env,
                             when="now" if immediately else "when idle", reason=decision.reason, at=self.wall(),
                             advice=decision.plan.advice if decision.plan else None,
                             instruction=decision.plan.instruction if decision.plan else None)
        self.applied.append(item)
        self.log.warning("remedy", **{k: item[k] for k in ("subject", "cause", "changes", "when", "reason")})
        if not immediately:
            self._advise(subject, decision, view.plan.env)
        return RestartWith(plan, f"remedy for {decision.cause}", immediately=immediately)

    def _check_require_gpu(self, verdicts: LiveVerdicts, generation: str | None) -> list[Directive]:
        """OGPU_REQUIRE_GPU: no usable GPU after discovery (and nothing left to try) ends the service with exit 4."""
        if not self.settings.require_gpu or self.failed_require_gpu:
            return []
        discovery = verdicts.discovery
        if discovery.outcome in ("unknown", "gpu"):
            return []
        last = self.decisions[-1] if self.decisions else {}
        if last.get("action") in (Action.APPLY_NOW.value, Action.APPLY_WHEN_IDLE.value):
            return []
        self.failed_require_gpu = True
        self.log.error("no_usable_gpu", outcome=discovery.outcome, cause=discovery.cause,
                       action="OGPU_REQUIRE_GPU is set: stopping with exit 4")
        return [Fail(4)]

    # --- READY and status ------------------------------------------------------------------------------------

    def ready_gate(self, since_answer: float) -> bool:
        """READY=1 waits for the discovery verdict where the generation discovers GPUs at start (so a discovery-time
        remedy restarts before any client is told we are up), at most DISCOVERY_GRACE seconds."""
        with self._lock:
            generation = self.board.facts.generation
            discovery_logged = bool(self.board.facts.discovered or self.board.facts.no_gpu)
        if since_answer >= DISCOVERY_GRACE:
            return True
        if generation is None:
            return since_answer >= UNKNOWN_VERSION_GRACE
        if generation not in GENERATIONS_WITH_START_DISCOVERY:
            return True
        verdicts = self.verdicts
        decided = verdicts is not None and verdicts.discovery.outcome != "unknown"
        if not discovery_logged and not (decided and since_answer >= DISCOVERY_LINES_GRACE):
            return False  # Ollama's own account of what it found is not read yet
        if self._dirty:  # judge what arrived before deciding that no discovery-time remedy is coming
            return False
        last = self.decisions[-1] if self.decisions else None
        return not (last and last.get("which") == "discovery" and last.get("action") == Action.APPLY_NOW.value)

    def status(self, view: View) -> dict[str, Any]:
        """The document `ollama-gpu status` prints."""
        verdicts = self.verdicts
        facts = self.board.facts
        discovery = {**verdicts.discovery.to_dict(), "pending": is_pending(verdicts.discovery)} if verdicts else {
            "outcome": "unknown", "cause": "unknown", "pending": True}
        runners = [{"pid": pid, "start_time": st, **v.to_dict(), "pending": is_pending(v)} for (pid, st), v in
                   (list(verdicts.runners.items())[-MAX_RUNNERS:] if verdicts else [])]
        acceptable = not (self.settings.require_gpu and discovery.get("outcome") != "gpu")
        what = self._what_to_do(discovery, runners)
        with self._lock:
            health = self.health.to_dict()
            not_ready = self.health.readiness_failure()
        if what == "nothing to do" and health["advice"]:
            what = health["advice"][0]
        return {
            "running": True, "state": view.state.value, "mode": self.settings.mode.value,
            "ready": view.ready, "discovery_acceptable": acceptable,
            "ollama": {"pid": view.ollama_pid, "version": facts.version or view.version,
                       "generation": facts.generation, "host": self.settings.host.netloc},
            "discovery": discovery, "runners": runners,
            "remedies": {"applied": list(self.applied), "advised": list(self.advised.values()),
                         "budget": self.budget.summary()},
            "crash_restarts": {"recent": view.crash_recent, "max": view.crash_max},
            "restarts": view.restarts, "what_to_do": what,
            "gpu_health": health, "readiness_failure": not_ready,
            "restart_container": not_ready,  # today the one readiness failure is one a container restart fixes
        }

    def _what_to_do(self, discovery: Mapping[str, Any], runners: list[dict[str, Any]]) -> str:
        if self.advised:
            last = list(self.advised.values())[-1]
            return str(last.get("instruction") or last.get("advice") or "")
        worst = [discovery, *runners]
        if any(v.get("outcome") in ("cpu_fallback", "partial_offload", "crash") for v in worst):
            return "see the verdict's evidence; `ollama-gpu doctor` checks the machine"
        return "nothing to do"
