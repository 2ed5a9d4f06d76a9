"""The Kubernetes manifest validates offline against the Kubernetes schemas shipped in kubernetes-validate (pinned),
and says what the issue asks: GPU request, the ConfigMap as our env file, readiness from `status --ready`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher.config import read_env_file
from tests.cli_helpers import REPO, clean_env, run_cli

MANIFEST = REPO / "packaging" / "kubernetes" / "ollama-gpu.yaml"


def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def one(kind: str) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    """kubernetes-validate --strict, in a network namespace with no network: the schemas must ship in the package."""
    tool = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    if tool is None:
        pytest.fail("kubernetes-validate is missing: it is in the test extra (pinned)")
    if shutil.which("unshare") is None:
        pytest.fail("unshare is missing: install util-linux")
    return subprocess.run(["unshare", "--net", tool, "--strict", str(path)], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    """The ConfigMap's env file as the pod sees it."""
    path = tmp_path / "etc" / "ollama-gpu.env"
    path.parent.mkdir()
    path.write_text(one("ConfigMap")["data"]["ollama-gpu.env"])
    return path


class TestSchema:
    def test_manifest_validates_offline(self) -> None:
        """Every resource passes strict validation against the bundled schemas, with no network at all."""
        result = validate(MANIFEST)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count("passed for resource") == len(documents())

    def test_the_check_catches_a_bad_manifest(self, tmp_path: Path) -> None:
        """A probe with an unknown field fails strict validation: the test above can fail."""
        bad = tmp_path / "bad.yaml"
        bad.write_text(MANIFEST.read_text().replace("periodSeconds: 10", "periodSecond: 10"))
        result = validate(bad)
        assert result.returncode != 0
        assert "periodSecond" in result.stdout + result.stderr


class TestShape:
    def test_daemonset_requests_a_gpu_and_runs_serve(self) -> None:
        """One pod per GPU node, a GPU requested, the image's entrypoint with `serve`."""
        pod = one("DaemonSet")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["args"] == ["serve"]
        assert pod["terminationGracePeriodSeconds"] > 10  # above the default OGPU_STOP_GRACE

    def test_readiness_is_the_status_command(self, env_file: Path) -> None:
        """Readiness is `ollama-gpu status --ready` (discovery's verdict: a pod with no model loaded gets ready)."""
        (container,) = one("DaemonSet")["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["exec"]["command"] == ["ollama-gpu", "status", "--ready"]
        # liveness restarts the container, readiness never does: revoked GPU access must fail liveness (issue 16)
        assert container["livenessProbe"]["exec"]["command"] == ["ollama-gpu", "status", "--live"]
        # liveness waits for a startup probe that outlasts the default boot-race wait (OGPU_GPU_WAIT) many times over
        startup = container["startupProbe"]
        assert startup["exec"]["command"] == ["ollama-gpu", "status", "--live"]
        settings = {k: v for k, v, _ in read_env_file(env_file, required=True)}
        gpu_wait = int(settings.get("OGPU_GPU_WAIT", "30"))
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 4 * gpu_wait
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        settings = {k: v for k, v, _ in read_env_file(env_file, required=True)}
        assert settings["OGPU_METRICS_ADDR"].endswith(f":{ports['metrics']}")  # the Service scrapes it

    def test_configmap_is_our_env_file(self, tmp_path: Path, env_file: Path) -> None:
        """The ConfigMap's key is mounted as /etc/ollama-gpu/ollama-gpu.env and loads as valid configuration."""
        (container,) = one("DaemonSet")["spec"]["template"]["spec"]["containers"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
        assert mount["mountPath"] == "/etc/ollama-gpu"
        assert "ollama-gpu.env" in one("ConfigMap")["data"]
        result = run_cli(["config", "--json"], clean_env(tmp_path, {"OGPU_SYSTEM_CONFIG": str(env_file)}))
        assert result.returncode == 0, result.stderr
        assert "config_warning" not in result.stderr

    def test_service_selects_the_pods(self) -> None:
        """The Service's selector matches the pod labels and exposes Ollama's port."""
        service = one("Service")["spec"]
        labels = one("DaemonSet")["spec"]["template"]["metadata"]["labels"]
        assert service["selector"].items() <= labels.items()
        assert 11434 in [p["port"] for p in service["ports"]]
