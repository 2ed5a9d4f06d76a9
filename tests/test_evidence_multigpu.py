"""The board on multi-GPU hosts (issue 9): per-GPU verdicts in UUIDs from log, shim and NVML, replayed by hand."""

from __future__ import annotations

from typing import Any

from launcher.events import Event
from launcher.evidence import Board, LiveVerdicts, judge
from launcher.ollama_logs import parse_text
from launcher.remedies import RemedyContext, remedy_for
from tests.test_evidence_live import DISCOVERY_ARGV, MIB, nvml_gpus, proc, runner, shim, started

A = {"index": 0, "uuid": "GPU-aaaa0000-0000-0000-0000-000000000000", "name": "NVIDIA H100 80GB HBM3",
     "pci_bus_id": "00000000:01:00.0", "memory_total": 80 << 30, "memory_used": 0, "compute_capability": "9.0",
     "mig_mode": False}
B = {**A, "index": 1, "uuid": "GPU-bbbb1111-1111-1111-1111-111111111111", "name": "NVIDIA A100-SXM4-40GB",
     "pci_bus_id": "00000000:41:00.0", "memory_total": 40 << 30}
STALE = "GPU-deadbeef-0000-0000-0000-000000000000"
D = "time=2026-01-01T00:00:00.000Z level=INFO source=x.go:1 "
VERSION = f'{D}msg="Listening on 127.0.0.1:11434 (version 0.33.0)"'


def log(*lines: str) -> list[Event]:
    """Log events of these lines after a gen-D version line (parse_text numbers them from 1)."""
    return [e for e in parse_text("\n".join((VERSION, *lines)) + "\n") if e.kind != "parse_summary"]


def discovered(*gpus: dict[str, Any]) -> list[str]:
    """Gen D's `inference compute` lines: ids are the ordinals under the server's own filter."""
    return [f'{D}msg="inference compute" id={i} filter_id={i} library=CUDA compute=9.0 name=CUDA{i} '
            f'description="{g["name"]}" pci_id={g["pci_bus_id"][4:]} type=discrete total="79.2 GiB" '
            'available="78.7 GiB"' for i, g in enumerate(gpus)]


def seen(pid: int, cvd: str | None, *gpus: dict[str, Any], argv: list[str] = DISCOVERY_ARGV) -> list[Event]:
    """A process under filter `cvd` that initialised CUDA and queried these GPUs as ordinals 0, 1, …"""
    out = runner(pid, 9000 + pid, cvd, argv)
    out.append(shim("cu_init", pid, 9000 + pid, result=0))
    for ordinal, g in enumerate(gpus):
        out.append(shim("device", pid, 9000 + pid, ordinal=ordinal, name=g["name"], uuid=g["uuid"],
                        pci_bus_id=g["pci_bus_id"][4:]))
    return out


def board(events: list[Event]) -> LiveVerdicts:
    b = Board()
    for e in events:
        b.add(e)
    return b.live()


def used(uses: Any) -> list[tuple[str | None, str | None]]:
    return [(u.device, u.uuid) for u in uses if u.state == "used"]


SPLIT = ("llama_prepare_model_devices: using device CUDA0 (NVIDIA H100 80GB HBM3) (0000:01:00.0) - 80552 MiB free",
         "llama_prepare_model_devices: using device CUDA1 (NVIDIA A100-SXM4-40GB) (0000:41:00.0) - 40000 MiB free",
         "load_tensors: offloaded 33/33 layers to GPU",
         "load_tensors:   CPU_Mapped model buffer size =   308.23 MiB",
         "load_tensors:        CUDA0 model buffer size = 30000.00 MiB",
         "load_tensors:        CUDA1 model buffer size = 15000.00 MiB")


