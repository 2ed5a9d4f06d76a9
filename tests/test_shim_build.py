"""Building, caching and preflighting the shim, and the `ollama-gpu shim` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from launcher import shim_build
from launcher.shim_build import (
    SHIM_NAME,
    CompileFailed,
    Completed,
    NoCompiler,
    ShimError,
    build,
    find_compiler,
    install_copy,
    no_compiler_message,
    preflight,
    preflight_env,
    read_build_spec,
    resolve,
    run_process,
)
from tests.cli_helpers import assert_no_traceback, clean_env, run_cli

REPO = Path(__file__).resolve().parents[1]
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
pytestmark = pytest.mark.skipif(CC is None, reason="needs a C compiler")

# A throwaway preload library: interposes dlopen only, forwarding to the next one (enough for every check).
TINY_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
__attribute__((visibility("default"))) void *dlopen(const char *file, int flags) {
    static void *(*real)(const char *, int);
    if (!real) real = (void *(*)(const char *, int))dlsym(RTLD_NEXT, "dlopen");
    return real(file, flags);
}
"""
EXPORTS = "{ global: dlopen; dlerror; local: *; };\n"
# Breaks the caller's dlerror(): the preflight's probe must notice that the loader's message is lost.
DLERROR_EATER = r"""
__attribute__((visibility("default"))) char *dlerror(void) { return 0; }
"""


def tiny_src(tmp: Path, *extra: str) -> Path:
    """A source directory holding the tiny shim (plus `extra` C text) and its version script."""
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    (src / "shim.c").write_text(TINY_SHIM + "".join(extra))
    (src / "exports.map").write_text(EXPORTS)
    return src


def compile_so(tmp: Path, name: str, code: str, *flags: str) -> Path:
    """Compile `code` into tmp/name as a shared library."""
    c = tmp / f"{name}.c"
    c.write_text(code)
    out = tmp / name
    subprocess.run([CC or "cc", "-shared", "-fPIC", *flags, "-o", str(out), str(c)], check=True)
    return out


class Recorder:
    """A Runner that runs for real and remembers every argv (the choke point is swappable)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str], *, env: Mapping[str, str], timeout: float,
                 cwd: Path | None = None) -> Completed:
        self.calls.append(tuple(argv))
        return run_process(argv, env=env, timeout=timeout, cwd=cwd)

    def compiles(self) -> int:
        """How many times the compiler was asked to produce a file."""
        return sum("-o" in call for call in self.calls)


def os_release(tmp: Path, text: str) -> Path:
    """A root directory whose etc/os-release holds `text`."""
    (tmp / "etc").mkdir(parents=True, exist_ok=True)
    (tmp / "etc" / "os-release").write_text(text)
    return tmp


def write_script(path: Path, text: str) -> Path:
    """An executable shell script."""
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)
    return path


# --- the compiler -------------------------------------------------------------------------------------------------


class TestCompiler:
    def test_cc_variable_wins(self, tmp_path: Path) -> None:
        """$CC names the compiler, arguments included."""
        wrapper = write_script(tmp_path / "mycc", f'exec {CC} "$@"\n')
        found = find_compiler({"PATH": os.environ["PATH"], "CC": f"{wrapper} -g0"})
        assert found.argv == (str(wrapper), "-g0") and found.machine

    def test_cc_variable_that_is_not_there(self, tmp_path: Path) -> None:
        """A $CC that does not exist is an error that names it, not a silent fallback."""
        with pytest.raises(NoCompiler, match="CC='nope-cc'"):
            find_compiler({"PATH": os.environ["PATH"], "CC": "nope-cc"})

    def test_first_found_on_path(self, tmp_path: Path) -> None:
        """Without $CC: cc, gcc, clang, first found on PATH."""
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        write_script(bin_dir / "clang", f'exec {CC} "$@"\n')
        assert find_compiler({"PATH": str(bin_dir)}).argv == (str(bin_dir / "clang"),)
        write_script(bin_dir / "gcc", f'exec {CC} "$@"\n')
        assert find_compiler({"PATH": str(bin_dir)}).argv == (str(bin_dir / "gcc"),)

    def test_none_found(self, tmp_path: Path) -> None:
        """No compiler at all: NoCompiler with the distribution's hint."""
        root = os_release(tmp_path, 'ID=fedora\nNAME="Fedora Linux"\n')
        with pytest.raises(NoCompiler, match="dnf install gcc"):
            find_compiler({"PATH": str(tmp_path)}, os_release_root=root)


