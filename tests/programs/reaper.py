#!/usr/bin/env python3
"""A stand-in for a reaping init: become a subreaper, start the command given, and reap every process that ends
below us (orphans re-parented here included); exit with the command's code once nothing is left below us.

Tests run `ollama-gpu serve` under it so that after a SIGKILL of the supervisor, whatever the kernel re-parents
is reaped as a real init would (this machine's pid 1 does not reap), and psutil shows only what truly lives on.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def main() -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("reaper: PR_SET_CHILD_SUBREAPER failed")
    first = os.posix_spawnp(sys.argv[1], sys.argv[1:], dict(os.environ))
    code = 0
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            sys.exit(code)
        if pid == 0:
            time.sleep(0.005)
        elif pid == first:
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code


if __name__ == "__main__":
    main()
