"""Directory resolution per DESIGN.md's runtime layout, and the safety of the /tmp fallback."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from launcher.config import load_settings
from launcher.paths import UnsafeDirectoryError, ensure_dirs, ensure_tmp_fallback, resolve_dirs


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
