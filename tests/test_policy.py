"""The pure decision, one test per rule: modes, operator intent, unknown generation, budgets and the moment."""

from __future__ import annotations

from pathlib import Path

from launcher.config import Mode
from launcher.driverlib import DriverFinding
from launcher.evidence import Verdict
from launcher.policy import Action, Situation, decide, decide_proactive
from launcher.remedies import RemedyContext, proactive
from launcher.restarts import RemedyBudget

NEEDS_DIR = DriverFinding(loader_path=None, loader_via="", real_dir=Path("/usr/local/nvidia/lib64"), stub_first=False)
CTX = RemedyContext(env={"LD_LIBRARY_PATH": "/opt/x"}, driver=NEEDS_DIR, generation="D")
FALLBACK = Verdict("cpu_fallback", "libcuda_not_found", subject="discovery", tier="live")


def budget(tmp_path: Path, attempts: int = 3) -> RemedyBudget:
    return RemedyBudget.load(tmp_path / "remedies.json", attempts)


def situation(verdict: Verdict = FALLBACK, mode: Mode = Mode.AUTO, generation: str | None = "D",
              ready: bool = False, runner_alive: bool = False, which: str = "discovery") -> Situation:
    return Situation(verdict, which, mode, generation, ready, runner_alive, t=12.5)


