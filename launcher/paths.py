"""Runtime, cache and state directories, resolved as DESIGN.md's runtime layout says, one set per Ollama instance."""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

APP = "ollama-gpu"


class UnsafeDirectoryError(OSError):
    """A fallback directory exists but is not ours alone (wrong owner, a link, or open to others)."""


@dataclass(frozen=True, slots=True)
class Dirs:
    """Where this instance keeps its socket (runtime), shim builds (cache) and remedy history (state)."""

    runtime: Path
    cache: Path
    state: Path
    instance: str  # host-port slug of OLLAMA_HOST; names inside runtime/state carry it

    @property
    def events_socket(self) -> Path:
        """The shim event socket of this instance."""
        return self.runtime / f"events-{self.instance}.sock"

    @property
    def status_socket(self) -> Path:
        """The status socket of this instance."""
        return self.runtime / f"status-{self.instance}.sock"

    @property
    def state_file(self) -> Path:
        """Remedy attempts and tried environments of this instance."""
        return self.state / f"state-{self.instance}.json"


def _home(env: Mapping[str, str]) -> Path | None:
    home = env.get("HOME", "")
    return Path(home) if home.startswith("/") else None


def _xdg(env: Mapping[str, str], key: str) -> Path | None:
    value = env.get(key, "")
    # The XDG spec: relative paths are invalid and must be ignored.
    return Path(value) / APP if value.startswith("/") else None


def _systemd(env: Mapping[str, str], key: str) -> Path | None:
    # systemd may list several directories separated by ':'; the first is ours.
    value = env.get(key, "").split(":")[0]
    return Path(value) if value.startswith("/") else None


def tmp_fallback(uid: int, tmp: Path = Path("/tmp")) -> Path:
    """`/tmp/ollama-gpu-$UID`, the last resort (created and checked by `ensure_tmp_fallback`)."""
    return tmp / f"{APP}-{uid}"


def private_name(uid: int) -> str:
    """The name of the directory we create for ourselves inside a shared one: ollama-gpu-$UID."""
    return f"{APP}-{uid}"


def _others_may_write(mode: int) -> bool:
    return bool(stat.S_IMODE(mode) & 0o022)


