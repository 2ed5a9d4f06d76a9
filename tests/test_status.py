"""`ollama-gpu status` shows what was done (issue 15 item 4): every remedy, pre-start included, with what changed, the
value, when and why, in text (sentences and tables, never Python reprs) and in JSON."""

from __future__ import annotations

import json
import re
import select
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from launcher.ollama_host import parse_ollama_host
from launcher.remedy_record import remedy_record, variable_changes
from launcher.status_socket import StatusServer
from launcher.status_text import KNOWN_KEYS, render, table, text
from tests.cli_helpers import assert_no_traceback, clean_env, run_cli
from tests.ollama_sim import native
from tests.test_serve_remedies import Run, discovery

GPU_A = "GPU-8f6d1c2e-0d1c-4b7a-9a55-3c1f0e4d2a11"
GPU_B = "GPU-1b2c3d4e-5f60-4172-8394-a5b6c7d8e9f0"
PY_REPR = re.compile(r"\{'|\['|\bNone\b|\bTrue\b|\bFalse\b")
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.text(alphabet="abcxyz 019:/-_.", max_size=20))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["outcome", "cause", "pid", "evidence", "devices", "applied",
                                                       "advised", "variables", "added", "key", "action", "budget",
                                                       "text", "says", "line", "notes", "x"]), inner, max_size=5),
                    max_leaves=25)


def gpu(device: str | None, state: str, uuid: str, **kw: Any) -> dict[str, Any]:
    return {"device": device, "state": state, "uuid": uuid, "pci_bus_id": "00000000:1A:00.0", "name": "NVIDIA H100",
            "nvml_index": 0, "layers": 29, "weights_mib": 4403.5, "free_mib": None, "nvml_bytes": 5 << 30,
            "lacked_room": False, "hidden_by": None, "sources": ["log", "nvml"], **kw}


def verdict(outcome: str, cause: str, **kw: Any) -> dict[str, Any]:
    return {"outcome": outcome, "cause": cause, "notes": ["a note"], "findings": [], "visible": True,
            "generation": "D", "version": "0.13.0", "tier": "live", "subject": "discovery",
            "signals": ["log:gpu", "shim:gpu"], "disagreement": [],
            "evidence": [{"source": "log", "kind": "offload", "line": 12, "text": "offloaded 29/29 layers to GPU",
                          "says": "all layers on the GPU"},
                         {"source": "shim", "kind": "cu_init", "line": None, "text": None, "says": "cuInit = 0"}],
            "devices": [gpu("CUDA0", "used", GPU_A), gpu(None, "hidden", GPU_B, hidden_by="CUDA_VISIBLE_DEVICES")],
            **kw}


def rich_status() -> dict[str, Any]:
    """A status with everything at once: remedies of each kind, advice, several runners, several GPUs."""
    before = {"LD_LIBRARY_PATH": "/opt/app/lib", "CUDA_VISIBLE_DEVICES": "GPU-stale"}
    start = remedy_record(subject="start", cause="libcuda_not_found",
                          patch={"LD_LIBRARY_PATH": "/usr/lib/nvidia:/opt/app/lib"}, before=before,
                          when="before start", reason="visible before start: applied to the first environment",
                          at=1_780_000_000.0, advice="the driver library is not on the loader path",
                          instruction="Put the driver's library directory on the loader path")
    later = remedy_record(subject="discovery", cause="device_filter_hides_gpu",
                          patch={"CUDA_VISIBLE_DEVICES": None}, before=before, when="now",
                          reason="listed in OGPU_MAY_OVERRIDE", at=1_780_000_005.0, advice="a filter hides the GPU",
                          instruction="unset CUDA_VISIBLE_DEVICES")
    advised = remedy_record(subject="runner 4321", cause="insufficient_vram", patch=None, before=before,
                            when="advised only", reason="no environment change fixes this cause",
                            at=1_780_000_009.0, advice="the model does not fit", instruction="Use a smaller model.")
    return {
        "running": True, "state": "running", "mode": "auto", "ready": True, "discovery_acceptable": True,
        "ollama": {"pid": 1234, "version": "0.13.0", "generation": "D", "host": "127.0.0.1:11434"},
        "discovery": verdict("gpu", "none"),
        "runners": [{"pid": 4321, "start_time": 99, **verdict("partial_offload", "insufficient_vram"),
                     "memory": {"summary": "needs 9.1 GiB, 7.9 GiB free", "advice": [
                         {"setting": "OLLAMA_CONTEXT_LENGTH=4096", "layers": 33, "layers_total": 33, "fits": True},
                         {"setting": "OLLAMA_FLASH_ATTENTION=1", "layers": None, "fits": None}]}},
                    {"pid": 4400, "start_time": 120, **verdict("gpu", "none")}],
        "remedies": {"applied": [start, later], "advised": [advised], "budget": {
            "used": 1, "max": 3, "state_file": "/var/lib/ollama-gpu/state-127.0.0.1-11434.json", "load_error": None,
            "write_error": {"path": "/var/lib/ollama-gpu/state-127.0.0.1-11434.json", "errno": "EROFS",
                            "error": "Read-only file system", "at": 1_780_000_006.0}}},
        "crash_restarts": {"recent": 0, "max": 5}, "restarts": 1, "what_to_do": "Use a smaller model.",
        "memory": [{"summary": "needs 9.1 GiB, 7.9 GiB free"}],
        "state_file": {"path": "/var/lib/ollama-gpu/state.json", "error": None, "writable": False},
    }


