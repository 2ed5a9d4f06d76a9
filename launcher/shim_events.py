"""The shim event server: one SOCK_SEQPACKET connection per process, protocol v1 validated into `Event`s.

Identity is the kernel's, never the message's: `SO_PEERCRED` at accept gives (pid, uid); the process's start time
(/proc/PID/stat field 22) makes (pid, start time) the key. Only our own uid may connect (DESIGN.md's operator
contract): the socket sits in a directory of ours, is 0600, and a peer of another uid (root included, when we are
not root) is closed at accept. A connection's close is the end of that process (`process_end`), even after SIGKILL.

Every message goes through one choke point, `validate()`, which returns the message or the reason it is dropped;
bad input is counted per reason and never raised. Memory is bounded: at most `max_connections` connections, one
4 KiB receive buffer, and at most `max_events` events per `poll()` (the kernel keeps the rest queued, and a sender
whose queue is full drops and counts on its side).

Only Ollama's processes are heard: with a `peer_check` (the supervisor passes "is this pid a descendant of ours"),
a connection whose SO_PEERCRED pid fails it is closed unread and counted (`foreign_peer`). A peer whose ancestry
cannot be read at accept (a race with its own start or end) is looked at again for RECHECK_WINDOW seconds, its
messages left queued in the kernel meanwhile; `rechecking` tells the loop to poll again soon.

A supervisor registers `fileno()` (an epoll descriptor, readable when there is work) in its own selector and calls
`poll(0)`; tests run it in a thread (tests/shim_server_thread.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import selectors
import socket
import stat
import struct
import termios
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from launcher.events import Event, now
from launcher.log import get as get_logger

log = get_logger(__name__)

PROTOCOL_VERSION: Final = 1
MAX_MESSAGE: Final = 4096
SUN_PATH_MAX: Final = 107  # sizeof(sockaddr_un.sun_path) - 1
PROCESS_END: Final = "process_end"

U64_MAX: Final = 2**64 - 1
I32_MIN: Final = -(2**31)
I32_MAX: Final = 2**31 - 1

# Why a message was dropped: stable labels, counted in ServerStats.dropped.
REASONS: Final = (
    "oversize",  # more than MAX_MESSAGE bytes
    "empty",  # a zero-length message
    "bad_utf8",  # not UTF-8
    "bad_json",  # not JSON (NaN and Infinity included), or nested too deep
    "not_object",  # JSON, but not an object
    "duplicate_key",  # an object with the same key twice
    "bad_version",  # `v` is not 1
    "unknown_kind",  # `ev` is not a v1 kind
    "missing_field",  # a required field is absent
    "bad_field",  # a field has the wrong type or is out of range
    "pid_mismatch",  # `pid` contradicts SO_PEERCRED (same PID namespace only)
    "seq_not_increasing",  # `seq` not above the previous accepted message's on this connection
)
# Why a connection was closed at accept: counted in ServerStats.rejected. `unverified_peer`: the peer's ancestry
# could not be read within RECHECK_WINDOW, almost always a short-lived helper of Ollama's (a device probe) that
# ended and was reaped before its connection was looked at; refused like a foreign peer, but not a finding, so it
# is logged at debug level (a healthy run under load logs no warning, issue 15 item 6).
REJECTIONS: Final = ("other_uid", "unknown_pid", "too_many_connections", "foreign_peer", "unverified_peer")
QUIET_REJECTIONS: Final = frozenset({"unverified_peer"})
RECHECK_WINDOW: Final = 0.5  # seconds a peer whose ancestry cannot be read yet is looked at again


# --- protocol v1 validation: pure, one choke point ----------------------------------------------------------------


class _Bad(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


Check = Callable[[Any], Any]


def _int(lo: int, hi: int) -> Check:
    def check(value: Any) -> int:
        if type(value) is not int or not lo <= value <= hi:
            raise _Bad("bad_field", f"expected an integer in [{lo}, {hi}]")
        return value

    return check


def _str(value: Any) -> str:
    if type(value) is not str:
        raise _Bad("bad_field", "expected a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape: cannot be recorded as UTF-8
        raise _Bad("bad_field", "string is not valid Unicode") from None
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise _Bad("bad_field", "expected true or false")
    return value


def _str_list(value: Any) -> list[str]:
    if type(value) is not list:
        raise _Bad("bad_field", "expected a list of strings")
    return [_str(item) for item in value]


def _object(required: Mapping[str, Check]) -> Check:
    def check(value: Any) -> dict[str, Any]:
        if type(value) is not dict:
            raise _Bad("bad_field", "expected an object")
        return _fields(value, required, {})

    return check


_U64 = _int(0, U64_MAX)
_I32 = _int(I32_MIN, I32_MAX)
_CODE = _int(0, I32_MAX)  # CUresult
_PID = _int(1, I32_MAX)

COMMON: Final[Mapping[str, Check]] = {
    "v": _int(0, U64_MAX),  # checked for == 1 separately, to count it apart
    "ev": _str,
    "pid": _PID,
    "seq": _int(1, U64_MAX),
    "t_ns": _U64,
}

# kind -> (required fields, optional fields). Fields not listed are ignored (dropped from the event, counted).
SCHEMA: Final[Mapping[str, tuple[Mapping[str, Check], Mapping[str, Check]]]] = {
    "hello": (
        {"exe": _str, "argv": _str_list, "ppid": _int(0, I32_MAX)},
        {"ld_preload": _opt_str, "ld_library_path": _opt_str, "cuda_visible_devices": _opt_str},
    ),
    "dlopen": ({"name": _str, "ok": _bool}, {"path": _opt_str, "error": _opt_str, "flags": _I32}),
    "cu_init": ({"result": _CODE}, {}),
    "device": (
        {"ordinal": _int(0, I32_MAX)},
        {"name": _str, "uuid": _str, "pci_bus_id": _str, "total_mem": _U64},
    ),
    "ctx": ({"device": _I32, "result": _CODE}, {}),
    "cuda_error": ({"fn": _str, "code": _CODE, "count": _int(1, U64_MAX)}, {}),
    "snapshot": (
        {
            "launches": _object({"kernel": _U64, "kernel_ex": _U64, "cooperative": _U64, "graph": _U64}),
            "mem": _object({"allocs": _U64, "frees": _U64, "alloc_bytes": _U64, "free_bytes": _U64}),
            "copies": _object({"htod_bytes": _U64, "dtoh_bytes": _U64, "dtod_bytes": _U64}),
            "dropped": _U64,
        },
        {},
    ),
    "bye": ({}, {}),
}
KINDS: Final = tuple(SCHEMA)


def _fields(obj: dict[str, Any], required: Mapping[str, Check], optional: Mapping[str, Check]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, check in required.items():
        if name not in obj:
            raise _Bad("missing_field", name)
        out[name] = check(obj[name])
    for name, check in optional.items():
        if name in obj:
            out[name] = check(obj[name])
    return out


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Bad("duplicate_key")
    return obj


def _no_constants(name: str) -> Any:
    raise _Bad("bad_json", f"{name} is not JSON")


_decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


@dataclass(frozen=True, slots=True)
class Message:
    """A valid v1 message: its kind and its known fields (`v` and `ev` removed, unknown fields dropped)."""

    kind: str
    pid: int
    seq: int
    fields: Mapping[str, Any]
    ignored: int = 0  # unknown fields dropped


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a message was dropped (`reason` is one of REASONS) and a short detail for the first log line."""

    reason: str
    detail: str = ""


