"""`ollama-gpu shim build|path`: compile and preflight the CUDA shim, or say which one serve would use."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Final

from launcher import shim_build
from launcher.commands.context import Context
from launcher.exitcodes import Exit
from launcher.paths import UnsafeDirectoryError, ensure_dirs

HELP = "build the CUDA shim (cached), or print the path of the one serve would use"
FAILED: Final = Exit.FAILED  # the shim could not be built or failed its preflight


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `shim`: the actions `build` and `path`."""
    sub = parser.add_subparsers(dest="shim_action", metavar="ACTION", required=True)
    build = sub.add_parser(
        "build", help="compile the shim from the packaged sources (cached) and preflight it; print its path",
        description="Compile the shim with $CC or cc/gcc/clang into the cache (OGPU_SHIM is not consulted), "
                    "preflight it, and print its path.",
    )
    build.add_argument("--output", type=Path, metavar="PATH",
                       help="also copy the library to PATH (atomically; a directory gets libollama_gpu_shim.so)")
    path = sub.add_parser(
        "path", help="print the shim serve would use (OGPU_SHIM or the cached build), building it if needed",
        description="Print the shim serve would preload: OGPU_SHIM if set, else the cached build (compiled if "
                    "needed). Exits 1 when it fails its preflight, as serve would then run without it.",
    )
    path.add_argument("--json", action="store_true", help="print the path, its origin and the preflight as JSON")


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Dispatch to the action; expected failures are one line on stderr and exit 1."""
    if args.shim_action == "build":
        return _build(args.output, ctx)
    return _path(bool(args.json), ctx)


def _fail(message: str, detail: str = "") -> int:
    print(f"ollama-gpu: shim: {message}", file=sys.stderr)
    if detail:
        sys.stderr.write(detail if detail.endswith("\n") else detail + "\n")
    return FAILED


def _cache(ctx: Context) -> Path:
    return ensure_dirs(ctx.settings.dirs, os.geteuid()).cache


def _unsafe_dir(exc: UnsafeDirectoryError) -> int:
    print(f"ollama-gpu: configuration error: {exc}", file=sys.stderr)
    return Exit.USAGE


def _build(output: Path | None, ctx: Context) -> int:
    try:
        if not shim_build.libc_is_glibc():
            raise shim_build.Unsupported("the shim needs glibc and this system's C library is another (musl?)")
        built = shim_build.build(_cache(ctx), ctx.env)
    except shim_build.CompileFailed as exc:
        return _fail(str(exc), "$ " + " ".join(exc.command) + "\n" + exc.stderr)
    except UnsafeDirectoryError as exc:
        return _unsafe_dir(exc)
    except (shim_build.ShimError, OSError) as exc:
        return _fail(str(exc))
    result = shim_build.preflight(built.path, ctx.env)
    if not result.ok:
        return _fail(str(shim_build.PreflightFailed(result)))
    target = built.path
    if output is not None:
        try:
            target = shim_build.install_copy(built.path, output)
        except OSError as exc:
            return _fail(f"cannot write {output}: {exc.strerror or exc}")
    ctx.log.debug("shim_ready", path=str(target), origin=built.origin, key=built.key)
    print(target)
    return Exit.OK


def _path(as_json: bool, ctx: Context) -> int:
    try:
        resolved = shim_build.resolve(ctx.settings.shim, _cache(ctx), ctx.env)
    except UnsafeDirectoryError as exc:
        return _unsafe_dir(exc)
    except shim_build.CompileFailed as exc:
        if as_json:
            return _json({"path": None, "error": str(exc), "stderr": exc.stderr}, FAILED)
        return _fail(str(exc), "$ " + " ".join(exc.command) + "\n" + exc.stderr)
    except (shim_build.ShimError, OSError) as exc:
        if as_json:
            return _json({"path": None, "error": str(exc)}, FAILED)
        return _fail(str(exc))
    code = Exit.OK if resolved.ok else FAILED
    if as_json:
        return _json(resolved.to_dict(), code)
    if not resolved.ok:
        return _fail(str(shim_build.PreflightFailed(resolved.preflight)))
    print(resolved.path)
    return code


def _json(obj: object, code: int) -> int:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return code
