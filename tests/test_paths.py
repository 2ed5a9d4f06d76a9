"""Directory resolution per DESIGN.md's runtime layout, and the safety of the /tmp fallback."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.config import load_settings
from launcher.paths import UnsafeDirectoryError, ensure_dirs, ensure_private_dir, ensure_tmp_fallback, resolve_dirs
from tests.cli_helpers import clean_env, config_json, run_cli
from tests.serve_helpers import as_nobody, command_for_nobody


class TestResolve:
    def test_systemd_variables_first(self, tmp_path: Path) -> None:
        """systemd's RUNTIME/CACHE/STATE_DIRECTORY win over XDG and defaults (first entry of a list)."""
        env = {"RUNTIME_DIRECTORY": "/run/ollama-gpu:/run/other", "CACHE_DIRECTORY": "/var/cache/x",
               "STATE_DIRECTORY": "/var/lib/y", "XDG_RUNTIME_DIR": "/run/user/1000", "HOME": "/home/u"}
        dirs = resolve_dirs(env, uid=1000, instance="i", tmp=tmp_path)
        assert (dirs.runtime, dirs.cache, dirs.state) == (Path("/run/ollama-gpu"), Path("/var/cache/x"),
                                                          Path("/var/lib/y"))

    def test_xdg(self, tmp_path: Path) -> None:
        """XDG variables name the parent; ollama-gpu is appended."""
        env = {"XDG_RUNTIME_DIR": "/run/user/1000", "XDG_CACHE_HOME": "/c", "XDG_STATE_HOME": "/s", "HOME": "/h"}
        dirs = resolve_dirs(env, uid=1000, instance="i", tmp=tmp_path)
        assert (dirs.runtime, dirs.cache, dirs.state) == (Path("/run/user/1000/ollama-gpu"), Path("/c/ollama-gpu"),
                                                          Path("/s/ollama-gpu"))

    def test_relative_xdg_is_ignored(self, tmp_path: Path) -> None:
        """The XDG spec says relative values are invalid."""
        dirs = resolve_dirs({"XDG_CACHE_HOME": "rel", "HOME": "/h"}, uid=1000, instance="i", tmp=tmp_path)
        assert dirs.cache == Path("/h/.cache/ollama-gpu")

    def test_root_defaults(self, tmp_path: Path) -> None:
        """Root with nothing set is a system service: /run, /var/cache, /var/lib."""
        dirs = resolve_dirs({"HOME": "/root"}, uid=0, instance="i", tmp=tmp_path)
        assert (dirs.runtime, dirs.cache, dirs.state) == (Path("/run/ollama-gpu"), Path("/var/cache/ollama-gpu"),
                                                          Path("/var/lib/ollama-gpu"))

    def test_unprivileged_user_with_nothing_set(self, tmp_path: Path) -> None:
        """An ordinary user: runtime in /tmp/ollama-gpu-UID, cache and state under the home directory."""
        dirs = resolve_dirs({"HOME": "/home/u"}, uid=1000, instance="i", tmp=tmp_path)
        assert dirs.runtime == tmp_path / "ollama-gpu-1000"
        assert dirs.cache == Path("/home/u/.cache/ollama-gpu")
        assert dirs.state == Path("/home/u/.local/state/ollama-gpu")

    def test_unprivileged_user_without_home(self, tmp_path: Path) -> None:
        """No home: everything under the private /tmp directory."""
        dirs = resolve_dirs({}, uid=1000, instance="i", tmp=tmp_path)
        base = tmp_path / "ollama-gpu-1000"
        assert (dirs.runtime, dirs.cache, dirs.state) == (base, base / "cache", base / "state")

    def test_instances_do_not_collide(self, tmp_path: Path) -> None:
        """Two OLLAMA_HOSTs on one machine get different socket and state names in the same directories."""
        base = {"HOME": str(tmp_path), "OGPU_SYSTEM_CONFIG": str(tmp_path / "x"), "RUNTIME_DIRECTORY": "/run/o"}
        one = load_settings({**base, "OLLAMA_HOST": "127.0.0.1:11434"}, uid=1000).dirs
        two = load_settings({**base, "OLLAMA_HOST": "0.0.0.0:11435"}, uid=1000).dirs
        assert one.runtime == two.runtime
        assert one.events_socket != two.events_socket
        assert one.state_file != two.state_file
        assert "11435" in two.events_socket.name


