"""`ollama-gpu status [--json] [--ready]`: what the running supervisor knows, from its status socket."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from launcher.commands.context import Context
from launcher.exitcodes import Exit, VerdictExit, verdict_exit
from launcher.status import read_status

HELP = "show the running supervisor's verdicts, causes, remedies and budgets"
EPILOG = ("exit codes: 0 every verdict is gpu (degraded included) or cpu_expected; 1 a cpu_fallback, partial_offload "
          "or crash; 3 no supervisor answers for this OLLAMA_HOST, or the outcome is still unknown. With --ready: 0 "
          "ready, 1 not ready, 3 not running.")
BAD_FIRST = ("crash", "cpu_fallback", "partial_offload", "unknown", "cpu_expected", "gpu")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `status`."""
    parser.epilog = EPILOG
    parser.add_argument("--json", action="store_true", help="print the whole status as one JSON object")
    parser.add_argument("--ready", action="store_true",
                        help="health check: exit 0 when Ollama answers and the discovery verdict is acceptable")


def overall(status: dict[str, Any]) -> str:
    """The outcome that decides the exit code: the worst of discovery and every runner."""
    outcomes = [str((status.get("discovery") or {}).get("outcome", "unknown"))]
    outcomes += [str(r.get("outcome", "unknown")) for r in status.get("runners") or []]
    return min(outcomes, key=lambda o: BAD_FIRST.index(o) if o in BAD_FIRST else 0)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Ask the supervisor of this OLLAMA_HOST; exit 3 when none answers."""
    path = ctx.settings.dirs.status_socket
    status = read_status(path)
    if status is None:
        if args.json:
            json.dump({"running": False, "socket": str(path)}, sys.stdout)
            sys.stdout.write("\n")
        else:
            print(f"no ollama-gpu supervisor answers for {ctx.settings.host.netloc} (socket {path})",
                  file=sys.stderr)
        return Exit.NOT_RUNNING
    if args.ready:
        failure = status.get("readiness_failure")  # issue 16: GPU access revoked inside a container
        ok = bool(status.get("ready")) and bool(status.get("discovery_acceptable", True)) and not failure
        if not args.json:
            print("ready" if ok else f"not ready: {failure or status.get('what_to_do') or status.get('state')}")
        else:
            json.dump({"ready": ok, "state": status.get("state"), "reason": failure}, sys.stdout)
            sys.stdout.write("\n")
        return Exit.OK if ok else VerdictExit.BAD
    if args.json:
        json.dump(status, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        _print(status)
    return verdict_exit(overall(status))


def _print(status: dict[str, Any]) -> None:
    ollama = status.get("ollama") or {}
    print(f"ollama: pid {ollama.get('pid')} version {ollama.get('version') or '?'} "
          f"(generation {ollama.get('generation') or '?'}) on {ollama.get('host')} — {status.get('state')}, "
          f"mode {status.get('mode')}")
    for title, verdict in [("discovery", status.get("discovery") or {})] + [
            (f"runner {r.get('pid')} {r.get('model') or ''}".rstrip(), r) for r in status.get("runners") or []]:
        print(f"{title}: {verdict.get('outcome', 'unknown')} (cause: {verdict.get('cause', 'unknown')})")
        for evidence in (verdict.get("evidence") or [])[:5]:
            print(f"  - {evidence.get('says', '')}: {str(evidence.get('text', ''))[:150]}")
        _print_memory(verdict.get("memory"))
    _print_health(status.get("gpu_health"))
    remedies = status.get("remedies") or {}
    for item in remedies.get("applied") or []:
        print(f"remedy applied: {item}")
    for item in remedies.get("advised") or []:
        print(f"advice: {item}")
    budget = remedies.get("budget") or {}
    if budget:
        print(f"remedy budget: {budget.get('used', 0)}/{budget.get('max', 0)} used")
    failed = budget.get("write_error") or {}
    if failed:
        print(f"remedy history not saved: writing {failed.get('path')} failed ({failed.get('errno')}: "
              f"{failed.get('error')}); it is kept in memory until ollama-gpu restarts")
    if status.get("what_to_do"):
        print(f"what to do: {status['what_to_do']}")


def _print_health(health: object) -> None:
    """Issue 16: one line per GPU once the first health check ran, then its Xids."""
    if not isinstance(health, dict):
        return
    for gpu in health.get("gpus") or []:
        if isinstance(gpu, dict):
            why = f" — {gpu.get('reason')}" if gpu.get("reason") else ""
            print(f"gpu {gpu.get('index')} {gpu.get('uuid')}: {gpu.get('state')}{why}")
    for x in health.get("xids") or []:
        if isinstance(x, dict):
            print(f"  gpu {x.get('gpu')}: Xid {x.get('xid')} x{x.get('count')}")


def _print_memory(memory: object) -> None:
    """Issue 17: a runner's memory account, in three lines at most, and the changes that would fit it."""
    if not isinstance(memory, dict):
        return
    print(f"  memory: {memory.get('summary', '')}")
    for c in (memory.get("advice") or [])[:4]:
        if not isinstance(c, dict):
            continue
        layers = f"{c.get('layers')}/{c.get('layers_total')}" if c.get("layers") is not None else "?"
        fits = "fits" if c.get("fits") else ("still partial" if c.get("fits") is False else "not sized")
        print(f"    advised (not applied): {c.get('setting')} -> {layers} layers, {fits}")