class TestRules:
    def test_fallback_at_discovery_before_ready_is_applied_now(self, tmp_path: Path) -> None:
        """auto + env-fixable fallback found at discovery, before READY: restart now with the patch."""
        d = decide(situation(), CTX, budget(tmp_path))
        assert d.action is Action.APPLY_NOW and "before READY" in d.reason
        assert d.patch == {"LD_LIBRARY_PATH": "/usr/local/nvidia/lib64:/opt/x"}

    def test_runner_fallback_with_a_model_loaded_waits_for_idle(self, tmp_path: Path) -> None:
        """After READY with a model runner alive: advised now, applied when idle."""
        d = decide(situation(ready=True, runner_alive=True, which="runner"), CTX, budget(tmp_path))
        assert d.action is Action.APPLY_WHEN_IDLE and d.patch is not None

    def test_runner_fallback_when_idle_is_applied(self, tmp_path: Path) -> None:
        """After READY with no model runner alive: apply now."""
        d = decide(situation(ready=True, runner_alive=False, which="runner"), CTX, budget(tmp_path))
        assert d.action is Action.APPLY_NOW and "idle" in d.reason

    def test_advise_mode_never_restarts(self, tmp_path: Path) -> None:
        """mode advise: the patch is reported, never applied."""
        d = decide(situation(mode=Mode.ADVISE), CTX, budget(tmp_path))
        assert d.action is Action.ADVISE and d.patch is None and d.plan is not None and d.plan.patch

    def test_observe_mode_changes_nothing(self, tmp_path: Path) -> None:
        """mode observe: only the verdict is reported."""
        d = decide(situation(mode=Mode.OBSERVE), CTX, budget(tmp_path))
        assert d.action is Action.NOTHING and "observe" in d.reason

    def test_off_mode_does_nothing(self, tmp_path: Path) -> None:
        """mode off: nothing at all."""
        assert decide(situation(mode=Mode.OFF), CTX, budget(tmp_path)).action is Action.NOTHING

    def test_unknown_generation_is_observed_and_says_why(self, tmp_path: Path) -> None:
        """An Ollama generation we do not know is observed only, and the reason says so."""
        d = decide(situation(generation=None), CTX, budget(tmp_path))
        assert d.action is Action.NOTHING and "unknown Ollama generation" in d.reason

    def test_healthy_gpu_is_left_alone(self, tmp_path: Path) -> None:
        """A gpu/none verdict never leads to a change."""
        d = decide(situation(Verdict("gpu", "none")), CTX, budget(tmp_path))
        assert d.action is Action.NOTHING and "healthy" in d.reason

    def test_no_gpu_is_left_alone(self, tmp_path: Path) -> None:
        """cpu_expected/none: no usable GPU, nothing to do."""
        assert decide(situation(Verdict("cpu_expected", "none")), CTX, budget(tmp_path)).action is Action.NOTHING

    def test_unsettled_evidence_does_nothing(self, tmp_path: Path) -> None:
        """unknown/unknown: the evidence does not settle a cause, so nothing is advised or done."""
        assert decide(situation(Verdict("unknown", "unknown")), CTX, budget(tmp_path)).action is Action.NOTHING

    def test_unknown_outcome_with_a_cause_is_only_advised(self, tmp_path: Path) -> None:
        """A cause without a verified fallback (no GPU seen) is advised, never patched."""
        d = decide(situation(Verdict("unknown", "libcuda_not_found")), CTX, budget(tmp_path))
        assert d.action is Action.ADVISE and d.patch is None

    def test_instruction_causes_are_advised_with_commands(self, tmp_path: Path) -> None:
        """cuInit 999: no env change fixes it; the instruction is advised and Ollama keeps serving."""
        d = decide(situation(Verdict("cpu_fallback", "uvm_not_loaded")), CTX, budget(tmp_path))
        assert d.action is Action.ADVISE and d.plan is not None and "modprobe nvidia_uvm" in d.plan.instruction

    def test_operator_choice_is_advised_not_changed(self, tmp_path: Path) -> None:
        """CUDA_VISIBLE_DEVICES=-1 from the operator: cpu_expected, advice only."""
        ctx = RemedyContext(env={"CUDA_VISIBLE_DEVICES": "-1"}, generation="D")
        d = decide(situation(Verdict("cpu_expected", "operator_forced_cpu")), ctx, budget(tmp_path))
        assert d.action is Action.ADVISE and d.patch is None

    def test_operator_choice_listed_in_may_override_is_applied(self, tmp_path: Path) -> None:
        """With CUDA_VISIBLE_DEVICES in OGPU_MAY_OVERRIDE the operator opted in: unset it."""
        ctx = RemedyContext(env={"CUDA_VISIBLE_DEVICES": "-1"}, generation="D",
                            may_override=frozenset({"CUDA_VISIBLE_DEVICES"}))
        d = decide(situation(Verdict("cpu_expected", "operator_forced_cpu")), ctx, budget(tmp_path))
        assert d.action is Action.APPLY_NOW and d.patch == {"CUDA_VISIBLE_DEVICES": None}

    def test_same_environment_is_never_tried_twice_across_restarts(self, tmp_path: Path) -> None:
        """A patch recorded by a previous supervisor (state file) is not applied again: advised instead."""
        first = budget(tmp_path)
        d = decide(situation(), CTX, first)
        assert d.patch is not None
        first.record(d.patch, d.cause)
        again = decide(situation(), CTX, budget(tmp_path))  # a new process reads the same state file
        assert again.action is Action.ADVISE and "already tried" in again.reason

    def test_spent_budget_advises(self, tmp_path: Path) -> None:
        """With no remedy restarts left the fix is advised."""
        d = decide(situation(), CTX, budget(tmp_path, attempts=0))
        assert d.action is Action.ADVISE and "budget" in d.reason

    def test_every_decision_is_a_structured_event(self, tmp_path: Path) -> None:
        """The decision event carries action, reason, cause, patch and its fingerprint."""
        d = decide(situation(), CTX, budget(tmp_path))
        e = d.event
        assert (e.source, e.kind, e.t) == ("supervisor", "decision", 12.5)
        assert e.data["action"] == "apply_now" and e.data["cause"] == "libcuda_not_found"
        assert e.data["patch"] == {"LD_LIBRARY_PATH": "/usr/local/nvidia/lib64:/opt/x"} and e.data["fingerprint"]


class TestProactive:
    def test_driver_dir_applied_at_start_in_auto(self, tmp_path: Path) -> None:
        """A driver directory the loader cannot see is applied to the first environment, outside the budget."""
        (d,) = decide_proactive(proactive(CTX), Mode.AUTO, "D", budget(tmp_path, attempts=0))
        assert d.action is Action.APPLY_NOW and d.patch == {"LD_LIBRARY_PATH": "/usr/local/nvidia/lib64:/opt/x"}

    def test_driver_dir_only_advised_in_advise_mode(self, tmp_path: Path) -> None:
        """mode advise: reported only."""
        (d,) = decide_proactive(proactive(CTX), Mode.ADVISE, "D", budget(tmp_path))
        assert d.action is Action.ADVISE
