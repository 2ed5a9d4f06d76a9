"""Command dispatch of the simulated binaries: `ollama serve|runner|gpu-discover|--version` and `llama-server`."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import sys
import threading

from tests.ollama_sim import runner, slog
from tests.ollama_sim.gens import GENERATIONS, Generation
from tests.ollama_sim.layout import Layout


def generation() -> Generation:
    """OLLAMA_SIM_GENERATION (B, C or D; default D): which Ollama this install pretends to be. OLLAMA_SIM_VERSION
    makes it print another version (e.g. one newer than any known generation) with the same behaviour."""
    name = os.environ.get("OLLAMA_SIM_GENERATION", "D").strip().upper() or "D"
    if name not in GENERATIONS:
        sys.stderr.write(f"ollama-sim: OLLAMA_SIM_GENERATION={name!r} is not one of {sorted(GENERATIONS)}\n")
        raise SystemExit(2)
    version = os.environ.get("OLLAMA_SIM_VERSION", "").strip()
    return dataclasses.replace(GENERATIONS[name], version=version) if version else GENERATIONS[name]


def set_comm(name: str) -> None:
    """prctl(PR_SET_NAME) so `ps -e`/`pgrep` show the simulated program's name."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)


def serve(prog: str) -> int:
    """`ollama serve`."""
    from tests.ollama_sim.http_api import Server
    from tests.ollama_sim.server import Sim, install_stop_handlers

    gen = generation()
    log = slog.Logger(os.environ.get("OLLAMA_DEBUG"))
    sim = Sim(gen, Layout(os.path.realpath(prog)), log)
    stop = threading.Event()
    install_stop_handlers(stop)
    sim.preamble()
    bind_host = sim.host.host
    try:
        httpd = Server(bind_host, sim.host.port, sim)
    except OSError as exc:
        sys.stderr.write(f"Error: listen tcp {sim.host.netloc}: bind: {exc.strerror.lower()}\n")
        return 1
    sim.line("listening", addr=sim.host.netloc, version=gen.version)
    sim.discover()
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    while not stop.is_set():
        stop.wait(3600)
    sim.shutdown()
    httpd.server_close()
    return 0


def main(prog: str, argv: list[str]) -> int:
    """Run the program `prog` (its path as executed) with arguments `argv`."""
    base = os.path.basename(prog)
    if base == "llama-server":
        set_comm("llama-server")
        return runner.llama_server(prog, argv)
    set_comm("ollama")
    cmd = argv[0] if argv else ""
    if cmd == "serve":
        return serve(prog)
    if cmd == "runner":
        return runner.ollama_runner(prog, argv[1:], generation().name)
    if cmd == "gpu-discover":
        return runner.gpu_discover(argv[1:])
    if cmd in ("-v", "--version", "version"):
        print(f"ollama version is {generation().version}")
        return 0
    sys.stderr.write("ollama (simulator): supported commands are serve, runner, gpu-discover, --version\n")
    return 2
