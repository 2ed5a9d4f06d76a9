"""Per-GPU evidence: which GPUs a runner (or discovery) used, saw or had hidden, in UUIDs, from log, shim and NVML."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from launcher import devices
from launcher.events import Event
from launcher.vocabulary import SCHEDULER_VARS

_GPU_NAME: Final = re.compile(r"^(CUDA|ROCm|Vulkan|SYCL|MUSA)(\d+)$")
CVD: Final = "CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True, slots=True)
class DeviceUse:
    """One GPU in a verdict: how the process numbered it, who it is (UUID, bus id), what it held, and why it was
    not visible when it was not."""

    device: str | None  # "CUDA1" as the process numbered it; None: not visible to the process
    state: str  # "used" | "visible" | "discovered" | "hidden"
    uuid: str | None = None
    pci_bus_id: str | None = None
    name: str | None = None
    nvml_index: int | None = None
    layers: int | None = None
    weights_mib: float | None = None
    free_mib: int | None = None  # free when the runner placed the model (llama.cpp's `using device` line)
    nvml_bytes: int | None = None  # GPU memory NVML attributes to the process on this GPU
    lacked_room: bool = False
    hidden_by: str | None = None
    sources: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {"device": self.device, "state": self.state, "uuid": self.uuid, "pci_bus_id": self.pci_bus_id,
                "name": self.name, "nvml_index": self.nvml_index, "layers": self.layers,
                "weights_mib": self.weights_mib, "free_mib": self.free_mib, "nvml_bytes": self.nvml_bytes,
                "lacked_room": self.lacked_room, "hidden_by": self.hidden_by, "sources": list(self.sources)}

    @property
    def label(self) -> str:
        """How a note names it: `CUDA1 (GPU-…)`."""
        who = self.uuid or self.pci_bus_id or self.name or "?"
        return f"{self.device} ({who})" if self.device else who


@dataclass
class _Draft:
    device: str | None
    data: dict[str, Any] = field(default_factory=dict)
    sources: set[str] = field(default_factory=set)

    def put(self, source: str, **values: Any) -> None:
        for k, v in values.items():
            if v is not None and self.data.get(k) is None:
                self.data[k] = v
        self.sources.add(source)


def nvml_gpus(nvml: Event | None) -> tuple[devices.Gpu, ...] | None:
    """NVML's GPUs from its `gpus` event, for the mapping module (None: NVML unavailable)."""
    if nvml is None or nvml.kind != "gpus":
        return None
    out = []
    for g in nvml.data.get("gpus") or ():
        if isinstance(g, Mapping) and isinstance(g.get("index"), int) and g.get("uuid"):
            out.append(devices.Gpu(int(g["index"]), str(g["uuid"]), g.get("pci_bus_id"), g.get("name"),
                                   tuple(str(m) for m in g.get("mig") or ()), g.get("mig_mode")))
    return tuple(out) or None


def _bus(text: Any) -> str:
    """PCI bus ids compared without domain width or case: `00000000:01:00.0` = `0000:01:00.0`."""
    return str(text or "").lower()[-7:]


def who_hid(process_cvd: str | None, operator: Mapping[str, str | None]) -> str:
    """Who set the filter that hides a GPU from a process: the scheduler, the operator, or Ollama itself."""
    scheduler = next((k for k in SCHEDULER_VARS if operator.get(k)), None)
    op = operator.get(CVD)
    if process_cvd is not None and process_cvd == op:
        if scheduler:
            return f"scheduler ({scheduler}={operator.get(scheduler)}): {CVD}={op}"
        return f"operator: {CVD}={op}"
    if process_cvd is not None:
        return f"ollama: {CVD}={process_cvd} for this process"
    return "not visible to CUDA"


def build(*, shim: Sequence[Event] = (), log: Sequence[Event] = (), layers: Mapping[str, int] | None = None,
          gpus: Sequence[devices.Gpu] | None = None, held: Mapping[int, int] | None = None,
          process_cvd: str | None = None, operator: Mapping[str, str | None] | None = None,
          discovery: bool = False) -> tuple[DeviceUse, ...]:
    """The GPUs of one subject. `shim`: its `device` events; `log`: its device, buffer and `using device` lines (or
    discovery's `gpu_discovered`); `layers`: layers per device name; `held`: NVML bytes per NVML index;
    `process_cvd`: the filter the process ran under; `operator`: the operator's variables."""
    operator = operator or {}
    drafts: dict[str, _Draft] = {}

    def draft(name: str) -> _Draft:
        return drafts.setdefault(name, _Draft(name))

    for e in shim:
        if isinstance(e.data.get("ordinal"), int):
            draft(f"CUDA{e.data['ordinal']}").put("shim", uuid=e.data.get("uuid"), name=e.data.get("name"),
                                                   pci_bus_id=e.data.get("pci_bus_id"))
    for e in log:
        same_bus = [d.device for d in drafts.values() if e.data.get("pci_id") and d.device is not None
                    and _bus(d.data.get("pci_bus_id")) == _bus(e.data["pci_id"])]
        _from_log(e, draft, discovery, same_bus[0] if same_bus else None)
    for name, count in (layers or {}).items():
        if _GPU_NAME.match(name):
            draft(name).put("log", layers=count)
    order = devices.cuda_order(gpus or (), operator) if gpus and process_cvd is None else None
    reading = devices.read_filter(process_cvd, gpus, operator) if process_cvd and gpus else None
    for name, d in drafts.items():
        m = _GPU_NAME.match(name or "")
        ordinal = int(m[2]) if m else -1
        if d.data.get("uuid") is None and gpus:
            by_bus = [g for g in gpus if d.data.get("pci_bus_id") and _bus(g.pci_bus_id) == _bus(d.data["pci_bus_id"])]
            if by_bus:
                d.put("nvml", uuid=by_bus[0].uuid)
            elif reading is not None and 0 <= ordinal < len(reading.visible):
                d.put("nvml", uuid=reading.visible[ordinal].uuid)
            elif order is not None and 0 <= ordinal < len(order):
                d.put("nvml", uuid=order[ordinal].uuid)
    out = [_finish(d, gpus, held, discovery) for d in sorted(drafts.values(), key=lambda d: _key(d.device))]
    seen = {x.uuid for x in out if x.uuid}
    if any(x.uuid is None for x in out):
        return tuple(out)  # a GPU the process used is not known by UUID: which of NVML's it left out is not either
    for g in sorted(gpus or (), key=lambda g: g.index):
        if g.uuid not in seen and not any(_parent_in(g, u) for u in seen):
            hidden = process_cvd is not None  # unfiltered: CUDA saw it, the process just did not use it
            out.append(DeviceUse(None, "hidden" if hidden else "visible", g.uuid, g.pci_bus_id, g.name, g.index,
                                 hidden_by=who_hid(process_cvd, operator) if hidden else None, sources=("nvml",)))
    return tuple(out)


