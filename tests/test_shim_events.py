"""The shim event server: protocol v1 validation, peer identity, process ends, and 100 000 fuzzed messages."""

from __future__ import annotations

import json
import os
import pickle
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.events import Event
from launcher.shim_events import (
    MAX_MESSAGE,
    PROCESS_END,
    REASONS,
    Message,
    Rejected,
    ShimEventsError,
    ShimEventServer,
    process_start_time,
    validate,
)
from tests.shim_server_thread import ServerThread

# --- protocol v1 as DESIGN.md states it: the test's own copy, so that a drift in the server fails here ----------

U64 = 2**64 - 1
I32 = 2**31 - 1
# field type names -> (valid strategy, wrong values)
TYPES: dict[str, tuple[st.SearchStrategy[Any], list[Any]]] = {
    "u64": (st.integers(0, U64), [-1, U64 + 1, 1.5, 1.0, "1", True, None, [], {}]),
    "i32": (st.integers(-(2**31), I32), [I32 + 1, -(2**31) - 1, 2.0, "0", False, None, [0]]),
    "code": (st.integers(0, I32), [-1, I32 + 1, 0.0, "0", True, None, {}]),
    "pid": (st.integers(1, 4194304), [0, -1, I32 + 1, 1.0, "1", True, None, [1]]),
    "pid0": (st.integers(0, 4194304), [-1, I32 + 1, 1.5, "1", False, None]),
    "seq": (st.integers(1, 2**40), [0, -1, U64 + 1, 1.0, "1", True, None]),
    "str": (st.text(max_size=40), [1, None, True, [], {}, ["a"]]),
    "opt_str": (st.none() | st.text(max_size=40), [1, False, [], {}, 0.5]),
    "bool": (st.booleans(), [0, 1, "true", None, [], 1.0]),
    "str_list": (st.lists(st.text(max_size=20), max_size=6), ["a", None, [1], [None], {}, [["a"]]]),
}
LAUNCHES = {"kernel": "u64", "kernel_ex": "u64", "cooperative": "u64", "graph": "u64"}
MEM = {"allocs": "u64", "frees": "u64", "alloc_bytes": "u64", "free_bytes": "u64"}
COPIES = {"htod_bytes": "u64", "dtoh_bytes": "u64", "dtod_bytes": "u64"}
# kind -> (required, optional); a dict value is a nested object whose fields are all required
SPEC: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "hello": ({"exe": "str", "argv": "str_list", "ppid": "pid0"},
              {"ld_preload": "opt_str", "ld_library_path": "opt_str", "cuda_visible_devices": "opt_str"}),
    "dlopen": ({"name": "str", "ok": "bool"}, {"path": "opt_str", "flags": "i32"}),  # error: see _valid
    "cu_init": ({"result": "code"}, {}),
    "device": ({"ordinal": "pid0"}, {"name": "str", "uuid": "str", "pci_bus_id": "str", "total_mem": "u64"}),
    "ctx": ({"device": "i32", "result": "code"}, {}),
    "cuda_error": ({"fn": "str", "code": "code", "count": "seq"}, {}),
    "snapshot": ({"launches": LAUNCHES, "mem": MEM, "copies": COPIES, "dropped": "u64"}, {}),
    "bye": ({}, {}),
}
COMMON = {"pid": "pid", "seq": "seq", "t_ns": "u64"}
PID, PIDX, SEQ, SEQREP = "__PID__", "__PIDX__", "__SEQ__", "__SEQREP__"  # filled in by the sender


def _value(draw: st.DrawFn, typ: Any) -> Any:
    if isinstance(typ, dict):
        return {k: _value(draw, t) for k, t in typ.items()}
    return draw(TYPES[typ][0])