class TestTmpFallback:
    def test_created_private(self, tmp_path: Path) -> None:
        """The fallback is created 0700 and owned by us."""
        dirs = resolve_dirs({}, uid=os.geteuid(), instance="i", tmp=tmp_path)
        ensure_dirs(dirs, uid=os.geteuid(), tmp=tmp_path)
        st = dirs.runtime.lstat()
        assert stat.S_IMODE(st.st_mode) == 0o700
        assert st.st_uid == os.geteuid()
        assert stat.S_IMODE(dirs.state.stat().st_mode) == 0o700

    def test_loose_mode_is_tightened(self, tmp_path: Path) -> None:
        """An existing fallback of ours that others could enter is closed to 0700."""
        path = tmp_path / "ollama-gpu-x"
        path.mkdir(mode=0o777)
        path.chmod(0o777)
        ensure_tmp_fallback(path, os.geteuid())
        assert stat.S_IMODE(path.stat().st_mode) == 0o700

    def test_foreign_owner_refused(self, tmp_path: Path) -> None:
        """A fallback owned by someone else (another uid squatting the name) is refused."""
        path = tmp_path / "ollama-gpu-x"
        path.mkdir(mode=0o700)
        with pytest.raises(UnsafeDirectoryError, match="belongs to uid"):
            ensure_tmp_fallback(path, os.geteuid() + 1)

    def test_symlink_refused(self, tmp_path: Path) -> None:
        """A symlink in place of the fallback is refused, not followed."""
        (tmp_path / "elsewhere").mkdir()
        path = tmp_path / "ollama-gpu-x"
        path.symlink_to(tmp_path / "elsewhere")
        with pytest.raises(UnsafeDirectoryError, match="not a directory"):
            ensure_tmp_fallback(path, os.geteuid())


