"""Issue 16 item 5 on a real GPU, replayed: the H200 record of `tests/fixtures/h200-revoked-access/` (device nodes
covered under a running serve; README there). The health check saw the access denied; the runner started afterwards
got cuInit 100 from the real driver and must be the revoked access, not a device filter."""

from __future__ import annotations

import hashlib
from pathlib import Path

from launcher.events import Event, Replay
from launcher.evidence.board import Board

HERE = Path(__file__).resolve().parent / "fixtures" / "h200-revoked-access"
DIGESTS = {"events.jsonl": "9fc97b23a71c48b5d8f3626219d1b7a06663e3feb952eda0f6b3f53b950b26a2",
           "stderr.log": "dda87bcb5fd99173c07491253db63ea22fc5cb2d94d113fb66a7e674699e9e78"}


def events() -> list[Event]:
    with open(HERE / "events.jsonl", encoding="utf-8") as stream:
        return list(Replay(stream))


def test_the_record_is_as_it_came_back() -> None:
    for name, digest in DIGESTS.items():
        assert hashlib.sha256((HERE / name).read_bytes()).hexdigest() == digest, name


def test_replayed_the_runner_under_covered_nodes_is_the_revoked_access() -> None:
    board = Board()
    for e in events():
        if e.source == "supervisor" and e.kind in ("verdict", "decision"):
            continue  # what the supervisor concluded then; the board concludes again from the observations
        board.add(e)
    runners = {pid: (v.outcome, v.cause) for (pid, _st), v in board.live().runners.items()}
    assert runners == {5547: ("gpu", "none"), 5604: ("cpu_fallback", "container_gpu_access_lost")}
    assert (board.live().discovery.outcome, board.live().discovery.cause) == ("gpu", "none")


def test_what_the_record_holds() -> None:
    """The facts the README states: access_denied from the fresh open(), then cuInit 100 in the new runner, and the
    verdict the board gave at the time (device_filter_hides_gpu: the miss this fix closes)."""
    record = events()
    denied = [e for e in record if e.kind == "gpu_health" and e.data["gpus"][0]["state"] == "access_denied"]
    assert denied and denied[0].data["gpus"][0]["reason"] == "open(/dev/nvidiactl): Permission denied"
    inits = [e for e in record if e.source == "shim" and e.kind == "cu_init" and e.pid == 5604]
    assert [e.data["result"] for e in inits] == [100] and inits[0].t > denied[0].t
    then = [e.data["cause"] for e in record if e.kind == "verdict" and e.data.get("subject") == "runner 5604"
            and e.data.get("outcome") == "cpu_fallback"]
    assert then and set(then) == {"device_filter_hides_gpu"}