class TestNoCompilerMessage:
    @pytest.mark.parametrize(("text", "expected"), [
        ('ID=debian\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n', "apt-get install gcc` (or build-essential)"),
        ("ID=ubuntu\nID_LIKE=debian\n", "apt-get install gcc"),
        ("ID=fedora\n", "dnf install gcc"),
        ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', "dnf install gcc"),
        ("ID=arch\n", "pacman -S gcc"),
        ('ID="opensuse-leap"\nID_LIKE="suse opensuse"\n', "zypper install gcc"),
        ("ID=sles\n", "zypper install gcc"),
        ("ID=alpine\nNAME='Alpine Linux'\n", "not supported on Alpine Linux (musl libc)"),
        ("ID=plan9\n", "install gcc or clang"),
    ])
    def test_per_distribution(self, tmp_path: Path, text: str, expected: str) -> None:
        """One line that names what to install on this distribution (or that it is not supported)."""
        message = no_compiler_message(os_release(tmp_path, text))
        assert expected in message and "\n" not in message

    def test_without_os_release(self, tmp_path: Path) -> None:
        """No os-release at all: the generic hint, still one line."""
        assert "install gcc or clang" in no_compiler_message(tmp_path)


# --- building and the cache ---------------------------------------------------------------------------------------


class TestBuild:
    def test_miss_then_hit(self, tmp_path: Path) -> None:
        """The first build compiles; the second returns the same file without compiling."""
        src, runner = tiny_src(tmp_path), Recorder()
        first = build(tmp_path / "cache", os.environ, src_dir=src, runner=runner)
        second = build(tmp_path / "cache", os.environ, src_dir=src, runner=runner)
        assert (first.origin, second.origin) == ("built", "cache")
        assert first.path == second.path == tmp_path / "cache" / "shim" / str(first.key) / SHIM_NAME
        assert runner.compiles() == 1
        assert first.path.read_bytes()[:4] == b"\x7fELF"

    def test_source_change_rebuilds(self, tmp_path: Path) -> None:
        """Changing a source file changes the key and compiles again."""
        src, runner = tiny_src(tmp_path), Recorder()
        first = build(tmp_path / "cache", os.environ, src_dir=src, runner=runner)
        (src / "shim.c").write_text(TINY_SHIM + "\n/* changed */\n")
        second = build(tmp_path / "cache", os.environ, src_dir=src, runner=runner)
        assert second.origin == "built" and second.key != first.key and runner.compiles() == 2
        assert first.path.exists() and second.path.exists()

    def test_build_file_change_rebuilds(self, tmp_path: Path) -> None:
        """BUILD.txt (sources and flags) is part of the key."""
        src = tiny_src(tmp_path)
        first = build(tmp_path / "cache", os.environ, src_dir=src)
        (src / "BUILD.txt").write_text("sources: shim.c\ncflags: -shared -fPIC -O1\nlibs: -ldl\n")
        assert build(tmp_path / "cache", os.environ, src_dir=src).key != first.key

    def test_compiler_change_rebuilds(self, tmp_path: Path) -> None:
        """Another compiler (another --version) is another key."""
        src = tiny_src(tmp_path)
        wrapper = write_script(tmp_path / "cc2",
                               f'[ "$1" = --version ] && {{ echo other-cc 9.9; exit 0; }}\nexec {CC} "$@"\n')
        first = build(tmp_path / "cache", os.environ, src_dir=src)
        second = build(tmp_path / "cache", {**os.environ, "CC": str(wrapper)}, src_dir=src)
        assert second.origin == "built" and second.key != first.key

    def test_compile_failure_reports_stderr(self, tmp_path: Path) -> None:
        """A compile error raises CompileFailed with the command and cc's stderr; nothing is left behind."""
        src = tiny_src(tmp_path, "\nint broken(void) { return undeclared_thing; }\n")
        with pytest.raises(CompileFailed) as info:
            build(tmp_path / "cache", os.environ, src_dir=src)
        assert "compiling the shim failed" in str(info.value)
        assert "undeclared_thing" in info.value.stderr and "-o" in info.value.command
        assert [p for p in (tmp_path / "cache" / "shim").rglob("*") if p.is_file()] == []  # (compilers/: a record)

    def test_timeout_is_a_failure(self, tmp_path: Path) -> None:
        """A compiler killed at its timeout is reported as such."""
        def runner(argv: Sequence[str], *, env: Mapping[str, str], timeout: float,
                   cwd: Path | None = None) -> Completed:
            if "-o" in argv:
                return Completed(tuple(argv), None, "", "")
            return run_process(argv, env=env, timeout=timeout, cwd=cwd)

        with pytest.raises(CompileFailed, match="timed out"):
            build(tmp_path / "cache", os.environ, src_dir=tiny_src(tmp_path), runner=runner)

    def test_concurrent_builds_in_two_processes(self, tmp_path: Path) -> None:
        """Two processes compiling at the same moment both succeed and leave one valid file, no temporaries."""
        src, barrier = tiny_src(tmp_path), tmp_path / "barrier"
        barrier.mkdir()
        # Both compilers start before either finishes: each waits (bounded) until the other has started.
        wrapper = write_script(tmp_path / "slowcc", f"""case " $* " in *" -o "*)
  touch "{barrier}/started.$$"; i=0
  while [ "$(ls "{barrier}" | wc -l)" -lt 2 ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done;;
esac
exec {CC} "$@"
""")
        code = ("import os, sys; from pathlib import Path; from launcher.shim_build import build; "
                "b = build(Path(sys.argv[1]), os.environ, src_dir=Path(sys.argv[2])); print(b.origin, b.path)")
        env = {**os.environ, "CC": str(wrapper), "PYTHONPATH": str(REPO)}
        procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "cache"), str(src)], env=env,
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=120)[0].splitlines()[-1].split() for p in procs]  # after log lines
        assert [p.returncode for p in procs] == [0, 0]
        assert [o[0] for o in outs] == ["built", "built"]  # a real race: both compiled
        assert len(list(barrier.iterdir())) == 2
        assert outs[0][1] == outs[1][1]
        files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.parent.name != "compilers"]
        assert files == [Path(outs[0][1])]
        assert preflight(files[0], os.environ).ok

    def test_cache_writable_by_others_is_refused(self, tmp_path: Path) -> None:
        """A cached library that another user could have replaced is not used."""
        built = build(tmp_path / "cache", os.environ, src_dir=tiny_src(tmp_path))
        built.path.chmod(0o777)
        with pytest.raises(ShimError, match="writable by others"):
            build(tmp_path / "cache", os.environ, src_dir=tiny_src(tmp_path))


