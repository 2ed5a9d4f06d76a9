"""The stack under test: a simulated Ollama install (generation D) whose runner is a real or simulated llama-server,
the driver it loads (the machine's real libcuda.so.1 or tests/native's mock), and `ollama-gpu serve` around it.

Used by run_e2e.py. Everything a scenario breaks is built here (a loader view without libcuda.so.1, a stubs
directory, a broken backend) and undone afterwards; every process started here is in its own session and is
stopped by pid.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from launcher.events import Event, Replay  # noqa: E402
from tests.ollama_sim import install as siminstall  # noqa: E402
from tests.ollama_sim import models as simmodels  # noqa: E402
from tests.ollama_sim import native  # noqa: E402

# Device machines keep NVLink multicast off; programs started with their own environment keep these too.
KEEP_PREFIXES = ("NCCL_", "TORCH_SYMM_MEM_", "NVSHMEM_", "NVIDIA_", "CUDA_HOME", "LANG", "LC_")
TRUSTED_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")
HIDDEN_SUFFIX = ".ogpu-e2e-hidden"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(url: str, body: Mapping[str, Any] | None = None, timeout: float = 120.0) -> tuple[int, Any]:
    """GET (or POST JSON) without a proxy; the reply decoded as JSON, or as NDJSON lines when it is several."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        lines = []
        for line in raw.splitlines():
            text = line.decode(errors="replace").strip()
            if text.startswith("data: "):
                text = text[6:]
            with contextlib.suppress(ValueError):
                lines.append(json.loads(text))
        return status, lines


