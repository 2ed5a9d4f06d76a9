"""The simulator's Ollama API: /, /api/version, /api/tags, /api/ps, /api/generate (streaming NDJSON or one JSON)."""

from __future__ import annotations

import datetime as _dt
import json
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.ollama_sim import slog
from tests.ollama_sim.server import LoadError, Sim


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat().replace("+00:00", "Z")


class Server(ThreadingHTTPServer):
    """ThreadingHTTPServer on IPv4 or IPv6, bound now and served later (Ollama listens before discovery)."""

    daemon_threads = True

    def __init__(self, host: str, port: int, sim: Sim) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sim = sim
        super().__init__((host, port), Handler)


class Handler(BaseHTTPRequestHandler):
    """One request; every request gets a Gin access line on stderr."""

    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: object) -> None:
        return

    def _gin(self, status: int, started: float) -> None:
        slog.write_raw(slog.gin_line(status, time.monotonic() - started, self.client_address[0], self.command,
                                     self.path))

    def _send(self, status: int, body: Any, started: float) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self._gin(status, started)

    def do_HEAD(self) -> None:
        self._send(200, None, time.monotonic())

    def do_GET(self) -> None:
        started = time.monotonic()
        sim = self.server.sim
        if self.path == "/":
            data = b"Ollama is running"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self._gin(200, started)
        elif self.path == "/api/version":
            self._send(200, {"version": sim.gen.version}, started)
        elif self.path == "/api/ps":
            self._send(200, {"models": sim.ps()}, started)
        elif self.path == "/api/tags":
            self._send(200, {"models": []}, started)
        else:
            self._send(404, {"error": "404 page not found"}, started)

    def do_POST(self) -> None:
        started = time.monotonic()
        n = int(self.headers.get("Content-Length") or 0)
        try:
            req = json.loads(self.rfile.read(n) or b"{}")
        except ValueError:
            self._send(400, {"error": "invalid request body"}, started)
            return
        if self.path != "/api/generate":
            self._send(404, {"error": "404 page not found"}, started)
            return
        self._generate(req, started)

    def _generate(self, req: dict[str, Any], started: float) -> None:
        sim = self.server.sim
        name = str(req.get("model", ""))
        options = dict(req.get("options") or {})
        try:
            runner = sim.get_runner(name, options)
        except LoadError as exc:
            self._send(exc.status, {"error": str(exc)}, started)
            return
        prompt = str(req.get("prompt", ""))
        base = {"model": runner.model.name}
        if not prompt:
            self._send(200, {**base, "created_at": _now(), "response": "", "done": True, "done_reason": "load"},
                       started)
            return
        n = int(options.get("num_predict") or 16)
        stream = req.get("stream", True) is not False
        try:
            chunks = list(sim.completion(runner, prompt, n)) if not stream else sim.completion(runner, prompt, n)
            if not stream:
                text = "".join(str(c.get("content", "")) for c in chunks)
                last = chunks[-1] if chunks else {}
                self._send(200, {**base, "created_at": _now(), "response": text, "done": True,
                                 "done_reason": "length", "eval_count": last.get("tokens_predicted", 0),
                                 "prompt_eval_count": last.get("tokens_evaluated", 0)}, started)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for c in chunks:
                done = bool(c.get("stop"))
                msg: dict[str, Any] = {**base, "created_at": _now(), "response": str(c.get("content", "")),
                                       "done": done}
                if done:
                    msg.update(done_reason="length", eval_count=c.get("tokens_predicted", 0))
                self._chunk(json.dumps(msg).encode() + b"\n")
            self._chunk(b"")
            self._gin(200, started)
        except OSError as exc:
            self._send(500, {"error": f"an error was encountered while running the model: {exc}"}, started)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()