def ensure_tmp_fallback(path: Path, uid: int) -> Path:
    """Create `path` 0700; refuse it unless it is a real directory owned by `uid` and closed to others.

    `path` carries our own name (ollama-gpu-$UID) inside a directory others share (/tmp, or a shared directory
    named by a variable): only we (or root) can have made a directory of ours there, so a loose mode is tightened.
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectoryError(f"{path} is not a directory (a link or a file); remove it")
    if st.st_uid != uid:
        raise UnsafeDirectoryError(f"{path} belongs to uid {st.st_uid}, not {uid}; remove it or set RUNTIME_DIRECTORY")
    if stat.S_IMODE(st.st_mode) & 0o077:
        path.chmod(0o700)
    return path


def settle(path: Path, uid: int) -> Path:
    """The directory to use for `path`: `path` itself, or our private ollama-gpu-$UID inside it when others may
    write in it (a 1777 /tmp, a group-writable directory). Reads, creates nothing (see `ensure_dirs`)."""
    try:
        st = path.stat()
    except OSError:
        return path  # missing: we create it; unreadable: ensure_dirs says why
    if stat.S_ISDIR(st.st_mode) and _others_may_write(st.st_mode):
        return path / private_name(uid)
    return path


# name -> (systemd variable, XDG variable, path under a non-root user's home, root's system path)
_LAYOUT: dict[str, tuple[str, str, str | None, str]] = {
    "runtime": ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR", None, "/run/ollama-gpu"),
    "cache": ("CACHE_DIRECTORY", "XDG_CACHE_HOME", ".cache/ollama-gpu", "/var/cache/ollama-gpu"),
    "state": ("STATE_DIRECTORY", "XDG_STATE_HOME", ".local/state/ollama-gpu", "/var/lib/ollama-gpu"),
}


def _pick(env: Mapping[str, str], name: str, uid: int, tmp: Path) -> Path:
    systemd_key, xdg_key, home_rel, system = _LAYOUT[name]
    found = _systemd(env, systemd_key) or _xdg(env, xdg_key)
    if found is not None:
        return settle(found, uid)
    if uid == 0:
        return settle(Path(system), uid)
    home = _home(env)
    if home_rel is not None and home is not None:
        return settle(home / home_rel, uid)
    base = tmp_fallback(uid, tmp)
    return base if name == "runtime" else base / name


def resolve_dirs(
    env: Mapping[str, str],
    uid: int,
    instance: str,
    tmp: Path = Path("/tmp"),
) -> Dirs:
    """First that applies: systemd's variable, XDG, then root's system path or a user's home, then /tmp.

    Root (uid 0) is a system service: /run, /var/cache and /var/lib. Another user without systemd or XDG
    variables gets ~/.cache and ~/.local/state, and /tmp/ollama-gpu-$UID for the runtime directory (and for
    the rest too when there is no home). A directory that others may write in (say RUNTIME_DIRECTORY=/tmp) is
    not used itself: our private ollama-gpu-$UID inside it is. Nothing is created here (see `ensure_dirs`).
    """
    return Dirs(
        runtime=_pick(env, "runtime", uid, tmp),
        cache=_pick(env, "cache", uid, tmp),
        state=_pick(env, "state", uid, tmp),
        instance=instance,
    )


def ensure_dirs(dirs: Dirs, uid: int, tmp: Path = Path("/tmp")) -> Dirs:
    """Create the three directories (0700) and check them; UnsafeDirectoryError (one line) when one is not safe.

    Never changes the mode of a directory we did not create: our own ollama-gpu-$UID (in /tmp or in a shared
    directory) is created 0700 and checked for owner and link; any other existing directory is used as it is
    when it is ours and closed to writers other than us, and refused otherwise.
    """
    fallback = tmp_fallback(uid, tmp)
    for path in (dirs.runtime, dirs.cache, dirs.state):
        if path == fallback or fallback in path.parents:
            ensure_tmp_fallback(fallback, uid)
        elif path.name == private_name(uid):
            _ensure_shared_parent(path.parent)
            ensure_tmp_fallback(path, uid)
            continue
        ensure_private_dir(path, uid)
    return dirs


def _ensure_shared_parent(path: Path) -> None:
    """The directory that holds our ollama-gpu-$UID: when others may write in it, only the sticky bit (as on /tmp)
    keeps them from renaming our directory away and putting theirs in its place."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        st = path.stat()
    except OSError as exc:
        raise UnsafeDirectoryError(f"cannot create {path}: {exc.strerror or exc}") from None
    if _others_may_write(st.st_mode) and not st.st_mode & stat.S_ISVTX:
        raise UnsafeDirectoryError(f"{path} is writable by others without the sticky bit (mode "
                                   f"{stat.S_IMODE(st.st_mode):04o}); name a private directory")


def ensure_private_dir(path: Path, uid: int | None = None) -> Path:
    """Create `path` (and its parents) with mode 0700; an existing directory is used as it is, never chmod'ed: it
    must be a directory (a link to one is fine: systemd's DynamicUser= links STATE_DIRECTORY) owned by `uid` (our
    effective uid by default) that no one else may write in."""
    owner = os.geteuid() if uid is None else uid
    try:
        path.mkdir(mode=0o700, parents=True)
        return path
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeDirectoryError(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        st = path.stat()
    except OSError as exc:
        raise UnsafeDirectoryError(f"cannot use {path}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectoryError(f"{path} is not a directory; remove it or name another directory")
    if st.st_uid != owner:
        raise UnsafeDirectoryError(f"{path} belongs to uid {st.st_uid}, not {owner}; name a directory of ours "
                                   "(RUNTIME_DIRECTORY, CACHE_DIRECTORY, STATE_DIRECTORY)")
    if _others_may_write(st.st_mode):
        raise UnsafeDirectoryError(f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                                   "name a private directory")
    return path


def current_user() -> str:
    """The name of the user we run as (the uid when it has no name): the service user whose permissions matter."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
