"""Issue 16, revoked device access: NVML keeps the descriptors it opened at start, so a device cgroup revoked later
does not fail its calls; the health check also opens the control node afresh, as every new runner will. A node that
was openable at start and is now denied makes every GPU `access_denied`; one that is gone makes them `absent`; a node
that never opened (a container without it) is never watched."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from launcher.gpu_health import ABSENT, ACCESS_DENIED, OK, HealthChecker, node_failure, open_errno
from launcher.nvml import Nvml, NvmlSampler
from tests.nvml_double import NvmlScript, mock_pynvml


class Opener:
    """A scripted open(): errno per path (0 = opens), and the paths asked for."""

    def __init__(self, **codes: int) -> None:
        self.codes = {f"/dev/{k}": v for k, v in codes.items()}
        self.asked: list[str] = []

    def __call__(self, path: str) -> int:
        self.asked.append(path)
        return self.codes.get(path, errno.ENOENT)


@pytest.fixture
def checker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("MOCKNVML_STATE", str(tmp_path / "nvml.state"))
    NvmlScript(tmp_path / "nvml.state").set(count=2)
    sampler = NvmlSampler(nvml=Nvml(mock_pynvml()), clock=lambda: 1.0, ns_inode=1)
    sampler.start()
    assert sampler.state is not None
    yield lambda opener: HealthChecker(sampler.nvml, sampler.state.gpus, clock=lambda: 1.0,
                                       candidates=("/dev/nvidiactl", "/dev/nvidia-uvm"), opener=opener)
    sampler.close()


def states(checker: HealthChecker) -> list[str]:
    events = checker.check()
    assert [e.kind for e in events] == ["gpu_health"]
    return [g["state"] for g in events[0].data["gpus"]]


def test_denied_after_start_is_access_denied_then_back(checker: Any) -> None:
    opener = Opener(nvidiactl=0)
    c = checker(opener)
    assert states(c) == [OK, OK]
    opener.codes["/dev/nvidiactl"] = errno.EPERM  # the device cgroup no longer allows it
    assert states(c) == [ACCESS_DENIED, ACCESS_DENIED]
    assert c.last is not None and c.last[0].reason == "open(/dev/nvidiactl): Operation not permitted"
    assert c.last[0].to_dict()["cause"] == "container_gpu_access_lost"
    opener.codes["/dev/nvidiactl"] = 0
    assert states(c) == [OK, OK]


def test_a_node_gone_is_absent_and_eacces_is_denied(checker: Any) -> None:
    opener = Opener(nvidiactl=0)
    c = checker(opener)
    states(c)
    opener.codes["/dev/nvidiactl"] = errno.ENOENT
    assert states(c) == [ABSENT, ABSENT]
    opener.codes["/dev/nvidiactl"] = errno.EACCES  # a nodev mount, or the node's mode
    assert states(c) == [ACCESS_DENIED, ACCESS_DENIED]


def test_a_node_missing_at_start_is_never_watched(checker: Any) -> None:
    opener = Opener(nvidiactl=0)  # /dev/nvidia-uvm did not open at start
    c = checker(opener)
    states(c)
    opener.asked.clear()
    assert c.check() == []
    assert opener.asked == ["/dev/nvidiactl"]


def test_errnos_that_say_nothing_of_access_are_ignored() -> None:
    assert node_failure(["/dev/nvidiactl"], lambda _p: errno.EBUSY) is None
    assert node_failure(["/dev/nvidiactl"], lambda _p: errno.EINTR) is None
    assert node_failure([], lambda _p: errno.EPERM) is None


def test_open_errno_on_real_paths(tmp_path: Path) -> None:
    f = tmp_path / "node"
    f.write_text("")
    assert open_errno(str(f)) == 0
    assert open_errno(str(tmp_path / "missing")) == errno.ENOENT
    assert open_errno(str(tmp_path)) == errno.EISDIR


def test_a_character_device_on_a_nodev_mount_is_denied(tmp_path: Path) -> None:
    """The real kernel path: /dev/null's device number re-created on a `nodev` tmpfs in a private mount namespace
    opens with EACCES, as a device the cgroup or the mount no longer allows (the H100 run covers /dev/nvidia* so)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("needs root and unshare(1) (util-linux), as CI has")
    code = ("import sys; from launcher.gpu_health import open_errno; "
            "print(open_errno(sys.argv[1]), open_errno('/dev/null'))")
    script = (f'mount -t tmpfs -o nodev,size=64k none "$1" && mknod "$1/null" c 1 3 && '
              f'{sys.executable} -c "{code}" "$1/null"')
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                           str(tmp_path)], capture_output=True, text=True, timeout=30, check=False,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(errno.EACCES), "0"]


def _health(t: float, *states: str) -> Any:
    from launcher.events import Event

    return Event("nvml", "gpu_health", t, None, {"gpus": [{"index": i, "state": s} for i, s in enumerate(states)]})


def test_denials_open_and_close_with_the_health_readings() -> None:
    """Every GPU access_denied opens a denial, a reading with any other state closes it; one GPU of two denied is not
    a denial (a per-GPU fault, not the container's access)."""
    from launcher.evidence.facts import Facts
    from launcher.evidence.live_facts import MAX_DENIALS, _on_gpu_health
    from launcher.evidence.signals import DENIAL_SLACK, _while_denied

    f = Facts()
    _on_gpu_health(f, _health(100.0, "ok", "access_denied"))
    assert f.live.denials == []
    _on_gpu_health(f, _health(110.0, "access_denied", "access_denied"))
    _on_gpu_health(f, _health(111.0, "access_denied", "access_denied"))
    assert f.live.denials == [[110.0, None]]
    assert _while_denied(f, 110.0 - DENIAL_SLACK) and _while_denied(f, 500.0)
    assert not _while_denied(f, 110.0 - DENIAL_SLACK - 0.1)
    _on_gpu_health(f, _health(120.0, "ok", "ok"))
    assert f.live.denials == [[110.0, 120.0]] and not _while_denied(f, 120.5)
    for i in range(2 * MAX_DENIALS):
        _on_gpu_health(f, _health(200.0 + 2 * i, "access_denied", "access_denied"))
        _on_gpu_health(f, _health(201.0 + 2 * i, "ok", "ok"))
    assert len(f.live.denials) == MAX_DENIALS