def wait_for(cond: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
    """Poll until `cond()` is truthy; None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= deadline:
            return None
        time.sleep(step)


def libcuda_dirs(ld_library_path: str) -> list[Path]:
    """Directories of LD_LIBRARY_PATH that hold a libcuda.so.1, in order."""
    return [Path(d) for d in ld_library_path.split(":") if d and (Path(d) / "libcuda.so.1").exists()]


def ld_cache_has_libcuda() -> bool:
    """Whether the loader cache (/etc/ld.so.cache) lists libcuda.so.1."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return False
    return any(line.strip().startswith("libcuda.so.1 ") for line in out.splitlines())


def install_blob(root: Path, name: str, path: Path) -> simmodels.Model:
    """Install a large GGUF as an Ollama model without reading it into memory (hard link or copy into blobs/)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    blob = root / "blobs" / digest.replace(":", "-")
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        try:
            os.link(path, blob)
        except OSError:
            shutil.copyfile(path, blob)
    host, ns, model, tag = simmodels.split_name(name)
    manifest = root / "manifests" / host / ns / model / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2,
                                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                                    "layers": [{"mediaType": simmodels.MODEL_MEDIA, "digest": digest,
                                                "size": path.stat().st_size}]}))
    found = simmodels.resolve(name, root)
    assert found is not None
    return found


@dataclass
class Stack:
    """What every scenario shares: the install, the runner binary, the driver and the environment they start from."""

    mode: str  # "real" (a llama.cpp CUDA build and the machine's driver) or "mock" (tests/native + the simulator)
    work: Path
    inst: siminstall.Install
    backend: Path  # the libggml-cuda.so that cuda_v13/ should hold
    driver_dir: Path  # where the driver's libcuda.so.1 is
    base_ld_path: str  # LD_LIBRARY_PATH with which the driver is reachable
    llama_server: Path | None = None  # OLLAMA_SIM_LLAMA_SERVER (real mode)
    llama_bin: Path | None = None  # the build's bin/ (llama-bench)
    models: dict[str, str] = field(default_factory=dict)  # role -> Ollama model name

    @classmethod
    def build(cls, mode: str, work: Path, llama_bin: Path | None, model_files: Mapping[str, Path]) -> Stack:
        """Make the install; in real mode the runner dir is the build's bin/ without libggml-cuda.so (Ollama's
        layout: the CUDA backend lives in lib/ollama/cuda_v13 and reaches the runner through GGML_BACKEND_PATH)."""
        work.mkdir(parents=True, exist_ok=True)
        prefix = work / "ollama"
        if prefix.exists():
            shutil.rmtree(prefix)
        if mode == "real":
            assert llama_bin is not None
            backend = llama_bin / "libggml-cuda.so"
            runner_dir = work / "runner"
            if runner_dir.exists():
                shutil.rmtree(runner_dir)
            runner_dir.mkdir()
            for entry in llama_bin.iterdir():
                if entry.name != "libggml-cuda.so":
                    dest = runner_dir / entry.name
                    if entry.is_symlink():
                        dest.symlink_to(os.readlink(entry))
                    else:
                        shutil.copy2(entry, dest)
            ld = os.environ.get("LD_LIBRARY_PATH", "")
            found = libcuda_dirs(ld)
            fallback = Path(os.path.realpath(_loader_libcuda() or "/usr/lib/libcuda.so.1")).parent
            driver_dir = found[0] if found else fallback
            inst = siminstall.make_install(prefix, "D", cuda_backend=backend)
            stack = cls(mode, work, inst, backend, driver_dir, ld, runner_dir / "llama-server", llama_bin)
        else:
            libs = native.build()
            inst = siminstall.make_install(prefix, "D", cuda_backend=libs.ggml_cuda)
            stack = cls(mode, work, inst, libs.ggml_cuda, libs.driver_dir, str(libs.driver_dir))
        for role, path in model_files.items():
            name = f"{role}:latest"
            install_blob(inst.prefix / "models", name, path)
            stack.models[role] = name
        if "tiny" not in stack.models:  # mock mode: the simulator's own tiny GGUF
            inst.add_model("tiny")
            stack.models["tiny"] = "tiny:latest"
        return stack

    def env(self, run_dir: Path, port: int, extra: Mapping[str, str | None] = ()) -> dict[str, str]:
        """A clean environment for one server: no OGPU_ keys but ours, private runtime/state dirs, one shim cache."""
        env = {k: v for k, v in os.environ.items() if k.startswith(KEEP_PREFIXES)}
        env.update(PATH=os.environ.get("PATH", "/usr/bin:/bin"), HOME=str(run_dir / "home"),
                   PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(REPO)) if p),
                   OLLAMA_HOST=f"127.0.0.1:{port}", OLLAMA_MODELS=str(self.inst.prefix / "models"),
                   OLLAMA_SIM_GENERATION="D", OGPU_SYSTEM_CONFIG=str(run_dir / "etc-ollama-gpu.env"),
                   XDG_CONFIG_HOME=str(run_dir / "config"), CACHE_DIRECTORY=str(self.work / "shim-cache"),
                   RUNTIME_DIRECTORY=str(run_dir / "run"), STATE_DIRECTORY=str(run_dir / "state"),
                   OGPU_LOG_FORMAT="json", OGPU_RECORD=str(run_dir / "events.jsonl"), PYTHONUNBUFFERED="1")
        if self.base_ld_path:
            env["LD_LIBRARY_PATH"] = self.base_ld_path
        if self.llama_server is not None:
            env["OLLAMA_SIM_LLAMA_SERVER"] = str(self.llama_server)
        for key, value in dict(extra).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        (run_dir / "home").mkdir(parents=True, exist_ok=True)
        return env


def _loader_libcuda() -> str | None:
    for d in TRUSTED_DIRS:
        p = Path(d) / "libcuda.so.1"
        if p.exists():
            return str(p)
    return None


# --- faults -------------------------------------------------------------------------------------------------------


@dataclass
class LoaderView:
    """libcuda.so.1 unreachable for the loader while everything else in its directory stays reachable (NVML too):
    LD_LIBRARY_PATH names a shadow of the driver directory without libcuda*, copies in the trusted directories are
    renamed away until `restore()`, and when the loader cache lists libcuda.so.1 the server runs in a private mount
    namespace whose /etc/ld.so.cache is rebuilt without it."""

    ld_library_path: str
    prefix: list[str] = field(default_factory=list)  # argv prefix (unshare ...) when the cache had to be replaced
    renamed: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def hide_libcuda(cls, stack: Stack, work: Path) -> LoaderView:
        shadow = work / "driver-without-libcuda"
        shutil.rmtree(shadow, ignore_errors=True)
        shadow.mkdir(parents=True)
        for entry in stack.driver_dir.iterdir():
            if not entry.name.startswith("libcuda."):
                (shadow / entry.name).symlink_to(entry)
        entries = [e for e in stack.base_ld_path.split(":") if e and Path(e).resolve() != stack.driver_dir.resolve()
                   and not (Path(e) / "libcuda.so.1").exists()]
        view = cls(":".join([str(shadow), *entries]))
        if stack.mode != "real":
            return view
        seen: set[str] = set()
        for d in TRUSTED_DIRS:  # libcuda.so.1 and the unversioned libcuda.so (a discovery may dlopen either)
            real = os.path.realpath(d)
            if real in seen:
                continue
            seen.add(real)
            for p in (Path(real) / "libcuda.so.1", Path(real) / "libcuda.so"):
                if not os.path.lexists(p):
                    continue
                try:
                    p.rename(p.with_name(p.name + HIDDEN_SUFFIX))
                    view.renamed.append(p)
                    view.notes.append(f"renamed {p} away for the scenario")
                except OSError as exc:
                    view.notes.append(f"could not rename {p}: {exc}")
        if ld_cache_has_libcuda():
            view.prefix = view._private_cache(work)
        return view

    def _private_cache(self, work: Path) -> list[str]:
        dirs: list[str] = []
        for conf in [Path("/etc/ld.so.conf"), *sorted(Path("/etc/ld.so.conf.d").glob("*.conf"))]:
            with contextlib.suppress(OSError):
                for line in conf.read_text().splitlines():
                    line = line.split("#", 1)[0].strip()
                    if line and not line.startswith("include") and Path(line).is_dir():
                        dirs.append(line)
        kept = []
        for i, d in enumerate(dirs):
            if (Path(d) / "libcuda.so.1").exists():
                shadow = work / f"cache-shadow-{i}"
                shutil.rmtree(shadow, ignore_errors=True)
                shadow.mkdir()
                for entry in Path(d).iterdir():
                    if not entry.name.startswith("libcuda."):
                        (shadow / entry.name).symlink_to(entry)
                kept.append(str(shadow))
            else:
                kept.append(d)
        conf = work / "ld.so.conf"
        conf.write_text("\n".join(kept) + "\n")
        cache = work / "ld.so.cache"
        done = subprocess.run(["ldconfig", "-X", "-C", str(cache), "-f", str(conf)], capture_output=True, text=True,
                              check=False)
        self.notes.append(f"ld.so.cache lists libcuda.so.1: private cache without it (ldconfig rc {done.returncode})")
        return ["unshare", "-m", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /etc/ld.so.cache && exec "$@"', str(cache)]

    def restore(self) -> None:
        for p in self.renamed:
            with contextlib.suppress(OSError):
                p.with_name(p.name + HIDDEN_SUFFIX).rename(p)
        self.renamed.clear()


def stub_dir(stack: Stack, work: Path) -> tuple[Path, str]:
    """A directory named `stubs` holding libcuda.so.1 = the CUDA toolkit's stub (cuInit → 34), or, where the toolkit
    has none, one generated here exporting every cu* symbol the backend needs, each returning 34."""
    d = work / "cuda-toolkit" / "stubs"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    known = ["/usr/local/cuda/lib64/stubs/libcuda.so", "/usr/local/cuda/targets/x86_64-linux/lib/stubs/libcuda.so"]
    found = [p for p in known if os.path.exists(p)] or sorted(set(glob.glob("/usr/local/cuda*/**/stubs/libcuda.so",
                                                                             recursive=True)))
    if found:
        (d / "libcuda.so.1").symlink_to(found[0])
        return d, f"toolkit stub {found[0]}"
    nm = subprocess.run(["nm", "-D", "--undefined-only", str(stack.backend)], capture_output=True, text=True,
                        check=False).stdout
    syms = sorted(set(re.findall(r"\bU (cu\w+)", nm)) | {"cuInit", "cuDriverGetVersion", "cuGetProcAddress",
                                                                    "cuGetProcAddress_v2", "cuDeviceGetCount"})
    src = d.parent / "stub.c"
    src.write_text("".join(f"int {s}(void) {{ return 34; }}\n" for s in syms))
    subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(d / "libcuda.so.1"), str(src)],
                   check=True)
    return d, f"generated stub ({len(syms)} cu* symbols returning 34)"


@contextlib.contextmanager
def broken_backend(stack: Stack) -> Iterator[str]:
    """cuda_v13/libggml-cuda.so replaced by a git-lfs pointer (a checkout without `git lfs pull`): the file is there,
    dlopen fails cleanly with the loader's "invalid ELF header". (A truncated ELF is no good: glibc maps segments past
    the end of the file and the process dies of SIGBUS instead of getting an error.)"""
    target = stack.inst.cuda_backend
    target.unlink()
    digest = hashlib.sha256(str(stack.backend).encode()).hexdigest()
    target.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\n"
                      f"size {stack.backend.stat().st_size}\n")
    try:
        yield "cuda_v13/libggml-cuda.so replaced by a git-lfs pointer file"
    finally:
        restore_backend(stack)


def restore_backend(stack: Stack) -> None:
    """cuda_v13/libggml-cuda.so as installed."""
    stack.inst.cuda_backend.unlink(missing_ok=True)
    shutil.copy2(stack.backend, stack.inst.cuda_backend)


# --- one server ---------------------------------------------------------------------------------------------------


class Server:
    """`ollama-gpu serve` (supervised) or plain `ollama serve` (bare) of the stack's install, output in files."""

    def __init__(self, stack: Stack, name: str, extra: Mapping[str, str | None] = (), *, supervised: bool = True,
                 prefix: list[str] | None = None) -> None:
        self.stack, self.name, self.supervised = stack, name, supervised
        self.dir = stack.work / "runs" / name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.env = stack.env(self.dir, self.port, extra)
        if not supervised:
            self.env = {k: v for k, v in self.env.items() if not k.startswith("OGPU_")}
        argv = ([sys.executable, "-m", "launcher.cli", "--ollama", str(stack.inst.ollama), "serve"] if supervised
                else [str(stack.inst.ollama), "serve"])
        self.argv = [*(prefix or []), *argv]
        cwd = self.dir / "cwd"  # empty: ggml's backend search also looks in the working directory
        cwd.mkdir()
        self.out = open(self.dir / "stdout.log", "wb")  # noqa: SIM115
        self.err = open(self.dir / "stderr.log", "wb")  # noqa: SIM115
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=self.err, start_new_session=True)

    # --- what it says -----------------------------------------------------------------------------------------

    def our_lines(self) -> list[dict[str, Any]]:
        """Our JSON log lines (stderr, shared with Ollama's own lines)."""
        out = []
        with contextlib.suppress(OSError), open(self.dir / "stderr.log", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        out.append(json.loads(line))
        return out

    def events(self) -> list[Event]:
        """The OGPU_RECORD stream so far."""
        path = self.dir / "events.jsonl"
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as fh:
            return list(Replay(fh))

    def status(self) -> dict[str, Any] | None:
        """`ollama-gpu status --json`, or None when it does not answer (no such command, or not running)."""
        try:  # not from the repository root: there `-m` would import the source tree's launcher before an
            # installed one, and a source tree has no launcher._config (pyproject maps config/ there on install)
            done = subprocess.run([sys.executable, "-m", "launcher.cli", "status", "--json"], env=self.env,
                                  capture_output=True, text=True, timeout=20, check=False, cwd=self.dir)
        except subprocess.TimeoutExpired:
            return None
        try:
            doc = json.loads(done.stdout)
        except ValueError:
            return None
        if not isinstance(doc, dict) or doc.get("running") is False:
            return None
        doc["_exit"] = done.returncode
        return doc

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float) -> bool:
        """Supervised: our `ready` line; bare: /api/version answers."""
        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name}: server exited {self.proc.returncode}")
            if self.supervised:
                return any(e.get("event") == "ready" for e in self.our_lines())
            try:
                return http_json(f"http://127.0.0.1:{self.port}/api/version", timeout=2)[0] == 200
            except OSError:
                return False
        return bool(wait_for(ready, timeout, 0.1))

    def load(self, model: str, num_ctx: int = 2048, timeout: float = 180) -> tuple[int, Any]:
        """Load a model (an /api/generate with an empty prompt, as `ollama run` does first)."""
        return http_json(f"http://127.0.0.1:{self.port}/api/generate",
                         {"model": model, "prompt": "", "stream": False, "options": {"num_ctx": num_ctx}}, timeout)

    def model_runners(self) -> list[psutil.Process]:
        """Live descendants started with --model."""
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for k in kids:
            with contextlib.suppress(psutil.Error):
                if "--model" in k.cmdline() and k.status() != psutil.STATUS_ZOMBIE:
                    out.append(k)
        return out

    @staticmethod
    def port_of(proc: psutil.Process) -> int | None:
        with contextlib.suppress(psutil.Error, ValueError, IndexError):
            argv = proc.cmdline()
            return int(argv[argv.index("--port") + 1])
        return None

    @staticmethod
    def environ_of(proc: psutil.Process) -> dict[str, str]:
        with contextlib.suppress(psutil.Error):
            return dict(proc.environ())
        return {}

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM to the server (the supervisor stops Ollama's group), then KILL to what is left of this session."""
        kids = []
        with contextlib.suppress(psutil.Error):
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            code = None
            self.proc.wait(10)
        for k in kids:
            with contextlib.suppress(psutil.Error):
                k.kill()
        psutil.wait_procs(kids, timeout=5)
        self.out.close()
        self.err.close()
        return code