def _parent_in(g: devices.Gpu, uuid: str) -> bool:
    return uuid in g.mig or uuid.startswith(f"MIG-{g.uuid}/")


def _key(name: str | None) -> tuple[str, int]:
    m = _GPU_NAME.match(name or "")
    return (m[1], int(m[2])) if m else (name or "", 0)


def _from_log(e: Event, draft: Any, discovery: bool, into: str | None) -> None:
    """One log event into the drafts; `into`: the device a discovered GPU already has (same PCI bus id)."""
    data = e.data
    if e.kind == "device_used" and _GPU_NAME.match(str(data.get("device", ""))):
        draft(data["device"]).put("log", name=data.get("name"), pci_bus_id=data.get("pci"),
                                  free_mib=data.get("free_mib"))
    elif e.kind == "device" and isinstance(data.get("index"), int):
        draft(f"CUDA{data['index']}").put("log", name=data.get("name"))
    elif e.kind == "buffer" and data.get("gpu") and _GPU_NAME.match(str(data.get("device", ""))):
        d = draft(str(data["device"]))
        d.data["weights_mib"] = (d.data.get("weights_mib") or 0.0) + float(data.get("mib") or 0.0)
        d.sources.add("log")
    elif e.kind == "gpu_discovered" and discovery:
        index = str(data.get("filter_id") or data.get("id") or "")
        name = into or (f"CUDA{index}" if index.isdigit() else str(data.get("id") or ""))
        uuid = data.get("id") if str(data.get("id", "")).startswith(("GPU-", "MIG-")) else None
        draft(name).put("log", name=data.get("name"), pci_bus_id=data.get("pci_id"), uuid=uuid, discovered=True)


def _finish(d: _Draft, gpus: Sequence[devices.Gpu] | None, held: Mapping[int, int] | None,
            discovery: bool) -> DeviceUse:
    x = d.data
    g = next((g for g in gpus or () if x.get("uuid") and (g.uuid == x["uuid"] or _parent_in(g, x["uuid"]))), None)
    nvml_bytes = (held or {}).get(g.index) if g is not None else None
    used = bool(x.get("layers")) or bool(x.get("weights_mib")) or bool(nvml_bytes)
    state = "used" if used else ("discovered" if discovery and x.get("discovered") else "visible")
    sources = d.sources | ({"nvml"} if nvml_bytes else set())
    return DeviceUse(d.device, state, x.get("uuid"), x.get("pci_bus_id") or (g.pci_bus_id if g else None),
                     x.get("name") or (g.name if g else None), g.index if g else None, x.get("layers"),
                     x.get("weights_mib"), x.get("free_mib"), nvml_bytes, False, None,
                     tuple(sorted(sources)))


def lacked_room(uses: Sequence[DeviceUse]) -> list[DeviceUse]:
    """The GPUs that ran out of room in a partial offload, fullest first (least free memory at load)."""
    full = [u for u in uses if u.lacked_room]
    return sorted(full, key=lambda u: (u.free_mib if u.free_mib is not None else 1 << 40))


def summary(uses: Sequence[DeviceUse]) -> str:
    """One line: `used CUDA0 (GPU-a, 10 layers), CUDA1 (GPU-b, 6 layers); hidden GPU-c (operator: …)`."""
    used = [u for u in uses if u.state == "used"]
    hidden = [u for u in uses if u.state == "hidden"]
    parts = []
    if used:
        parts.append("used " + ", ".join(u.label + (f" {u.layers} layers" if u.layers else "") for u in used))
    if hidden:
        parts.append("hidden " + ", ".join(f"{u.label} ({u.hidden_by})" for u in hidden))
    return "; ".join(parts)


def with_room(uses: Sequence[DeviceUse], partial: bool) -> tuple[DeviceUse, ...]:
    """The same uses, with `lacked_room` set on the used GPUs when the load was a partial offload."""
    return tuple(replace(u, lacked_room=partial and u.state == "used") for u in uses)
