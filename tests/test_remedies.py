"""One remedy row per cause: env patches that respect operator intent, and exact commands for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.driverlib import DriverFinding
from launcher.remedies import REMEDIES, RemedyContext, proactive, remedy_for
from launcher.remedy_text import ADVICE
from launcher.vocabulary import CAUSES

NEEDS_DIR = DriverFinding(loader_path=None, loader_via="", real_dir=Path("/usr/local/nvidia/lib64"), stub_first=False)
STUB_FIRST = DriverFinding(loader_path=Path("/usr/local/cuda/lib64/stubs/libcuda.so.1"), loader_via="LD_LIBRARY_PATH",
                           real_dir=Path("/usr/lib/x86_64-linux-gnu"), stub_first=True)


def ctx(env: dict[str, str] | None = None, **kw: object) -> RemedyContext:
    return RemedyContext(env=env or {}, **kw)  # type: ignore[arg-type]


class TestTable:
    def test_every_cause_has_a_row(self) -> None:
        """The table is complete: every cause of the vocabulary has exactly one row, and nothing else does."""
        assert set(REMEDIES) == set(CAUSES)

    def test_every_row_has_advice_and_an_instruction(self) -> None:
        """`explain`'s one line and the operator instruction exist for every cause."""
        for cause, row in REMEDIES.items():
            assert cause in ADVICE and row.advice and row.steps
            assert remedy_for(cause, ctx()).instruction
            assert row.when in ("proactive", "discovery", "idle")

    @pytest.mark.parametrize(("cause", "command"), [
        ("uvm_not_loaded", "modprobe nvidia_uvm"), ("uvm_not_loaded", "nvidia-modprobe -u -c=0"),
        ("container_no_gpu_runtime", "--gpus all"), ("container_no_gpu_runtime", "nvidia-container-toolkit"),
        ("driver_library_mismatch", "reboot"), ("permission_denied", "usermod -aG video,render ollama"),
        ("cpu_lacks_avx", "avx"), ("missing_gpu_runners", "lib/ollama"),
        ("unsupported_compute_capability", "compute_cap"),
    ])
    def test_instructions_carry_exact_commands(self, cause: str, command: str) -> None:
        """Non-fixable causes come with the commands the operator runs, and no patch."""
        plan = remedy_for(cause, ctx())
        assert command in plan.instruction
        assert plan.patch is None and plan.why_no_patch


class TestDriverPath:
    def test_libcuda_dir_is_prepended(self) -> None:
        """libcuda_not_found: the real driver directory goes first in LD_LIBRARY_PATH, the rest kept."""
        plan = remedy_for("libcuda_not_found", ctx({"LD_LIBRARY_PATH": "/opt/x"}, driver=NEEDS_DIR))
        assert plan.patch == {"LD_LIBRARY_PATH": "/usr/local/nvidia/lib64:/opt/x"}
        assert plan.when == "proactive"

    def test_no_real_driver_no_patch(self) -> None:
        """Without a real libcuda.so.1 anywhere there is nothing to point the loader at."""
        finding = DriverFinding(None, "", None, False)
        assert remedy_for("libcuda_not_found", ctx(driver=finding)).patch is None

    def test_wsl_dir_is_prepended(self) -> None:
        """wsl_libcuda_path puts /usr/lib/wsl/lib first."""
        plan = remedy_for("wsl_libcuda_path", ctx({"LD_LIBRARY_PATH": "/usr/lib/x86_64-linux-gnu"}))
        assert plan.patch == {"LD_LIBRARY_PATH": "/usr/lib/wsl/lib:/usr/lib/x86_64-linux-gnu"}

    def test_stubs_are_removed(self) -> None:
        """stub_library: every stubs entry leaves LD_LIBRARY_PATH; the real driver dir goes first."""
        plan = remedy_for("stub_library", ctx({"LD_LIBRARY_PATH": "/usr/local/cuda/lib64/stubs:/opt/lib"},
                                              driver=STUB_FIRST))
        assert plan.patch == {"LD_LIBRARY_PATH": "/usr/lib/x86_64-linux-gnu:/opt/lib"}

    def test_stub_from_ldconfig_is_an_instruction(self) -> None:
        """A stub found through ld.so.conf, not LD_LIBRARY_PATH, cannot be patched away: instruction only."""
        plan = remedy_for("stub_library", ctx({"LD_LIBRARY_PATH": "/opt/lib"}))
        assert plan.patch is None and "ld.so.conf" in plan.instruction

    def test_proactive_plans_from_the_driver_finding(self) -> None:
        """Before start: a missing dir and stubs first are both visible from driverlib's finding alone."""
        assert [p.cause for p in proactive(ctx(driver=NEEDS_DIR))] == ["libcuda_not_found"]
        stub_env = {"LD_LIBRARY_PATH": "/usr/local/cuda/lib64/stubs"}
        assert [p.cause for p in proactive(ctx(stub_env, driver=STUB_FIRST))] == ["stub_library"]