@st.composite
def valid_object(draw: st.DrawFn, kind: str | None = None) -> dict[str, Any]:
    """A valid v1 message with pid and seq left as placeholders."""
    kind = kind or draw(st.sampled_from(sorted(SPEC)))
    required, optional = SPEC[kind]
    obj: dict[str, Any] = {"v": 1, "ev": kind, "pid": PID, "seq": SEQ, "t_ns": draw(TYPES["u64"][0])}
    obj.update({k: _value(draw, t) for k, t in required.items()})
    for k, t in optional.items():
        if draw(st.booleans()):
            obj[k] = _value(draw, t)
    if kind == "dlopen":
        if not obj["ok"]:
            obj["error"] = draw(TYPES["str"][0])
        elif draw(st.booleans()):
            obj["error"] = None
    return obj


def _types_of(kind: str) -> dict[str, Any]:
    required, optional = SPEC[kind]
    return {**COMMON, **required, **optional, **({"error": "opt_str"} if kind == "dlopen" else {})}


def _dump(obj: Any, *, ascii_only: bool = False) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8")


@st.composite
def bad_message(draw: st.DrawFn) -> tuple[str, bytes]:
    """A message with exactly one defect, and the reason the server must count it under."""
    obj = draw(valid_object())
    kind = obj["ev"]
    mutation = draw(st.sampled_from([
        "missing", "wrong_type", "nested", "version", "kind", "not_object", "duplicate", "nan", "truncate",
        "bad_utf8", "surrogate", "oversize", "pid", "seq", "dlopen_no_error",
    ]))
    if mutation == "missing":
        required = ["v", "ev", *COMMON, *SPEC[kind][0]]
        del obj[draw(st.sampled_from(required))]
        return "missing_field", _dump(obj)
    if mutation == "wrong_type":
        name = draw(st.sampled_from(sorted(k for k in obj if k not in ("v", "ev"))))
        typ = _types_of(kind)[name]
        wrong = [[], "x", 1, None] if isinstance(typ, dict) else TYPES[typ][1]
        obj[name] = draw(st.sampled_from(wrong))
        if kind == "dlopen" and name == "error" and not obj["ok"] and obj["error"] is None:
            return "missing_field", _dump(obj)
        return "bad_field", _dump(obj)
    if mutation == "nested" and kind == "snapshot":
        group = draw(st.sampled_from(["launches", "mem", "copies"]))
        field = draw(st.sampled_from(sorted(obj[group])))
        if draw(st.booleans()):
            del obj[group][field]
            return "missing_field", _dump(obj)
        obj[group][field] = draw(st.sampled_from(TYPES["u64"][1]))
        return "bad_field", _dump(obj)
    if mutation == "version":
        obj["v"] = draw(st.sampled_from([0, 2, "1", 1.5, True, None, [], {"v": 1}, -1]))
        return "bad_version", _dump(obj)
    if mutation == "kind":
        obj["ev"] = draw(st.text(max_size=12).filter(lambda s: s not in SPEC) | st.sampled_from([1, None, ["hello"]]))
        return "unknown_kind", _dump(obj)
    if mutation == "not_object":
        return "not_object", _dump(draw(st.sampled_from([[obj], "hello", 1, None, True, 2.5, []])))
    if mutation == "duplicate":
        return "duplicate_key", _dump(obj)[:-1] + b', "t_ns": 1}'
    if mutation == "nan":
        constant = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity"]))
        return "bad_json", _dump(obj)[:-1] + b', "x": ' + constant + b"}"
    if mutation == "truncate":  # cut whole characters, so that the bytes stay UTF-8
        text = json.dumps(obj, ensure_ascii=False)
        return "bad_json", text[: draw(st.integers(1, len(text) - 1))].encode("utf-8")
    if mutation == "bad_utf8":
        text = _dump(obj)
        at = draw(st.integers(0, len(text)))
        return "bad_utf8", text[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"])) + text[at:]
    if mutation == "surrogate" and kind in ("hello", "dlopen", "cuda_error"):
        name = {"hello": "exe", "dlopen": "name", "cuda_error": "fn"}[kind]
        obj[name] = "a\ud800b"
        return "bad_field", _dump(obj, ascii_only=True)
    if mutation == "oversize":
        obj["padding"] = "x" * draw(st.integers(MAX_MESSAGE, MAX_MESSAGE + 3000))
        return "oversize", _dump(obj)
    if mutation == "pid":
        obj["pid"] = PIDX
        return "pid_mismatch", _dump(obj)
    if mutation == "seq":
        obj["seq"] = SEQREP
        return "seq_not_increasing", _dump(obj)
    if mutation == "dlopen_no_error":
        obj = draw(valid_object("dlopen"))
        obj["ok"] = False
        obj.pop("error", None)
        return "missing_field", _dump(obj)
    return "bad_version", _dump({**obj, "v": 2})  # a mutation that did not apply to this kind


def _fill(template: bytes, pid: int, seq: int, last: int) -> bytes:
    return (template.replace(f'"{PID}"'.encode(), str(pid).encode())
            .replace(f'"{PIDX}"'.encode(), str(pid + 1).encode())
            .replace(f'"{SEQ}"'.encode(), str(seq).encode())
            .replace(f'"{SEQREP}"'.encode(), str(last).encode()))


def valid_message(kind: str, pid: int, seq: int, **fields: Any) -> bytes:
    """A hand-written valid message of `kind` with every optional field set."""
    base: dict[str, Any] = {
        "hello": {"exe": "/usr/bin/ollama", "argv": ["ollama", "runner", "--port", "1"], "ppid": 1,
                  "ld_preload": "/x/libollama_gpu_shim.so", "ld_library_path": None, "cuda_visible_devices": "0"},
        "dlopen": {"name": "libggml-cuda.so", "ok": False, "error": "libcuda.so.1: cannot open shared object file"},
        "cu_init": {"result": 0},
        "device": {"ordinal": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1234", "pci_bus_id": "0000:01:00.0",
                   "total_mem": 85_000_000_000},
        "ctx": {"device": 0, "result": 0},
        "cuda_error": {"fn": "cuLibraryGetKernel", "code": 209, "count": 3},
        "snapshot": {"launches": {"kernel": 5, "kernel_ex": 6, "cooperative": 0, "graph": 2},
                     "mem": {"allocs": 1, "frees": 0, "alloc_bytes": 1 << 30, "free_bytes": 0},
                     "copies": {"htod_bytes": 10, "dtoh_bytes": 20, "dtod_bytes": 0}, "dropped": 0},
        "bye": {},
    }[kind]
    return _dump({"v": 1, "ev": kind, "pid": pid, "seq": seq, "t_ns": 123456789, **base, **fields})


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture
def server(short_dir: Path) -> Iterator[ServerThread]:
    """A started server in a thread on `short_dir/run/events.sock`."""
    with ServerThread(ShimEventServer(short_dir / "run" / "events.sock")) as thread:
        yield thread


def connect(path: Path) -> socket.socket:
    """A client connection like the shim's."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(str(path))
    return sock


def ended(pid: int) -> Any:
    """wait_for predicate: a process_end for `pid` has arrived."""
    return lambda events, _stats: any(e.kind == PROCESS_END and e.pid == pid for e in events)


def of(events: list[Event], pid: int) -> list[Event]:
    """The events of one process."""
    return [e for e in events if e.pid == pid]


CLIENT = r"""
import json, os, socket, sys, time
def hello(sock, pid, seq=1):
    sock.send(json.dumps({"v": 1, "ev": "hello", "pid": pid, "seq": seq, "t_ns": time.monotonic_ns(),
                          "exe": sys.executable, "argv": sys.argv, "ppid": os.getppid()}).encode())
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(sys.argv[1])
    return s
"""


def run_client(body: str, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a small client program (CLIENT helpers + `body`) to completion."""
    return subprocess.run([sys.executable, "-c", CLIENT + body, str(path), *args], capture_output=True, text=True,
                          timeout=60, check=True)


# --- validation (pure) --------------------------------------------------------------------------------------------


class TestValidate:
    def test_every_kind_valid(self) -> None:
        """A hand-written message of each v1 kind is accepted with its fields, minus v and ev."""
        assert sorted(SPEC) == sorted(["hello", "dlopen", "cu_init", "device", "ctx", "cuda_error", "snapshot", "bye"])
        for kind in SPEC:
            result = validate(valid_message(kind, 42, 7), peer_pid=42, last_seq=6)
            assert isinstance(result, Message), (kind, result)
            expected = json.loads(valid_message(kind, 42, 7))
            del expected["v"], expected["ev"]
            assert result.kind == kind and dict(result.fields) == expected

    @pytest.mark.parametrize(("raw", "reason"), [
        (b"", "empty"),
        (b"x" * (MAX_MESSAGE + 1), "oversize"),
        (b"\xff{}", "bad_utf8"),
        (b"{", "bad_json"),
        (b'{"v": NaN}', "bad_json"),
        (b"[" * 3000 + b"]" * 3000, "oversize"),
        (b"[" * 2000 + b"]" * 2000, "bad_json"),  # deeper than the parser's recursion limit
        (b"[1]", "not_object"),
        (b'{"v": 1, "v": 1}', "duplicate_key"),
        (b'{"ev": "bye"}', "missing_field"),
        (b'{"v": 2, "ev": "bye"}', "bad_version"),
        (b'{"v": true, "ev": "bye"}', "bad_version"),
        (b'{"v": 1, "ev": "launch"}', "unknown_kind"),
        (b'{"v": 1, "ev": "bye", "pid": 5, "seq": 1}', "missing_field"),
        (b'{"v": 1, "ev": "bye", "pid": 5, "seq": 1, "t_ns": -1}', "bad_field"),
        (b'{"v": 1, "ev": "bye", "pid": 6, "seq": 1, "t_ns": 1}', "pid_mismatch"),
        (b'{"v": 1, "ev": "bye", "pid": 5, "seq": 3, "t_ns": 1}', "seq_not_increasing"),
        (b'{"v": 1, "ev": "dlopen", "pid": 5, "seq": 4, "t_ns": 1, "name": "libcuda.so.1", "ok": false}',
         "missing_field"),
    ])
    def test_reason(self, raw: bytes, reason: str) -> None:
        """Each defect is reported under its own reason."""
        result = validate(raw, peer_pid=5, last_seq=3)
        assert isinstance(result, Rejected) and result.reason == reason, result
        assert reason in REASONS

    def test_pid_check_skipped_across_namespaces(self) -> None:
        """Without a peer pid (another PID namespace) the message's own pid view is accepted."""
        assert isinstance(validate(valid_message("bye", 1, 1), peer_pid=None), Message)

    def test_unknown_fields_are_dropped_not_fatal(self) -> None:
        """A field v1 does not define is left out of the event and counted, the message is kept."""
        result = validate(valid_message("cu_init", 5, 1, extra=[1, 2]), peer_pid=5)
        assert isinstance(result, Message) and "extra" not in result.fields and result.ignored == 1

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(valid_object())
    def test_generated_valid(self, obj: dict[str, Any]) -> None:
        """Every message the protocol allows is accepted with exactly its fields."""
        raw = _fill(_dump(obj), 77, 9, 8)
        result = validate(raw, peer_pid=77, last_seq=8)
        assert isinstance(result, Message), (raw, result)
        expected = json.loads(raw)
        del expected["v"], expected["ev"]
        assert dict(result.fields) == expected

    @settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
    @given(bad_message())
    def test_generated_bad(self, item: tuple[str, bytes]) -> None:
        """A message with one defect is rejected under that defect's reason."""
        reason, template = item
        result = validate(_fill(template, 77, 9, 8), peer_pid=77, last_seq=8)
        assert isinstance(result, Rejected) and result.reason == reason, (template, result)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=MAX_MESSAGE + 10))
    def test_arbitrary_bytes_never_raise(self, raw: bytes) -> None:
        """Arbitrary bytes give a Message or a Rejected with a known reason, never an exception."""
        result = validate(raw, peer_pid=1, last_seq=0)
        assert isinstance(result, Message) or result.reason in REASONS


