"""`ollama-gpu systemd install|uninstall`: put ollama-gpu under Ollama's systemd unit in one step, and take it out."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from launcher.commands.context import Context
from launcher.exitcodes import Exit
from launcher.systemd_install import (
    InstallError,
    apply,
    describe,
    plan_install,
    plan_uninstall,
    unreachable,
)
from launcher.systemd_units import DEFAULT_EXEC

HELP = "install or remove the systemd drop-in (or a standalone unit) that runs Ollama under ollama-gpu"


def configure(parser: argparse.ArgumentParser) -> None:
    """`install [--dry-run] [--root DIR] [--exec PATH] [--standalone]` and `uninstall [--dry-run] [--root DIR]`."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    install = actions.add_parser("install", help="write the drop-in for ollama.service (and an env file if absent)")
    install.add_argument("--standalone", action="store_true",
                         help="write ollama-gpu.service (a unit of its own) instead of a drop-in for ollama.service")
    install.add_argument("--exec", dest="exec_path", type=Path, metavar="PATH",
                         help="the ollama-gpu executable the unit runs (default: this installation's)")
    uninstall = actions.add_parser("uninstall", help="remove exactly what install wrote (unchanged files only)")
    for sub in (install, uninstall):
        sub.add_argument("--dry-run", action="store_true", help="print what would be written or removed; change "
                         "nothing")
        sub.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                         help="operate on this directory as the filesystem root (default /)")


def default_exec() -> Path:
    """This installation's `ollama-gpu` (beside the running interpreter, as in a venv), else the packaged path."""
    found = shutil.which("ollama-gpu", path=str(Path(sys.executable).parent))
    return Path(found) if found else DEFAULT_EXEC


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Plan, then print (dry run) or apply; 0 on success, 1 when it cannot go on (one line says why)."""
    root: Path = args.root
    try:
        if args.action == "install":
            exec_path = (args.exec_path or default_exec()).absolute()
            plan = plan_install(root, exec_path, standalone=args.standalone, stop_grace=ctx.settings.stop_grace,
                                ready_timeout=ctx.settings.ready_timeout)
            for problem in unreachable(exec_path):
                ctx.log.warning("exec_not_reachable", path=str(exec_path), problem=problem,
                                hint="install ollama-gpu in a venv the ollama user can read, e.g. /opt/ollama-gpu")
        else:
            plan = plan_uninstall(root)
        if args.dry_run:
            text = describe(plan)
            if text:
                print(text)
        else:
            for line in apply(root, plan):
                print(line)
    except (InstallError, OSError) as exc:
        print(f"ollama-gpu: systemd {args.action}: {exc}", file=sys.stderr)
        return Exit.FAILED
    if args.action == "uninstall" and not plan.removes:
        print(f"nothing installed by `ollama-gpu systemd install` under {root}")
        return Exit.OK
    print("then run:" if not args.dry_run else "a real run would then ask you to run:")
    for command in plan.commands:
        print(f"  {command}")
    return Exit.OK
