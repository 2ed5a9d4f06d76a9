"""Acceptance tests of the C shim (issue #4): built with cc, run on the mock driver, received by the real server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher import shim_build
from tests.native.build import NativeBuild, layout, native_build
from tests.shim_harness import Harness, data, harness, kinds, last_snapshot, needed, nm_dynamic, plain

ZERO_LAUNCHES = {"kernel": 0, "kernel_ex": 0, "cooperative": 0, "graph": 0}
ZERO_MEM = {"allocs": 0, "frees": 0, "alloc_bytes": 0, "free_bytes": 0}
ZERO_COPIES = {"htod_bytes": 0, "dtoh_bytes": 0, "dtod_bytes": 0}
MISSING = "libggml-ogpu-missing.so"


@pytest.fixture(scope="session")
def native() -> NativeBuild:
    return native_build()


@pytest.fixture
def h(native: NativeBuild) -> Iterator[Harness]:
    with harness(native) as hh:
        yield hh


def scenarios(b: NativeBuild) -> dict[str, tuple[list[str | Path], dict[str, str]]]:
    """Name -> (argv, environment overrides); the environment's `libcuda` key picks the driver directory."""
    ggml = str(b.ggml_cuda)
    return {
        "gpa": ([b.probe, "gpa"], {}),
        "raw": ([b.probe, "raw"], {}),
        "direct": ([b.probe_direct], {}),
        "threads": ([b.probe, "threads", "4", "2000"], {}),
        "fork": ([b.probe, "fork", "100", "7", "50"], {}),
        "dlfail": ([b.probe, "dlfail", MISSING, ggml], {"libcuda": str(b.mock_novareserve_dir)}),
        "dlerrno": ([b.probe, "dlerrno", MISSING, ggml], {"libcuda": str(b.mock_novareserve_dir)}),
        "ggml": ([b.probe, "ggml", ggml], {}),
        "ggml_compute": ([b.probe, "ggml", ggml, "5"], {}),
        "ggml_ollama_style": ([b.probe, "ggml", ggml], {"MOCKGGML_STYLE": "ollama", "MOCKCUDA_DEVICE_COUNT": "2"}),
        "ggml_no_libcuda": ([b.probe, "ggml", ggml], {"libcuda": ""}),
        "ggml_undefined_symbol": ([b.probe, "ggml", ggml], {"libcuda": str(b.mock_novareserve_dir)}),
        "ggml_init_999": ([b.probe, "ggml", ggml], {"MOCKCUDA_INIT_ERROR": "999"}),
        "ggml_hidden_by_cvd": ([b.probe, "ggml", ggml], {"CUDA_VISIBLE_DEVICES": "-1"}),
        "ggml_stub": ([b.probe, "ggml", ggml], {"MOCKCUDA_STUB": "1"}),
        "ggml_old_driver": ([b.probe, "ggml", ggml], {"MOCKCUDA_DRIVER_VERSION": "12080"}),
        "gpa_no_libcuda": ([b.probe, "gpa"], {"libcuda": ""}),
        "runpath": ([b.probe, "runpath", b.libcaller, "libggml-dep.so"], {}),
        "scope": ([b.probe, "scope", b.libscope], {}),
        "errors": ([b.probe, "errors", "300"], {"MOCKCUDA_FAIL": "cuLaunchKernel=700"}),
    }


def env_for(h: Harness, overrides: dict[str, str], **kw: object) -> dict[str, str]:
    extra = dict(overrides)
    lib = extra.pop("libcuda", None)
    return h.env(libcuda=Path(lib) if lib is not None else None, **kw, **extra)  # type: ignore[arg-type]


SCENARIOS = list(scenarios(layout(Path("/"))))


