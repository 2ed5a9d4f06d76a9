"""Subcommands of `ollama-gpu`: one module each, registered by name here (only commands that work are listed).

A command module defines:
    HELP: str                                        one line for `ollama-gpu --help`
    def configure(parser: argparse.ArgumentParser) -> None   its own arguments
    def run(args: argparse.Namespace, ctx: Context) -> int   its exit code (launcher.exitcodes)
"""

from __future__ import annotations

from typing import Final

# Order is the order of `ollama-gpu --help`.
COMMANDS: Final[tuple[str, ...]] = ("serve", "status", "doctor", "explain", "env", "config", "shim", "systemd")