class TestRemedyRecord:
    def test_path_list_change_names_the_directory_added(self) -> None:
        """A driver directory put first on LD_LIBRARY_PATH is recorded as that directory added, with the value."""
        (change,) = variable_changes({"LD_LIBRARY_PATH": "/a:/b"}, {"LD_LIBRARY_PATH": "/usr/lib/nvidia:/a:/b"})
        assert change == {"key": "LD_LIBRARY_PATH", "action": "set", "value": "/usr/lib/nvidia:/a:/b",
                          "previous": "/a:/b", "added": ["/usr/lib/nvidia"], "removed": []}

    def test_stub_dropped_and_unset(self) -> None:
        """A stubs directory dropped shows as removed; an unset variable keeps its previous value."""
        changes = variable_changes({"LD_LIBRARY_PATH": "/cuda/lib64/stubs:/a", "CUDA_VISIBLE_DEVICES": "x"},
                                   {"LD_LIBRARY_PATH": "/a", "CUDA_VISIBLE_DEVICES": None})
        assert changes[0] == {"key": "CUDA_VISIBLE_DEVICES", "action": "unset", "value": None, "previous": "x"}
        assert changes[1]["removed"] == ["/cuda/lib64/stubs"] and changes[1]["added"] == []

    def test_record_says_when_and_why(self) -> None:
        """`at` is UTC to the second; `changes` keeps the readable SET/UNSET form."""
        rec = remedy_record(subject="start", cause="libcuda_not_found", patch={"LD_LIBRARY_PATH": "/d"}, before={},
                            when="before start", reason="why", at=0.0)
        assert rec["at"] == "1970-01-01T00:00:00Z" and rec["changes"] == ["SET LD_LIBRARY_PATH=/d"]
        assert rec["when"] == "before start" and rec["reason"] == "why"