class TestBuildSpec:
    def test_packaged_build_file(self) -> None:
        """shim/BUILD.txt names the sources and flags; cflags lines accumulate."""
        spec = read_build_spec(REPO / "shim")
        assert spec.sources and all(s.endswith(".c") for s in spec.sources)
        assert "-Werror" in spec.cflags and "-Wl,--version-script=exports.map" in spec.cflags
        assert "-ldl" in spec.libs

    def test_without_build_file(self, tmp_path: Path) -> None:
        """No BUILD.txt: every *.c with the default flags."""
        spec = read_build_spec(tiny_src(tmp_path))
        assert spec.sources == ("shim.c",) and "-fvisibility=hidden" in spec.cflags


class TestInstallCopy:
    def test_to_file_and_directory(self, tmp_path: Path) -> None:
        """The copy lands complete under the given name, or as libollama_gpu_shim.so in a directory."""
        src = tmp_path / "a.so"
        src.write_bytes(b"\x7fELF" + bytes(range(256)) * 10)
        assert install_copy(src, tmp_path / "b.so").read_bytes() == src.read_bytes()
        (tmp_path / "out").mkdir()
        target = install_copy(src, tmp_path / "out")
        assert target == tmp_path / "out" / SHIM_NAME and target.stat().st_mode & 0o777 == 0o755
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [SHIM_NAME]


