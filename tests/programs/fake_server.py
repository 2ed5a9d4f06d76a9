#!/usr/bin/env python3
"""A stand-in server for supervisor mechanics: listens like Ollama, writes output, spawns children, crashes.

Not an Ollama simulator (tests/ollama_sim is): it has no generations and prints no Ollama lines. Behaviour is
set by FAKE_* variables so each test asks only for the mechanic it checks:
  FAKE_READY_DELAY   seconds before /api/version answers (default 0)
  FAKE_OUTPUT_MB     write this many MiB of patterned bytes to stdout, then a hash line to stderr
  FAKE_PARTIAL       write this text to stderr without a newline, then the rest of the line after 1 s
  FAKE_EXIT          exit with this code right after start (a crash)
  FAKE_CHILDREN      spawn this many children that sleep (like runners: same process group, no parent-death signal)
  FAKE_GRANDCHILD    spawn a child that forks a grandchild and exits at once (a re-parented orphan)
  FAKE_IGNORE_TERM   1: ignore SIGTERM (so the supervisor must KILL after the grace period)
  FAKE_MARK          a file to write {"pid", "env"} into once started
  FAKE_MODEL_RUNNER  1: spawn a child whose argv looks like a gen-D model runner (`llama-server --model ...`)
  FAKE_UNLOAD        a file: once it exists, the model runner is killed (the model was unloaded)
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from launcher.ollama_host import parse_ollama_host

STARTED = time.monotonic()
CHILDREN: list[subprocess.Popen[bytes]] = []


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/api/version" or time.monotonic() - STARTED < float(os.environ.get("FAKE_READY_DELAY", "0")):
            self.send_error(503 if self.path == "/api/version" else 404)
            return
        body = json.dumps({"version": "0.0.0-fake"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def main() -> None:
    if os.environ.get("FAKE_EXIT"):
        print("fake: crashing", file=sys.stderr, flush=True)
        sys.exit(int(os.environ["FAKE_EXIT"]))
    mark = os.environ.get("FAKE_MARK")
    if mark:
        with open(mark, "w") as out:
            json.dump({"pid": os.getpid(), "env": dict(os.environ)}, out)
    if os.environ.get("FAKE_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: (_stop(), os._exit(0)))
    host = parse_ollama_host(os.environ.get("OLLAMA_HOST"))
    server_class = http.server.ThreadingHTTPServer
    if ":" in host.host:
        import socket

        server_class.address_family = socket.AF_INET6
    server = server_class((host.host, host.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for _ in range(int(os.environ.get("FAKE_CHILDREN", "0"))):
        CHILDREN.append(subprocess.Popen(["sleep", "300"]))
    if os.environ.get("FAKE_GRANDCHILD"):
        subprocess.run(["sh", "-c", "(sleep 0.5; exit 3) & exit 0"], check=False)
    runner = None
    if os.environ.get("FAKE_MODEL_RUNNER") == "1":
        runner = subprocess.Popen(["llama-server", "-c", "import time; time.sleep(300)", "--model", "/m"],
                                  executable=sys.executable)
        CHILDREN.append(runner)
    partial = os.environ.get("FAKE_PARTIAL")
    if partial:
        sys.stderr.write(partial)
        sys.stderr.flush()
        time.sleep(1)
        sys.stderr.write(" (line end)\n")
        sys.stderr.flush()
    mib = int(os.environ.get("FAKE_OUTPUT_MB", "0"))
    if mib:
        digest = hashlib.sha256()
        block = bytes(range(256)) * 4096  # 1 MiB, every byte value, newlines included
        for i in range(mib):
            chunk = block[i % 7 :] + block[: i % 7]
            digest.update(chunk)
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        print(f"sha256={digest.hexdigest()}", file=sys.stderr, flush=True)
    print("fake: serving", file=sys.stderr, flush=True)
    unload = os.environ.get("FAKE_UNLOAD")
    while True:
        if runner is not None and unload and os.path.exists(unload):
            runner.kill()
            runner.wait()
            runner = None
        time.sleep(0.05)


def _stop() -> None:
    for child in CHILDREN:
        child.kill()


if __name__ == "__main__":
    main()
