"""The systemd units pass `systemd-analyze verify`, their ExecStart= reaches READY=1 as the service user against the
simulator, and `systemd install/uninstall` write exactly what the dry run shows and undo exactly that."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from launcher.systemd_install import unreachable
from launcher.systemd_units import DEFAULT_EXEC, render_dropin, render_service
from tests.cli_helpers import REPO, assert_no_traceback, clean_env, run_cli
from tests.ollama_sim import native
from tests.ollama_sim.install import Install, make_install
from tests.serve_helpers import Serve, as_nobody, command_for_nobody, free_port, wait_for

PACKAGED_DROPIN = REPO / "packaging" / "systemd" / "ollama.service.d" / "ollama-gpu.conf"
PACKAGED_SERVICE = REPO / "packaging" / "systemd" / "ollama-gpu.service"

# The unit Ollama's install script writes (scripts/install.sh, `configure_systemd`).
OFFICIAL_UNIT = """\
[Unit]
Description=Ollama Service
After=network-online.target

[Service]
ExecStart=/usr/local/bin/ollama serve
User=ollama
Group=ollama
Restart=always
RestartSec=3
Environment="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

[Install]
WantedBy=default.target
"""


def directives(unit: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (repeated keys kept, as systemd reads them)."""
    out, section = [], ""
    for raw in unit.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(unit: str, key: str) -> list[str]:
    return [v for _s, k, v in directives(unit) if k == key]


def exec_start(unit: str) -> list[str]:
    """The command systemd runs: the last ExecStart= after the last reset (an empty ExecStart=)."""
    commands = values(unit, "ExecStart")
    assert commands and commands[-1], "no ExecStart="
    return shlex.split(commands[-1])


