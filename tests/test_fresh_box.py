"""The README on a fresh box (issue 15 item 9): its set-up line runs as written as root (no sudo), its "try it" line
runs `serve` in front of the test doubles until `status --ready` says ready and stops cleanly, and neither a try nor
a `serve` without Ollama leaves files in /run, /var/cache or /var/lib (checked on tmpfs mounts private to the run).
CI runs as root, as these tests need."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_helpers import REPO
from tests.serve_helpers import wait_for

SYSTEM_DIRS = ("/run", "/var/cache", "/var/lib")
# A private mount namespace with empty tmpfs over the system directories (mount -n: no utab entry in /run), the
# command, then every file left in them written to $OGPU_TEST_LEFT.
CONFINE = ("for d in " + " ".join(SYSTEM_DIRS) + "; do mount -n -t tmpfs ogpu-test \"$d\" || exit 99; done; "
           "bash -c \"$1\"; rc=$?; find " + " ".join(SYSTEM_DIRS) + " -mindepth 1 > \"$OGPU_TEST_LEFT\"; exit $rc")


def readme() -> str:
    return (REPO / "README.md").read_text()


def shell_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)\n```", text, flags=re.S)]


def section(text: str, heading: str) -> str:
    """The text under a markdown heading, up to the next heading of any level."""
    match = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#+ )", text, flags=re.S | re.M)
    assert match is not None, f"README has no section {heading!r}"
    return match.group(1)


def setup_lines() -> tuple[str, str]:
    """(as root, as a user) from the README's Set up section."""
    blocks = shell_blocks(section(readme(), "Set up"))
    (root,) = [b for b in blocks if "apt-get" in b and "sudo" not in b]
    (user,) = [b for b in blocks if "apt-get" in b and "sudo" in b]
    return root, user


def try_line() -> str:
    (line,) = shell_blocks(section(readme(), "Try it without Ollama"))
    return line


def need_root() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("needs root and unshare(1) (util-linux), as CI has: the README's lines are for a fresh box as root")


def base_env(home: Path) -> dict[str, str]:
    """A login-like environment: HOME, PATH, nothing of ours or of systemd."""
    keep = ("PATH", "LANG", "LC_ALL", "TERM", "http_proxy", "https_proxy", "no_proxy", "PIP_INDEX_URL")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["HOME"] = str(home)
    return env


def confined(command: str, env: dict[str, str], left: Path, *, merge_stderr: bool = False) -> subprocess.Popen[str]:
    """`command` (a shell line) in its own mount namespace over empty /run, /var/cache and /var/lib."""
    return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", CONFINE, "sh", command],
                            env={**env, "OGPU_TEST_LEFT": str(left)}, cwd=str(REPO), text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE)


class TestSetUpLines:
    def test_root_line_needs_no_sudo_and_user_line_differs_only_by_sudo(self) -> None:
        """The user line is the root line with `sudo` before each apt-get, and nothing else."""
        root, user = setup_lines()
        assert "sudo" not in root
        assert user.replace("sudo apt-get", "apt-get") == root
        assert user.count("sudo ") == root.count("apt-get")

    def test_readme_says_serve_needs_ollama_and_its_exit_code(self) -> None:
        """The set-up section says plainly that serve needs Ollama, and the exit code when it is missing."""
        text = " ".join(section(readme(), "Set up").split())
        assert "`serve` needs Ollama installed" in text and "exits 127" in text


@pytest.fixture(scope="module")
def installed_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh HOME where the README's root set-up line ran as written (apt-get, venv, pip install .)."""
    need_root()
    home = tmp_path_factory.mktemp("fresh-home")
    root, _user = setup_lines()
    proc = subprocess.run(["bash", "-c", root], env=base_env(home), cwd=str(REPO), capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return home


def test_setup_line_runs_as_root(installed_home: Path) -> None:
    """After the set-up line, the venv's ollama-gpu runs (here: `config --json`, exit 0)."""
    tool = installed_home / ".local/share/ollama-gpu/venv/bin/ollama-gpu"
    proc = subprocess.run([str(tool), "config", "--json"], env=base_env(installed_home), capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert '"OGPU_MODE"' in proc.stdout


def test_serve_without_ollama_exits_127_and_leaves_nothing(installed_home: Path, tmp_path: Path) -> None:
    """`serve` with no Ollama installed: one line, exit 127; it, `config`, `explain` and `status` write nothing under
    /run, /var/cache or /var/lib."""
    tool = shlex.quote(str(installed_home / ".local/share/ollama-gpu/venv/bin/ollama-gpu"))
    left = tmp_path / "left.txt"
    env = {**base_env(installed_home), "OGPU_OLLAMA": "ollama-not-installed-here"}
    healthy = shlex.quote(str(REPO.parent / "shared" / "fixtures" / "ollama-real-gpu" / "healthy.server.log"))
    line = (f"{tool} config >/dev/null && {tool} explain {healthy} >/dev/null && {{ {tool} status; [ $? = 3 ]; }} "
            f"&& {tool} serve")
    proc = confined(line, env, left)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 127, out + err
    assert "ollama_not_started" in err and "not found on PATH" in err
    assert left.read_text() == ""


class TryIt:
    """The README's try-it line running confined; its stdout read line by line in the background."""

    def __init__(self, home: Path, left: Path) -> None:
        self.proc = confined(try_line(), base_env(home), left, merge_stderr=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def said(self, prefix: str) -> str | None:
        hit = next((x[len(prefix):] for x in self.lines if x.startswith(prefix)), None)
        if hit is None and self.proc.poll() is not None:
            raise AssertionError("the try-it line ended early:\n" + "\n".join(self.lines[-60:]))
        return hit

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._reader.join(10)


@pytest.fixture
def try_it(installed_home: Path, tmp_path: Path) -> Iterator[tuple[TryIt, Path]]:
    left = tmp_path / "left.txt"
    work = Path(f"/tmp/ollama-gpu-try-{os.geteuid()}")  # the README line's default directory
    existed = work.exists()
    run = TryIt(installed_home, left)
    try:
        yield run, left
    finally:
        run.close()
        if not existed:
            shutil.rmtree(work, ignore_errors=True)


def test_try_it_line_reaches_ready_and_stops_cleanly(try_it: tuple[TryIt, Path], installed_home: Path) -> None:
    """The README's try-it line as written: the printed `status` command answers, `--ready` exits 0, discovery is on
    the (mock) GPU; Ctrl-C stops it with exit 0; nothing was written under /run, /var/cache or /var/lib."""
    run, left = try_it
    status = wait_for(lambda: run.said("try-it: status: "), timeout=180, what="the status command")
    pid = int(str(wait_for(lambda: run.said("try-it: pid "), timeout=10, what="the pid")).split(";")[0])
    argv = shlex.split(status)
    env = base_env(installed_home)

    def ready() -> bool:
        return subprocess.run([*argv, "--ready"], env=env, capture_output=True, timeout=30,
                              check=False).returncode == 0

    wait_for(ready, timeout=120, what="status --ready exit 0")
    text = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert "Discovery: gpu (cause: none)." in text.stdout, text.stdout + text.stderr
    os.kill(pid, signal.SIGINT)  # Ctrl-C
    assert run.proc.wait(60) == 0, "\n".join(run.lines[-40:])
    assert left.read_text() == ""
