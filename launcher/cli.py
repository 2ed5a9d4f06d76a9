"""`ollama-gpu` entry point: parse arguments, build settings, set up logging, run one command."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import NoReturn

from launcher import __version__
from launcher import log as logsetup
from launcher.commands import COMMANDS
from launcher.commands.context import Context
from launcher.config import SPECS, ConfigError, iter_cli_overrides, load_settings, log_warnings
from launcher.exitcodes import Exit, signal_exit

PROG = "ollama-gpu"


_VALUED = frozenset({"--env-file", *(spec.flag for spec in SPECS)})
_SETTING_FLAGS = frozenset(spec.flag for spec in SPECS)
HELP_FLAGS = ("-h", "--help")


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: the message, a hint, exit 2; not the whole usage (`--help` has it)."""

    def error(self, message: str) -> NoReturn:
        hint = f"see `{self.prog} --help`"
        if "unrecognized arguments" in message and any(f in message.split() for f in _SETTING_FLAGS):
            hint = "settings flags go before the command, e.g. `ollama-gpu --restart-max 1 serve`"
        self.exit(Exit.USAGE, f"{self.prog}: usage error: {' '.join(message.split())} ({hint})\n")


def _command_index(argv: Sequence[str]) -> int | None:
    """Where the command is in argv, read as argparse will: every option before the command takes one value unless
    written --flag=value. None when there is no command or help is asked for first."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in HELP_FLAGS:
            return None
        if arg.startswith("-"):
            i += 2 if arg in _VALUED else 1
            continue
        return i
    return None


def _wanted(argv: Sequence[str]) -> list[str]:
    """The command modules this run needs: only the one named (serve starts faster without the others' imports);
    all of them when none is named or help is asked for."""
    i = _command_index(argv)
    if i is None or argv[i] not in COMMANDS:
        return list(COMMANDS)
    return [argv[i]]


def split_serve(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """`[settings…] serve ARGS…` → (what argparse reads, ARGS for `ollama serve`). Every argument after `serve`
    goes to Ollama as it is, options included (argparse would take them for ours), except a lone -h/--help, which
    asks for our help, and a leading `--`, which is dropped. None: not a serve command line."""
    i = _command_index(argv)
    if i is None or argv[i] != "serve":
        return list(argv), None
    rest = list(argv[i + 1:])
    if rest and rest[0] in HELP_FLAGS:
        return list(argv), None
    return list(argv[: i + 1]), rest[1:] if rest[:1] == ["--"] else rest


def _commands(argv: Sequence[str]) -> dict[str, ModuleType]:
    return {name: importlib.import_module(f"launcher.commands.{name}") for name in _wanted(argv)}


def build_parser(commands: dict[str, ModuleType]) -> argparse.ArgumentParser:
    """The whole command line: our settings as flags before the command, then the command's own arguments."""
    parser = Parser(
        prog=PROG,
        description="Run `ollama serve` so that models land on the GPU, and say why when they do not.",
        epilog="Settings flags go before the command; each is also an OGPU_ key (see `ollama-gpu config`).",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--env-file", action="append", default=[], type=Path, metavar="FILE",
        help="read settings from FILE, above the system and user files (repeatable; later wins)",
    )
    group = parser.add_argument_group("settings (highest layer)")
    for spec in SPECS:
        group.add_argument(spec.flag, dest=spec.attr, metavar="VALUE", help=f"{spec.key}: {spec.doc}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in commands.items():
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code (launcher.exitcodes)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _commands(argv)
    parser = build_parser(commands)
    ours, ollama_args = split_serve(argv)
    args = parser.parse_args(ours)  # usage errors: one line (Parser.error) and exit 2
    if ollama_args is not None:
        args.args = ollama_args
    env = dict(os.environ)
    overrides = dict(iter_cli_overrides(vars(args)))
    try:
        settings = load_settings(env, args.env_file, overrides)
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        return Exit.USAGE
    log = logsetup.configure(settings.log_format, settings.log_level)
    log_warnings(log, settings.warnings)
    ctx = Context(settings=settings, log=log, env=env,
                  reload=lambda: load_settings(dict(os.environ), args.env_file, overrides))
    try:
        return int(commands[args.command].run(args, ctx))
    except KeyboardInterrupt:
        return signal_exit(2)
    except BrokenPipeError:
        # A reader such as `head` went away: not our failure, and nothing more can be said on that pipe.
        sys.stderr.close()
        return Exit.OK
    except Exception as exc:  # our own bug: one line, never a traceback for the operator
        log.error("internal_error", command=args.command, error=type(exc).__name__, detail=str(exc)[:500],
                  hint="please report this with the command line")
        if settings.log_level == "debug":
            log.exception("internal_error_traceback")
        return Exit.INTERNAL


if __name__ == "__main__":
    sys.exit(main())
