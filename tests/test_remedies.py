"""One remedy row per cause: env patches that respect operator intent, and exact commands for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher import devices
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


UUID_A = "GPU-aaaa0000-0000-0000-0000-000000000000"
UUID_B = "GPU-bbbb1111-1111-1111-1111-111111111111"
STALE = "GPU-deadbeef-0000-0000-0000-000000000000"


def gpus() -> tuple[devices.Gpu, ...]:
    return tuple(devices.Gpu(index=i, uuid=u, name="NVIDIA H100 80GB HBM3", pci_bus_id=f"00000000:0{i + 1}:00.0")
                 for i, u in enumerate((UUID_A, UUID_B)))


class TestAdviceFromSettingsInForce:
    """Issue 15 item 5: advice is computed from the settings in force; it never asks for what is already set."""

    def test_issue_15_stale_uuid_with_override_allowed(self) -> None:
        """OGPU_MAY_OVERRIDE=CUDA_VISIBLE_DEVICES and a filter naming only a stale UUID: no "list it in
        OGPU_MAY_OVERRIDE"; it says why no override applies and the exact value to set instead."""
        plan = remedy_for("device_filter_hides_gpu", ctx({"CUDA_VISIBLE_DEVICES": STALE}, gpus=gpus(),
                                                         may_override=frozenset({"CUDA_VISIBLE_DEVICES"})))
        assert plan.patch is None
        assert "list CUDA_VISIBLE_DEVICES in OGPU_MAY_OVERRIDE" not in plan.instruction
        assert "or list it in OGPU_MAY_OVERRIDE" not in plan.instruction
        assert "already lists CUDA_VISIBLE_DEVICES, but no override applies" in plan.instruction
        assert "never widened" in plan.instruction
        assert f"CUDA_VISIBLE_DEVICES={UUID_A},{UUID_B}" in plan.instruction

    def test_filter_not_listed_still_offers_the_override(self) -> None:
        """The same filter without OGPU_MAY_OVERRIDE: listing it is still a way out, and it is said."""
        plan = remedy_for("device_filter_hides_gpu", ctx({"CUDA_VISIBLE_DEVICES": STALE}, gpus=gpus()))
        assert "list CUDA_VISIBLE_DEVICES in OGPU_MAY_OVERRIDE" in plan.instruction

    def test_scheduler_filter_never_offers_the_override(self) -> None:
        """Under Slurm, listing the filter would not let anything change it: the override is not offered."""
        plan = remedy_for("device_filter_hides_gpu", ctx({"CUDA_VISIBLE_DEVICES": STALE, "SLURM_JOB_GPUS": "3"},
                                                         gpus=gpus()))
        assert "OGPU_MAY_OVERRIDE" not in plan.instruction and "SLURM_JOB_GPUS" in plan.instruction

    def test_forced_cpu_already_allowed(self) -> None:
        """CUDA_VISIBLE_DEVICES=-1 already listed in OGPU_MAY_OVERRIDE: the override is not asked for again."""
        plan = remedy_for("operator_forced_cpu", ctx({"CUDA_VISIBLE_DEVICES": "-1"},
                                                     may_override=frozenset({"CUDA_VISIBLE_DEVICES"})))
        assert "in OGPU_MAY_OVERRIDE to let" not in plan.instruction
        assert "Already in force: OGPU_MAY_OVERRIDE lists CUDA_VISIBLE_DEVICES" in plan.instruction

    @pytest.mark.parametrize(("cause", "env", "asked"), [
        ("unsupported_igpu", {"OLLAMA_IGPU_ENABLE": "1"}, "set OLLAMA_IGPU_ENABLE=1"),
        ("vulkan_selected_over_cuda", {"OLLAMA_VULKAN": "0"}, "Set OLLAMA_VULKAN=0"),
        ("tmp_noexec", {"OLLAMA_TMPDIR": "/var/lib/ollama/tmp"}, "Set OLLAMA_TMPDIR"),
    ])
    def test_setting_already_in_force_is_not_asked_for(self, cause: str, env: dict[str, str], asked: str) -> None:
        """A setting the instruction or the advice would ask for, already set: neither asks for it again."""
        plan = remedy_for(cause, ctx(env, generation="D", cuda_discovered=True))
        assert asked not in plan.instruction and asked not in plan.advice
        assert "Already in force" in plan.instruction

    def test_no_row_asks_for_what_is_set(self) -> None:
        """Every row: with every setting its steps ask for already in force, none of those steps is said."""
        for row in REMEDIES.values():
            asked = [s for step in row.steps for s in step.sets]
            if not asked:
                continue
            env = {var: val.format(filter="CUDA_VISIBLE_DEVICES", intent="CUDA_VISIBLE_DEVICES")
                   for var, val in asked if var != "OGPU_MAY_OVERRIDE"}
            env.setdefault("CUDA_VISIBLE_DEVICES", "-1")
            listed = frozenset(val.format(filter="CUDA_VISIBLE_DEVICES", intent="CUDA_VISIBLE_DEVICES")
                               for var, val in asked if var == "OGPU_MAY_OVERRIDE")
            plan = remedy_for(row.label, ctx(env, may_override=listed, generation="D"))
            for step in row.steps:
                if step.sets:
                    said = step.text.format(user="ollama", filter="CUDA_VISIBLE_DEVICES",
                                            intent="CUDA_VISIBLE_DEVICES")
                    assert said not in plan.instruction, (row.label, said)