class TestText:
    def test_text_never_prints_python(self) -> None:
        """None, booleans, lists and mappings become words."""
        assert text(None) == "-" and text(True) == "yes" and text(["a", "b"]) == "a, b"
        assert text({"k": None, "v": [1, 2]}) == "k -; v 1, 2"
        assert text("x" * 500, 10) == "x" * 9 + "…"

    def test_table_aligns_columns(self) -> None:
        """Each column is as wide as its widest cell."""
        assert table(["a", "bb"], [["xxx", None]], indent="") == ["a    bb", "xxx  -"]

    def test_rich_status_is_sentences_and_tables(self) -> None:
        """Remedies (pre-start and later), advice, several runners and several GPUs: no `{'`, `['`, None, True."""
        out = "\n".join(render(rich_status()))
        assert not PY_REPR.search(out), out
        assert "LD_LIBRARY_PATH: added /usr/lib/nvidia" in out
        assert "Now LD_LIBRARY_PATH=/usr/lib/nvidia:/opt/app/lib." in out
        assert "2026-05-28T20:26:40Z  before start" in out
        assert "CUDA_VISIBLE_DEVICES unset (was GPU-stale)" in out
        assert "Advice for runner 4321 (insufficient_vram): Use a smaller model." in out
        assert out.count("GPUs:") == 3 and out.count(GPU_B) == 3 and "hidden by" in out
        assert "Runner 4321: partial_offload (cause: insufficient_vram)." in out
        assert "State file: path /var/lib/ollama-gpu/state.json; error -; writable no." in out
        assert "Remedy history not saved: writing /var/lib/ollama-gpu/state-127.0.0.1-11434.json failed (EROFS: " \
               "Read-only file system)" in out
        assert "  Memory: needs 9.1 GiB, 7.9 GiB free" in out
        assert "    Advised (not applied): OLLAMA_CONTEXT_LENGTH=4096: 33 of 33 layers, fits." in out
        assert "OLLAMA_FLASH_ATTENTION=1: layers not sized, not sized." in out


    def test_pending_verdict_says_so(self) -> None:
        """A verdict with no conclusive evidence yet reads as pending, not as an unknown outcome."""
        out = render({"discovery": {"outcome": "unknown", "cause": "unknown", "pending": True}})
        assert "Discovery: pending (no conclusive evidence yet; outcome unknown)." in out

    def test_gpu_health_is_a_table_with_the_advice(self) -> None:
        """Issue 16: each GPU's health as a row, Xids, the probe after a resume, the advice and a readiness failure,
        in words."""
        out = render({"gpu_health": {
            "state": "lost", "degraded": True, "advice": ["GPU 1 (GPU-b): exclude it"],
            "gpus": [{"index": 0, "uuid": "GPU-a", "state": "ok", "reason": ""},
                     {"index": 1, "uuid": "GPU-b", "state": "lost", "reason": "GPU is lost"}],
            "xids": [{"gpu": 1, "xid": 79, "count": 2}],
            "cuda_probe": {"ok": False, "error": "cuInit returned 999"}}, "readiness_failure": "restart it"})
        text_out = "\n".join(out)
        assert "GPU health: lost (degraded)." in out and "Xid 79 on GPU 1: 2 time(s)." in text_out
        assert "CUDA fails: cuInit returned 999" in text_out and "Not ready: restart it" in text_out
        assert not PY_REPR.search(text_out)

    def test_the_probe_line_says_which_moment_and_the_change(self) -> None:
        """Issue 16: the probe after a resume shows cuInit's change; after a reload it says so; a probe that could
        not run says that, not that CUDA fails."""
        gpus = [{"index": 0, "uuid": "GPU-a", "state": "ok", "reason": ""}]

        def line(probe: dict[str, Any]) -> str:
            return next(x for x in render({"gpu_health": {"state": "ok", "gpus": gpus, "cuda_probe": probe}})
                        if "After the last" in x)

        assert line({"ok": False, "error": "cuInit returned 999", "change": "ok→999", "after": "resume"}) == \
            "  After the last resume: CUDA fails: cuInit returned 999 (cuInit ok→999)."
        assert line({"ok": True, "change": "999→ok", "after": "uvm_reload"}) == \
            "  After the last reload of nvidia_uvm: CUDA initialises (cuInit 999→ok)."
        assert line({"ok": None, "error": "the probe could not run: no /tmp", "after": "resume"}) == \
            "  After the last resume: the probe could not run: no /tmp."

    def test_how_resumes_are_detected_is_said(self) -> None:
        """Issue 16: logind's listener in use, or given up (the clock gap alone remains); nothing without one."""
        gpus = [{"index": 0, "uuid": "GPU-a", "state": "ok", "reason": ""}]
        listening = "\n".join(render({"gpu_health": {"state": "ok", "gpus": gpus, "resume_signal": {
            "via": "logind", "tool": "gdbus", "state": "listening"}}}))
        assert "Resumes: announced by logind (gdbus), and the clock gap." in listening
        given_up = "\n".join(render({"gpu_health": {"state": "ok", "gpus": gpus, "resume_signal": {
            "via": "logind", "tool": "dbus-monitor", "state": "given_up"}}}))
        assert "Resumes: the clock gap only (dbus-monitor on the system bus kept failing)." in given_up
        assert "Resumes" not in "\n".join(render({"gpu_health": {"state": "ok", "gpus": gpus, "resume_signal": None}}))

    @settings(max_examples=200, deadline=None)
    @given(st.fixed_dictionaries({}, optional={"gpus": JSON, "advice": JSON, "xids": JSON, "cuda_probe": JSON,
                                               "state": JSON, "degraded": JSON, "resume_signal": JSON}))
    def test_any_health_document_renders_as_words(self, health: dict[str, Any]) -> None:
        """A damaged gpu_health part never raises and never prints a Python repr."""
        out = "\n".join(render({"gpu_health": health, "readiness_failure": health.get("state")}))
        assert not PY_REPR.search(out), out

    @settings(max_examples=200, deadline=None)
    @given(st.dictionaries(st.sampled_from(sorted(KNOWN_KEYS | {"extra"})), JSON, max_size=8))
    def test_any_document_renders_as_words(self, doc: dict[str, Any]) -> None:
        """A status document of any shape (an older or newer supervisor, a damaged one) renders without raising
        and without a Python repr."""
        out = "\n".join(render(doc))
        assert not PY_REPR.search(out), out


