"""Accuracy on the real logs in ../shared/fixtures (public set); prints accuracy per outcome. Never edit a real log."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from launcher.evidence import Verdict, judge
from launcher.ollama_logs import parse_stream
from launcher.vocabulary import CAUSES, OUTCOMES

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures"

# Fixture labels that our vocabulary spells differently (fixtures/ollama-logs/README.md vs DESIGN.md): one table.
FIXTURE_CAUSE_MAP = {
    "rocr_visible_devices_set": "device_filter_hides_gpu",  # a device filter (Slurm's ROCR_VISIBLE_DEVICES) hides it
    "stub_libnvml": "stub_library",  # the toolkit's stub library found before the driver's
}

# High/medium cases whose decisive fact is not in the visible lines (README: "deliberately hard cases"). Each entry
# says what the log shows; the test fails if one of them starts to pass, so that the list only ever shrinks.
KNOWN_MISSES = {
    "cpu_expected-unsupported_igpu-unk-12967": "only GPULayers:[] and a CPU backend: no iGPU is named, and the "
                                               "same lines in 10833 are a fallback",
    "cpu_fallback-rocr_visible_devices_set-unk-10833": "ROCR_VISIBLE_DEVICES is not in the pasted lines; the outcome "
                                                       "is right, the cause cannot be",
    "cpu_fallback-unsupported_compute_capability-unk-12674": "only `offloaded 0/25`: the compute capability is not in "
                                                             "the pasted lines; the outcome is right",
    "crash-driver_too_old-0.3.9-6604": "only discovery lines (driver too old); the crash itself is not in the paste",
}

# Low-confidence cases answered as labelled or `unknown` at 94353a3: 8 of 12. A regression below fails.
LOW_HONEST_FLOOR = 8


def _require_shared() -> None:
    if not FIXTURES.is_dir():
        pytest.fail(f"shared fixtures not found at {FIXTURES}: check out shared/ beside the repository")


def _verdict(path: Path) -> Verdict:
    with open(path, "rb") as f:
        return judge(parse_stream(f))


def _cases() -> list[tuple[str, dict[str, Any], Verdict]]:
    _require_shared()
    out = []
    for case in sorted(p for p in (FIXTURES / "ollama-logs").iterdir() if p.is_dir()):
        label = json.loads((case / "case.json").read_text())
        out.append((case.name, label, _verdict(case / "server.log")))
    return out


def _correct(label: dict[str, Any], v: Verdict) -> tuple[bool, bool]:
    cause = FIXTURE_CAUSE_MAP.get(label["cause"], label["cause"])
    return v.outcome == label["outcome"], cause == "unknown" or v.cause == cause


class TestOllamaLogs:
    def test_labelled_outcome_and_cause_for_high_and_medium_cases(self) -> None:
        """Every high/medium case gets its labelled outcome, and its cause where the label names one."""
        per_outcome: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # outcome right, both right, cases
        wrong, fixed = [], []
        for name, label, v in _cases():
            ok_outcome, ok_cause = _correct(label, v)
            if label["confidence"] != "low":
                tally = per_outcome[label["outcome"]]
                tally[0] += ok_outcome
                tally[1] += ok_outcome and ok_cause
                tally[2] += 1
            if label["confidence"] == "low":
                continue
            if name in KNOWN_MISSES:
                if ok_outcome and ok_cause:
                    fixed.append(name)
            elif not (ok_outcome and ok_cause):
                wrong.append(f"{name}: got {v.outcome}/{v.cause}")
        print("\nollama-logs (high/medium) accuracy per labelled outcome: outcome right | outcome and cause right")
        for outcome, (good, both, total) in sorted(per_outcome.items()):
            print(f"  {outcome:16s} {good:2d}/{total:2d} {100 * good / total:5.1f}%  |  {both:2d}/{total:2d} "
                  f"{100 * both / total:5.1f}%")
        assert not wrong, "\n".join(wrong)
        assert not fixed, f"now correct, remove from KNOWN_MISSES: {fixed}"

    def test_low_confidence_cases_are_read_and_answered(self) -> None:
        """Low-confidence cases get a verdict from the vocabulary (outcome and cause), and no fewer of them than
        today are answered as labelled or honestly `unknown` (raise LOW_HONEST_FLOOR when that improves)."""
        low = [(n, lab, v) for n, lab, v in _cases() if lab["confidence"] == "low"]
        assert len(low) >= LOW_HONEST_FLOOR
        outside = [f"{n}: {v.outcome}/{v.cause}" for n, _lab, v in low
                   if v.outcome not in OUTCOMES or v.cause not in CAUSES]
        assert outside == []
        honest = sum(v.outcome in ("unknown", lab["outcome"]) for _, lab, v in low)
        print(f"\nlow-confidence cases answered 'unknown' or as labelled: {honest}/{len(low)}")
        assert honest >= LOW_HONEST_FLOOR

    def test_no_healthy_gpu_log_is_called_a_fallback(self) -> None:
        """A healthy GPU run is never called cpu_fallback (a false alarm restarts a working server)."""
        for name, label, v in _cases():
            if label["outcome"] == "gpu":
                assert v.outcome != "cpu_fallback", name


class TestGgmlReal:
    def test_every_llama_server_log_gets_an_accepted_answer(self) -> None:
        """Each llama-server log gets an outcome and cause that its labels.json accepts."""
        _require_shared()
        labels = json.loads((FIXTURES / "ggml-real" / "labels.json").read_text())
        bad = []
        for name, label in labels.items():
            if name.startswith("_"):
                continue
            v = _verdict(FIXTURES / "ggml-real" / name)
            if v.outcome not in label["outcomes"] or v.cause not in label["causes"]:
                bad.append(f"{name}: {v.outcome}/{v.cause}")
            if label["truth"] == "gpu":
                assert v.outcome != "cpu_fallback", name
        assert not bad, "\n".join(bad)


class TestOllamaRealCpu:
    @pytest.mark.parametrize("name", ["cpu-basic", "cpu-debug", "ld-preload", "ld-preload-missing-object",
                                      "runner-killed", "model-blob-truncated"])
    def test_cpu_only_machine_is_cpu_expected(self, name: str) -> None:
        """Ollama 0.32.15 on a machine without a GPU: cpu_expected, cause none, generation D from the version."""
        _require_shared()
        v = _verdict(FIXTURES / "ollama-real-cpu" / f"{name}.server.log")
        assert (v.outcome, v.cause) == ("cpu_expected", "none")
        assert (v.version, v.generation) == ("0.32.15", "D")

    def test_runner_kill_is_recognised(self) -> None:
        """The SIGKILLed runner is reported, and the restart that followed keeps it from being a crash."""
        v = _verdict(FIXTURES / "ollama-real-cpu" / "runner-killed.server.log")
        assert any("signal: killed" in f for f in v.findings)
        assert v.outcome != "crash"

    def test_truncated_model_is_recognised(self) -> None:
        """The truncated model blob is reported as a model file problem, not a GPU problem."""
        v = _verdict(FIXTURES / "ollama-real-cpu" / "model-blob-truncated.server.log")
        assert any("model file could not be loaded" in f for f in v.findings)

    def test_missing_preload_object_is_recognised(self) -> None:
        """The loader's 'cannot be preloaded' lines are reported beside the verdict."""
        v = _verdict(FIXTURES / "ollama-real-cpu" / "ld-preload-missing-object.server.log")
        assert any("LD_PRELOAD" in f for f in v.findings)