class TestBuild:
    """The library itself: what it exports, what it needs, whether it preflights."""

    def test_exports_only_dl_hooks_and_no_cu_symbol(self, native: NativeBuild) -> None:
        """nm -D lists the six dl* hooks and nothing else: no cu* symbol can satisfy another library's reference."""
        names = nm_dynamic(native.shim)
        assert not [n for n in names if n.startswith("cu")]
        assert sorted(names) == ["dlclose", "dlerror", "dlinfo", "dlmopen", "dlopen", "dlsym"]

    def test_needs_only_the_c_library(self, native: NativeBuild) -> None:
        """A missing DT_NEEDED would make every process exit 127: only glibc's own objects are allowed."""
        allowed = {"libc.so.6", "libdl.so.2", "libpthread.so.0", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}
        assert set(needed(native.shim)) <= allowed

    def test_preflight_of_shim_build_passes(self, native: NativeBuild) -> None:
        """The supervisor's preflight (bind-now load and the dlopen/dlsym/dlerror probe) accepts it."""
        result = shim_build.preflight(native.shim, dict(os.environ))
        assert result.ok, result.to_dict()


class TestNothingChanges:
    """stdout, stderr and exit code are identical without the shim, with it and a server, with it and no socket,
    and with it and no OGPU_EVENTS at all (DESIGN principle 3)."""

    @pytest.mark.parametrize("name", SCENARIOS)
    def test_outputs_identical(self, h: Harness, native: NativeBuild, name: str) -> None:
        """The same outputs in all four configurations."""
        argv, over = scenarios(native)[name]
        bare = h.run(argv, env_for(h, over, shim=False), collect=False)
        served = h.run(argv, env_for(h, over))
        no_socket = h.run(argv, env_for(h, over, events=str(h.sock.parent / "nobody-listens.sock")), collect=False)
        unset = h.run(argv, env_for(h, over, events=None), collect=False)
        assert served.outputs == bare.outputs
        assert no_socket.outputs == bare.outputs
        assert unset.outputs == bare.outputs
        assert served.dropped == {}

    def test_rtld_next_from_another_preloaded_library(self, h: Harness, native: NativeBuild) -> None:
        """dlsym(RTLD_NEXT) in a library preloaded after the shim still finds the *next* definition (the hook
        tail-jumps; a forwarding call would hand the caller its own symbol and recurse)."""
        argv = [native.probe, "next"]
        bare = h.run(argv, h.env(shim=False, preload_after=[native.libnext_a, native.libnext_b]), collect=False)
        shimmed = h.run(argv, h.env(preload_after=[native.libnext_a, native.libnext_b]))
        assert bare.stdout == "ogpu_probe_next() = 43\n"
        assert shimmed.outputs == bare.outputs

    def test_rtld_default_from_a_local_library_sees_its_own_scope(self, h: Harness, native: NativeBuild) -> None:
        """glibc searches RTLD_DEFAULT in the caller's scope; a RTLD_LOCAL library finds its dependency's symbol."""
        run = h.run([native.probe, "scope", native.libscope], h.env())
        assert run.stdout.endswith("found its dependency's symbol: yes\n")

    def test_runpath_relative_load_of_a_watched_name_is_seen_and_still_works(self, h: Harness,
                                                                            native: NativeBuild) -> None:
        """A bare name resolved by the *caller's* RUNPATH loads under the shim and is reported with its path."""
        run = h.run([native.probe, "runpath", native.libcaller, "libggml-dep.so"], h.env())
        assert run.stdout == "caller_load(libggml-dep.so): ok, dep_fn() = 42, dlerror() = (null)\n"
        (ev,) = [e for e in run.only() if e.kind == "dlopen"]
        assert data(ev) == {"name": "libggml-dep.so", "ok": True, "flags": 2,
                            "path": str(native.libcaller.parent / "deps" / "libggml-dep.so")}

    def test_runpath_load_without_the_caller_gadget_is_left_alone(self, h: Harness, native: NativeBuild) -> None:
        """Where the caller cannot be preserved (no x86-64 gadget), a bare watched name is tail-called: it still
        loads, and is simply not reported."""
        run = h.run([native.probe, "runpath", native.libcaller, "libggml-dep.so"], h.env(OGPU_SHIM_DEBUG="nogadget"))
        assert run.stdout.startswith("caller_load(libggml-dep.so): ok")
        assert run.connections == ()


