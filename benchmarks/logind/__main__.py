"""`python -m benchmarks.logind [--signals 20] [--idle 20]`: the logind listener (launcher.logind) against a real
`dbus-daemon` with the stock system-bus policy (/usr/share/dbus-1/system.conf, listening on a private socket), with
each real tool installed (`gdbus`, `dbus-monitor`).

A small raw D-Bus client (this file; no D-Bus library) owns `org.freedesktop.login1` on that bus (one policy line lets
the current user own it) and emits `PrepareForSleep(true/false)`; the listener's callbacks time each signal
(CLOCK_MONOTONIC is the same clock in both processes). Reported per tool: signals received, latency (send -> callback;
target: well under a second, the clock gap it improves on waits up to OGPU_HEALTH_INTERVAL), lines counted bad (must
be 0: the tools' real output), and the CPU seconds and RSS of the tool and its wrapper shell over `--idle` seconds
without signals. Run it as a non-root user (e.g. `setpriv --reuid 65534 --regid 65534 --clear-groups`, with a Python
environment that user can read) to see that the listener needs no privilege under the stock policy. Needs dbus-daemon;
a tool that is not installed is reported as such.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import socket
import statistics
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from launcher.children import ChildRegistry
from launcher.logind import TOOLS, start_listener

STOCK = Path("/usr/share/dbus-1/system.conf")


def bus_config(socket_path: Path, user: str) -> str:
    """The stock system-bus policy, listening on `socket_path`, no daemon user, pid file, syslog or service
    directories; `user` may own org.freedesktop.login1 (the emitter)."""
    text = STOCK.read_text()
    for tag in ("user", "pidfile", "servicehelper", "includedir"):
        text = re.sub(rf"<{tag}>.*?</{tag}>", "", text, flags=re.S)
    text = re.sub(r"<include [^>]*>.*?</include>", "", text, flags=re.S)
    for tag in ("<fork/>", "<syslog/>", "<standard_system_servicedirs/>"):
        text = text.replace(tag, "")
    text = re.sub(r"<listen>.*?</listen>", f"<listen>unix:path={socket_path}</listen>", text)
    return text.replace("</busconfig>", f'<policy user="{user}"><allow own="org.freedesktop.login1"/></policy>'
                                        "\n</busconfig>")


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack("<I", len(data)) + data + b"\0"


def _message(kind: int, serial: int, fields: list[tuple[int, str, str]], body: bytes = b"", sig: str = "") -> bytes:
    """A little-endian D-Bus message: header fields a(yv) of o/s/g values, then the body."""
    array = b""
    for code, typ, value in fields + ([(8, "g", sig)] if sig else []):
        array += b"\0" * ((-(16 + len(array))) % 8) + bytes([code, 1]) + typ.encode() + b"\0"
        if typ == "g":
            array += bytes([len(value)]) + value.encode() + b"\0"
        else:
            array += b"\0" * ((-(16 + len(array))) % 4) + _string(value)
    head = struct.pack("<cBBBIII", b"l", kind, 0, 1, len(body), serial, len(array)) + array
    return head + b"\0" * ((-len(head)) % 8) + body


class Emitter:
    """A connection that owns org.freedesktop.login1 and emits PrepareForSleep."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
        if not self.sock.recv(4096).startswith(b"OK"):
            raise RuntimeError("the bus refused EXTERNAL authentication")
        self.sock.sendall(b"BEGIN\r\n")
        bus = [(1, "o", "/org/freedesktop/DBus"), (2, "s", "org.freedesktop.DBus"), (6, "s", "org.freedesktop.DBus")]
        self.sock.sendall(_message(1, 1, [*bus, (3, "s", "Hello")]))
        name = _string("org.freedesktop.login1")
        body = name + b"\0" * ((-len(name)) % 4) + struct.pack("<I", 4)  # DBUS_NAME_FLAG_DO_NOT_QUEUE
        self.sock.sendall(_message(1, 2, [*bus, (3, "s", "RequestName")], body, "su"))
        self.serial = 3

    def emit(self, going_to_sleep: bool) -> float:
        """Send PrepareForSleep; the monotonic time just before the send."""
        message = _message(4, self.serial, [(1, "o", "/org/freedesktop/login1"),
                                            (2, "s", "org.freedesktop.login1.Manager"),
                                            (3, "s", "PrepareForSleep")], struct.pack("<I", int(going_to_sleep)), "b")
        self.serial += 1
        t = time.monotonic()
        self.sock.sendall(message)
        return t


def measure(tool: str, path: Path, emitter: Emitter, signals: int, idle: float) -> str:
    """One tool: start the product's listener with only this tool on PATH, emit, time, idle, stop."""
    found = shutil.which(tool)
    if found is None:
        return f"{tool}: not installed"
    only = path.parent / f"only-{tool}"
    only.mkdir(exist_ok=True)
    link = only / tool
    if not link.exists():
        link.symlink_to(found)
    got: list[float] = []
    listener = start_listener({"PATH": str(only), "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={path}"}, ChildRegistry(),
                              lambda: got.append(time.monotonic()))
    if listener is None:
        return f"{tool}: no listener"
    try:
        deadline = time.monotonic() + 10
        while listener.starts == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)  # the tool subscribes
        sent = []
        for _ in range(signals):
            emitter.emit(True)
            sent.append(emitter.emit(False))
            time.sleep(0.05)
        time.sleep(0.5)
        latencies = [1000 * (g - s) for g, s in zip(got, sent, strict=False)]
        child = listener._child  # the wrapper shell
        procs = [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)] if child else []
        cpu0 = sum(sum(p.cpu_times()[:2]) for p in procs)
        time.sleep(idle)
        cpu = sum(sum(p.cpu_times()[:2]) for p in procs) - cpu0
        rss = {p.name(): p.memory_info().rss // 1024 for p in procs}
    finally:
        listener.close()
    lat = (f"median {statistics.median(latencies):.2f} ms, max {max(latencies):.2f} ms" if latencies
           else "no latency")
    return (f"{tool}: {len(got)}/{signals} resumes, {lat}, bad lines {listener.bad}, idle {idle:.0f} s: "
            f"{cpu:.3f} CPU s, RSS KiB {rss}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.logind")
    parser.add_argument("--signals", type=int, default=20)
    parser.add_argument("--idle", type=float, default=20.0)
    args = parser.parse_args()
    if shutil.which("dbus-daemon") is None or not STOCK.exists():
        raise SystemExit("needs dbus-daemon and /usr/share/dbus-1/system.conf")
    with tempfile.TemporaryDirectory(prefix="ogpu-logind-") as tmp:
        os.chmod(tmp, 0o755)
        path = Path(tmp) / "system_bus_socket"
        config = Path(tmp) / "system.conf"
        config.write_text(bus_config(path, pwd.getpwuid(os.getuid()).pw_name))
        daemon = subprocess.Popen(["dbus-daemon", "--nofork", f"--config-file={config}"])
        try:
            deadline = time.monotonic() + 10
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            emitter = Emitter(path)
            print(f"uid {os.getuid()}, stock policy from {STOCK}")
            for tool, _args in TOOLS:
                print(measure(tool, path, emitter, args.signals, args.idle), flush=True)
        finally:
            daemon.terminate()
            daemon.wait(10)


if __name__ == "__main__":
    main()