class TestOperatorIntent:
    def test_forced_cpu_is_not_changed_without_override(self) -> None:
        """CUDA_VISIBLE_DEVICES=-1 set by the operator: advice, no patch."""
        plan = remedy_for("operator_forced_cpu", ctx({"CUDA_VISIBLE_DEVICES": "-1"}))
        assert plan.patch is None and "OGPU_MAY_OVERRIDE" in plan.why_no_patch

    def test_forced_cpu_is_unset_when_listed(self) -> None:
        """Listed in OGPU_MAY_OVERRIDE, the variable is unset."""
        plan = remedy_for("operator_forced_cpu", ctx({"CUDA_VISIBLE_DEVICES": "-1"},
                                                     may_override=frozenset({"CUDA_VISIBLE_DEVICES"})))
        assert plan.patch == {"CUDA_VISIBLE_DEVICES": None}
        assert plan.changes == ("UNSET CUDA_VISIBLE_DEVICES",)

    def test_scheduler_filters_are_never_widened(self) -> None:
        """Under Slurm, even a listed CUDA_VISIBLE_DEVICES is left alone."""
        env = {"CUDA_VISIBLE_DEVICES": "1", "SLURM_JOB_GPUS": "1"}
        plan = remedy_for("device_filter_hides_gpu", ctx(env, may_override=frozenset({"CUDA_VISIBLE_DEVICES"})))
        assert plan.patch is None and "scheduler" in plan.why_no_patch

    def test_container_runtime_allocation_is_not_a_reason_to_refuse(self) -> None:
        """NVIDIA_VISIBLE_DEVICES (the container runtime's, set by the device plugin) only mounts the allocated GPUs:
        unsetting a listed CUDA_VISIBLE_DEVICES inside the container cannot reach beyond them, so it is allowed."""
        env = {"CUDA_VISIBLE_DEVICES": "-1", "NVIDIA_VISIBLE_DEVICES": "GPU-1"}
        plan = remedy_for("operator_forced_cpu", ctx(env, may_override=frozenset({"CUDA_VISIBLE_DEVICES"})))
        assert plan.patch == {"CUDA_VISIBLE_DEVICES": None}

    def test_forced_cpu_library_listed_is_unset(self) -> None:
        """OLLAMA_LLM_LIBRARY=cuda (no such dir since 0.12) is unset when listed."""
        plan = remedy_for("forced_cpu_library", ctx({"OLLAMA_LLM_LIBRARY": "cuda"},
                                                    may_override=frozenset({"OLLAMA_LLM_LIBRARY"})))
        assert plan.patch == {"OLLAMA_LLM_LIBRARY": None}


class TestVulkan:
    def test_vulkan_off_when_cuda_found_the_gpu(self) -> None:
        """Vulkan took the device although CUDA found it, and the operator did not set OLLAMA_VULKAN: set it to 0."""
        plan = remedy_for("vulkan_selected_over_cuda", ctx(generation="D", cuda_discovered=True))
        assert plan.patch == {"OLLAMA_VULKAN": "0"} and plan.when == "discovery"

    def test_operator_vulkan_setting_is_kept(self) -> None:
        """OLLAMA_VULKAN set by the operator is theirs."""
        plan = remedy_for("vulkan_selected_over_cuda", ctx({"OLLAMA_VULKAN": "1"}, generation="D",
                                                           cuda_discovered=True))
        assert plan.patch is None

    def test_vulkan_rescuing_a_failed_cuda_is_kept(self) -> None:
        """If CUDA found nothing, turning Vulkan off would leave the CPU: no patch."""
        assert remedy_for("vulkan_selected_over_cuda", ctx(generation="D")).patch is None


class TestOlderRuntime:
    @pytest.mark.parametrize(("gen", "driver", "expected"), [
        ("D", "560.35.03", {"OLLAMA_LLM_LIBRARY": "cuda_v12"}),  # too old for CUDA 13, fine for gen D's cuda_v12
        ("D", "535.183.01", None),  # gen D drops cuda_v12 devices below 550: nothing older ships
        ("C", "535.183.01", {"OLLAMA_LLM_LIBRARY": "cuda_v12"}),
        ("D", "580.159.04", None),  # new enough for the newest runtime: not a runtime problem
        ("A", "470.00", None),  # generation A picks cuda_v11 itself
        (None, "560.35.03", None),
    ])
    def test_driver_too_old(self, gen: str | None, driver: str, expected: dict[str, str] | None) -> None:
        """An older bundled runtime where the generation ships one the driver can run."""
        assert remedy_for("driver_too_old", ctx(generation=gen, driver_version=driver)).patch == expected

    def test_runtime_must_ship(self) -> None:
        """A known library layout without cuda_v12 gets no cuda_v12."""
        plan = remedy_for("driver_too_old", ctx(generation="C", driver_version="560.1",
                                                library_dirs=("cuda_v13", "vulkan")))
        assert plan.patch is None

    def test_operator_library_choice_is_kept(self) -> None:
        """OLLAMA_LLM_LIBRARY set by the operator is not replaced."""
        plan = remedy_for("driver_too_old", ctx({"OLLAMA_LLM_LIBRARY": "cuda_v13"}, generation="D",
                                                driver_version="560.1"))
        assert plan.patch is None


class TestTmpNoexec:
    def test_generation_a_gets_ollama_tmpdir(self) -> None:
        """tmp_noexec in generation A: OLLAMA_TMPDIR to our executable directory."""
        plan = remedy_for("tmp_noexec", ctx(generation="A", tmp_dir=Path("/var/cache/ollama-gpu/tmp")))
        assert plan.patch == {"OLLAMA_TMPDIR": "/var/cache/ollama-gpu/tmp"}

    def test_later_generations_get_the_instruction(self) -> None:
        """OLLAMA_TMPDIR means nothing from generation B on."""
        assert remedy_for("tmp_noexec", ctx(generation="C", tmp_dir=Path("/x"))).patch is None
