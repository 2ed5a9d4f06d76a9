"""Device filters in UUIDs: what a CUDA_VISIBLE_DEVICES value shows, hides and names in vain, and its narrowest fix."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

ORDER_VAR: Final = "CUDA_DEVICE_ORDER"
PCI_ORDER: Final = "PCI_BUS_ID"
# A value that hides every device is the operator choosing the CPU, not a filter to read or correct.
HIDE_ALL: Final = frozenset({"", "-1", "none", "void", "NoDevFiles"})
_LEGACY_MIG: Final = re.compile(r"^MIG-(GPU-[0-9A-Fa-f-]+)/\d+/\d+$")  # MIG-GPU-<uuid>/<gi>/<ci> (CUDA 11.0–11.x)


@dataclass(frozen=True, slots=True)
class Gpu:
    """One physical GPU as NVML lists it: NVML index (PCI bus order), UUID, bus id, name, its MIG instances."""

    index: int
    uuid: str
    pci_bus_id: str | None = None
    name: str | None = None
    mig: tuple[str, ...] = ()  # MIG-… UUIDs of its instances, when known
    mig_mode: bool | None = False  # None: NVML could not say


@dataclass(frozen=True, slots=True)
class Token:
    """One entry of a filter: its kind, the UUID it names (None: unknown), and how that was decided."""

    text: str
    kind: str  # "index" | "uuid" | "mig" | "bad"
    uuid: str | None
    exists: bool | None  # True: names a device here; False: names none (stale, out of range); None: cannot say
    why: str


@dataclass(frozen=True, slots=True)
class FilterReading:
    """A filter read the way the CUDA driver reads it: entries in order, parsing stops at the first entry that names
    no device (or repeats one), so later entries are ignored even when they are right."""

    var: str
    value: str
    tokens: tuple[Token, ...]
    visible: tuple[Token, ...]  # the entries CUDA uses, in CUDA ordinal order
    stale: tuple[Token, ...]  # the entries proven to name nothing here (or repeats)
    ignored: tuple[Token, ...]  # entries after the first stale one: the driver never reads them
    hidden: tuple[str, ...]  # UUIDs of GPUs (of those known) that the filter leaves out
    notes: tuple[str, ...]

    @property
    def cuts_off(self) -> bool:
        """A stale entry makes CUDA ignore entries the operator listed after it."""
        return bool(self.stale) and any(t.exists is not False for t in self.ignored)


def split(value: str) -> list[str]:
    """The entries of a filter value, as the driver splits them (commas; surrounding blanks dropped)."""
    return [t.strip() for t in value.split(",") if t.strip()]


def order_known(env: Mapping[str, str | None]) -> bool:
    """CUDA numbers devices in PCI bus order (NVML's order) only with CUDA_DEVICE_ORDER=PCI_BUS_ID; its default,
    FASTEST_FIRST, puts the fastest device first and leaves the rest unspecified."""
    return (env.get(ORDER_VAR) or "").strip() == PCI_ORDER


def cuda_order(gpus: Sequence[Gpu], env: Mapping[str, str | None]) -> tuple[Gpu, ...] | None:
    """The GPUs in CUDA's default numbering, or None when it cannot be known (fastest-first with several GPUs)."""
    if not gpus:
        return None
    by_bus = tuple(sorted(gpus, key=lambda g: ((g.pci_bus_id or "").lower(), g.index)))
    if order_known(env) or len(gpus) == 1:
        return by_bus
    return None


def _uuid_matches(text: str, gpus: Sequence[Gpu]) -> list[tuple[str, str]]:
    """(kind, uuid) of every GPU or MIG instance whose UUID starts with `text` (the driver accepts a unique prefix)."""
    low = text.lower()
    found = [("uuid", g.uuid) for g in gpus if g.uuid.lower().startswith(low)]
    found += [("mig", m) for g in gpus for m in g.mig if m.lower().startswith(low)]
    return found


def read_token(text: str, gpus: Sequence[Gpu] | None, order: Sequence[Gpu] | None) -> Token:
    """One entry against the GPUs NVML lists (None: not known) and CUDA's numbering (None: not known)."""
    if text.isdigit():
        i = int(text)
        if order is not None and i < len(order):
            return Token(text, "index", order[i].uuid, True, f"CUDA index {i} = {order[i].uuid}")
        if gpus is not None and i >= len(gpus):
            return Token(text, "index", None, False, f"index {i}: this machine has {len(gpus)} GPU(s)")
        why = "CUDA's default order is fastest first, not NVML's PCI order: set CUDA_DEVICE_ORDER=PCI_BUS_ID or " \
              "use UUIDs" if gpus else "NVML is not available to map it"
        return Token(text, "index", None, None, f"index {i} not mapped to a UUID: {why}")
    if not text.startswith(("GPU-", "MIG-")):
        return Token(text, "bad", None, False, "neither an index nor a GPU-/MIG- UUID")
    legacy = _LEGACY_MIG.match(text)
    kind = "mig" if text.startswith("MIG-") else "uuid"
    if gpus is None:
        return Token(text, kind, text, None, "NVML is not available to check it")
    if legacy:
        parents = _uuid_matches(legacy[1], gpus)
        if len(parents) == 1:
            return Token(text, "mig", text, True, f"a MIG instance of {parents[0][1]} (legacy MIG-GPU- form)")
        return Token(text, "mig", None, False, f"no GPU {legacy[1]} here")
    found = _uuid_matches(text, gpus)
    if len(found) == 1:
        kind, uuid = found[0]
        return Token(text, kind, uuid, True, "matches " + uuid if uuid != text else "names a device here")
    if len(found) > 1:
        return Token(text, "uuid", None, False, f"an ambiguous prefix of {len(found)} UUIDs")
    if text.startswith("MIG-") and any(g.mig_mode is not False and not g.mig for g in gpus):
        return Token(text, "mig", text, None, "a MIG instance NVML did not list here: cannot check it")
    return Token(text, kind, None, False, "names no GPU on this machine")


def read_filter(value: str, gpus: Sequence[Gpu] | None, env: Mapping[str, str | None], *,
                var: str = "CUDA_VISIBLE_DEVICES", cuda_saw: Sequence[str] | None = None) -> FilterReading:
    """Read `value` the way the driver does. `gpus`: NVML's GPUs (None: NVML unavailable). `cuda_saw`: UUIDs CUDA
    showed to a process under this very filter, in ordinal order: the driver's own answer, which places the stale
    entry when NVML is unavailable, and overrules the stop-at-the-first-bad-entry rule when a driver read on."""
    order = cuda_order(gpus or (), env) if gpus else None
    tokens = tuple(read_token(t, gpus, order) for t in split(value))
    if cuda_saw is not None and gpus is None:
        tokens = _by_cuda_answer(tokens, cuda_saw)
    visible: list[Token] = []
    stale: list[Token] = []
    ignored: list[Token] = []
    named: set[str] = set()
    for i, tok in enumerate(tokens):
        repeat = tok.uuid is not None and tok.uuid in named
        if tok.exists is False or repeat:
            stale.append(tok if not repeat else Token(tok.text, tok.kind, tok.uuid, False, "repeats an entry"))
            ignored = list(tokens[i + 1:])
            break
        visible.append(tok)
        if tok.uuid is not None:
            named.add(tok.uuid)
    notes: list[str] = []
    if stale and cuda_saw is not None and gpus and _read_on(ignored, cuda_saw, gpus):
        # The driver showed a GPU listed after the entry that names nothing: it skipped that entry and read on.
        # Its answer beats the rule, so nothing is cut off (the stale entry is still reported).
        notes.append(f"{var}={value}: entry {stale[0].text!r} {stale[0].why}, but CUDA skipped it and showed the "
                     "GPUs listed after it")
        visible = [t for t in (*visible, *ignored) if t.exists is not False]
        ignored = []
    hidden: tuple[str, ...] = ()
    if gpus:
        if all(t.uuid is not None for t in visible):
            shown = {_parent(t.uuid, gpus) for t in visible if t.uuid is not None}
            hidden = tuple(g.uuid for g in sorted(gpus, key=lambda g: g.index) if g.uuid not in shown)
        else:
            notes.append(f"{var}={value}: " + next(t.why for t in visible if t.uuid is None))
    if stale:
        notes.append(f"{var}={value}: entry {stale[0].text!r} {stale[0].why}; CUDA stops reading there" +
                     (f", so {', '.join(t.text for t in ignored)} {'is' if len(ignored) == 1 else 'are'} ignored"
                      if ignored else ""))
    return FilterReading(var, value, tokens, tuple(visible), tuple(stale), tuple(ignored), hidden, tuple(notes))


def _read_on(ignored: Sequence[Token], saw: Sequence[str], gpus: Sequence[Gpu]) -> bool:
    """CUDA showed a GPU that only an entry after the first stale one names."""
    shown = {_parent(u, gpus) for u in saw}
    return any(t.uuid is not None and _parent(t.uuid, gpus) in shown for t in ignored)


def _parent(uuid: str, gpus: Iterable[Gpu]) -> str:
    """The GPU a MIG instance belongs to (the GPU itself for a GPU UUID)."""
    for g in gpus:
        if uuid == g.uuid or uuid in g.mig or uuid.startswith(f"MIG-{g.uuid}/"):
            return g.uuid
    return uuid


def _by_cuda_answer(tokens: tuple[Token, ...], saw: Sequence[str]) -> tuple[Token, ...]:
    """Without NVML: the first len(saw) entries are the ones CUDA used; the next one named nothing (the driver stops
    there); later ones are not known either way."""
    out = []
    for i, tok in enumerate(tokens):
        if i < len(saw):
            out.append(Token(tok.text, tok.kind, saw[i], True, f"CUDA showed {saw[i]} for it"))
        elif i == len(saw):
            out.append(Token(tok.text, tok.kind, None, False, "names no device CUDA could find"))
        else:
            out.append(tok)
    return tuple(out)


def narrowed(reading: FilterReading) -> tuple[str | None, str]:
    """(the corrected value, why) for a filter whose stale entry hides GPUs the operator listed after it: the stale
    entries dropped, nothing added. None when there is nothing to correct or nothing would be left: a filter is
    never widened beyond what the operator listed, least of all to every GPU."""
    if not reading.stale:
        return None, f"{reading.var}={reading.value} names only devices that exist: it is the operator's choice"
    keep: list[str] = []
    for tok in (*reading.visible, *reading.ignored):
        if tok.exists is False:
            continue
        text = tok.uuid if tok.uuid is not None and tok.kind != "index" else tok.text
        if text not in keep:
            keep.append(text)
    if not keep:
        return None, f"no entry of {reading.var}={reading.value} names a GPU on this machine: name one " \
                     "(`nvidia-smi -L`) or unset it; it is never widened to every GPU"
    if not reading.cuts_off:
        return None, f"{reading.var}={reading.value}: the stale entry hides no entry listed after it"
    return ",".join(keep), f"dropped {', '.join(t.text for t in reading.stale)}, which names no device"
