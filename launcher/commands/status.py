"""`ollama-gpu status [--json] [--ready | --live]`: what the running supervisor knows, from its status socket."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from launcher.commands.context import Context
from launcher.exitcodes import Exit, VerdictExit, verdict_exit
from launcher.status import read_status
from launcher.status_text import render, text

HELP = "show the running supervisor's verdicts, causes, remedies and budgets"
EPILOG = ("exit codes: 0 every verdict is gpu (degraded included) or cpu_expected; 1 a cpu_fallback, partial_offload "
          "or crash; 3 no supervisor answers for this OLLAMA_HOST, or the outcome is still unknown. With --ready: 0 "
          "ready, 1 not ready, 3 not running. With --live: 0 the supervisor answers, 1 only a restart of the container "
          "can fix what happened (GPU access revoked), 3 not running.")
BAD_FIRST = ("crash", "cpu_fallback", "partial_offload", "unknown", "cpu_expected", "gpu")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `status`."""
    parser.epilog = EPILOG
    parser.add_argument("--json", action="store_true", help="print the whole status as one JSON object")
    probe = parser.add_mutually_exclusive_group()
    probe.add_argument("--ready", action="store_true",
                       help="readiness check: exit 0 when Ollama answers and the discovery verdict is acceptable")
    probe.add_argument("--live", action="store_true",
                       help="liveness check: exit 0 while the supervisor answers, 1 when only restarting the "
                            "container can fix it (its GPU access was revoked)")


def overall(status: dict[str, Any]) -> str:
    """The outcome that decides the exit code: the worst of discovery and every runner."""
    discovery = status.get("discovery")
    outcomes = [str(discovery.get("outcome", "unknown")) if isinstance(discovery, dict) else "unknown"]
    runners = status.get("runners")
    outcomes += [str(r.get("outcome", "unknown")) for r in runners if isinstance(r, dict)] \
        if isinstance(runners, list) else []
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
    if args.live:  # issue 16: a readiness probe restarts nothing; the liveness probe is what restarts a container
        failure = status.get("restart_container")
        if args.json:
            json.dump({"alive": not failure, "state": status.get("state"), "reason": failure}, sys.stdout)
            sys.stdout.write("\n")
        else:
            print(f"restart the container: {text(failure, 600)}" if failure else "alive")
        return VerdictExit.BAD if failure else Exit.OK
    if args.ready:
        failure = status.get("readiness_failure")  # issue 16: GPU access revoked inside a container
        ok = bool(status.get("ready")) and bool(status.get("discovery_acceptable", True)) and not failure
        if not args.json:
            print("ready" if ok else
                  f"not ready: {text(failure or status.get('what_to_do') or status.get('state'), 600)}")
        else:
            json.dump({"ready": ok, "state": status.get("state"), "reason": failure}, sys.stdout)
            sys.stdout.write("\n")
        return Exit.OK if ok else VerdictExit.BAD
    if args.json:
        json.dump(status, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print("\n".join(render(status)))
    return verdict_exit(overall(status))
