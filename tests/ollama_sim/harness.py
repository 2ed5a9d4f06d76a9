"""Test helpers: start a simulated `ollama serve`, wait for it, talk to its API, stop it and check what is left."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from tests.ollama_sim.install import Install, _compile
from tests.ollama_sim.procs import free_port
from tests.serve_helpers import wait_for

HERE = Path(__file__).resolve().parent


def trace_preload() -> Path:
    """The LD_PRELOAD tracer (cc, cached)."""
    out = _compile("libsimtrace.so", [HERE / "trace_preload.c"], ["-shared", "-fPIC"])
    if out is None:
        raise RuntimeError("cc could not build the trace preload object")
    return out




class SimServer:
    """One `bin/ollama serve` of an install, output in a log file."""

    def __init__(self, inst: Install, env: Mapping[str, str] | None = None) -> None:
        self.inst = inst
        self.port = free_port()
        self.env = inst.env(OLLAMA_HOST=f"127.0.0.1:{self.port}", **dict(env or {}))
        self.log_path = inst.prefix / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SimServer:
        """Start and wait until /api/version answers."""
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(self.inst.ollama), "serve"], env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._version, 60, "/api/version")
        return self

    def _version(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.log()}")
        try:
            return self.get("/api/version")[0] == 200
        except OSError:
            return False

    def url(self, path: str) -> str:
        """http://127.0.0.1:PORT/path."""
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, Any]:
        """GET, JSON-decoded."""
        with urllib.request.urlopen(self.url(path), timeout=30) as r:
            return r.status, json.loads(r.read())

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """POST JSON; a stream is returned as a list of decoded lines."""
        req = urllib.request.Request(self.url(path), data=json.dumps(body).encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                lines = [json.loads(x) for x in r.read().splitlines() if x.strip()]
                return r.status, lines[0] if len(lines) == 1 else lines
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def generate(self, model: str = "tiny", prompt: str = "hello", **kw: Any) -> tuple[int, Any]:
        """/api/generate, non-streaming unless stream=True is passed."""
        return self.post("/api/generate", {"model": model, "prompt": prompt, "stream": kw.pop("stream", False),
                                           **kw})

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def descendants(self) -> list[psutil.Process]:
        """Live children and grandchildren of the server."""
        assert self.proc is not None
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig` and wait for the server to exit; returns its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout=30)

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        kids = self.descendants()
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        for k in kids:
            with contextlib.suppress(psutil.NoSuchProcess):
                k.kill()
        psutil.wait_procs(kids, timeout=10)


def runner_of(server: SimServer, marker: str) -> psutil.Process:
    """The (single) live descendant whose cmdline contains `marker`."""
    def find() -> psutil.Process | None:
        for p in server.descendants():
            try:
                if marker in " ".join(p.cmdline()):
                    return p
            except psutil.NoSuchProcess:
                continue
        return None
    found: psutil.Process = wait_for(find, 30, f"a child with {marker!r}")
    return found