# --- preflight ----------------------------------------------------------------------------------------------------


class TestPreflight:
    def test_good_shim(self, tmp_path: Path) -> None:
        """A well-formed preload library passes both checks."""
        built = build(tmp_path / "cache", os.environ, src_dir=tiny_src(tmp_path))
        result = preflight(built.path, os.environ)
        assert result.ok and [c.name for c in result.checks] == ["bind_now", "dlopen_dlsym"]

    def test_not_an_elf(self, tmp_path: Path) -> None:
        """A file that is not an ELF: ld.so only warns and runs /bin/true, but its text fails the check."""
        bad = tmp_path / "bad.so"
        bad.write_bytes(b"this is not a shared object, it is text padded out to a header's size" * 4)
        result = preflight(bad, os.environ)
        assert not result.ok
        assert "cannot be preloaded" in result.message and "invalid ELF header" in result.message

    def test_wrong_architecture(self, tmp_path: Path) -> None:
        """A library of another ELF class is refused with the loader's words."""
        built = build(tmp_path / "cache", os.environ, src_dir=tiny_src(tmp_path))
        data = bytearray(built.path.read_bytes())
        data[4] = 1 if data[4] == 2 else 2  # EI_CLASS: 64-bit <-> 32-bit
        wrong = tmp_path / "wrong.so"
        wrong.write_bytes(bytes(data))
        result = preflight(wrong, os.environ)
        assert not result.ok and "wrong ELF class" in result.message

    def test_unresolved_symbol_under_bind_now(self, tmp_path: Path) -> None:
        """An undefined symbol fails at load under LD_BIND_NOW, with the symbol's name."""
        lib = compile_so(tmp_path, "unresolved.so", "int ogpu_missing_symbol(void);\n"
                         "int f(void) { return ogpu_missing_symbol(); }\n")
        result = preflight(lib, os.environ)
        assert not result.ok and "undefined symbol: ogpu_missing_symbol" in result.message

    def test_missing_file(self, tmp_path: Path) -> None:
        """A path with no file: the loader's 'cannot open shared object file'."""
        result = preflight(tmp_path / "nothing.so", os.environ)
        assert not result.ok and "cannot open shared object file" in result.message

    def test_broken_dlerror_is_caught_by_the_probe(self, tmp_path: Path) -> None:
        """A shim that loses the caller's dlerror() passes /bin/true but fails the dlopen/dlsym probe."""
        built = build(tmp_path / "cache", os.environ, src_dir=tiny_src(tmp_path, DLERROR_EATER))
        result = preflight(built.path, os.environ)
        assert [c.ok for c in result.checks] == [True, False]
        assert "lost the loader's message" in result.message

    def test_path_ld_preload_cannot_carry(self, tmp_path: Path) -> None:
        """LD_PRELOAD splits on spaces and colons: such a path is refused before any probe."""
        result = preflight(tmp_path / "with space" / SHIM_NAME, os.environ)
        assert not result.ok and "spaces or colons" in result.message

    def test_probe_environment(self) -> None:
        """The probes run with only the shim preloaded, bind-now, and none of our OGPU_ keys (no events)."""
        env = preflight_env({"OGPU_EVENTS": "/run/x.sock", "OGPU_SHIM_DEBUG": "1", "LD_PRELOAD": "/other.so",
                             "PATH": "/bin"}, Path("/s/lib.so"))
        assert env == {"PATH": "/bin", "LD_PRELOAD": "/s/lib.so", "LD_BIND_NOW": "1", "LC_ALL": "C"}


