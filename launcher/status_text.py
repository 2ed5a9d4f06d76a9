"""`ollama-gpu status` as an operator reads it: sentences and aligned tables, never a Python dict, list or None.

The status document comes from another process (a possibly newer or older supervisor), so every field is read
defensively and every value goes through `text()`; keys this version does not know are still shown, as text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

MAX_EVIDENCE: Final = 5
MAX_TEXT: Final = 150
# "memory" (every runner's memory account) is shown under each runner that has one.
KNOWN_KEYS: Final = frozenset({"running", "state", "mode", "ready", "discovery_acceptable", "ollama", "discovery",
                               "runners", "remedies", "crash_restarts", "restarts", "what_to_do", "memory",
                               "gpu_health", "readiness_failure", "restart_container"})
MAX_MEMORY_ADVICE: Final = 4
DEVICE_COLUMNS: Final = (("device", "device"), ("state", "state"), ("uuid", "UUID"), ("pci_bus_id", "bus id"),
                         ("name", "name"), ("weights_mib", "weights MiB"), ("nvml_bytes", "NVML MiB"),
                         ("hidden_by", "hidden by"))


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """Any JSON value as plain words: '-' for nothing, yes/no, lists joined by commas, mappings as `key value`."""
    if value is None or value == "" or value == [] or value == {}:
        out = "-"
    elif isinstance(value, bool):
        out = "yes" if value else "no"
    elif isinstance(value, float):
        out = f"{value:.1f}".removesuffix(".0")
    elif isinstance(value, Mapping):
        out = "; ".join(f"{k} {text(v, limit)}" for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        out = ", ".join(text(v, limit) for v in value)
    else:
        out = str(value)
    out = " ".join(out.split())  # one line: a multi-line value never breaks the layout
    return out if len(out) <= limit else out[: limit - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> list[str]:
    """Columns aligned by their widest cell, cells through `text()`."""
    cells = [[text(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [indent + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return lines


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, (list, tuple)) else []


def _header(status: Mapping[str, Any]) -> str:
    ollama = _mapping(status.get("ollama"))
    version = text(ollama.get("version")) if ollama.get("version") else "of unknown version"
    generation = f", generation {text(ollama.get('generation'))}" if ollama.get("generation") else ""
    pid = f", pid {text(ollama.get('pid'))}" if ollama.get("pid") else ", not running"
    ready = "ready" if status.get("ready") else "not ready"
    return (f"Ollama {version}{generation}{pid}, on {text(ollama.get('host'))}: supervisor {text(status.get('state'))}"
            f" ({ready}), mode {text(status.get('mode'))}.")


def _devices(devices: list[Mapping[str, Any]]) -> list[str]:
    rows = []
    for d in devices:
        row = [d.get(key) for key, _title in DEVICE_COLUMNS]
        nvml = d.get("nvml_bytes")
        row[6] = round(nvml / (1 << 20)) if isinstance(nvml, int) and not isinstance(nvml, bool) else nvml
        rows.append(row)
    return ["  GPUs:", *table([title for _key, title in DEVICE_COLUMNS], rows, indent="    ")]


def _verdict(title: str, verdict: Mapping[str, Any]) -> list[str]:
    if verdict.get("pending"):
        out = [f"{title}: pending (no conclusive evidence yet; outcome {text(verdict.get('outcome') or 'unknown')})."]
    else:
        out = [f"{title}: {text(verdict.get('outcome') or 'unknown')} "
               f"(cause: {text(verdict.get('cause') or 'unknown')})."]
    if verdict.get("signals"):
        out.append(f"  Signals: {text(verdict.get('signals'))}.")
    evidence = _items(verdict.get("evidence"))
    if evidence:
        out.append("  Evidence:")
        for ev in evidence[:MAX_EVIDENCE]:
            where = f"line {text(ev.get('line'))}" if ev.get("line") is not None else text(ev.get("source"))
            said = text(ev.get("says"))
            out.append(f"    - {where}: {said}" + (f": {text(ev.get('text'))}" if ev.get("text") else ""))
        if len(evidence) > MAX_EVIDENCE:
            out.append(f"    ({len(evidence) - MAX_EVIDENCE} more in `ollama-gpu status --json`)")
    for key, label in (("disagreement", "Sources disagree"), ("notes", "Note"), ("findings", "Also")):
        values = verdict.get(key)
        for value in values if isinstance(values, (list, tuple)) else ([values] if values else []):
            out.append(f"  {label}: {text(value, 300)}")
    devices = _items(verdict.get("devices"))
    if devices:
        out += _devices(devices)
    out += _memory(verdict.get("memory"))
    return out


def _health(health: Mapping[str, Any], not_ready: Any) -> list[str]:
    """Issue 16: each GPU's health once the first check ran, its Xids, the probe after a resume, the advice."""
    gpus = _items(health.get("gpus"))
    if not gpus:
        return []
    out = [f"GPU health: {text(health.get('state'))}" + (" (degraded)." if health.get("degraded") else ".")]
    out += table(["GPU", "UUID", "state", "why"],
                 [[g.get("index"), g.get("uuid"), g.get("state"), g.get("reason")] for g in gpus])
    for x in _items(health.get("xids")):
        out.append(f"  Xid {text(x.get('xid'))} on GPU {text(x.get('gpu'))}: {text(x.get('count'))} time(s).")
    signal = _mapping(health.get("resume_signal"))
    if signal.get("state") == "listening":
        out.append(f"  Resumes: announced by logind ({text(signal.get('tool'))}), and the clock gap.")
    elif signal.get("state") == "given_up":
        out.append(f"  Resumes: the clock gap only ({text(signal.get('tool'))} on the system bus kept failing).")
    probe = _mapping(health.get("cuda_probe"))
    if probe:
        said = "CUDA initialises" if probe.get("ok") else text(probe.get("error"), 300) if probe.get("ok") is None \
            else f"CUDA fails: {text(probe.get('error'), 300)}"
        moment = "reload of nvidia_uvm" if probe.get("after") == "uvm_reload" else "resume"
        change = f" (cuInit {text(probe.get('change'))})" if probe.get("change") else ""
        out.append(f"  After the last {moment}: {said}{change}.")
    advice = health.get("advice")
    for line in advice if isinstance(advice, (list, tuple)) else []:
        out.append(f"  Advice: {text(line, 600)}")
    if not_ready:
        out.append(f"  Not ready: {text(not_ready, 400)}")
    return out


