"""`ollama-gpu config`: every effective setting with its source, Ollama's extra environment and the directories."""

from __future__ import annotations

import argparse
import json
import sys

from launcher.commands.context import Context
from launcher.config import describe
from launcher.exitcodes import Exit

HELP = "print every effective setting with its source, and the resolved directories"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `config`."""
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of a table: each setting's typed value (numbers, "
                             "booleans, lists), the text it was parsed from and its source")


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Print the configuration; always exit 0 (bad configuration never gets this far)."""
    info = describe(ctx.settings)
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return Exit.OK
    width = max(len(k) for k in info["settings"])
    print("# settings")
    for key, item in info["settings"].items():
        print(f"{key:<{width}} = {item['text']!s:<24} # {item['source']}")
    print("# passed to Ollama's environment from our files")
    if not info["ollama_env"]:
        print("(none)")
    for key, item in info["ollama_env"].items():
        print(f"{key} = {item['value']}  # {item['source']}")
    print("# directories")
    print(f"ollama host = {info['ollama_host']}  (instance {info['directories']['instance']})")
    for name in ("runtime", "cache", "state"):
        print(f"{name:<7} = {info['directories'][name]}")
    return Exit.OK