def validate(raw: bytes, *, peer_pid: int | None = None, last_seq: int = 0) -> Message | Rejected:
    """Check one message against protocol v1; never raises.

    `peer_pid`: the pid from SO_PEERCRED when the sender is in our PID namespace (None skips the check);
    `last_seq`: the last accepted `seq` on this connection (0 before the first).
    """
    if len(raw) > MAX_MESSAGE:
        return Rejected("oversize", f"{len(raw)} bytes")
    if not raw:
        return Rejected("empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected("bad_utf8", str(exc)[:120])
    try:
        return _validate_text(text, peer_pid, last_seq)
    except _Bad as exc:
        return Rejected(exc.reason, exc.detail)


def _validate_text(text: str, peer_pid: int | None, last_seq: int) -> Message:
    try:
        obj = _decoder.decode(text)
    except (ValueError, RecursionError) as exc:
        raise _Bad("bad_json", str(exc)[:120]) from None
    if type(obj) is not dict:
        raise _Bad("not_object", type(obj).__name__)
    if "v" not in obj:
        raise _Bad("missing_field", "v")
    if obj["v"] != PROTOCOL_VERSION or type(obj["v"]) is not int:
        raise _Bad("bad_version", repr(obj["v"])[:40])
    if "ev" not in obj:
        raise _Bad("missing_field", "ev")
    kind = obj["ev"]
    if type(kind) is not str or kind not in SCHEMA:
        raise _Bad("unknown_kind", repr(kind)[:40])
    common = _fields(obj, COMMON, {})
    required, optional = SCHEMA[kind]
    fields = _fields(obj, required, optional)
    if kind == "dlopen" and not fields["ok"] and fields.get("error") is None:
        raise _Bad("missing_field", "error (dlopen failed)")
    if peer_pid is not None and common["pid"] != peer_pid:
        raise _Bad("pid_mismatch", f"message pid {common['pid']}, peer {peer_pid}")
    if common["seq"] <= last_seq:
        raise _Bad("seq_not_increasing", f"seq {common['seq']} after {last_seq}")
    known = len(COMMON) + len(fields)
    return Message(
        kind=kind,
        pid=common["pid"],
        seq=common["seq"],
        fields={"pid": common["pid"], "seq": common["seq"], "t_ns": common["t_ns"], **fields},
        ignored=len(obj) - known,
    )


# --- peers -------------------------------------------------------------------------------------------------------


def process_start_time(pid: int, proc_root: Path = Path("/proc")) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot); None when the process is already gone."""
    try:
        data = (proc_root / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'. Field 3 is then index 0.
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return int(rest[22 - 3])
    except (IndexError, ValueError):
        return None


def same_pid_namespace(pid: int, proc_root: Path = Path("/proc")) -> bool | None:
    """Whether `pid` lives in our PID namespace; None when it cannot be told (gone, or not readable)."""
    try:
        return (proc_root / "self" / "ns" / "pid").readlink() == (proc_root / str(pid) / "ns" / "pid").readlink()
    except OSError:
        return None


@dataclass(slots=True)
class _Conn:
    sock: socket.socket
    serial: int
    pid: int
    uid: int
    start_time: int | None
    check_pid: bool  # same PID namespace: the message's pid must equal ours
    last_seq: int = 0
    accepted: int = 0
    dropped: int = 0
    closed: bool = False

    @property
    def key(self) -> tuple[int, int | None]:
        return (self.pid, self.start_time)


# --- the server --------------------------------------------------------------------------------------------------


class ShimEventsError(OSError):
    """The server cannot listen (path too long, directory not ours, another server holds the socket)."""


@dataclass(frozen=True, slots=True)
class ServerStats:
    """Counters since start: accepted messages, dropped ones per reason, connections."""

    accepted: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)
    rejected: Mapping[str, int] = field(default_factory=dict)
    ignored_fields: int = 0
    connections_open: int = 0
    connections_total: int = 0

    @property
    def dropped_total(self) -> int:
        """All dropped messages."""
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, for logs and status."""
        return {
            "accepted": self.accepted, "dropped": dict(self.dropped), "dropped_total": self.dropped_total,
            "rejected": dict(self.rejected), "ignored_fields": self.ignored_fields,
            "connections_open": self.connections_open, "connections_total": self.connections_total,
        }