class TestProcessStartTime:
    def test_reads_field_22_after_a_tricky_comm(self, tmp_path: Path) -> None:
        """comm may contain spaces and ')': field 22 is counted after the last ')'."""
        (tmp_path / "123").mkdir()
        fields = ["S"] + [str(i) for i in range(4, 22)] + ["987654"] + ["0"] * 30
        (tmp_path / "123" / "stat").write_text("123 (a) b (c)) " + " ".join(fields))
        assert process_start_time(123, tmp_path) == 987654

    def test_gone_process(self, tmp_path: Path) -> None:
        """A process that has already exited has no start time; that is normal, not an error."""
        assert process_start_time(999, tmp_path) is None


# --- the server over real sockets ---------------------------------------------------------------------------------


class TestListener:
    def test_permissions(self, server: ServerThread) -> None:
        """The directory is 0700 and the socket 0600."""
        path = server.server.path
        assert (path.parent.stat().st_mode & 0o777) == 0o700
        assert (path.stat().st_mode & 0o777) == 0o600

    def test_stale_socket_replaced(self, short_dir: Path) -> None:
        """A socket file left by a crashed run is replaced; the new server answers on it."""
        path = short_dir / "events.sock"
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stale.bind(str(path))
        stale.close()
        with ServerThread(ShimEventServer(path)) as thread:
            with connect(path) as sock:
                sock.send(valid_message("bye", os.getpid(), 1))
            thread.wait_for(lambda events, _s: any(e.kind == "bye" for e in events))

    def test_refuses_a_non_socket(self, short_dir: Path) -> None:
        """A regular file at the socket path is not ours to remove."""
        path = short_dir / "events.sock"
        path.write_text("keep me")
        with pytest.raises(ShimEventsError, match="not a socket"):
            ShimEventServer(path).start()
        assert path.read_text() == "keep me"

    def test_second_server_refused(self, server: ServerThread) -> None:
        """Two servers on one path: the second fails and the first keeps its socket."""
        with pytest.raises(ShimEventsError, match="another"):
            ShimEventServer(server.server.path).start()
        with connect(server.server.path) as sock:
            sock.send(valid_message("bye", os.getpid(), 1))
        server.wait_for(lambda events, _s: any(e.kind == "bye" for e in events))

    def test_close_removes_only_our_socket(self, short_dir: Path) -> None:
        """close() unlinks the socket it created."""
        path = short_dir / "events.sock"
        ShimEventServer(path).start().close()
        assert not path.exists()

    def test_fileno_for_a_selector(self, short_dir: Path) -> None:
        """A supervisor's selector sees fileno() readable, and poll(0) then returns the events."""
        with ShimEventServer(short_dir / "e.sock") as srv, selectors.DefaultSelector() as sel:
            sel.register(srv.fileno(), selectors.EVENT_READ)
            assert srv.poll(0) == []
            sock = connect(srv.path)
            sock.send(valid_message("cu_init", os.getpid(), 1))
            sock.close()
            events: list[Event] = []
            while not any(e.kind == PROCESS_END for e in events):
                assert sel.select(timeout=30), "fileno() never became readable"
                events += srv.poll(0)
            assert [e.kind for e in events] == ["cu_init", PROCESS_END]


