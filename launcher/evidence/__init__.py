"""The evidence board: a pure function from an Event stream to a verdict, its cause and the lines that prove it.

The package, one job a module: `facts` (the types a verdict is built from and their helpers), `log_facts` (log events
into facts), `log_tier` (placement and the log-only verdict), `live_facts` (shim, /proc, NVML and supervisor events
into per-process facts), `signals` (what each live source says about one process), `decide` (signals combined into a
verdict), `live` (discovery's and each runner's verdict, the device-filter reading) and `board` (the handler table, the
tiers, `Board` and `judge`). Imports run one way, in that order.
"""

from launcher.evidence.board import HANDLERS, TIERS, Board, judge
from launcher.evidence.facts import (
    CAUSE_PRIORITY,
    EXPECTED_CPU_CAUSES,
    HIDE_ALL_VALUES,
    Evidence,
    Facts,
    Live,
    Problem,
    Proc,
    Runner,
    Signal,
    Verdict,
)
from launcher.evidence.live import (
    LiveVerdicts,
    cuda_discovered,
    cuda_saw,
    discovery_verdict,
    live_tier,
    live_verdicts,
    runner_verdict,
)
from launcher.evidence.log_tier import Placement, log_tier, placement

__all__ = [
    "CAUSE_PRIORITY", "EXPECTED_CPU_CAUSES", "HANDLERS", "HIDE_ALL_VALUES", "TIERS", "Board", "Evidence", "Facts",
    "Live", "LiveVerdicts", "Placement", "Problem", "Proc", "Runner", "Signal", "Verdict", "cuda_discovered",
    "cuda_saw", "discovery_verdict", "judge", "live_tier", "live_verdicts", "log_tier", "placement", "runner_verdict",
]
