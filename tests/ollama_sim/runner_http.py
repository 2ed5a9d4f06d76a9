"""The runners' small HTTP API: /health, /completion (NDJSON tokens), /info (gen C bootstrap) and /load (gen C)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = ("the", "quiet", "model", "runs", "on", "a", "simulated", "device", "and", "answers", "with", "tokens",
         "that", "mean", "nothing", "at", "all")


def tokens(prompt: str, n: int) -> Iterator[str]:
    """Deterministic filler tokens for a prompt (a test double has no weights)."""
    seed = hashlib.sha256(prompt.encode()).digest()
    for i in range(n):
        yield (" " if i else "") + WORDS[seed[i % len(seed)] % len(WORDS)]


Handler = Callable[[dict[str, Any]], Any]


class RunnerHTTP:
    """Routes for one runner; `info` and `load` are optional (gen C only)."""

    def __init__(self, on_completion: Callable[[str, int], None], info: Callable[[], Any] | None = None,
                 load: Handler | None = None) -> None:
        self.on_completion = on_completion
        self.info = info
        self.load = load
        self.server: ThreadingHTTPServer | None = None

    def serve(self, host: str, port: int) -> ThreadingHTTPServer:
        """Bind and serve on a daemon thread."""
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                return

            def _json(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict[str, Any]:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"{}")

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._json(200, {"status": "ok"})
                elif self.path == "/info" and outer.info:
                    self._json(200, outer.info())
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = self._body()
                if self.path == "/load" and outer.load:
                    self._json(200, outer.load(body))
                    return
                if self.path != "/completion":
                    self._json(404, {"error": "not found"})
                    return
                prompt, n = str(body.get("prompt", "")), int(body.get("n_predict", 8) or 8)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.end_headers()
                count = 0
                for tok in tokens(prompt, n):
                    count += 1
                    self.wfile.write(json.dumps({"content": tok, "stop": False}).encode() + b"\n")
                    self.wfile.flush()
                self.wfile.write(json.dumps({"content": "", "stop": True, "tokens_predicted": count,
                                             "tokens_evaluated": len(prompt.split()) + 1,
                                             "stop_type": "limit"}).encode() + b"\n")
                outer.on_completion(prompt, count)

        self.server = ThreadingHTTPServer((host, port), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.server
