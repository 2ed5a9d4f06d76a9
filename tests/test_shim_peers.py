"""Only Ollama's processes are heard on the event socket: a peer that is not a descendant is closed unread
(`foreign_peer`), a peer whose ancestry cannot be read yet is looked at again, and a million fuzzed messages from a
stranger change no verdict."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.evidence import Board
from launcher.lineage import descends_from
from launcher.shim_events import RECHECK_WINDOW, ShimEventServer
from tests.shim_server_thread import ServerThread
from tests.test_evidence_live import cuda_ok, nvml_gpus, runner, started

FUZZED = 1_000_000


def hello(pid: int, seq: int = 1) -> bytes:
    return json.dumps({"v": 1, "ev": "hello", "pid": pid, "seq": seq, "t_ns": 1, "exe": "/usr/bin/llama-server",
                       "argv": ["llama-server", "--model", "/m.gguf"], "ppid": 1}).encode()


def fuzz_pool(seed: int = 14, size: int = 2000) -> list[bytes]:
    """Forged messages a stranger would send to flip a verdict (CUDA failures, phantom runners, lost devices),
    valid and invalid, mixed with garbage."""
    rng = random.Random(seed)
    pids = [os.getpid(), 1, rng.randrange(2, 1 << 22)]
    kinds = [
        lambda pid, seq: {"ev": "hello", "exe": "/usr/bin/llama-server", "ppid": 1,
                          "argv": ["llama-server", "--model", f"/m{rng.randrange(9)}.gguf"]},
        lambda pid, seq: {"ev": "cu_init", "result": rng.choice([0, 100, 999, 802, 35])},
        lambda pid, seq: {"ev": "dlopen", "name": "libcuda.so.1", "ok": False, "error": "not found"},
        lambda pid, seq: {"ev": "device", "ordinal": rng.randrange(8), "uuid": f"GPU-{rng.randrange(1 << 32):x}"},
        lambda pid, seq: {"ev": "ctx", "device": 0, "result": rng.choice([0, 2, 100])},
        lambda pid, seq: {"ev": "cuda_error", "fn": "cuMemAlloc_v2", "code": 2, "count": 1},
        lambda pid, seq: {"ev": "bye"},
    ]
    pool: list[bytes] = []
    for seq in range(1, size + 1):
        roll = rng.random()
        if roll < 0.1:
            pool.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
        elif roll < 0.15:
            pool.append(b"{" * rng.randrange(1, 5000))
        else:
            pid = rng.choice(pids)
            body = {"v": 1, "pid": pid, "seq": seq, "t_ns": seq, **rng.choice(kinds)(pid, seq)}
            pool.append(json.dumps(body).encode())
    return pool


@pytest.fixture
def stand_in() -> Iterator[int]:
    """A stand-in Ollama: its descendants would be heard; this test process is not one of them."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def board_verdicts(events: list) -> dict[str, object]:  # type: ignore[type-arg]
    board = Board()
    for event in [started(), nvml_gpus(), *runner(300, 6000), *cuda_ok(300, 6000), *events]:
        board.add(event)
    live = board.live()
    return {"discovery": live.discovery.to_dict(),
            "runners": {str(k): v.to_dict() for k, v in live.runners.items()}}


class TestForeignPeers:
    def test_a_stranger_is_closed_unread(self, short_dir: Path, stand_in: int) -> None:
        """A non-descendant's connection is counted as foreign_peer and none of its messages is read."""
        server = ShimEventServer(short_dir / "e.sock", peer_check=lambda pid: descends_from(pid, stand_in))
        with ServerThread(server) as thread, socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.connect(str(server.path))
            # The server may close the connection at accept before this send: a broken pipe is the refusal itself.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.send(hello(os.getpid()))
            thread.wait_for(lambda _e, stats: stats.rejected.get("foreign_peer") == 1)
            assert thread.events() == []

    def test_our_descendant_is_heard(self, short_dir: Path) -> None:
        """The same message from a descendant (here: this process as its own ancestor) arrives."""
        me = os.getpid()
        server = ShimEventServer(short_dir / "e.sock", peer_check=lambda pid: descends_from(pid, me))
        with ServerThread(server) as thread, socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.connect(str(server.path))
            sock.send(hello(me))
            events = thread.wait_for(lambda e, _s: any(x.kind == "hello" for x in e))
            assert events[0].pid == me

    def test_an_unreadable_ancestry_is_looked_at_again(self, short_dir: Path) -> None:
        """A peer whose tree cannot be read at accept waits (messages queued), then is heard once it can."""
        answers = iter([None, None, True])
        server = ShimEventServer(short_dir / "e.sock", peer_check=lambda _pid: next(answers, True))
        with ServerThread(server) as thread, socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.connect(str(server.path))
            sock.send(hello(os.getpid()))
            events = thread.wait_for(lambda e, _s: any(x.kind == "hello" for x in e))
            assert [e.kind for e in events] == ["hello"]
            assert thread.stats().rejected == {}

    def test_an_ancestry_never_readable_is_refused_after_the_window(self, short_dir: Path) -> None:
        """Still unknown after RECHECK_WINDOW (fake clock): refused as unverified_peer (a vanished helper, not a
        finding: debug level), nothing read."""
        clock = [0.0]
        server = ShimEventServer(short_dir / "e.sock", peer_check=lambda _pid: None, clock=lambda: clock[0]).start()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
                sock.connect(str(server.path))
                sock.send(hello(os.getpid()))
                assert server.poll(1.0) == [] and server.rechecking
                clock[0] = RECHECK_WINDOW - 0.01
                assert server.poll(0) == [] and server.rechecking
                clock[0] = RECHECK_WINDOW
                assert server.poll(0) == []
                assert not server.rechecking
                assert server.stats().rejected == {"unverified_peer": 1}
        finally:
            server.close()

    def test_a_million_fuzzed_messages_from_a_stranger_change_no_verdict(self, short_dir: Path,
                                                                         stand_in: int) -> None:
        """1 000 000 forged or garbage messages, sent in a tight loop on one connection by this process (not a
        descendant of the stand-in Ollama): those the kernel queued before the server looked at the peer are
        discarded with the connection, the rest are refused by the kernel; the server emits no event and the
        board's verdicts are those it had without them."""
        baseline = board_verdicts([])
        pool = fuzz_pool()
        server = ShimEventServer(short_dir / "e.sock", peer_check=lambda pid: descends_from(pid, stand_in))
        queued = refused = 0
        with ServerThread(server) as thread, socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.connect(str(server.path))
            sock.setblocking(False)
            send = sock.send
            size = len(pool)
            for i in range(FUZZED):
                try:
                    send(pool[i % size])
                    queued += 1
                except OSError:
                    refused += 1
            thread.wait_for(lambda _e, stats: stats.rejected.get("foreign_peer") == 1)
            events = thread.events()
        assert queued + refused == FUZZED
        assert events == []
        assert board_verdicts(events) == baseline