def _shared_base(prefix: str) -> Path:
    """A fresh directory under /tmp that uid 65534 can enter (pytest's tmp_path is closed to other users)."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    return base


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode) | (path.stat().st_mode & stat.S_ISVTX)


class TestDirectoriesWeDidNotCreate:
    """Issue 15, item 1: directory variables must never have their mode changed; a shared directory gets our
    private ollama-gpu-$UID inside it, a directory we may not use is refused in one line."""

    @pytest.fixture
    def base(self) -> Iterator[Path]:
        base = _shared_base("ogpu-paths-")
        try:
            yield base
        finally:
            shutil.rmtree(base, ignore_errors=True)

    def _dirs(self, base: Path, mode: int, owner: int = 0) -> dict[str, str]:
        env = {}
        for key in ("RUNTIME_DIRECTORY", "CACHE_DIRECTORY", "STATE_DIRECTORY"):
            path = base / key.lower()
            path.mkdir()
            os.chown(path, owner, owner)
            path.chmod(mode)
            env[key] = str(path)
        return env

    def test_sticky_world_writable_dirs_keep_their_mode(self, base: Path) -> None:
        """`shim path` with the three systemd variables on 1777 directories: each stays 1777 and ours is a 0700
        ollama-gpu-$UID inside it (it used to chmod the given directory to 0700, breaking /tmp for everyone)."""
        uid = os.geteuid()
        given = self._dirs(base, 0o1777, owner=uid)
        env = clean_env(base, given)
        shim = run_cli(["shim", "path"], env, timeout=120)
        assert shim.returncode == 0, shim.stderr
        dirs = config_json([], env)["directories"]
        for key, name in (("RUNTIME_DIRECTORY", "runtime"), ("CACHE_DIRECTORY", "cache"),
                          ("STATE_DIRECTORY", "state")):
            assert _mode(Path(given[key])) == 0o1777, key
            ours = Path(given[key]) / f"ollama-gpu-{uid}"
            assert dirs[name] == str(ours)
            st = ours.lstat()
            assert stat.S_ISDIR(st.st_mode) and st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o700
        assert shim.stdout.strip().startswith(str(Path(given["CACHE_DIRECTORY"]) / f"ollama-gpu-{uid}") + "/")

    def test_own_0755_dirs_are_used_as_they_are(self, base: Path) -> None:
        """Directories of ours that only we may write in (systemd's default 0755) are used directly, mode kept."""
        given = self._dirs(base, 0o755, owner=os.geteuid())
        env = clean_env(base, given)
        shim = run_cli(["shim", "path"], env, timeout=120)
        assert shim.returncode == 0, shim.stderr
        dirs = config_json([], env)["directories"]
        assert (dirs["runtime"], dirs["cache"], dirs["state"]) == (
            given["RUNTIME_DIRECTORY"], given["CACHE_DIRECTORY"], given["STATE_DIRECTORY"])
        assert [_mode(Path(p)) for p in given.values()] == [0o755] * 3
        assert shim.stdout.strip().startswith(given["CACHE_DIRECTORY"] + "/")

    def test_xdg_variables_on_a_shared_dir(self, base: Path) -> None:
        """XDG_*_HOME on a 1777 directory: its mode is kept; ollama-gpu is created inside, 0700."""
        shared = base / "xdg"
        shared.mkdir()
        shared.chmod(0o1777)
        env = clean_env(base, {"XDG_CACHE_HOME": str(shared), "XDG_STATE_HOME": str(shared),
                               "XDG_RUNTIME_DIR": str(shared)})
        assert run_cli(["shim", "path"], env, timeout=120).returncode == 0
        assert _mode(shared) == 0o1777
        assert config_json([], env)["directories"]["cache"] == str(shared / "ollama-gpu")
        assert stat.S_IMODE((shared / "ollama-gpu").stat().st_mode) == 0o700

    def test_unprivileged_user_on_shared_and_foreign_dirs(self, base: Path) -> None:
        """As uid 65534: a root-owned 1777 directory gets nobody's own ollama-gpu-65534; a root-owned 0755 one is
        refused with one line and exit 2, and neither mode changes."""
        if os.geteuid() != 0:
            pytest.fail("this test switches to uid 65534 and must run as root (as CI does)")
        shared = base / "shared"
        shared.mkdir()
        shared.chmod(0o1777)
        foreign = base / "foreign"
        foreign.mkdir()
        foreign.chmod(0o755)
        env = clean_env(base, {"RUNTIME_DIRECTORY": str(shared), "CACHE_DIRECTORY": str(shared),
                               "STATE_DIRECTORY": str(shared), "HOME": str(base)})
        ok = subprocess.run([*command_for_nobody(), "shim", "path"], env=env, capture_output=True, text=True,
                            timeout=120, preexec_fn=as_nobody, check=False)
        assert ok.returncode == 0, ok.stderr
        ours = shared / "ollama-gpu-65534"
        assert (ours.stat().st_uid, stat.S_IMODE(ours.stat().st_mode)) == (65534, 0o700)
        refused = subprocess.run([*command_for_nobody(), "shim", "path"], env={**env, "STATE_DIRECTORY": str(foreign)},
                                 capture_output=True, text=True, timeout=120, preexec_fn=as_nobody, check=False)
        assert refused.returncode == 2
        assert refused.stderr.strip() == (f"ollama-gpu: configuration error: {foreign} belongs to uid 0, not 65534; "
                                          "name a directory of ours (RUNTIME_DIRECTORY, CACHE_DIRECTORY, "
                                          "STATE_DIRECTORY)")
        assert (_mode(shared), _mode(foreign)) == (0o1777, 0o755)

    def test_serve_refuses_a_foreign_state_dir(self, base: Path) -> None:
        """`serve` with STATE_DIRECTORY owned by another user: one line, exit 2, nothing started, mode kept."""
        given = self._dirs(base, 0o755, owner=os.geteuid())
        foreign = Path(given["STATE_DIRECTORY"])
        os.chown(foreign, 65534, 65534)
        # An Ollama that exists (a missing one is said first, before any directory is looked at: exit 127)
        proc = run_cli(["serve"], clean_env(base, {**given, "OGPU_OLLAMA": "/bin/true"}))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"ollama-gpu: configuration error: {foreign} belongs to uid 65534, not {os.geteuid()}; name a directory "
            "of ours (RUNTIME_DIRECTORY, CACHE_DIRECTORY, STATE_DIRECTORY)"]
        assert _mode(foreign) == 0o755

    def test_group_writable_dir_gets_a_private_subdir(self, tmp_path: Path) -> None:
        """A group-writable directory of ours (0775) is shared too: settle() picks ollama-gpu-$UID inside it."""
        shared = tmp_path / "g"
        shared.mkdir()
        shared.chmod(0o775)
        dirs = resolve_dirs({"STATE_DIRECTORY": str(shared), "HOME": "/h"}, uid=1234, instance="i", tmp=tmp_path)
        assert dirs.state == shared / "ollama-gpu-1234"

    def test_world_writable_without_sticky_bit_is_refused(self, tmp_path: Path) -> None:
        """Without the sticky bit others could rename our directory away: refused, mode kept."""
        shared = tmp_path / "w"
        shared.mkdir()
        shared.chmod(0o777)
        uid = os.geteuid()
        dirs = resolve_dirs({"RUNTIME_DIRECTORY": str(shared), "CACHE_DIRECTORY": str(shared),
                             "STATE_DIRECTORY": str(shared)}, uid=uid, instance="i", tmp=tmp_path)
        with pytest.raises(UnsafeDirectoryError, match="without the sticky bit"):
            ensure_dirs(dirs, uid, tmp=tmp_path)
        assert _mode(shared) == 0o777

    def test_link_in_place_of_our_subdir_is_refused(self, tmp_path: Path) -> None:
        """A symlink planted as ollama-gpu-$UID in a shared directory is refused, not followed."""
        shared = tmp_path / "s"
        shared.mkdir()
        shared.chmod(0o1777)
        uid = os.geteuid()
        (tmp_path / "elsewhere").mkdir()
        (shared / f"ollama-gpu-{uid}").symlink_to(tmp_path / "elsewhere")
        dirs = resolve_dirs({"CACHE_DIRECTORY": str(shared), "HOME": "/h"}, uid=uid, instance="i", tmp=tmp_path)
        with pytest.raises(UnsafeDirectoryError, match="not a directory"):
            ensure_dirs(dirs, uid, tmp=tmp_path)

    def test_existing_loose_dir_is_refused_not_chmodded(self, tmp_path: Path) -> None:
        """ensure_private_dir never changes an existing directory's mode."""
        loose = tmp_path / "loose"
        loose.mkdir()
        loose.chmod(0o733)
        with pytest.raises(UnsafeDirectoryError, match="writable by others"):
            ensure_private_dir(loose)
        assert _mode(loose) == 0o733
