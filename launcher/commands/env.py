"""`ollama-gpu env`: the environment `serve` would start Ollama with, and why each variable differs."""

from __future__ import annotations

import argparse
import json
import sys

from launcher.children import ChildRegistry
from launcher.commands.context import Context
from launcher.exitcodes import Exit
from launcher.startup import prepare

HELP = "print the command line and environment `serve` would start Ollama with, and why each change"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `env`."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments `serve` would pass to `ollama serve`")


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Plan without starting anything (the shim is built and preflighted, as serve would)."""
    prepared = prepare(ctx.settings, ctx.env, ChildRegistry(), ctx.log, args.args)
    info = prepared.plan.to_dict()
    info["mode"] = ctx.settings.mode.value
    info["shim_problem"] = prepared.shim_problem
    info["driver"] = {
        "loader_path": str(prepared.driver.loader_path) if prepared.driver.loader_path else None,
        "loader_via": prepared.driver.loader_via,
        "real_dir": str(prepared.driver.real_dir) if prepared.driver.real_dir else None,
        "stub_first": prepared.driver.stub_first,
    }
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return Exit.OK
    print("# command")
    print(" ".join(prepared.plan.argv))
    print("# changes to the environment")
    for change in prepared.plan.changes:
        shown = "(removed)" if change.value is None else change.value
        print(f"{change.key}={shown}  # {change.reason}")
    if not prepared.plan.changes:
        print("(none)")
    for advice in prepared.plan.advice:
        print(f"# advice: {advice}")
    if prepared.shim_problem:
        print(f"# shim unavailable: {prepared.shim_problem}")
    return Exit.OK
