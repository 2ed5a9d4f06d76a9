"""The supervisor's view of per-GPU health (issue 16): folds the NVML thread's `gpu_health` and `xid` events into
what `status` shows per GPU, the advice for an unhealthy GPU, and whether readiness must fail.

Pure and replayable like the board: no NVML, no clock. Operator contract: health never restarts Ollama by itself;
`driver_mismatch` and `lost` keep readiness up (Ollama still serves, on the CPU or the other GPUs) and are advised;
`access_denied` inside a container fails readiness, because restarting the container is what restores the devices.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from launcher import causes
from launcher.events import Event, thaw
from launcher.gpu_health import ABSENT, ACCESS_DENIED, CAUSE, DEGRADED, DRIVER_MISMATCH, LOST, OK
from launcher.resume_cuda import ResumeCuda, break_advice

# Worst first: the one state a summary line names.
SEVERITY: Final = (ACCESS_DENIED, DRIVER_MISMATCH, LOST, ABSENT, DEGRADED, OK)


@dataclass
class HealthBoard:
    """Per-GPU health as last reported, and Xid counts per (GPU index, Xid)."""

    in_container: bool = False
    gpus: dict[str, dict[str, Any]] = field(default_factory=dict)  # uuid -> GpuHealth.to_dict()
    xids: Counter[tuple[int, int]] = field(default_factory=Counter)
    nvml_was_unavailable: bool = False
    gpus_appeared: bool = False  # NVML listed GPUs after it had been unavailable (the boot race, a late driver)
    resumes: list[dict[str, Any]] = field(default_factory=list)  # the newest few host resumes: {t, slept}
    cuda: ResumeCuda = field(default_factory=ResumeCuda)  # cuInit before and after each resume, reloads of uvm
    may_reload_uvm: bool = False  # OGPU_MAY_RELOAD_UVM: the advice says whether ollama-gpu reloads nvidia_uvm
    resume_signal: dict[str, Any] | None = None  # logind's listener: {via, tool, state}; None: the clock gap only

    @property
    def cuda_probe(self) -> dict[str, Any] | None:
        """The newest CUDA init probe (after a resume or a reload), with its change from before."""
        return self.cuda.probe

    def add(self, event: Event) -> bool:
        """Take an event; True when it was a health event (others are ignored)."""
        if self.cuda.add(event) and event.source == "shim":
            return False  # a shim event is the board's too; here it only tells what cuInit returned
        if event.source == "supervisor" and event.kind in ("cuda_probe", "uvm_reload"):
            return True
        if event.source == "supervisor" and event.kind == "resume_signal":
            self.resume_signal = thaw(event.data)
            return True
        if event.source == "supervisor" and event.kind == "resumed":
            self.resumes = [*self.resumes[-4:], {"t": event.t, "slept": event.data.get("slept"),
                                                 "via": event.data.get("via"), "gap": event.data.get("gap")}]
            return True
        if event.source != "nvml":
            return False
        if event.kind == "unavailable":
            self.nvml_was_unavailable = True
            return False
        if event.kind == "gpus":
            if self.nvml_was_unavailable and event.data.get("gpus"):
                self.gpus_appeared = True
            return False
        if event.kind == "gpu_health":
            listed = event.data.get("gpus")
            if isinstance(listed, (list, tuple)):
                self.gpus = {str(g.get("uuid")): thaw(g) for g in listed if isinstance(g, Mapping)}
            return True
        if event.kind == "xid":
            index, xid = event.data.get("index"), event.data.get("xid")
            if isinstance(index, int) and isinstance(xid, int):
                self.xids[(index, xid)] += 1
            return True
        return False

    @property
    def state(self) -> str | None:
        """The worst GPU state, None before the first check."""
        states = [str(g.get("state")) for g in self.gpus.values()]
        known = [s for s in SEVERITY if s in states]
        return known[0] if known else None

    def unhealthy(self) -> list[dict[str, Any]]:
        """The GPUs not `ok`, by index."""
        return sorted((g for g in self.gpus.values() if g.get("state") != OK), key=lambda g: int(g.get("index", 0)))

    def advice(self) -> list[str]:
        """One line per unhealthy state: what happened and what the operator does (never a restart by us)."""
        out: list[str] = []
        broken = self.cuda.broken
        if broken is not None:
            row = causes.CAUSES_BY_LABEL.get(str(broken.get("cause"))) if broken.get("cause") else None
            row_text = row.advice + " " + " ".join(step.text for step in row.steps) if row is not None else ""
            line = break_advice(self.cuda, self.may_reload_uvm, row_text)
            if line:
                out.append(line)
        bad = self.unhealthy()
        for state in SEVERITY:
            which = [g for g in bad if g.get("state") == state]
            if not which:
                continue
            names = ", ".join(f"GPU {g.get('index')} ({g.get('uuid')})" for g in which)
            if state == DEGRADED:
                out.append(f"{names}: {which[0].get('reason')}; check `sudo dmesg | grep -i xid` and "
                           "`nvidia-smi -q -d ECC` (the GPU still answers)")
                continue
            line = f"{names}: {causes.row(CAUSE[state]).advice}"
            healthy = len(self.gpus) - len(bad)
            if state in (LOST, ABSENT) and healthy > 0:
                line += (f" {healthy} other GPU(s) remain: until it is fixed, exclude it with "
                         f"CUDA_VISIBLE_DEVICES listing the others.")
            out.append(line)
        return out

    def readiness_failure(self) -> str | None:
        """Why `status --ready` must fail: only revoked device access inside a container (the orchestrator's
        restart restores it); everything else keeps Ollama serving and is advised."""
        if not self.in_container:
            return None
        denied = [g for g in self.gpus.values() if g.get("state") == ACCESS_DENIED]
        if not denied:
            return None
        return (f"GPU access lost inside the container ({len(denied)} GPU(s), NVML: "
                f"{denied[0].get('reason') or 'Unknown Error'}): restart the container to restore the devices")

    def to_dict(self) -> dict[str, Any]:
        """The `gpu_health` part of status."""
        return {"state": self.state, "gpus": sorted(self.gpus.values(), key=lambda g: int(g.get("index", 0))),
                "xids": [{"gpu": i, "xid": x, "count": n} for (i, x), n in sorted(self.xids.items())],
                "advice": self.advice(),
                "degraded": self.state not in (None, OK) or self.cuda.broken is not None,
                "cuda_probe": self.cuda_probe, "resume_break": self.cuda.broken, "uvm_reload": self.cuda.reload,
                "in_container": self.in_container, "resumes": list(self.resumes),
                "resume_signal": self.resume_signal}



def read_boot_id(path: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
    """This boot's id ("" when unreadable): a once-per-boot remedy keys its budget entry on it."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def in_container(env: Mapping[str, str], root: str = "/") -> bool:
    """Docker (/.dockerenv), Podman (/run/.containerenv), Kubernetes (KUBERNETES_SERVICE_HOST), or a container
    runtime named in PID 1's cgroup."""
    base = Path(root)
    if env.get("KUBERNETES_SERVICE_HOST") or (base / ".dockerenv").exists() or \
            (base / "run" / ".containerenv").exists():
        return True
    try:
        cgroup = (base / "proc" / "1" / "cgroup").read_text(errors="replace")
    except OSError:
        return False
    return any(word in cgroup for word in ("docker", "kubepods", "containerd", "libpod", "crio"))