class TestMessages:
    def test_every_kind_accepted(self, server: ServerThread) -> None:
        """One valid message of each kind arrives as an Event with the peer pid, its fields and start time."""
        pid = os.getpid()
        with connect(server.server.path) as sock:
            for seq, kind in enumerate(SPEC, start=1):
                sock.send(valid_message(kind, pid, seq))
        events = server.wait_for(ended(pid))
        assert [e.kind for e in events] == [*SPEC, PROCESS_END]
        start = process_start_time(pid)
        for seq, event in enumerate(events[:-1], start=1):
            expected = json.loads(valid_message(event.kind, pid, seq))
            del expected["v"], expected["ev"]
            assert event.source == "shim" and event.pid == pid
            data = json.loads(event.to_json())["data"]
            assert {k: v for k, v in data.items() if k not in ("start_time", "conn")} == expected
            assert event.data["start_time"] == start
        assert server.stats().accepted == len(SPEC) and server.stats().dropped_total == 0

    def test_empty_message_does_not_end_the_connection(self, server: ServerThread) -> None:
        """A zero-length message is counted as `empty`; the connection and its later messages live on."""
        pid = os.getpid()
        with connect(server.server.path) as sock:
            sock.send(b"")
            sock.send(valid_message("bye", pid, 1))
        events = server.wait_for(ended(pid))
        assert [e.kind for e in events] == ["bye", PROCESS_END]
        assert server.stats().dropped == {"empty": 1}
        assert json.loads(json.dumps(server.stats().to_dict()))["dropped_total"] == 1

    def test_pid_contradicting_peer_credentials(self, server: ServerThread) -> None:
        """A message claiming another pid than SO_PEERCRED's (same namespace) is dropped as pid_mismatch."""
        pid = os.getpid()
        with connect(server.server.path) as sock:
            sock.send(valid_message("hello", pid + 1, 1))
            sock.send(valid_message("bye", pid, 2))
        events = server.wait_for(ended(pid))
        assert [e.kind for e in events] == ["bye", PROCESS_END]
        assert server.stats().dropped == {"pid_mismatch": 1}

    def test_connection_cap(self, short_dir: Path) -> None:
        """Past max_connections a new connection is closed and counted; open ones keep working."""
        with ServerThread(ShimEventServer(short_dir / "e.sock", max_connections=2)) as thread:
            socks = [connect(thread.server.path) for _ in range(3)]
            thread.wait_for(lambda _e, s: s.rejected.get("too_many_connections") == 1)
            assert thread.stats().connections_open == 2
            for s in socks:
                s.close()