def _memory(memory: Any) -> list[str]:
    """A runner's memory account (why a model did not fit) and the changes that would make it fit, not applied."""
    if not isinstance(memory, Mapping):
        return []
    out = [f"  Memory: {text(memory.get('summary'), 400)}"]
    for c in _items(memory.get("advice"))[:MAX_MEMORY_ADVICE]:
        layers = f"{text(c.get('layers'))} of {text(c.get('layers_total'))} layers" if c.get("layers") is not None \
            else "layers not sized"
        fits = "fits" if c.get("fits") is True else "still partial" if c.get("fits") is False else "not sized"
        out.append(f"    Advised (not applied): {text(c.get('setting'))}: {layers}, {fits}.")
    return out


def _variables(item: Mapping[str, Any]) -> str:
    """What a remedy changed, in words: `LD_LIBRARY_PATH: added /usr/lib/nvidia` or `CUDA_VISIBLE_DEVICES unset`."""
    parts = []
    for var in _items(item.get("variables")):
        key = text(var.get("key"))
        if var.get("action") == "unset":
            parts.append(f"{key} unset (was {text(var.get('previous'))})")
        elif var.get("added") or var.get("removed"):
            moved = [f"added {text(var['added'])}"] if var.get("added") else []
            moved += [f"removed {text(var['removed'])}"] if var.get("removed") else []
            parts.append(f"{key}: {' and '.join(moved)}")
        else:
            parts.append(f"{key} set to {text(var.get('value'))}")
    return "; ".join(parts) if parts else text(item.get("changes"))


def _remedies(remedies: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    applied = _items(remedies.get("applied"))
    budget = _mapping(remedies.get("budget"))
    used = (f" Remedy restarts used: {text(budget.get('used', 0))} of {text(budget.get('max', 0))} (a remedy "
            "applied before start needs no restart and is not counted)." if budget else "")
    if applied:
        out.append(f"Remedies applied: {len(applied)}.{used}")
        out += table(["at", "when", "subject", "cause", "what changed"],
                     [[a.get("at"), a.get("when"), a.get("subject"), a.get("cause"), _variables(a)] for a in applied])
        for a in applied:
            value = [v for v in _items(a.get("variables")) if v.get("action") == "set"]
            values = "; ".join(f"{text(v.get('key'))}={text(v.get('value'), 300)}" for v in value)
            out.append(f"  {text(a.get('cause'))}: {text(a.get('reason'), 300)}."
                       + (f" Now {values}." if values else ""))
    else:
        out.append(f"No remedy applied.{used}")
    failed = _mapping(budget.get("write_error"))
    if failed:
        out.append(f"Remedy history not saved: writing {text(failed.get('path'))} failed ({text(failed.get('errno'))}: "
                   f"{text(failed.get('error'))}); it is kept in memory until ollama-gpu restarts.")
    if budget.get("load_error"):
        out.append(f"Remedy history could not be read at start ({text(budget.get('load_error'), 300)}): the budget "
                   "started fresh.")
    for a in _items(remedies.get("advised")):
        what = a.get("instruction") or a.get("advice")
        out.append(f"Advice for {text(a.get('subject'))} ({text(a.get('cause'))}): {text(what, 400)}")
        if a.get("reason"):
            out.append(f"  Not applied because: {text(a.get('reason'), 300)}.")
        if a.get("variables") or a.get("changes"):
            out.append(f"  The change: {_variables(a)}.")
    return out


def render(status: Mapping[str, Any]) -> list[str]:
    """The status document as lines of plain text."""
    out = [_header(status)]
    discovery = _mapping(status.get("discovery"))
    out += _verdict("Discovery", discovery)
    for runner in _items(status.get("runners")):
        title = f"Runner {text(runner.get('pid'))}" + (f" ({text(runner.get('model'))})" if runner.get("model")
                                                       else "")
        out += _verdict(title, runner)
    out += _health(_mapping(status.get("gpu_health")), status.get("readiness_failure"))
    out += _remedies(_mapping(status.get("remedies")))
    crash = _mapping(status.get("crash_restarts"))
    if crash or status.get("restarts") is not None:
        out.append(f"Restarts of Ollama: {text(status.get('restarts') or 0)}; crash restarts in the window: "
                   f"{text(crash.get('recent', 0))} of {text(crash.get('max', 0))}.")
    for key in sorted(k for k in status if k not in KNOWN_KEYS):
        out.append(f"{key.replace('_', ' ').capitalize()}: {text(status[key], 300)}.")
    out.append(f"What to do: {text(status.get('what_to_do') or 'nothing to do', 600)}")
    return out
