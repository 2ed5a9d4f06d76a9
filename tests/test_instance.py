"""One supervisor per instance: the lock names its holder and frees itself however the holder ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.instance import AlreadyRunning, InstanceLock
from tests.serve_helpers import wait_for


class TestInstanceLock:
    def test_second_acquire_names_the_holder(self, tmp_path: Path) -> None:
        """A second taker is refused at once, with the first one's pid."""
        lock = InstanceLock.acquire(tmp_path / "serve.lock")
        with pytest.raises(AlreadyRunning) as refused:
            InstanceLock.acquire(tmp_path / "serve.lock")
        assert refused.value.pid == os.getpid()
        assert str(os.getpid()) in str(refused.value)
        lock.release()
        InstanceLock.acquire(tmp_path / "serve.lock").release()  # free again

    def test_sigkilled_holder_frees_the_lock(self, tmp_path: Path) -> None:
        """The kernel drops the lock with its holder, SIGKILL included: no stale lock to clean up by hand."""
        path, ready = tmp_path / "serve.lock", tmp_path / "ready"
        code = ("import sys, time; from pathlib import Path; from launcher.instance import InstanceLock; "
                f"InstanceLock.acquire(Path({str(path)!r})); Path({str(ready)!r}).touch(); time.sleep(60)")
        holder = subprocess.Popen([sys.executable, "-c", code])
        try:
            wait_for(ready.exists, what="holder")
            with pytest.raises(AlreadyRunning) as refused:
                InstanceLock.acquire(path)
            assert refused.value.pid == holder.pid
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
        InstanceLock.acquire(path).release()

    def test_a_symlink_is_not_followed(self, tmp_path: Path) -> None:
        """The lock is never taken through a link someone planted in the runtime directory."""
        (tmp_path / "serve.lock").symlink_to(tmp_path / "elsewhere")
        with pytest.raises(OSError):
            InstanceLock.acquire(tmp_path / "serve.lock")
        assert not (tmp_path / "elsewhere").exists()
