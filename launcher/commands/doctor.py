"""`ollama-gpu doctor [--json] [--user NAME] [--probe] [--backend PATH]`: check this host's GPU stack, say the fix."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from launcher import doctor, shim_build
from launcher.children import ChildRegistry, SpawnError
from launcher.commands.context import Context
from launcher.paths import ensure_dirs

HELP = "check the NVIDIA driver, libcuda, device nodes, Ollama's CUDA libraries and the shim; say what to fix"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `doctor`."""
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--user", metavar="NAME",
                        help="the user Ollama's service runs as, for device-node permissions (default: the current "
                             "user; the official unit runs as `ollama`)")
    parser.add_argument("--probe", action="store_true",
                        help="also run live probes under the shim: cuInit + devices, and the installation's GGML CUDA "
                             "backend (creates a CUDA context, which exclusive-process mode or MIG may refuse)")
    parser.add_argument("--backend", type=Path, metavar="PATH",
                        help="with --probe: the libggml-cuda.so to load (default: the installation's own)")
    parser.epilog = "Exit status: 0 no check failed, 1 a check failed, 2 usage."


def registry_runner(registry: ChildRegistry) -> shim_build.Runner:
    """A shim_build.Runner over the child registry (the compiler, which needs a cwd, runs through run_process)."""

    def run(argv: Sequence[str], *, env: Mapping[str, str], timeout: float, cwd: Path | None = None
            ) -> shim_build.Completed:
        if cwd is not None:
            return shim_build.run_process(argv, env=env, timeout=timeout, cwd=cwd)
        try:
            code, out, err = registry.run(argv, env, timeout=timeout, name=Path(argv[0]).name)
        except SpawnError as exc:
            return shim_build.Completed(tuple(argv), exc.exit_code, "", str(exc))
        return shim_build.Completed(tuple(argv), code, out, err)

    return run


def _cache_dir(ctx: Context) -> Path | None:
    try:
        return ensure_dirs(ctx.settings.dirs, os.geteuid()).cache
    except OSError as exc:
        ctx.log.warning("doctor_no_cache_dir", error=str(exc))
        return None


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Run the checks (and probes), print the table or JSON; 0 when nothing failed, 1 when a check failed."""
    settings = doctor.DoctorSettings(
        ollama=ctx.settings.ollama, shim=ctx.settings.shim, cache_dir=_cache_dir(ctx),
        driver_lib_dirs=ctx.settings.driver_lib_dirs, ollama_env=ctx.settings.ollama_env,
        may_override=ctx.settings.may_override,
    )
    dctx = doctor.Ctx(env=ctx.env, settings=settings, runner=registry_runner(ChildRegistry()), user=args.user,
                      probe=bool(args.probe), backend=args.backend)
    rows = doctor.run_checks(dctx)
    verdict = doctor.verdict(dctx, rows)
    if args.json:
        sys.stdout.write(doctor.render_json(rows, verdict, dctx))
    else:
        marks = doctor.marks_for(getattr(sys.stdout, "encoding", None))
        sys.stdout.write(doctor.render_text(rows, verdict, dctx.user, marks))
    return doctor.exit_code(rows)