class ShimEventServer:
    """Listens on `path` for shim connections; `poll()` turns what arrived into Events. Not thread-safe."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_connections: int = 1024,
        max_events: int = 4096,
        max_per_connection: int = 256,
        allowed_uids: Collection[int] | None = None,
        proc_root: Path = Path("/proc"),
        clock: Callable[[], float] = now,
        peer_check: Callable[[int], bool | None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.max_connections = max_connections
        self.max_events = max_events
        self.max_per_connection = max_per_connection
        self.allowed_uids = frozenset(allowed_uids) if allowed_uids is not None else frozenset({os.geteuid()})
        self._proc = proc_root
        self._clock = clock
        self._peer_check = peer_check
        self._recheck: list[tuple[socket.socket, int, int, float]] = []  # (sock, pid, uid, give-up time)
        self._sel = selectors.EpollSelector()
        self._listener: socket.socket | None = None
        self._lock_fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._conns: dict[int, _Conn] = {}  # by fd
        self._live: Counter[tuple[int, int | None]] = Counter()  # open connections per (pid, start time)
        self._serial = 0
        self._accepted = 0
        self._ignored = 0
        self._dropped: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._logged: set[str] = set()
        self._buf = bytearray(MAX_MESSAGE + 1)

    # lifecycle

    def start(self) -> ShimEventServer:
        """Create the directory (0700), take the instance lock, bind the socket (0600) atomically, listen."""
        path = self.path
        if not path.is_absolute():
            raise ShimEventsError(f"event socket path must be absolute: {path}")
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            raise ShimEventsError(f"event socket path is longer than {SUN_PATH_MAX} bytes: {path}")
        _private_dir(path.parent)
        self._lock_fd = _take_lock(path.with_name(path.name + ".lock"))
        try:
            listener = _bind_replacing(path)
        except BaseException:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise
        st = path.lstat()
        self._inode = (st.st_dev, st.st_ino)
        self._listener = listener
        self._sel.register(listener, selectors.EVENT_READ, None)
        log.debug("shim_events_listening", path=str(path))
        return self

    def __enter__(self) -> ShimEventServer:
        return self.start() if self._listener is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening, close every connection (no process_end: the processes did not end) and remove the
        socket file if it is still ours."""
        for conn in list(self._conns.values()):
            self._forget(conn)
        for sock, *_rest in self._recheck:
            sock.close()
        self._recheck.clear()
        if self._listener is not None:
            self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None
            with contextlib.suppress(OSError):
                st = self.path.lstat()
                if (st.st_dev, st.st_ino) == self._inode:
                    self.path.unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._sel.close()

    # for an event loop

    def fileno(self) -> int:
        """An epoll descriptor that is readable when `poll(0)` has something to do."""
        return self._sel.fileno()

    def poll(self, timeout: float | None = 0.0) -> list[Event]:
        """Wait up to `timeout` seconds (None: forever), then accept, read and validate what is there."""
        out: list[Event] = []
        if self._recheck:
            self._recheck_peers()
        for key, _mask in self._sel.select(timeout):
            if key.data is None:
                self._accept_all()
            else:
                self._read(key.data, out)
            if len(out) >= self.max_events:
                break
        return out

    @property
    def rechecking(self) -> bool:
        """Connections wait for a second look at their peer: poll again within RECHECK_WINDOW."""
        return bool(self._recheck)

    def stats(self) -> ServerStats:
        """A snapshot of the counters."""
        return ServerStats(
            accepted=self._accepted,
            dropped=dict(self._dropped),
            rejected=dict(self._rejected),
            ignored_fields=self._ignored,
            connections_open=len(self._conns),
            connections_total=self._serial,
        )

    # accepting

    def _accept_all(self) -> None:
        assert self._listener is not None
        for _ in range(64):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: leave it queued, say so once
                self._log_once("accept_failed", "shim_events_accept_failed", error=exc.strerror)
                return
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        try:
            pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        except OSError:
            sock.close()
            return
        reason = None
        if uid not in self.allowed_uids:
            reason = "other_uid"
        elif pid <= 0:  # a peer outside our PID namespace tree: no identity
            reason = "unknown_pid"
        elif len(self._conns) + len(self._recheck) >= self.max_connections:
            reason = "too_many_connections"
        elif self._peer_check is not None:
            ours = self._peer_check(pid)
            if ours is None:
                self._recheck.append((sock, pid, uid, self._clock() + RECHECK_WINDOW))
                return
            if not ours:
                reason = "foreign_peer"
        if reason is not None:
            self._reject(sock, reason, pid, uid)
            return
        self._register(sock, pid, uid)

    def _reject(self, sock: socket.socket, reason: str, pid: int, uid: int) -> None:
        sock.close()
        self._rejected[reason] += 1
        self._log_once(f"reject:{reason}", "shim_connection_rejected", reason=reason, pid=pid, uid=uid)

    def _recheck_peers(self) -> None:
        assert self._peer_check is not None
        waiting, self._recheck = self._recheck, []
        t = self._clock()
        for sock, pid, uid, give_up in waiting:
            ours = self._peer_check(pid)
            if ours:
                self._register(sock, pid, uid)
            elif ours is False:
                self._reject(sock, "foreign_peer", pid, uid)
            elif t >= give_up:
                self._reject(sock, "unverified_peer", pid, uid)
            else:
                self._recheck.append((sock, pid, uid, give_up))

    def _register(self, sock: socket.socket, pid: int, uid: int) -> None:
        sock.setblocking(False)
        self._serial += 1
        conn = _Conn(
            sock=sock,
            serial=self._serial,
            pid=pid,
            uid=uid,
            start_time=process_start_time(pid, self._proc),
            check_pid=same_pid_namespace(pid, self._proc) is True,
        )
        self._conns[sock.fileno()] = conn
        self._live[conn.key] += 1
        self._sel.register(sock, selectors.EVENT_READ, conn)

    # reading

    def _read(self, conn: _Conn, out: list[Event]) -> None:
        if conn.closed:  # ended earlier in this batch (its descriptor may already belong to a newer connection)
            return
        view = memoryview(self._buf)
        for _ in range(self.max_per_connection):
            try:
                n, _anc, flags, _addr = conn.sock.recvmsg_into([view])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._end(conn, out)
                return
            if n == 0 and self._at_eof(conn.sock):
                self._end(conn, out)
                return
            if flags & socket.MSG_TRUNC:  # longer than the buffer; the kernel discarded the rest
                self._drop(conn, Rejected("oversize", f"more than {n} bytes"))
            else:
                self._handle(conn, bytes(view[:n]), out)
            if len(out) >= self.max_events:
                return

    @staticmethod
    def _at_eof(sock: socket.socket) -> bool:
        """A zero-length read is EOF or an empty message: EOF when the peer hung up and nothing is queued."""
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)
        hung_up = any(mask & (select.POLLRDHUP | select.POLLHUP) for _fd, mask in poller.poll(0))
        if not hung_up:
            return False
        try:
            queued: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return True
        return queued == 0

    def _handle(self, conn: _Conn, raw: bytes, out: list[Event]) -> None:
        result = validate(raw, peer_pid=conn.pid if conn.check_pid else None, last_seq=conn.last_seq)
        if isinstance(result, Rejected):
            self._drop(conn, result)
            return
        conn.last_seq = result.seq
        conn.accepted += 1
        self._accepted += 1
        self._ignored += result.ignored
        data = {**result.fields, "start_time": conn.start_time, "conn": conn.serial}
        out.append(Event(source="shim", kind=result.kind, t=self._clock(), pid=conn.pid, data=data))

    def _drop(self, conn: _Conn, rejected: Rejected) -> None:
        self._dropped[rejected.reason] += 1
        conn.dropped += 1
        self._log_once(f"drop:{rejected.reason}", "shim_message_dropped", reason=rejected.reason,
                       detail=rejected.detail, pid=conn.pid)

    def _end(self, conn: _Conn, out: list[Event]) -> None:
        """The connection closed: that process ended (or exec'd) once its last connection is gone."""
        self._forget(conn)
        if self._live[conn.key] == 0:
            out.append(Event(source="shim", kind=PROCESS_END, t=self._clock(), pid=conn.pid, data={
                "start_time": conn.start_time, "conn": conn.serial,
                "messages": conn.accepted, "dropped": conn.dropped,
            }))

    def _forget(self, conn: _Conn) -> None:
        conn.closed = True
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        self._conns.pop(conn.sock.fileno(), None)
        conn.sock.close()
        self._live[conn.key] -= 1
        if self._live[conn.key] <= 0:
            del self._live[conn.key]

    def _log_once(self, tag: str, event: str, **kw: Any) -> None:
        if tag not in self._logged:
            self._logged.add(tag)
            quiet = kw.get("reason") in QUIET_REJECTIONS
            (log.debug if quiet else log.warning)(event, first_of_kind=True, **kw)


