"""A fake `gdbus` / `dbus-monitor` for tests: a script first on PATH that prints the real tool's banner, then whatever
the test hands it (`emit`), and exits when told (`die`). It records its argv and pid beside itself (the listener
passes the tool no environment of ours, so the script finds its directory from $0)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil

SCRIPT = """#!{python}
import os, sys, time
d = os.path.dirname(os.path.abspath(sys.argv[0]))
with open(os.path.join(d, "argv"), "a") as f:
    f.write(" ".join(sys.argv) + "\\n")
with open(os.path.join(d, "pids"), "a") as f:
    f.write(f"{{os.getpid()}}\\n")
print({banner!r}, flush=True)
while True:
    emit = os.path.join(d, "emit")
    if os.path.exists(emit):
        with open(emit) as f:
            sys.stdout.write(f.read())
            sys.stdout.flush()
        os.unlink(emit)
    if os.path.exists(os.path.join(d, "die")):
        os.unlink(os.path.join(d, "die"))
        print("Error: the bus went away", file=sys.stderr, flush=True)
        sys.exit(3)
    time.sleep(0.02)
"""
BANNERS = {"gdbus": "Monitoring signals on object /org/freedesktop/login1 owned by org.freedesktop.login1\n"
                    "The name org.freedesktop.login1 is owned by :1.3",
           "dbus-monitor": "signal time=1765000000.000001 sender=org.freedesktop.DBus -> destination=:1.42 serial=2 "
                           "path=/org/freedesktop/DBus; interface=org.freedesktop.DBus; member=NameAcquired\n"
                           "   string \":1.42\""}
# the real tools' lines for PrepareForSleep(going_to_sleep)
GDBUS = "/org/freedesktop/login1: org.freedesktop.login1.Manager.PrepareForSleep ({},)\n"
MONITOR = ("signal time=1765000100.123456 sender=:1.3 -> destination=(null destination) serial=1234 "
           "path=/org/freedesktop/login1; interface=org.freedesktop.login1.Manager; member=PrepareForSleep\n"
           "   boolean {}\n")


class FakeTool:
    """The script as `bin/<name>`, and a fake system bus socket path (a file is enough: only its existence is
    checked before the tool is run)."""

    def __init__(self, root: Path, name: str = "gdbus", bus: bool = True) -> None:
        self.dir = root / "bin"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.path = self.dir / name
        self.path.write_text(SCRIPT.format(python=sys.executable, banner=BANNERS[name]))
        self.path.chmod(0o755)
        self.bus = root / "system_bus_socket"
        if bus:
            self.bus.touch()

    def env(self, base: dict[str, str] | None = None, alone: bool = False) -> dict[str, str]:
        """PATH with the fake first (`alone`: the fake's directory only, so a real tool is never found), and the bus
        address pointing at the fake socket."""
        env = dict(base if base is not None else os.environ)
        env["PATH"] = str(self.dir) if alone else f"{self.dir}:{env.get('PATH', os.defpath)}"
        env["DBUS_SYSTEM_BUS_ADDRESS"] = f"unix:path={self.bus}"
        return env

    def say(self, text: str) -> None:
        """Have the running tool print `text` (atomically handed over)."""
        tmp = self.dir / "emit.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.dir / "emit")

    def sleep_and_resume(self) -> None:
        """PrepareForSleep(true), then (false), in this tool's format."""
        line = GDBUS if self.name == "gdbus" else MONITOR
        self.say(line.format("true") + line.format("false"))

    def die(self) -> None:
        """Make the running tool exit 3."""
        (self.dir / "die").touch()

    def pids(self) -> list[int]:
        """Every pid the tool ran as."""
        path = self.dir / "pids"
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def alive(self) -> list[int]:
        """The tool's pids still running (zombies count as gone)."""
        out = []
        for pid in self.pids():
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except psutil.NoSuchProcess:
                continue
        return out

    def argv(self) -> list[str]:
        """Each run's argv, one line per run."""
        path = self.dir / "argv"
        return path.read_text().splitlines() if path.exists() else []