@pytest.fixture
def served_status(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A status socket answering `rich_status()` where `ollama-gpu status` looks for it."""
    host = "127.0.0.1:47111"
    env = clean_env(tmp_path, {"RUNTIME_DIRECTORY": str(tmp_path / "run"), "OLLAMA_HOST": host})
    path = tmp_path / "run" / f"status-{parse_ollama_host(host).slug}.sock"
    server = StatusServer(path, rich_status).start()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            select.select([server], [], [], 0.02)
            server.handle()  # accepts, and sends what a reader is still waiting for

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield env
    finally:
        stop.set()
        thread.join(5)
        server.close()


class TestCommand:
    def test_status_text_of_a_rich_status(self, served_status: dict[str, str]) -> None:
        """The command prints the rich status as text without Python reprs; the exit code follows the worst verdict."""
        proc = run_cli(["status"], served_status)
        assert_no_traceback(proc.stderr)
        assert proc.returncode == 1  # a runner's partial_offload
        assert not PY_REPR.search(proc.stdout), proc.stdout
        assert "libcuda_not_found" in proc.stdout and "added /usr/lib/nvidia" in proc.stdout

    def test_status_json_keeps_every_field(self, served_status: dict[str, str]) -> None:
        """--json is the document itself: the pre-start remedy with its structured change."""
        proc = run_cli(["status", "--json"], served_status)
        doc = json.loads(proc.stdout)
        assert doc["remedies"]["applied"][0]["variables"][0]["added"] == ["/usr/lib/nvidia"]


def test_pre_start_remedy_shows_in_status_and_log_issue_15(tmp_path: Path, libs: native.NativeLibs,
                                                           cache_dir: Path) -> None:
    """The driver directory added to LD_LIBRARY_PATH before start: the log line names it, `status --json` lists the
    remedy (what, value, when, why), and `status` says it in words."""
    run = Run(tmp_path, libs, cache_dir, ld_library_path="", flags=("--driver-lib-dirs", str(libs.driver_dir)))
    try:
        run.ready()
        status = run.wait_status(lambda s: discovery(s) == ("gpu", "none"), "gpu discovery")
        (change,) = [e for e in run.events("environment_change") if e["key"] == "LD_LIBRARY_PATH"]
        assert change["added"] == [str(libs.driver_dir)] and str(libs.driver_dir) in str(change["value"])
        (applied,) = status["remedies"]["applied"]
        assert applied["subject"] == "start" and applied["cause"] == "libcuda_not_found"
        assert applied["when"] == "before start" and applied["reason"] and applied["at"].endswith("Z")
        assert applied["variables"][0]["added"] == [str(libs.driver_dir)]
        assert status["restarts"] == 0 and status["remedies"]["budget"]["used"] == 0
        proc = run_cli(["status"], run.env)
        assert proc.returncode == 0, proc.stderr
        assert f"LD_LIBRARY_PATH: added {libs.driver_dir}" in proc.stdout
        assert not PY_REPR.search(proc.stdout), proc.stdout
    finally:
        assert run.stop() == 0


def test_status_help_names_exit_codes_not_a_file(tmp_path: Path) -> None:
    """`status --help` states the exit codes itself instead of pointing to DESIGN.md, which users do not have."""
    proc = run_cli(["status", "--help"], clean_env(tmp_path))
    assert proc.returncode == 0
    assert "DESIGN.md" not in proc.stdout
    assert "3 no supervisor answers" in " ".join(proc.stdout.split())