class TestResolve:
    def test_prebuilt_is_used_and_preflighted(self, tmp_path: Path) -> None:
        """OGPU_SHIM: no compiler needed, the file itself is preflighted."""
        lib = build(tmp_path / "cache", os.environ, src_dir=tiny_src(tmp_path)).path
        resolved = resolve(lib, tmp_path / "other-cache", {"PATH": str(tmp_path / "empty")})
        assert resolved.ok and resolved.built.origin == "prebuilt" and resolved.path == lib
        assert not (tmp_path / "other-cache").exists()

    def test_prebuilt_that_fails(self, tmp_path: Path) -> None:
        """A bad prebuilt shim comes back not ok, with the loader's message, and require() raises it."""
        bad = tmp_path / "bad.so"
        bad.write_text("x")
        resolved = resolve(bad, tmp_path / "cache", os.environ)
        assert not resolved.ok and "cannot be preloaded" in resolved.preflight.message
        with pytest.raises(shim_build.PreflightFailed, match="cannot be preloaded"):
            resolved.require()

    def test_prebuilt_missing(self, tmp_path: Path) -> None:
        """OGPU_SHIM naming nothing is an error that says so."""
        with pytest.raises(ShimError, match="is not a file"):
            resolve(tmp_path / "nope.so", tmp_path / "cache", os.environ)


