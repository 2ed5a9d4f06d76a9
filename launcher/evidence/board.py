"""The board: the handler table, the tiers, and Board, which feeds each event to its handler and asks the tiers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final

from launcher.events import Event
from launcher.evidence.facts import Facts, Handler, Verdict
from launcher.evidence.live import LiveVerdicts, _has_live, live_tier, live_verdicts
from launcher.evidence.live_facts import LIVE_HANDLERS, _on_machine
from launcher.evidence.log_facts import (
    _on_amd,
    _on_backend_failed,
    _on_config,
    _on_cuda_init_failed,
    _on_device,
    _on_discovered,
    _on_exited,
    _on_failure,
    _on_filter,
    _on_finding,
    _on_generation,
    _on_gpu_libraries,
    _on_layer,
    _on_library_failed,
    _on_no_gpu,
    _on_note,
    _on_nvml_failed,
    _on_override,
    _on_plan,
    _on_problem,
    _on_report,
    _on_runner_ready,
    _on_runners,
    _on_selected,
    _on_start,
    _on_summary,
    _on_verbosity,
)
from launcher.evidence.log_tier import log_tier

HANDLERS: Final[Mapping[tuple[str, str], Handler]] = {
    **LIVE_HANDLERS,
    ("supervisor", "machine"): _on_machine,
    ("log", "generation"): _on_generation,
    ("log", "parse_summary"): _on_summary,
    ("log", "server_config"): _on_config,
    ("log", "gpu_discovered"): _on_discovered,
    ("log", "no_gpu"): _on_no_gpu,
    ("log", "device_filter"): _on_filter,
    ("log", "gpu_dropped"): _on_problem("discovery"),
    ("log", "discovery_failed"): _on_problem("discovery"),
    ("log", "library_skipped"): _on_problem("config"),
    ("log", "library_failed"): _on_library_failed,
    ("log", "cuda_init_failed"): _on_cuda_init_failed,
    ("log", "nvml_failed"): _on_nvml_failed,
    ("log", "cpu_lacks_avx"): lambda f, e: f.add_problem("cpu_lacks_avx", e, "install"),
    ("log", "stub_warning"): _on_problem("discovery"),
    ("log", "runners_available"): _on_runners,
    ("log", "gpu_libraries"): _on_gpu_libraries,
    ("log", "amd_detected"): _on_amd,
    ("log", "gfx_override"): lambda f, e: setattr(f, "gfx_override", True),
    ("log", "library_override"): _on_override,
    ("log", "offload_plan"): _on_plan,
    ("log", "placement_plan"): _on_plan,
    ("log", "load_request"): _on_plan,
    ("log", "scheduler_selected"): _on_selected,
    ("log", "runner_start"): _on_start,
    ("log", "runner_ready"): _on_runner_ready,
    ("log", "runner_failed"): _on_failure,
    ("log", "runner_crash"): _on_failure,
    ("log", "runner_exited"): _on_exited,
    ("log", "runner_devices"): _on_report,
    ("log", "device"): _on_device,
    ("log", "device_used"): _on_report,
    ("log", "layer_assigned"): _on_layer,
    ("log", "backend_loaded"): _on_report,
    ("log", "backend_failed"): _on_backend_failed,
    ("log", "runner_system"): _on_report,
    ("log", "offload"): _on_report,
    ("log", "buffer"): _on_report,
    ("log", "weights"): _on_report,
    ("log", "compute_graph"): _on_report,
    ("log", "runner_no_gpu"): lambda f, e: None,
    ("log", "log_verbosity"): _on_verbosity,
    ("log", "low_vram_mode"): _on_note("'entering low vram mode' only changes default context sizes; it is not a "
                                       "CPU fallback"),
    ("log", "estimate_fallback"): _on_note("llama-server VRAM tracking found no buffer sizes: `ollama ps` shows the "
                                           "model file size as 100% GPU, which proves nothing"),
    ("log", "model_load_failed"): _on_finding("the model file could not be loaded (broken or truncated blob)"),
    ("log", "ld_preload_failed"): _on_finding("an LD_PRELOAD object could not be preloaded"),
}


# Tiers, most demanding first: a tier decides when the sources it needs are present. With shim, /proc or NVML events
# the live tier decides (`serve`, replays of its recordings); `explain` has only logs, so the log tier decides.
Tier = tuple[str, Callable[[Facts], bool], Callable[[Facts], Verdict]]
TIERS: Final[tuple[Tier, ...]] = (("live", _has_live, live_tier), ("log", lambda f: True, log_tier))


class Board:
    """Accumulates events from every source and answers with a verdict; feeding the same events gives the same one."""

    def __init__(self) -> None:
        self.facts = Facts()
        self.ignored = 0
        self.starts = 0

    def add(self, event: Event) -> None:
        """Take one event; kinds no handler knows are counted, never an error. Each `ollama_started` after the first
        begins a fresh set of facts: verdicts are about the Ollama that runs now (a restart re-verifies)."""
        if event.source == "supervisor" and event.kind == "ollama_started":
            self.starts += 1
            if self.starts > 1:  # machine facts outlive a restart of Ollama
                machine, nvml = self.facts.live.machine, self.facts.live.nvml
                self.facts = Facts()
                self.facts.live.machine, self.facts.live.nvml = machine, nvml
        live = self.facts.live
        live.seq += 1
        if event.source == "log":
            live.log_seq = live.seq
        self.facts.sources.add(event.source)
        handler = HANDLERS.get((event.source, event.kind))
        if handler is None:
            self.ignored += 1
            return
        handler(self.facts, event)

    def verdict(self) -> Verdict:
        """The verdict of the first tier whose sources are present."""
        for _name, applies, decide in TIERS:
            if applies(self.facts):
                return decide(self.facts)
        return Verdict("unknown", "unknown", visible=False)

    def live(self) -> LiveVerdicts:
        """Discovery's verdict and each model runner's, by (pid, start time) in start order (for `serve`/`status`)."""
        return live_verdicts(self.facts)


def judge(events: Iterable[Event]) -> Verdict:
    """The verdict of an event stream (pure: the same events always give the same verdict)."""
    board = Board()
    for event in events:
        board.add(event)
    return board.verdict()
