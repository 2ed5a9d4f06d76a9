"""The BOOTTIME seam of the resume tests (tests/native/fakeboot.c): preloaded into one Python process it moves
CLOCK_BOOTTIME by the seconds in a file, which proves that CPython's time.clock_gettime goes through libc's symbol
(so `launcher.resume.sleep_gap` sees a scripted suspend), and it leaves no trace for the processes that one starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from launcher.resume import sleep_gap
from tests.native.build import native_build

SNIPPET = r"""
import json, os, subprocess, sys, time
from launcher.resume import sleep_gap
path = sys.argv[1]
first = sleep_gap()
open(path, "w").write("250.5\n")
second = sleep_gap()
child = subprocess.run([sys.executable, "-c", "from launcher.resume import sleep_gap; print(sleep_gap())"],
                       capture_output=True, text=True, check=True).stdout
print(json.dumps({"first": first, "second": second, "child": float(child),
                  "preload": os.environ.get("LD_PRELOAD"), "file": os.environ.get("FAKEBOOT_FILE")}))
"""


def run(tmp_path: Path, preload: str, offset: str) -> dict[str, Any]:
    offset_file = tmp_path / "offset"
    offset_file.write_text(offset)
    done = subprocess.run([sys.executable, "-c", SNIPPET, str(offset_file)], capture_output=True, text=True,
                          check=True, timeout=60, env={"PATH": "/usr/bin:/bin", "LD_PRELOAD": preload,
                                                       "FAKEBOOT_FILE": str(offset_file),
                                                       "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


class TestFakeboot:
    def test_python_reads_the_moved_boottime(self, tmp_path: Path) -> None:
        """The offset in the file is in BOOTTIME − MONOTONIC, re-read at each read (a resume scripted mid-run)."""
        out = run(tmp_path, str(native_build().fakeboot), "100\n")
        real = out["child"]
        assert abs(out["first"] - real - 100) < 1.0 and abs(out["second"] - real - 250.5) < 1.0

    def test_only_the_preloaded_process(self, tmp_path: Path) -> None:
        """The library takes itself (and its file) out of the environment: a child reads the real clock; the other
        preloads stay."""
        build = native_build()
        out = run(tmp_path, f"{build.fakeboot} {build.shim}", "100\n")
        assert out["preload"] == str(build.shim) and out["file"] is None
        assert abs(out["child"] - sleep_gap()) < 1.0  # the host's real sleep total, as this test process reads it

    def test_an_unreadable_offset_is_no_offset(self, tmp_path: Path) -> None:
        """Garbage in the file: the real clock (never a crash)."""
        out = run(tmp_path, str(native_build().fakeboot), "soon\n")
        assert abs(out["first"] - out["child"]) < 1.0