class TestRunnerDevices:
    def test_split_runner_names_both_gpus_with_nvml_memory_per_gpu(self) -> None:
        """A runner under Ollama's `0,1`: log buffers per device, shim UUIDs per ordinal and NVML memory per GPU
        index agree: gpu, both GPUs used, each with its NVML index and bytes."""
        events = [started(), nvml_gpus(A, B), *log(*discovered(A, B)), *seen(300, "0,1", A, B,
                                                                          argv=["/x/llama-server", "--model", "/m"]),
                  *log(*SPLIT),
                  Event("nvml", "memory", 0.0, None, {
                      "gpus": [{"index": 0, "used": 30000 * MIB}, {"index": 1, "used": 15000 * MIB}],
                      "processes": [{"pid": 300, "gpu": 0, "used": 30000 * MIB, "type": "compute"},
                                    {"pid": 300, "gpu": 1, "used": 15000 * MIB, "type": "compute"}],
                      "pids_comparable": True})]
        v = next(iter(board(events).runners.values()))
        assert (v.outcome, v.cause) == ("gpu", "none")
        assert used(v.devices) == [("CUDA0", A["uuid"]), ("CUDA1", B["uuid"])]
        assert [(u.nvml_index, u.nvml_bytes, u.weights_mib) for u in v.devices] == \
            [(0, 30000 * MIB, 30000.0), (1, 15000 * MIB, 15000.0)]
        assert v.to_dict()["devices"][1]["uuid"] == B["uuid"]

    def test_runner_hidden_gpu_is_ollamas_choice(self) -> None:
        """Ollama gave the runner only GPU B: A is listed as hidden by Ollama's filter, not the operator's."""
        events = [started(), nvml_gpus(A, B), *seen(300, "1", B, argv=["/x/llama-server", "--model", "/m"]),
                  *log("load_tensors: offloaded 33/33 layers to GPU",
                       "load_tensors:        CUDA0 model buffer size = 300.00 MiB")]
        v = next(iter(board(events).runners.values()))
        hidden = [u for u in v.devices if u.state == "hidden"]
        assert used(v.devices) == [("CUDA0", B["uuid"])]
        assert [(u.uuid, u.hidden_by) for u in hidden] == [(A["uuid"], "ollama: CUDA_VISIBLE_DEVICES=1 for this "
                                                                        "process")]

    def test_unused_gpu_without_a_filter_is_visible_not_hidden(self) -> None:
        """No filter on the runner: NVML's other GPU was there for CUDA, merely unused; it is not called hidden."""
        events = [started(), nvml_gpus(A, B), proc("runner_started", 300, 9300, cls="model_runner"),
                  *log(SPLIT[0], SPLIT[2], SPLIT[4])]
        v = judge(events)
        assert [(u.state, u.uuid, u.hidden_by) for u in v.devices] == [("used", A["uuid"], None),
                                                                       ("visible", B["uuid"], None)]

    def test_uuid_from_the_pci_bus_id_when_the_shim_is_absent(self) -> None:
        """No shim: llama.cpp's `using device CUDA0 (…) (0000:41:00.0)` and NVML's bus ids name the GPU."""
        events = [started(), nvml_gpus(A, B), proc("runner_started", 300, 9300, cls="model_runner"),
                  *log(SPLIT[1].replace("CUDA1", "CUDA0"), SPLIT[2], SPLIT[4])]
        v = judge(events)
        assert v.subject == "runner 300" and used(v.devices) == [("CUDA0", B["uuid"])]

    def test_index_mapped_through_nvml_only_in_pci_order(self) -> None:
        """No shim UUID and no bus id: the runner's `CUDA_VISIBLE_DEVICES=1` maps to B with PCI_BUS_ID order, and to
        no UUID in CUDA's default order (fastest first is not NVML's order)."""
        lines = log("load_tensors: offloaded 33/33 layers to GPU",
                    "load_tensors:        CUDA0 model buffer size = 300.00 MiB")
        proc = runner(300, 9300, "1", ["/x/llama-server", "--model", "/m"])
        pci = board([started({"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}), nvml_gpus(A, B), *proc, *lines])
        default = board([started(), nvml_gpus(A, B), *proc, *lines])
        assert used(next(iter(pci.runners.values())).devices) == [("CUDA0", B["uuid"])]
        assert used(next(iter(default.runners.values())).devices) == [("CUDA0", None)]

    def test_partial_offload_names_the_gpu_that_lacked_room(self) -> None:
        """`explain` on a log: 20 of 33 layers, one GPU with 3900 MiB free: partial_offload names CUDA0 as full."""
        v = judge(log("llama_prepare_model_devices: using device CUDA0 (NVIDIA T4) (0000:02:00.0) - 3900 MiB free",
                      "load_tensors: offloaded 20/33 layers to GPU",
                      "load_tensors:   CPU_Mapped model buffer size =  2000.00 MiB",
                      "load_tensors:        CUDA0 model buffer size =  3500.00 MiB"))
        assert (v.outcome, v.cause) == ("partial_offload", "insufficient_vram")
        assert [(u.device, u.name, u.free_mib, u.lacked_room) for u in v.devices] == \
            [("CUDA0", "NVIDIA T4", 3900, True)]
        assert any("CUDA0 (0000:02:00.0) (3900 MiB free at load) lacked room" in n for n in v.notes)

    def test_layers_per_device_are_counted(self) -> None:
        """llama.cpp's debug `layer N assigned to device X` lines give the layers each GPU holds."""
        lines = [f"load_tensors: layer {i:3d} assigned to device CUDA{i // 20}, is_swa = 0" for i in range(32)]
        v = judge(log(*lines, "load_tensors: offloaded 33/33 layers to GPU", *SPLIT[4:]))
        assert [(u.device, u.layers) for u in v.devices] == [("CUDA0", 20), ("CUDA1", 12)]


class TestDiscoveryFilter:
    def test_operator_index_filter_hides_a_gpu_as_their_choice(self) -> None:
        """CUDA_VISIBLE_DEVICES=1 in PCI order: discovery is gpu/none; A is hidden by the operator, by UUID."""
        env = {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        lv = board([started(env), nvml_gpus(A, B), *seen(201, "1", B), *log(*discovered(B))])
        v = lv.discovery
        assert (v.outcome, v.cause) == ("gpu", "none")
        assert [(u.state, u.uuid, u.hidden_by) for u in v.devices] == [
            ("discovered", B["uuid"], None), ("hidden", A["uuid"], "operator: CUDA_VISIBLE_DEVICES=1")]
        assert any("operator's choice" in n for n in v.notes)

    def test_scheduler_allocation_is_named_as_the_hider(self) -> None:
        """Under Slurm the hidden GPU is the scheduler's allocation, named with its variable."""
        env = {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "SLURM_JOB_GPUS": "1"}
        v = board([started(env), nvml_gpus(A, B), *seen(201, "1", B), *log(*discovered(B))]).discovery
        assert next(u.hidden_by for u in v.devices if u.state == "hidden").startswith("scheduler (SLURM_JOB_GPUS=1)")

    def test_stale_entry_before_a_listed_gpu_is_a_degraded_path(self) -> None:
        """`A,<stale>,B`: CUDA stops at the stale entry and B is hidden although listed: gpu with
        device_filter_hides_gpu; the remedy (listed) drops the stale entry and adds nothing."""
        value = f"{A['uuid']},{STALE},{B['uuid']}"
        lv = board([started({"CUDA_VISIBLE_DEVICES": value}), nvml_gpus(A, B), *seen(201, value, A),
                    *log(*discovered(A))])
        assert (lv.discovery.outcome, lv.discovery.cause) == ("gpu", "device_filter_hides_gpu")
        ctx = RemedyContext(env={"CUDA_VISIBLE_DEVICES": value}, may_override=frozenset({"CUDA_VISIBLE_DEVICES"}),
                            gpus=lv.gpus, cuda_saw=lv.cuda_saw)
        assert remedy_for("device_filter_hides_gpu", ctx).patch == {"CUDA_VISIBLE_DEVICES": f"{A['uuid']},{B['uuid']}"}

    def test_stale_entry_found_from_cudas_answer_without_nvml(self) -> None:
        """No NVML: the shim saw one device for three entries and the log discovered one: the second entry is the
        stale one, and LiveVerdicts carries what CUDA showed for the remedy."""
        value = f"{A['uuid']},{STALE},GPU-bbbb"
        lv = board([started({"CUDA_VISIBLE_DEVICES": value}), *seen(201, value, A), *log(*discovered(A))])
        assert lv.discovery.cause == "device_filter_hides_gpu" and lv.cuda_saw == (A["uuid"],)

    def test_partial_enumeration_is_not_read_as_a_stale_entry(self) -> None:
        """The shim saw one device but the log discovered two: the driver's answer is incomplete, nothing is
        inferred, and the filter stays the operator's choice."""
        value = f"{A['uuid']},{B['uuid']}"
        lv = board([started({"CUDA_VISIBLE_DEVICES": value}), *seen(201, value, A), *log(*discovered(A, B))])
        assert lv.cuda_saw is None and lv.discovery.cause == "none"

    def test_only_stale_entries_are_never_widened(self) -> None:
        """Every entry stale (CUDA shows nothing): a listed filter is not unset to every GPU; advice instead."""
        ctx = RemedyContext(env={"CUDA_VISIBLE_DEVICES": STALE}, may_override=frozenset({"CUDA_VISIBLE_DEVICES"}),
                            gpus=board([nvml_gpus(A, B)]).gpus)
        plan = remedy_for("device_filter_hides_gpu", ctx)
        assert plan.patch is None and "never widened" in plan.why_no_patch

    def test_scheduler_filter_is_never_narrowed_or_widened(self) -> None:
        """Under a Slurm step allocation even a listed, stale filter is left as it is."""
        value = f"{A['uuid']},{STALE},{B['uuid']}"
        env = {"CUDA_VISIBLE_DEVICES": value, "SLURM_STEP_GPUS": "0,1"}
        ctx = RemedyContext(env=env, may_override=frozenset({"CUDA_VISIBLE_DEVICES"}),
                            gpus=board([nvml_gpus(A, B)]).gpus)
        plan = remedy_for("device_filter_hides_gpu", ctx)
        assert plan.patch is None and "scheduler" in plan.why_no_patch