class TestProcesses:
    def test_sigkill_still_ends_the_process(self, server: ServerThread) -> None:
        """A process killed with SIGKILL after its hello gets a process_end from the connection's close."""
        body = "s = connect(); hello(s, os.getpid()); print('ready', flush=True); time.sleep(120)\n"
        proc = subprocess.Popen([sys.executable, "-c", CLIENT + body, str(server.server.path)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            proc.send_signal(signal.SIGKILL)
            events = of(server.wait_for(ended(proc.pid)), proc.pid)
        finally:
            proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        assert [e.kind for e in events] == ["hello", PROCESS_END]
        assert events[1].data["start_time"] == events[0].data["start_time"] is not None

    def test_fork_children_are_separate_processes(self, server: ServerThread) -> None:
        """Parent and forked child, each on its own connection, are two processes with their own ends."""
        body = """
child = os.fork()
if child == 0:
    s = connect(); hello(s, os.getpid()); s.close(); os._exit(0)
s = connect(); hello(s, os.getpid()); os.waitpid(child, 0); s.close()
print(os.getpid(), child)
"""
        parent, child = map(int, run_client(body, server.server.path).stdout.split())
        events = server.wait_for(lambda e, s: ended(parent)(e, s) and ended(child)(e, s))
        assert [e.kind for e in of(events, parent)] == ["hello", PROCESS_END]
        assert [e.kind for e in of(events, child)] == ["hello", PROCESS_END]
        assert of(events, child)[0].data["ppid"] == parent

    def test_inherited_connection_used_by_a_child(self, server: ServerThread) -> None:
        """A forked child writing on its parent's connection is caught: its pid is not the peer's."""
        body = """
s = connect(); hello(s, os.getpid())
child = os.fork()
if child == 0:
    hello(s, os.getpid(), seq=2); os._exit(0)
os.waitpid(child, 0)
hello(s, os.getpid(), seq=2); s.close()
print(os.getpid())
"""
        parent = int(run_client(body, server.server.path).stdout)
        events = server.wait_for(ended(parent))
        assert [(e.kind, e.pid) for e in events] == [("hello", parent), ("hello", parent), (PROCESS_END, parent)]
        assert server.stats().dropped == {"pid_mismatch": 1}

    def test_other_pid_namespace(self, server: ServerThread) -> None:
        """A sender in another PID namespace sees itself as pid 1; the server keys it by its real pid."""
        unshare = shutil.which("unshare")
        if unshare is None or os.geteuid() != 0:
            pytest.fail("needs root and unshare(1) (util-linux), as CI has")
        body = "s = connect(); hello(s, os.getpid()); s.close(); print(os.getpid())"
        proc = subprocess.run([unshare, "--pid", "--fork", "--kill-child", sys.executable, "-c", CLIENT + body,
                               str(server.server.path)], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, f"unshare --pid failed: {proc.stderr.strip()}"
        assert proc.stdout.strip() == "1"
        events = server.wait_for(lambda e, _s: any(x.kind == PROCESS_END for x in e))
        assert [e.kind for e in events] == ["hello", PROCESS_END]
        assert events[0].data["pid"] == 1 and events[0].pid != 1


def _as_nobody_connect(path: Path) -> int:
    """Fork a child that drops to uid/gid 65534 and connects; returns its exit code.

    0: connected and the server then closed it; 13: connect refused with EACCES; 1: anything else.
    """
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.settimeout(30)
            try:
                sock.connect(str(path))
            except PermissionError:
                code = 13
            else:
                try:  # the server closes it: EOF, or ECONNRESET when our hello was still unread
                    sock.send(valid_message("hello", os.getpid(), 1))
                    code = 0 if sock.recv(16) == b"" else 1
                except (BrokenPipeError, ConnectionResetError):
                    code = 0
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another uid")
class TestOtherUid:
    def test_directory_keeps_another_uid_out(self, short_dir: Path, server: ServerThread) -> None:
        """With the runtime directory 0700, another uid cannot even reach the socket."""
        short_dir.chmod(0o755)
        assert _as_nobody_connect(server.server.path) == 13
        assert server.stats().connections_total == 0 and server.events() == []

    def test_peer_credentials_reject_another_uid(self, short_dir: Path, server: ServerThread) -> None:
        """Even with the directory and socket opened up by mistake, another uid is closed at accept."""
        short_dir.chmod(0o755)
        server.server.path.parent.chmod(0o755)
        server.server.path.chmod(0o666)
        assert _as_nobody_connect(server.server.path) == 0
        server.wait_for(lambda _e, s: s.rejected.get("other_uid") == 1)
        assert server.events() == [] and server.stats().accepted == 0


# --- 100 000 fuzzed messages from several processes -----------------------------------------------------------------

SENDER = r"""
import json, os, pickle, socket, sys
path, corpus = sys.argv[1], sys.argv[2]
with open(corpus, "rb") as fh:
    records = pickle.load(fh)
pid = os.getpid()
seq = 0
valid, bad = 0, {}
sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
sock.connect(path)
for reason, template in records:
    nxt = seq + 1
    raw = (template.replace(b'"__PID__"', str(pid).encode()).replace(b'"__PIDX__"', str(pid + 1).encode())
           .replace(b'"__SEQ__"', str(nxt).encode()).replace(b'"__SEQREP__"', str(seq).encode()))
    sock.send(raw)
    if reason == "valid":
        seq, valid = nxt, valid + 1
    else:
        bad[reason] = bad.get(reason, 0) + 1
sock.close()
print(json.dumps({"pid": pid, "valid": valid, "bad": bad}))
"""


def _random_bytes_reason(raw: bytes) -> str | None:
    """An oracle for random input: the first stage that must reject it (None: it happens to be an object)."""
    if len(raw) > MAX_MESSAGE:
        return "oversize"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bad_utf8"

    def refuse(_name: str) -> Any:
        raise ValueError("constant")

    try:
        obj = json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError):
        return "bad_json"
    return None if isinstance(obj, dict) else "not_object"


def _hypothesis_pool(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    """Draw `n` examples from a strategy through a real hypothesis run (derandomized: reproducible)."""
    pool: list[Any] = []

    @settings(max_examples=n, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(item: Any) -> None:
        pool.append(item)

    collect()
    return pool


def _random_input(rng: random.Random) -> bytes:
    choice = rng.random()
    if choice < 0.5:
        return rng.randbytes(rng.choice([1, 2, 3, 8, 64, 512, 4096, 5000]))
    if choice < 0.8:
        return bytes(rng.choice(b'{}[]":,0123456789 .-eEtruefalsn\\xa') for _ in range(rng.randint(1, 80)))
    return str(rng.randint(-(10**20), 10**20)).encode()


def _corpus(rng: random.Random, valid_pool: list[bytes], bad_pool: list[tuple[str, bytes]], n_bad: int,
            n_valid: int) -> list[tuple[str, bytes]]:
    records: list[tuple[str, bytes]] = [("valid", rng.choice(valid_pool)) for _ in range(n_valid)]
    while len(records) < n_valid + n_bad:
        if rng.random() < 0.6:
            records.append(rng.choice(bad_pool))
        else:
            raw = _random_input(rng)
            reason = _random_bytes_reason(raw)
            if reason is not None:
                records.append((reason, raw))
    first = records.pop(0)
    rng.shuffle(records)
    return [first, *records]  # a valid message first, so that a repeated seq has one to repeat


class TestFuzz:
    SENDERS = 4
    BAD_PER_SENDER = 25_000
    VALID_PER_SENDER = 5_000

    def test_100k_fuzzed_messages_from_several_processes(self, short_dir: Path) -> None:
        """Every valid message is accepted in order, every bad one counted under its reason, nothing crashes."""
        valid_pool = [_dump(obj) for obj in _hypothesis_pool(valid_object(), 300)]
        bad_pool = _hypothesis_pool(bad_message(), 700)
        assert {reason for reason, _ in bad_pool} >= set(REASONS) - {"empty"}
        rng = random.Random(4)
        files = []
        for i in range(self.SENDERS):
            corpus = _corpus(rng, valid_pool, bad_pool, self.BAD_PER_SENDER, self.VALID_PER_SENDER)
            files.append(short_dir / f"corpus{i}.pickle")
            files[-1].write_bytes(pickle.dumps(corpus))
        path = short_dir / "events.sock"
        with ServerThread(ShimEventServer(path, max_events=1024)) as thread:
            procs = [subprocess.Popen([sys.executable, "-c", SENDER, str(path), str(f)], stdout=subprocess.PIPE,
                                      text=True) for f in files]
            reports = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
            assert all(p.returncode == 0 for p in procs)
            pids = [r["pid"] for r in reports]
            events = thread.wait_for(lambda e, s: all(ended(pid)(e, s) for pid in pids), timeout=120)
            stats = thread.stats()
        expected_bad: Counter[str] = Counter()
        for report in reports:
            expected_bad.update(report["bad"])
        assert sum(expected_bad.values()) == self.SENDERS * self.BAD_PER_SENDER
        assert stats.dropped == dict(expected_bad)
        assert stats.accepted == sum(r["valid"] for r in reports) == self.SENDERS * self.VALID_PER_SENDER
        for report in reports:
            mine = of(events, report["pid"])
            assert len(mine) == report["valid"] + 1 and mine[-1].kind == PROCESS_END
            assert [e.data["seq"] for e in mine[:-1]] == list(range(1, report["valid"] + 1))