def analyze_verify(unit_dir: Path, name: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of one unit, with `unit_dir` (and its drop-in directories) first on the unit path."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: install Debian's `systemd` package (apt-get install -y systemd); "
                    ".ci/run must do so on a fresh machine")
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run([tool, "verify", "--man=no", str(unit_dir / name)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def stub_exec(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "ollama-gpu"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


class TestPackagedUnits:
    def test_packaged_files_are_the_rendered_units(self) -> None:
        """packaging/systemd/ holds exactly what launcher.systemd_units renders for /opt/ollama-gpu."""
        assert PACKAGED_DROPIN.read_text() == render_dropin(), "regenerate: render_dropin() > " + str(PACKAGED_DROPIN)
        assert PACKAGED_SERVICE.read_text() == render_service(), "regenerate: render_service()"

    def test_dropin_replaces_exec_start_and_names_the_directories(self) -> None:
        """The drop-in clears ExecStart= and runs `ollama-gpu serve` as a notify service with our three directories."""
        unit = PACKAGED_DROPIN.read_text()
        assert values(unit, "ExecStart")[0] == ""  # reset: the official `ollama serve` is not also run
        assert exec_start(unit) == [str(DEFAULT_EXEC), "serve"]
        for key, want in (("Type", "notify"), ("NotifyAccess", "main"), ("Restart", "on-failure"),
                          ("RuntimeDirectory", "ollama-gpu"), ("StateDirectory", "ollama-gpu"),
                          ("CacheDirectory", "ollama-gpu"), ("KillMode", "mixed")):
            assert values(unit, key) == [want], key
        assert int(values(unit, "TimeoutStopSec")[0]) > 10  # above the default OGPU_STOP_GRACE

    @pytest.mark.parametrize("path", [PACKAGED_DROPIN, PACKAGED_SERVICE], ids=["dropin", "service"])
    def test_nothing_that_breaks_gpus_or_reads_our_env_file(self, path: Path) -> None:
        """No EnvironmentFile= (we read it), no SupplementaryGroups= (fails without the group), no device sandboxing."""
        keys = {k for _s, k, _v in directives(path.read_text())}
        assert not keys & {"EnvironmentFile", "SupplementaryGroups", "PrivateDevices", "DevicePolicy", "DeviceAllow",
                           "ProtectKernelModules", "DynamicUser"}

    def test_stop_timeout_follows_the_grace_period(self) -> None:
        """TimeoutStopSec= stays above OGPU_STOP_GRACE when an operator raises it."""
        assert int(values(render_dropin(stop_grace=60), "TimeoutStopSec")[0]) > 60
        assert int(values(render_service(ready_timeout=600), "TimeoutStartSec")[0]) > 600


class TestSystemdAnalyzeVerify:
    def test_dropin_on_the_official_unit(self, tmp_path: Path) -> None:
        """The official ollama.service with our drop-in verifies cleanly (no error, no warning)."""
        units = tmp_path / "units"
        (units / "ollama.service.d").mkdir(parents=True)
        (units / "ollama.service").write_text(OFFICIAL_UNIT)
        text = PACKAGED_DROPIN.read_text().replace(str(DEFAULT_EXEC), str(stub_exec(tmp_path)))
        (units / "ollama.service.d" / "ollama-gpu.conf").write_text(text)
        result = analyze_verify(units, "ollama.service")
        assert (result.returncode, result.stderr, result.stdout) == (0, "", "")

    def test_standalone_unit(self, tmp_path: Path) -> None:
        """ollama-gpu.service verifies cleanly on its own."""
        units = tmp_path / "units"
        units.mkdir()
        text = PACKAGED_SERVICE.read_text().replace(str(DEFAULT_EXEC), str(stub_exec(tmp_path)))
        (units / "ollama-gpu.service").write_text(text)
        result = analyze_verify(units, "ollama-gpu.service")
        assert (result.returncode, result.stderr, result.stdout) == (0, "", "")

    def test_the_check_catches_a_broken_unit(self, tmp_path: Path) -> None:
        """A misspelt key makes the check fail: the test above can fail."""
        units = tmp_path / "units"
        units.mkdir()
        text = render_service(stub_exec(tmp_path)).replace("NotifyAccess=main", "NotifyAcess=main")
        (units / "ollama-gpu.service").write_text(text)
        result = analyze_verify(units, "ollama-gpu.service")
        assert "NotifyAcess" in result.stderr


# --- the unit's ExecStart= as systemd runs it: service user, NOTIFY_SOCKET, the three directories ----------------



@pytest.fixture
def world_readable_base() -> Iterator[Path]:
    """A directory uid 65534 can traverse (pytest's tmp_path is closed to other users)."""
    base = Path(tempfile.mkdtemp(prefix="ogpu-unit-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def system_python_launcher(out: Path) -> Path:
    """The simulator's ELF launcher (tests/ollama_sim/launcher.c) linked against the system python, which uid 65534
    can load (the test python's libpython may sit under root's 0700 home). An ELF, not a script: the board classifies
    runners by their argv, and a script would put the interpreter first."""
    python = command_for_nobody()[0]
    query = ("import sys, sysconfig as s; print(s.get_config_var('INCLUDEPY'), s.get_config_var('LIBDIR'), "
             "f'{sys.version_info[0]}.{sys.version_info[1]}{sys.abiflags}')")
    include, libdir, version = subprocess.run([python, "-c", query], capture_output=True, text=True, check=True,
                                              timeout=60).stdout.split()
    if not (Path(include) / "Python.h").exists():
        pytest.fail(f"{include}/Python.h is missing: install Debian's python{version[:4]}-dev")
    cmd = ["cc", "-O1", "-o", str(out), str(REPO / "tests" / "ollama_sim" / "launcher.c"), f"-I{include}",
           f'-DSIM_REPO="{REPO}"', f"-L{libdir}", f"-lpython{version}", f"-Wl,-rpath,{libdir}", "-ldl", "-lm",
           "-lpthread"]
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert built.returncode == 0, built.stderr
    return out


def sim_for_service_user(base: Path, libs: native.NativeLibs) -> tuple[Install, Path]:
    """A generation D simulator and the mock driver that uid 65534 can run."""
    inst = make_install(base / "ollama", "D", cuda_backend=libs.ggml_cuda)
    inst.add_model("tiny")
    launcher = system_python_launcher(base / "sim-launcher")
    for prog in (inst.ollama, inst.llama_server):
        prog.unlink()
        shutil.copy2(launcher, prog)
    driver = base / "driver"
    shutil.copytree(libs.driver_dir, driver)
    home = Path(inst.env()["HOME"])
    for path in (base, *base.rglob("*")):
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if path.is_dir() or
                                                             path.stat().st_mode & stat.S_IXUSR else 0))
    os.chown(home, 65534, 65534)
    return inst, driver


def unit_directories(base: Path, unit: str) -> dict[str, str]:
    """RUNTIME_/STATE_/CACHE_DIRECTORY as systemd sets them: created for the service user with the unit's modes."""
    env = {}
    for kind in ("Runtime", "State", "Cache"):
        name = values(unit, f"{kind}Directory")[0]
        mode = int(values(unit, f"{kind}DirectoryMode")[0], 8)
        path = base / "systemd" / kind.lower() / name
        path.mkdir(parents=True)
        os.chown(path, 65534, 65534)
        path.chmod(mode)
        env[f"{kind.upper()}_DIRECTORY"] = str(path)
    return env


class TestExecStartAsServiceUser:
    def test_ready_then_stopping_against_the_simulator(self, world_readable_base: Path,
                                                       libs: native.NativeLibs) -> None:
        """The drop-in's ExecStart=, run as uid 65534 with NOTIFY_SOCKET and the three directory variables, sends
        READY=1 once the simulated Ollama answers, STOPPING=1 on SIGTERM, exits 0 and leaves no process."""
        if os.geteuid() != 0:
            pytest.fail("this test switches to uid 65534 and must run as root (as CI does)")
        base = world_readable_base
        wrapper = base / "bin" / "ollama-gpu"  # the installed `ollama-gpu`, at a path the service user can run
        wrapper.parent.mkdir()
        wrapper.write_text(f"#!/bin/sh\nexec {shlex.join(command_for_nobody())} \"$@\"\n")
        wrapper.chmod(0o755)
        unit = render_dropin(wrapper)
        argv = exec_start(unit)
        assert argv == [str(wrapper), "serve"]
        inst, driver = sim_for_service_user(base, libs)
        port = free_port()
        env = clean_env(base, {"OGPU_LOG_FORMAT": "json", "OGPU_OLLAMA": str(inst.ollama),
                               "OGPU_SYSTEM_CONFIG": "/nonexistent/ollama-gpu.env", **unit_directories(base, unit)})
        env.update(inst.env(OLLAMA_HOST=f"127.0.0.1:{port}", LD_LIBRARY_PATH=str(driver)))
        notify_dir = base / "notify"
        notify_dir.mkdir(mode=0o755)
        notify_path = notify_dir / "notify.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(notify_path))
            notify_path.chmod(0o777)  # systemd's notify socket accepts any service's datagrams
            sock.settimeout(90)
            env["NOTIFY_SOCKET"] = str(notify_path)
            serve = Serve(argv[1:], env, preexec=as_nobody, command=argv[:1])
            try:
                messages = [sock.recv(4096).decode()]
                assert "READY=1" in messages[0], (messages, serve.err[-3000:])
                supervisor = psutil.Process(serve.pid)  # the wrapper exec'd it: the unit's main process
                assert "launcher.cli" in " ".join(supervisor.cmdline())
                assert supervisor.uids().effective == 65534
                runtime = Path(env["RUNTIME_DIRECTORY"])
                assert any(p.name.startswith("events-") for p in runtime.iterdir())  # the shim's event socket
                tree = [p.pid for p in psutil.Process(serve.pid).children(recursive=True)]
                assert serve.stop() == 0, serve.err[-3000:]
                while "STOPPING=1" not in "".join(messages):
                    messages.append(sock.recv(4096).decode())
            finally:
                if serve.proc.poll() is None:
                    serve.proc.kill()
                    serve.wait()
        wait_for(lambda: not [p for p in tree if psutil.pid_exists(p)], what="no process left")
        assert "ready" in [e.get("event") for e in serve.events()]


# --- install / uninstall ----------------------------------------------------------------------------------------


def tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under `root`: its mode and, for files, its content."""
    out: dict[str, tuple[int, bytes | None]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_mode, path.read_bytes() if path.is_file() else None)
    return out


BLOCK = re.compile(r"^--- (?P<path>/\S+) \(mode (?P<mode>0\d{3})\)\n(?P<text>.*?)\n--- end of (?P=path)$",
                   re.S | re.M)


def systemd_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(["systemd", *args], clean_env(tmp_path))
    assert_no_traceback(result.stderr)
    return result


class TestInstall:
    def test_dry_run_prints_exactly_what_install_writes(self, tmp_path: Path) -> None:
        """Every file the dry run shows is written with that content and mode, every mkdir happens, nothing else."""
        root = tmp_path / "root"
        root.mkdir()
        exe = stub_exec(tmp_path)
        dry = systemd_cli(tmp_path, "install", "--dry-run", "--root", str(root), "--exec", str(exe))
        assert dry.returncode == 0, dry.stderr
        assert tree(root) == {}  # a dry run changes nothing
        shown = {m["path"]: (int(m["mode"], 8), m["text"] + "\n") for m in BLOCK.finditer(dry.stdout)}
        mkdirs = re.findall(r"^mkdir (/\S+) \(mode 0755\)$", dry.stdout, flags=re.M)
        assert set(shown) == {"/etc/systemd/system/ollama.service.d/ollama-gpu.conf",
                              "/etc/ollama-gpu/ollama-gpu.env", "/etc/ollama-gpu/systemd-install.json"}
        real = systemd_cli(tmp_path, "install", "--root", str(root), "--exec", str(exe))
        assert real.returncode == 0, real.stderr
        after = tree(root)
        files = {"/" + k: (stat.S_IMODE(mode), content.decode()) for k, (mode, content) in after.items()
                 if content is not None}
        dirs = {"/" + k for k, (_mode, content) in after.items() if content is None}
        assert files == shown
        assert dirs == set(mkdirs)
        assert exec_start(shown["/etc/systemd/system/ollama.service.d/ollama-gpu.conf"][1]) == [str(exe), "serve"]
        for output in (dry.stdout, real.stdout):
            assert "systemctl daemon-reload" in output and "systemctl restart ollama.service" in output

    @pytest.mark.parametrize("standalone", [False, True], ids=["dropin", "standalone"])
    def test_uninstall_leaves_the_root_as_before(self, tmp_path: Path, standalone: bool) -> None:
        """With Ollama's unit and an operator's own drop-in present, install then uninstall restores the tree."""
        root = tmp_path / "root"
        units = root / "etc" / "systemd" / "system"
        (units / "ollama.service.d").mkdir(parents=True)
        (units / "ollama.service").write_text(OFFICIAL_UNIT)
        (units / "ollama.service.d" / "override.conf").write_text("[Service]\nEnvironment=OLLAMA_DEBUG=1\n")
        before = tree(root)
        extra = ["--standalone"] if standalone else []
        install = systemd_cli(tmp_path, "install", "--root", str(root), "--exec", str(stub_exec(tmp_path)), *extra)
        assert install.returncode == 0, install.stderr
        assert tree(root) != before
        uninstall = systemd_cli(tmp_path, "uninstall", "--root", str(root))
        assert uninstall.returncode == 0, uninstall.stderr
        assert tree(root) == before

    def test_uninstall_on_an_empty_root_removes_every_created_directory(self, tmp_path: Path) -> None:
        """Directories install created (up to /etc) go again; a second install in between changes nothing."""
        root = tmp_path / "root"
        root.mkdir()
        for _ in range(2):
            assert systemd_cli(tmp_path, "install", "--root", str(root)).returncode == 0
        assert systemd_cli(tmp_path, "uninstall", "--root", str(root)).returncode == 0
        assert tree(root) == {}

    def test_an_existing_env_file_is_neither_written_nor_removed(self, tmp_path: Path) -> None:
        """The operator's /etc/ollama-gpu/ollama-gpu.env survives install and uninstall byte for byte."""
        root = tmp_path / "root"
        env_file = root / "etc" / "ollama-gpu" / "ollama-gpu.env"
        env_file.parent.mkdir(parents=True)
        env_file.write_text("OGPU_MODE=advise\n")
        before = tree(root)
        dry = systemd_cli(tmp_path, "install", "--dry-run", "--root", str(root))
        assert "--- /etc/ollama-gpu/ollama-gpu.env" not in dry.stdout
        assert systemd_cli(tmp_path, "install", "--root", str(root)).returncode == 0
        assert env_file.read_text() == "OGPU_MODE=advise\n"
        assert systemd_cli(tmp_path, "uninstall", "--root", str(root)).returncode == 0
        assert tree(root) == before

    def test_a_file_changed_after_install_is_kept(self, tmp_path: Path) -> None:
        """The env file install wrote, once edited, is the operator's: uninstall keeps it and says so."""
        root = tmp_path / "root"
        root.mkdir()
        assert systemd_cli(tmp_path, "install", "--root", str(root)).returncode == 0
        env_file = root / "etc" / "ollama-gpu" / "ollama-gpu.env"
        env_file.write_text(env_file.read_text() + "OGPU_MODE=observe\n")
        dry = systemd_cli(tmp_path, "uninstall", "--dry-run", "--root", str(root))
        assert "keep /etc/ollama-gpu/ollama-gpu.env (changed since install)" in dry.stdout
        result = systemd_cli(tmp_path, "uninstall", "--root", str(root))
        assert result.returncode == 0
        assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
            "etc", "etc/ollama-gpu", "etc/ollama-gpu/ollama-gpu.env"]

    def test_a_dropin_not_written_by_us_is_not_overwritten(self, tmp_path: Path) -> None:
        """An ollama-gpu.conf that install did not write: exit 1, one line, the file untouched."""
        root = tmp_path / "root"
        dropin = root / "etc" / "systemd" / "system" / "ollama.service.d" / "ollama-gpu.conf"
        dropin.parent.mkdir(parents=True)
        dropin.write_text("[Service]\n")
        result = systemd_cli(tmp_path, "install", "--root", str(root))
        assert result.returncode == 1
        assert "was not written by `ollama-gpu systemd install`" in result.stderr
        assert dropin.read_text() == "[Service]\n"

    def test_standalone_uninstall_waits_for_disable(self, tmp_path: Path) -> None:
        """While ollama-gpu.service is enabled, uninstall refuses and names the systemctl command."""
        root = tmp_path / "root"
        root.mkdir()
        install = systemd_cli(tmp_path, "install", "--standalone", "--root", str(root))
        assert "systemctl enable --now ollama-gpu.service" in install.stdout
        wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
        wants.mkdir()
        (wants / "ollama-gpu.service").symlink_to("/etc/systemd/system/ollama-gpu.service")
        result = systemd_cli(tmp_path, "uninstall", "--root", str(root))
        assert result.returncode == 1
        assert "systemctl disable --now ollama-gpu.service" in result.stderr
        assert (root / "etc" / "systemd" / "system" / "ollama-gpu.service").exists()

    def test_uninstall_with_nothing_installed(self, tmp_path: Path) -> None:
        """No manifest: nothing to do, exit 0, the root untouched."""
        root = tmp_path / "root"
        root.mkdir()
        result = systemd_cli(tmp_path, "uninstall", "--root", str(root))
        assert result.returncode == 0
        assert "nothing installed" in result.stdout
        assert tree(root) == {}


class TestReachable:
    def test_a_closed_directory_is_reported(self, tmp_path: Path) -> None:
        """An executable under a 0700 directory cannot be run by the service user: said, with the directory."""
        closed = tmp_path / "closed"
        exe = stub_exec(closed)
        closed.chmod(0o700)
        assert any(str(closed) in problem for problem in unreachable(exe))

    def test_an_open_path_is_fine(self, world_readable_base: Path) -> None:
        """Under world-traversable directories, a 0755 script on /bin/sh has no problem."""
        assert unreachable(stub_exec(world_readable_base)) == []
