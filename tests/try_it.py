"""Try `ollama-gpu serve` without Ollama or a GPU: the test doubles stand in, everything stays in one /tmp directory.

    python -m tests.try_it [--scenario healthy|cpu-only|driver-off-path] [--port N] [--dir DIR]

Builds the mock CUDA driver and fake GGML CUDA backend (tests/native) and a simulated Ollama install with a tiny model
(tests/ollama_sim), prints where everything is and the `ollama-gpu status` command for another terminal, then becomes
`ollama-gpu serve` in front of them (Ctrl-C stops it). The runtime, cache and state directories are set to
subdirectories of DIR (default /tmp/ollama-gpu-try-$UID), so a try as root writes nothing to /run, /var/cache or
/var/lib. TEST DOUBLES: nothing here talks to a real GPU or a real Ollama.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import stat
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = {
    "healthy": "the mock driver on the loader path: discovery and the model runner on the GPU",
    "cpu-only": "no driver anywhere: cpu_expected, the model on the CPU",
    "driver-off-path": "the driver outside the loader's path: ollama-gpu adds its directory before start "
                       "(see `status`)",
}
# Variables of ours or of systemd that would point the try at the operator's real directories or settings.
DROPPED = ("RUNTIME_DIRECTORY", "CACHE_DIRECTORY", "STATE_DIRECTORY", "XDG_RUNTIME_DIR", "XDG_CACHE_HOME",
           "XDG_STATE_HOME", "XDG_CONFIG_HOME", "NOTIFY_SOCKET", "OLLAMA_HOST", "LD_LIBRARY_PATH", "LD_PRELOAD")


class TryError(Exception):
    """A one-line reason the try cannot start."""


def private_dir(path: Path) -> Path:
    """DIR, created 0700 and checked: ours, a real directory (not a link), not writable by others."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as exc:
        raise TryError(f"cannot create {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise TryError(f"{path} is not a private directory of this user: choose another with --dir")
    return path


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ollama_gpu_command() -> list[str]:
    """How to run ollama-gpu with this interpreter: its venv's script, else the module."""
    script = Path(sys.executable).parent / "ollama-gpu"
    return [str(script)] if script.exists() else [sys.executable, "-m", "launcher.cli"]


def prepare(base: Path, scenario: str, port: int) -> tuple[list[str], dict[str, str], list[str]]:
    """Build the doubles and the install; (argv of serve, its environment, lines to print)."""
    from tests.ollama_sim import native
    from tests.ollama_sim.install import make_install

    libs = native.build()
    inst_dir = base / "ollama"
    if inst_dir.exists():
        shutil.rmtree(inst_dir)
    inst = make_install(inst_dir, "D", cuda_backend=libs.ggml_cuda)
    inst.add_model("tiny")
    state = base / "state"
    if state.exists():
        shutil.rmtree(state)  # a fresh remedy history: every try starts from the same place
    host = f"127.0.0.1:{port}"
    dirs = {"RUNTIME_DIRECTORY": str(base / "run"), "CACHE_DIRECTORY": str(base / "cache"),
            "STATE_DIRECTORY": str(state)}
    env = {k: v for k, v in os.environ.items() if k not in DROPPED and not k.startswith("OGPU_")}
    env.update(inst.env(OLLAMA_HOST=host), **dirs)
    env["OGPU_SYSTEM_CONFIG"] = str(base / "ollama-gpu.env")  # not /etc/ollama-gpu: the try ignores the host's
    flags: list[str] = ["--ollama", str(inst.ollama)]
    if scenario == "healthy":
        env["LD_LIBRARY_PATH"] = str(libs.driver_dir)
    elif scenario == "driver-off-path":
        flags += ["--driver-lib-dirs", str(libs.driver_dir)]
    status = shlex.join(["env", f"OLLAMA_HOST={host}", f"RUNTIME_DIRECTORY={dirs['RUNTIME_DIRECTORY']}",
                         *ollama_gpu_command(), "status"])
    request = (f"curl -s http://{host}/api/generate -d "
               + shlex.quote('{"model": "tiny", "prompt": "hello", "stream": false}'))
    lines = [
        f"try-it: {scenario}: {SCENARIOS[scenario]}",
        f"try-it: everything is under {base} (runtime, cache and state directories, the simulated install)",
        f"try-it: Ollama simulator {inst.ollama} on {host}, mock CUDA driver in {libs.driver_dir}",
        f"try-it: status: {status}",
        f"try-it: load the model: {request}",
        f"try-it: pid {os.getpid()}; Ctrl-C stops it; remove {base} when done",
    ]
    return [*ollama_gpu_command(), *flags, "serve"], env, lines


def main(argv: list[str] | None = None) -> int:
    """Prepare, print, then exec `ollama-gpu serve` (its exit code is ours)."""
    ap = argparse.ArgumentParser(prog="python -m tests.try_it", description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default="healthy", help="what the doubles show")
    ap.add_argument("--port", type=int, default=0, help="Ollama's port (default: a free one)")
    ap.add_argument("--dir", type=Path, default=Path(f"/tmp/ollama-gpu-try-{os.geteuid()}"),
                    help="where everything goes (default /tmp/ollama-gpu-try-$UID)")
    args = ap.parse_args(argv)
    if not 0 <= args.port <= 65535:
        ap.error("--port must be 0..65535")
    os.chdir(REPO)  # the simulator and `python -m launcher.cli` import from the clone
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        base = private_dir(args.dir.absolute())
        serve, env, lines = prepare(base, args.scenario, args.port or free_port())
    except (TryError, RuntimeError, OSError) as exc:
        print(f"try-it: {exc}", file=sys.stderr)
        return 2
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    print("\n".join(lines), flush=True)
    os.execve(serve[0], serve, env)
    return 70  # not reached: exec replaces us or raises


if __name__ == "__main__":
    sys.exit(main())
