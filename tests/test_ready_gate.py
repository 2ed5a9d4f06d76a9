"""READY=1 and Ollama's discovery lines: a verdict the shim and /proc settled early still waits for the log's own
account of the GPUs (it carries the device filter's reading), briefly; without a verdict it waits for the lines."""

from __future__ import annotations

from typing import Any, cast

from launcher.controller import DISCOVERY_LINES_GRACE, Controller
from launcher.events import Event
from launcher.ollama_logs import parse_text
from tests.test_evidence_live import DISCOVERY_ARGV, cuda_ok, nvml_gpus, runner, started

T = "time=2026-11-25T21:08:40.388Z level=INFO "
VERSION = f'{T}source=routes.go:2008 msg="Listening on 127.0.0.1:11434 (version 0.32.15)"\n'
FOUND = (f'{T}source=types.go:50 msg="inference compute" id=0 filter_id=0 library=CUDA compute=9.0 name=CUDA0 '
         'description="NVIDIA H100 80GB HBM3" libdirs=ollama,cuda_v13 driver=13.0 pci_id=0000:00:06.0 type=discrete '
         'total="79.2 GiB" available="78.7 GiB"\n')


def gate(events: list[Event]) -> Controller:
    c = Controller(settings=cast(Any, None), budget=cast(Any, None), log=None)
    for e in events:
        c.board.add(e)
    c.verdicts = c.board.live()
    return c


def early_gpu() -> list[Event]:
    """Generation D, a discovery probe whose shim already showed CUDA working, no `inference compute` line yet."""
    return [started(), nvml_gpus(), *parse_text(VERSION), *runner(300, 6000, argv=DISCOVERY_ARGV),
            *cuda_ok(300, 6000)]


class TestReadyGate:
    def test_an_early_verdict_waits_for_the_discovery_lines(self) -> None:
        """Seen in the 2-GPU run's mock twin: READY went out on the shim's early `gpu`, and the stale filter that
        Ollama's discovery lines revealed was then fixed after clients had been told."""
        c = gate(early_gpu())
        assert c.verdicts is not None and c.verdicts.discovery.outcome == "gpu"
        assert not c.ready_gate(0.5)
        assert c.ready_gate(DISCOVERY_LINES_GRACE + 0.1)  # the lines never came: the verdict is enough

    def test_the_discovery_lines_release_it_at_once(self) -> None:
        c = gate([*early_gpu(), *parse_text(FOUND)])
        assert c.ready_gate(0.1)

    def test_no_verdict_and_no_lines_waits(self) -> None:
        c = gate([started(), *parse_text(VERSION)])
        assert not c.ready_gate(DISCOVERY_LINES_GRACE + 0.1)