def _private_dir(path: Path) -> None:
    """The socket's directory: created 0700; an existing one must be ours and not writable by others."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise ShimEventsError(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise ShimEventsError(f"{path} belongs to uid {st.st_uid}, not to us ({os.geteuid()})")
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise ShimEventsError(f"{path} is writable by others; the event socket needs a private directory")


def _take_lock(lock_path: Path) -> int:
    """Hold `<socket>.lock` for the server's life: one server per socket path, and stale replacement is safe."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ShimEventsError(f"another ollama-gpu serves events on {lock_path.with_suffix('')}") from None
    return fd


def _bind_replacing(path: Path) -> socket.socket:
    """Bind a fresh socket (0600) under a temporary name, then rename it over `path` (a stale socket from a
    crashed run is replaced in one step; anything that is not a socket is left alone and refused)."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ShimEventsError(f"{path} exists and is not a socket; remove it")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    tmp = path.with_name(f".{os.getpid()}.sock.tmp")
    try:
        if len(os.fsencode(tmp)) <= SUN_PATH_MAX:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            sock.bind(str(tmp))
            tmp.chmod(0o600)
            sock.listen(128)
            tmp.replace(path)
        else:  # a name so short that the temporary one does not fit: the lock makes this safe too
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            sock.bind(str(path))
            path.chmod(0o600)
            sock.listen(128)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return sock