class TestReuse:
    """`serve` starts without re-running what an unchanged machine already answered: the compiler's identity and a
    passed preflight are kept as records in the cache directory, keyed by the files they depend on."""

    def test_compiler_identified_once_across_processes(self, tmp_path: Path) -> None:
        src, runner = tiny_src(tmp_path), Recorder()
        build(tmp_path / "cache", os.environ, src_dir=src, runner=runner)
        shim_build._identify_cached.cache_clear()  # a new process: only the record on disk remains
        again = Recorder()
        second = build(tmp_path / "cache", os.environ, src_dir=src, runner=again)
        assert second.origin == "cache" and again.calls == []
        assert any("--version" in call for call in runner.calls)

    def test_a_changed_compiler_is_identified_again(self, tmp_path: Path) -> None:
        """Another binary at the same path (a compiler upgrade): run again, new key, rebuilt."""
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        cc = write_script(bin_dir / "cc", f'exec {CC} "$@"\n')
        env = {**os.environ, "CC": str(cc)}
        first = build(tmp_path / "cache", env, src_dir=tiny_src(tmp_path))
        shim_build._identify_cached.cache_clear()
        write_script(cc, f'# upgraded\nexec {CC} "$@"\n')
        again = Recorder()
        second = build(tmp_path / "cache", env, src_dir=tiny_src(tmp_path), runner=again)
        assert any("--version" in call for call in again.calls) and second.key == first.key  # same compiler text

    def test_passed_preflight_is_reused_and_says_so(self, tmp_path: Path) -> None:
        src = tiny_src(tmp_path)
        build(tmp_path / "cache", os.environ, src_dir=src)
        first, runner = Recorder(), Recorder()
        r1 = resolve(None, tmp_path / "cache", os.environ, src_dir=src, runner=first, reuse_preflight=True)
        r2 = resolve(None, tmp_path / "cache", os.environ, src_dir=src, runner=runner, reuse_preflight=True)
        assert r1.ok and not r1.preflight.reused and any("-c" in call for call in first.calls)
        assert r2.ok and r2.preflight.reused and runner.calls == []
        assert r2.preflight.to_dict()["reused"] is True

    def test_the_diagnostic_path_always_tests(self, tmp_path: Path) -> None:
        """Without reuse_preflight (`shim path`, `doctor`) the probes run even when a record exists."""
        src = tiny_src(tmp_path)
        resolve(None, tmp_path / "cache", os.environ, src_dir=src, reuse_preflight=True)
        runner = Recorder()
        r = resolve(None, tmp_path / "cache", os.environ, src_dir=src, runner=runner)
        assert r.ok and not r.preflight.reused and any(call[0].endswith("true") for call in runner.calls)

    def test_a_changed_shim_or_loader_path_is_tested_again(self, tmp_path: Path) -> None:
        lib = build(tmp_path / "cache", os.environ, src_dir=tiny_src(tmp_path)).path
        prebuilt = tmp_path / "prebuilt.so"
        shutil.copy(lib, prebuilt)
        assert not resolve(prebuilt, tmp_path / "cache", os.environ, reuse_preflight=True).preflight.reused
        assert resolve(prebuilt, tmp_path / "cache", os.environ, reuse_preflight=True).preflight.reused
        other = {**os.environ, "LD_LIBRARY_PATH": str(tmp_path)}
        assert not resolve(prebuilt, tmp_path / "cache", other, reuse_preflight=True).preflight.reused
        bad = b"this is not a shared object, it is text padded out to a header's size" * 4
        prebuilt.write_bytes(bad)
        r = resolve(prebuilt, tmp_path / "cache", os.environ, reuse_preflight=True)
        assert not r.ok and not r.preflight.reused and "invalid ELF header" in r.preflight.message

    def test_a_failure_is_never_recorded(self, tmp_path: Path) -> None:
        bad = tmp_path / "bad.so"
        bad.write_text("x")
        for _ in range(2):
            r = resolve(bad, tmp_path / "cache", os.environ, reuse_preflight=True)
            assert not r.ok and not r.preflight.reused
        assert not (tmp_path / "cache" / "preflight").exists() or not list((tmp_path / "cache" / "preflight").iterdir())

    def test_a_record_others_could_write_is_ignored(self, tmp_path: Path) -> None:
        lib = build(tmp_path / "cache", os.environ, src_dir=tiny_src(tmp_path)).path
        resolve(lib, tmp_path / "cache", os.environ, reuse_preflight=True)
        (record,) = (tmp_path / "cache" / "preflight").iterdir()
        record.chmod(0o666)
        assert not resolve(lib, tmp_path / "cache", os.environ, reuse_preflight=True).preflight.reused


# --- the real command line ----------------------------------------------------------------------------------------


def cli_env(tmp: Path, **extra: str) -> dict[str, str]:
    """clean_env with our cache and runtime directories under `tmp` (as root they would be /var/cache, /run)."""
    return clean_env(tmp, {"CACHE_DIRECTORY": str(tmp / "cache"), "RUNTIME_DIRECTORY": str(tmp / "run"),
                           "STATE_DIRECTORY": str(tmp / "state"), **extra})