class TestEvents:
    """Each probe yields exactly the expected messages."""

    def test_cudart_style_self_query(self, h: Harness, native: NativeBuild) -> None:
        """cuGetProcAddress_v2 from dlsym plus the self-query: everything cudart resolves afterwards is seen."""
        run = h.run([native.probe, "gpa"], h.env())
        assert run.stdout.startswith('probe "" = 0 status 1 null 1\n')  # the empty-name probe passes through
        ev = run.only()
        assert kinds(ev) == ["hello", "dlopen", "cu_init", "device", "device", "device", "ctx", "bye"]
        hello, dl, init, d1, d2, d3, ctx, _ = [e for e in ev if e.kind != "snapshot"]
        assert data(hello)["exe"] == str(native.probe)
        assert plain(data(hello)["argv"]) == [str(native.probe), "gpa"]
        assert data(hello)["ppid"] == os.getpid()
        assert data(hello)["ld_preload"] == str(native.shim)
        assert data(hello)["cuda_visible_devices"] is None
        assert data(dl) == {"name": "libcuda.so.1", "ok": True, "flags": 2,
                            "path": str(native.mock_dir / "libcuda.so.1")}
        assert data(init) == {"result": 0}
        assert data(d1) == {"ordinal": 0, "name": "NVIDIA H100 80GB HBM3"}
        assert data(d2) == {"ordinal": 0, "name": "NVIDIA H100 80GB HBM3",
                            "uuid": "GPU-6d6f636b-1000-2000-3000-000000400000"}
        assert data(d3) == {**data(d2), "total_mem": 81079 << 20}
        assert data(ctx) == {"device": 0, "result": 0}
        assert last_snapshot(ev) == {
            "launches": {**ZERO_LAUNCHES, "kernel": 5, "graph": 1},
            "mem": {"allocs": 2, "frees": 2, "alloc_bytes": 256 + 1000, "free_bytes": 256 + 1000},
            "copies": {"htod_bytes": 256, "dtoh_bytes": 256, "dtod_bytes": 100},
            "dropped": 0,
        }
        assert "sum 2336\n" in run.stdout  # 0..63 plus 5 launches of add_one: the computation went through

    def test_raw_dlsym_like_cublaslt(self, h: Harness, native: NativeBuild) -> None:
        """Concrete names looked up with dlsym on the libcuda handle are wrapped; a failing call is a cuda_error."""
        run = h.run([native.probe, "raw"], h.env(CUDA_VISIBLE_DEVICES="0"))
        ev = run.only()
        assert kinds(ev) == ["hello", "dlopen", "cu_init", "device", "device", "ctx", "cuda_error", "bye"]
        named = {e.kind: data(e) for e in ev}
        assert named["hello"]["cuda_visible_devices"] == "0"
        assert [data(e) for e in ev if e.kind == "device"][-1] == {
            "ordinal": 0, "name": "NVIDIA H100 80GB HBM3", "pci_bus_id": "0000:01:00.0"}
        assert named["cuda_error"] == {"fn": "cuLibraryGetKernel", "code": 500, "count": 1}
        assert last_snapshot(ev) == {
            "launches": {**ZERO_LAUNCHES, "kernel_ex": 4, "cooperative": 1},
            "mem": {"allocs": 1, "frees": 1, "alloc_bytes": 64, "free_bytes": 64},
            "copies": {**ZERO_COPIES, "htod_bytes": 64, "dtoh_bytes": 64},
            "dropped": 0,
        }

    def test_direct_plt_calls_are_not_seen(self, h: Harness, native: NativeBuild) -> None:
        """A program linked against libcuda calls through its own PLT: no cu* export, so no event at all."""
        run = h.run([native.probe_direct], h.env())
        assert run.returncode == 0 and "cuInit = 0" in run.stdout
        assert run.connections == ()

    def test_snapshot_totals_exact_under_32_threads(self, h: Harness, native: NativeBuild) -> None:
        """32 threads x 100 000 launches: the last snapshot counts every one; snapshots are cumulative."""
        run = h.run([native.probe, "threads", "32", "100000"], h.env())
        assert run.stdout.endswith("driver saw 3200000 launches\n")
        ev = run.only()
        assert kinds(ev) == ["hello", "dlopen", "cu_init", "bye"]
        assert last_snapshot(ev)["launches"] == {**ZERO_LAUNCHES, "kernel": 3_200_000}
        counts = [data(e)["launches"]["kernel"] for e in ev if e.kind == "snapshot"]
        assert counts == sorted(counts) and counts[0] >= 1

    def test_fork_child_reports_on_its_own_connection(self, h: Harness, native: NativeBuild) -> None:
        """After fork the child opens its own connection with its own sequence and counts only its launches."""
        run = h.run([native.probe, "fork", "100", "7", "50"], h.env())
        assert len(run.connections) == 2
        first, second = run.connections
        parent, child = (first, second) if second[0].data["ppid"] == first[0].pid else (second, first)
        assert child[0].data["ppid"] == parent[0].pid != child[0].pid
        assert kinds(parent) == ["hello", "dlopen", "cu_init", "bye"]
        assert kinds(child) == ["hello", "bye"]
        assert [e.data["seq"] for e in child] == list(range(1, len(child) + 1))
        assert last_snapshot(parent)["launches"]["kernel"] == 150
        assert last_snapshot(child)["launches"]["kernel"] == 7

    def test_dlopen_failures_carry_the_loaders_text_and_dlerror_stays_intact(self, h: Harness,
                                                                             native: NativeBuild) -> None:
        """The event's error is the loader's message, and the caller's own dlerror() still returns it once."""
        argv = [native.probe, "dlfail", MISSING, native.ggml_cuda]
        env = h.env(libcuda=native.mock_novareserve_dir)
        run = h.run(argv, env)
        bare = h.run(argv, h.env(shim=False, libcuda=native.mock_novareserve_dir), collect=False)
        assert run.outputs == bare.outputs
        lines = run.stdout.splitlines()
        missing_text = f"{MISSING}: cannot open shared object file: No such file or directory"
        unresolved_text = f"{native.ggml_cuda}: undefined symbol: cuMemAddressReserve"
        assert lines[:6] == [
            "dlopen(missing) NULL", f"dlerror: {missing_text}", "dlerror again: (null)",
            "dlopen(unresolved) NULL", f"dlerror: {unresolved_text}", "dlerror again: (null)",
        ]
        assert "dlerror (from dlsym): " + "ogpu_no_such_symbol" not in run.stdout  # glibc's own text is passed on
        assert lines[-2:] == ["dlsym(RTLD_DEFAULT, cuInit): NULL", "dlerror: " + lines[-1].split(": ", 1)[1]]
        dl = [data(e) for e in run.only() if e.kind == "dlopen"]
        assert dl == [
            {"name": MISSING, "ok": False, "flags": 2, "error": missing_text},
            {"name": str(native.ggml_cuda), "ok": False, "flags": 2, "error": unresolved_text},
            {"name": MISSING, "ok": False, "flags": 1, "error": missing_text},
            {"name": MISSING, "ok": False, "flags": 2, "error": missing_text},
        ]

    def test_errno_and_dlerror_after_failed_watched_dlopen_as_without_the_shim_issue_15(
            self, h: Harness, native: NativeBuild) -> None:
        """errno after each dl* call (from a sentinel) and dlerror()'s text are glibc's own with OGPU_EVENTS set,
        while the shim connects and reports the failed loads (its socket and bookkeeping must not leak errno)."""
        argv = [native.probe, "dlerrno", MISSING, native.ggml_cuda]
        run = h.run(argv, h.env(libcuda=native.mock_novareserve_dir))
        bare = h.run(argv, h.env(shim=False, libcuda=native.mock_novareserve_dir), collect=False)
        assert run.stdout.count("errno") == bare.stdout.count("errno") == 12
        assert run.outputs == bare.outputs
        assert f"  text: {MISSING}: cannot open shared object file: No such file or directory" in run.stdout
        dl = [data(e) for e in run.only() if e.kind == "dlopen"]
        assert [(d["name"], d["ok"]) for d in dl] == [(MISSING, False), (str(native.ggml_cuda), False),
                                                      (MISSING, False), ("libcuda.so.1", True)]

    def test_errno_as_without_the_shim_on_the_plain_call_path_issue_15(self, h: Harness,
                                                                       native: NativeBuild) -> None:
        """The same with the caller gadget off (paths with '/' take the plain observed call, bare names the tail
        jump): errno and dlerror() text still glibc's own."""
        missing = f"/nonexistent-ogpu/{MISSING}"  # a '/' in the name: the plain observed call, and ENOENT
        argv = [native.probe, "dlerrno", missing, native.ggml_cuda]
        run = h.run(argv, h.env(libcuda=native.mock_novareserve_dir, OGPU_SHIM_DEBUG="nogadget"))
        bare = h.run(argv, h.env(shim=False, libcuda=native.mock_novareserve_dir), collect=False)
        assert "dlerror: errno 2\n" in bare.stdout  # glibc's dlerror() sets errno from the loader's error code
        assert run.outputs == bare.outputs
        dl = [data(e) for e in run.only() if e.kind == "dlopen"]
        assert [(d["name"], d["ok"]) for d in dl] == [(missing, False), (str(native.ggml_cuda), False),
                                                      (missing, False)]

    def test_unresolved_cu_symbol_fails_with_the_shim_as_without(self, h: Harness, native: NativeBuild) -> None:
        """GGML's load failure against a libcuda lacking cuMemAddressReserve is not masked by the shim."""
        argv = [native.probe, "ggml", native.ggml_cuda]
        run = h.run(argv, h.env(libcuda=native.mock_novareserve_dir))
        assert run.returncode == 1
        assert run.stderr == (f"load_backend: failed to load {native.ggml_cuda}: {native.ggml_cuda}: "
                              "undefined symbol: cuMemAddressReserve\n")
        (dl,) = [data(e) for e in run.only() if e.kind == "dlopen"]
        assert dl["ok"] is False and dl["error"].endswith("undefined symbol: cuMemAddressReserve")

    def test_no_libcuda_at_all(self, h: Harness, native: NativeBuild) -> None:
        """Without any libcuda.so.1 the backend fails to load with the loader's text, seen by the shim."""
        run = h.run([native.probe, "ggml", native.ggml_cuda], h.env(libcuda=Path("")))
        text = "libcuda.so.1: cannot open shared object file: No such file or directory"
        assert run.stderr == f"load_backend: failed to load {native.ggml_cuda}: {text}\n"
        assert [data(e) for e in run.only() if e.kind == "dlopen"] == [
            {"name": str(native.ggml_cuda), "ok": False, "flags": 2, "error": text}]

    def test_ggml_backend_success_prints_ggmls_lines(self, h: Harness, native: NativeBuild) -> None:
        """The fake backend initialises through the runtime's path and prints GGML's real lines."""
        run = h.run([native.probe, "ggml", native.ggml_cuda, "5"], h.env())
        assert run.stderr == (
            "ggml_cuda_init: found 1 CUDA devices (Total VRAM: 81079 MiB):\n"
            "  Device 0: NVIDIA H100 80GB HBM3, compute capability 9.0, VMM: yes, VRAM: 81079 MiB\n"
            f"load_backend: loaded CUDA backend from {native.ggml_cuda}\n")
        assert run.stdout == "compute(5) = 0\n"
        ev = run.only()
        assert kinds(ev) == ["hello", "dlopen", "dlopen", "cu_init", "device", "device", "ctx", "bye"]
        assert [data(e)["name"] for e in ev if e.kind == "dlopen"] == [str(native.ggml_cuda), "libcuda.so.1"]
        assert last_snapshot(ev)["launches"]["kernel"] == 5

    def test_ggml_two_devices_ollama_style(self, h: Harness, native: NativeBuild) -> None:
        """Devices are a list; Ollama's vendored lines carry the UUID, and each device is reported."""
        run = h.run([native.probe, "ggml", native.ggml_cuda], h.env(MOCKGGML_STYLE="ollama",
                                                                      MOCKCUDA_DEVICE_COUNT="2"))
        assert run.stderr.splitlines()[:3] == [
            "ggml_cuda_init: found 2 CUDA devices:",
            "  Device 0: NVIDIA H100 80GB HBM3, compute capability 9.0, VMM: yes, ID: "
            "GPU-6d6f636b-1000-2000-3000-000000400000",
            "  Device 1: NVIDIA H100 80GB HBM3, compute capability 9.0, VMM: yes, ID: "
            "GPU-6d6f636c-1001-2000-3000-000000400001",
        ]
        devices = {data(e)["ordinal"]: data(e) for e in run.only() if e.kind == "device"}
        assert devices[1] == {"ordinal": 1, "name": "NVIDIA H100 80GB HBM3", "total_mem": 81079 << 20,
                              "uuid": "GPU-6d6f636c-1001-2000-3000-000000400001"}

    @pytest.mark.parametrize(("over", "line", "result"), [
        ({"MOCKCUDA_INIT_ERROR": "999"}, "unknown error", 999),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, "no CUDA-capable device is detected", 100),
        ({"CUDA_VISIBLE_DEVICES": "GPU-nomatch"}, "no CUDA-capable device is detected", 100),
    ])
    def test_cu_init_failure(self, h: Harness, native: NativeBuild, over: dict[str, str], line: str,
                             result: int) -> None:
        """A failed cuInit is the cu_init result; GGML prints its failure line and still 'loads' the backend."""
        run = h.run([native.probe, "ggml", native.ggml_cuda], h.env(**over))
        assert run.stderr.splitlines() == [f"ggml_cuda_init: failed to initialize CUDA: {line}",
                                           f"load_backend: loaded CUDA backend from {native.ggml_cuda}"]
        assert [data(e) for e in run.only() if e.kind == "cu_init"] == [{"result": result}]

    def test_visible_devices_by_uuid_prefix(self, h: Harness, native: NativeBuild) -> None:
        """CUDA_VISIBLE_DEVICES by (partial) UUID selects the physical device; ordinals are renumbered."""
        run = h.run([native.probe, "ggml", native.ggml_cuda],
                    h.env(MOCKCUDA_DEVICES="name=GPU Zero;name=GPU One,uuid=MIG-11111111-2222-3333-4444-555555555555",
                          CUDA_VISIBLE_DEVICES="MIG-1111"))
        assert "found 1 CUDA devices" in run.stderr and "Device 0: GPU One," in run.stderr
        devices = [data(e) for e in run.only() if e.kind == "device"]
        assert devices[-1]["ordinal"] == 0 and devices[-1]["name"] == "GPU One"

    def test_cuda_errors_are_rate_limited_per_function(self, h: Harness, native: NativeBuild) -> None:
        """The first failure of a function is sent at once; later ones as a cumulative count, the last at exit."""
        run = h.run([native.probe, "errors", "300"], h.env(MOCKCUDA_FAIL="cuLaunchKernel=700"))
        assert run.stdout.endswith("300 of 300 launches failed, last with 700\n")
        errs = [data(e) for e in run.only() if e.kind == "cuda_error"]
        assert errs[0] == {"fn": "cuLaunchKernel", "code": 700, "count": 1}
        assert errs[-1] == {"fn": "cuLaunchKernel", "code": 700, "count": 300}
        assert len(errs) <= 4
        assert "snapshot" not in kinds(run.only(), snapshots=True)  # failed launches are not launches

    def test_long_and_odd_strings_are_escaped_and_truncated(self, h: Harness, native: NativeBuild) -> None:
        """Quotes, control bytes and invalid UTF-8 are escaped; long strings end in U+2026; nothing is dropped."""
        odd = 'libggml-"q"\\\t\x01' + "\udcff" + "é" + "x" * 3000 + ".so"
        run = h.run([native.probe, "dlfail", odd, MISSING], h.env())
        assert run.dropped == {}
        dl = [data(e) for e in run.only() if e.kind == "dlopen"]
        assert dl[0]["name"].startswith('libggml-"q"\\\t\x01\ufffdé')
        assert dl[0]["name"].endswith("…") and len(dl[0]["name"].encode()) <= 1024
        assert dl[0]["error"].endswith("…")
        hello = data(run.only()[0])
        assert hello["argv"][2].endswith("…")
        assert len(json.dumps(plain(dl[0]), ensure_ascii=False).encode()) < 4096

    def test_no_events_and_no_connection_when_nothing_interesting_happens(self, h: Harness,
                                                                         native: NativeBuild) -> None:
        """A process that loads no watched library and wraps nothing does not even connect."""
        run = h.run(["/bin/sh", "-c", "echo hi"], h.env())
        assert run.stdout == "hi\n" and run.connections == ()