def one_line(stderr: str) -> str:
    """The operator's line: exactly one, no traceback."""
    assert_no_traceback(stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


class TestCommand:
    def test_no_compiler(self, tmp_path: Path) -> None:
        """No compiler: exit 1 and one line naming the package for this host's distribution."""
        env = cli_env(tmp_path, PATH=str(tmp_path / "empty"))
        env.pop("CC", None)
        proc = run_cli(["shim", "build"], env)
        assert proc.returncode == 1 and proc.stdout == ""
        line = one_line(proc.stderr)
        assert line.startswith("ollama-gpu: shim: no C compiler found")
        assert no_compiler_message(Path("/")) in line

    def test_compile_failure(self, tmp_path: Path) -> None:
        """The compiler's own stderr is shown below the one line; exit 1."""
        failing = write_script(tmp_path / "failcc", 'case " $* " in *" -o "*) echo "boom: no space left" >&2; '
                               f'exit 1;; esac\nexec {CC} "$@"\n')
        proc = run_cli(["shim", "build"], cli_env(tmp_path, CC=str(failing)))
        assert proc.returncode == 1
        assert_no_traceback(proc.stderr)
        assert proc.stderr.startswith("ollama-gpu: shim: compiling the shim failed")
        assert "boom: no space left" in proc.stderr

    def test_prebuilt_path(self, tmp_path: Path) -> None:
        """`shim path` with OGPU_SHIM prints that file once it passes its preflight."""
        lib = build(tmp_path / "tiny-cache", os.environ, src_dir=tiny_src(tmp_path)).path
        proc = run_cli(["shim", "path"], cli_env(tmp_path, OGPU_SHIM=str(lib), PATH=str(tmp_path / "empty")))
        assert (proc.returncode, proc.stdout) == (0, f"{lib}\n"), proc.stderr
        proc = run_cli(["shim", "path", "--json"], cli_env(tmp_path, OGPU_SHIM=str(lib)))
        info = json.loads(proc.stdout)
        assert proc.returncode == 0 and info["origin"] == "prebuilt" and info["preflight"]["ok"] is True

    def test_prebuilt_that_fails_preflight(self, tmp_path: Path) -> None:
        """A bad OGPU_SHIM: exit 1, one line with the loader's text; --json says the same."""
        bad = tmp_path / "bad.so"
        bad.write_text("not a library")
        proc = run_cli(["shim", "path"], cli_env(tmp_path, OGPU_SHIM=str(bad)))
        assert proc.returncode == 1 and proc.stdout == ""
        assert "cannot be preloaded" in one_line(proc.stderr)
        proc = run_cli(["shim", "path", "--json"], cli_env(tmp_path, OGPU_SHIM=str(bad)))
        info = json.loads(proc.stdout)
        assert proc.returncode == 1 and info["preflight"]["ok"] is False
        assert "cannot be preloaded" in info["preflight"]["message"]

    def test_build_output(self, tmp_path: Path) -> None:
        """`shim build --output PATH` builds the packaged shim and copies it to PATH, printing PATH."""
        out = tmp_path / "dist" / "libshim.so"
        out.parent.mkdir()
        proc = run_cli(["shim", "build", "--output", str(out)], cli_env(tmp_path))
        assert (proc.returncode, proc.stdout) == (0, f"{out}\n"), proc.stderr
        cached = list((tmp_path / "cache" / "shim").glob(f"*/{SHIM_NAME}"))
        assert len(cached) == 1 and cached[0].read_bytes() == out.read_bytes()
        assert preflight(out, os.environ).ok

    def test_path_builds_then_caches(self, tmp_path: Path) -> None:
        """`shim path` without OGPU_SHIM builds into the cache once; later calls print the same file."""
        first = run_cli(["shim", "path"], cli_env(tmp_path))
        second = run_cli(["shim", "path", "--json"], cli_env(tmp_path))
        assert first.returncode == 0, first.stderr
        path = Path(first.stdout.strip())
        assert path.parent.parent == tmp_path / "cache" / "shim" and path.name == SHIM_NAME
        info = json.loads(second.stdout)
        assert info["path"] == str(path) and info["origin"] == "cache" and info["preflight"]["ok"] is True

    @pytest.mark.parametrize("args", [["shim"], ["shim", "build", "--bogus"], ["shim", "path", "extra"]])
    def test_usage_errors(self, tmp_path: Path, args: list[str]) -> None:
        """Bad usage exits 2 without a traceback."""
        proc = run_cli(args, cli_env(tmp_path))
        assert proc.returncode == 2
        assert_no_traceback(proc.stderr)
