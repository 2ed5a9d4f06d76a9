"""Configuration layers, sources, validation and the packaged defaults file."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.config import SPECS, ConfigError, Mode, load_settings, packaged_file, read_env_file
from tests.cli_helpers import assert_no_traceback, clean_env, config_json, run_cli


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class TestPackagedFile:
    def test_file_documents_every_key_with_its_default(self) -> None:
        """config/ollama-gpu.env lists exactly the settings the code knows, each with the code's default."""
        entries = read_env_file(packaged_file(), required=True)
        in_file = {key: value for key, value, _ in entries}
        assert in_file == {spec.key: spec.default for spec in SPECS}
        text = packaged_file().read_text()
        for spec in SPECS:
            assert f"# {spec.key}: " in text, f"{spec.key} has no comment in the packaged file"

    def test_defaults_parse(self, tmp_path: Path) -> None:
        """Every default is a valid value of its own setting."""
        settings = load_settings({"HOME": str(tmp_path), "OGPU_SYSTEM_CONFIG": str(tmp_path / "none")}, uid=1000)
        assert settings.mode is Mode.AUTO
        assert settings.require_gpu is False
        assert settings.may_override == frozenset()
        assert settings.shim is None
        assert all(source == "default" for source in settings.sources.values())


class TestLayers:
    def test_every_layer_in_order(self, tmp_path: Path) -> None:
        """Each layer wins over the ones below it, and `config --json` names the winning source."""
        system = write(tmp_path / "etc" / "ollama-gpu.env",
                       "OGPU_RESTART_MAX=11\nOGPU_REMEDY_MAX=1\nOGPU_STOP_GRACE=1\nOGPU_READY_TIMEOUT=1\n"
                       "OGPU_LOG_LEVEL=debug\nOGPU_RESTART_WINDOW=1\n")
        user = write(tmp_path / "xdg" / "ollama-gpu" / "ollama-gpu.env",
                     "OGPU_REMEDY_MAX=2\nOGPU_STOP_GRACE=2\nOGPU_READY_TIMEOUT=2\nOGPU_LOG_LEVEL=warning\n"
                     "OGPU_RESTART_WINDOW=2\n")
        first = write(tmp_path / "a.env", "OGPU_STOP_GRACE=3\nOGPU_READY_TIMEOUT=3\nOGPU_LOG_LEVEL=error\n"
                                          "OGPU_RESTART_WINDOW=3\n")
        second = write(tmp_path / "b.env", "# comment\n\nOGPU_READY_TIMEOUT=4\nOGPU_LOG_LEVEL=info\n"
                                           "OGPU_RESTART_WINDOW=4\n")
        env = clean_env(tmp_path, {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "OGPU_LOG_LEVEL": "debug",
                                   "OGPU_RESTART_WINDOW": "5"})
        info = config_json(["--env-file", str(first), "--env-file", str(second), "--restart-window", "6"], env)
        got = {k: (v["text"], v["source"]) for k, v in info["settings"].items()}
        assert got["OGPU_MODE"] == ("auto", "default")
        assert got["OGPU_RESTART_MAX"] == ("11", f"{system}:1")
        assert got["OGPU_REMEDY_MAX"] == ("2", f"{user}:1")
        assert got["OGPU_STOP_GRACE"] == ("3", f"{first}:1")
        assert got["OGPU_READY_TIMEOUT"] == ("4", f"{second}:3")
        assert got["OGPU_LOG_LEVEL"] == ("debug", "environment")
        assert got["OGPU_RESTART_WINDOW"] == ("6", "command line")
        assert info["files"][1:] == [str(system), str(user), str(first), str(second)]

    def test_user_file_defaults_to_dot_config(self, tmp_path: Path) -> None:
        """Without XDG_CONFIG_HOME the user file is ~/.config/ollama-gpu/ollama-gpu.env."""
        user = write(tmp_path / "home" / ".config" / "ollama-gpu" / "ollama-gpu.env", "OGPU_MODE=observe\n")
        info = config_json([], clean_env(tmp_path))
        assert info["settings"]["OGPU_MODE"] == {"value": "observe", "text": "observe", "source": f"{user}:1"}

    def test_dot_env_in_cwd_is_never_read(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A ./.env in the working directory is not a configuration layer."""
        write(tmp_path / ".env", "OGPU_MODE=off\n")
        monkeypatch.chdir(tmp_path)
        settings = load_settings({"HOME": str(tmp_path), "OGPU_SYSTEM_CONFIG": str(tmp_path / "x")}, uid=1000)
        assert settings.mode is Mode.AUTO

    def test_ollama_keys_pass_through_without_warning(self, tmp_path: Path) -> None:
        """OLLAMA_GPU_OVERHEAD in a file reaches Ollama's environment and is not mistaken for one of ours."""
        env_file = write(tmp_path / "o.env", "OLLAMA_GPU_OVERHEAD=536870912\nOLLAMA_HOST=0.0.0.0:11500\n")
        proc = run_cli(["--env-file", str(env_file), "config", "--json"], clean_env(tmp_path))
        assert proc.returncode == 0
        assert proc.stderr == ""
        import json

        info = json.loads(proc.stdout)
        assert info["ollama_env"]["OLLAMA_GPU_OVERHEAD"] == {"value": "536870912", "source": f"{env_file}:1"}
        assert info["warnings"] == []
        assert info["ollama_host"] == "0.0.0.0:11500"
        assert info["directories"]["instance"] == "0.0.0.0-11500"

    def test_environment_ollama_host_beats_file(self, tmp_path: Path) -> None:
        """The real environment wins over our files for Ollama's own keys too."""
        env_file = write(tmp_path / "o.env", "OLLAMA_HOST=0.0.0.0:11500\n")
        info = config_json(["--env-file", str(env_file)], clean_env(tmp_path, {"OLLAMA_HOST": "[::1]:9999"}))
        assert info["ollama_host"] == "[::1]:9999"

    def test_typed_values(self, tmp_path: Path) -> None:
        """Values arrive typed: lists, booleans, paths and seconds."""
        settings = load_settings(
            {"HOME": str(tmp_path), "OGPU_SYSTEM_CONFIG": str(tmp_path / "x"),
             "OGPU_MAY_OVERRIDE": "CUDA_VISIBLE_DEVICES, OLLAMA_LLM_LIBRARY", "OGPU_REQUIRE_GPU": "yes",
             "OGPU_DRIVER_LIB_DIRS": "/opt/a:/opt/b", "OGPU_SHIM": "/opt/shim.so", "OGPU_STOP_GRACE": "2.5s"},
            uid=1000,
        )
        assert settings.may_override == {"CUDA_VISIBLE_DEVICES", "OLLAMA_LLM_LIBRARY"}
        assert settings.require_gpu is True
        assert settings.driver_lib_dirs == (Path("/opt/a"), Path("/opt/b"))
        assert settings.shim == Path("/opt/shim.so")
        assert settings.stop_grace == 2.5


class TestConfigJson:
    def test_values_are_typed(self, tmp_path: Path) -> None:
        """`config --json` gives numbers, booleans, lists and null, with the text each was parsed from (issue 15,
        item 10: every value used to be a string)."""
        env = clean_env(tmp_path, {"OGPU_REQUIRE_GPU": "yes",
                                   "OGPU_MAY_OVERRIDE": "OLLAMA_LLM_LIBRARY,CUDA_VISIBLE_DEVICES",
                                   "OGPU_DRIVER_LIB_DIRS": "/opt/a:/opt/b", "OGPU_METRICS_ADDR": "[::1]:9835",
                                   "OGPU_STOP_GRACE": "2.5s"})
        settings = config_json(["--restart-max", "7"], env)["settings"]
        value = {key: item["value"] for key, item in settings.items()}
        assert value["OGPU_RESTART_MAX"] == 7 and type(value["OGPU_RESTART_MAX"]) is int
        assert value["OGPU_REMEDY_MAX"] == 3 and type(value["OGPU_REMEDY_MAX"]) is int
        assert value["OGPU_REQUIRE_GPU"] is True
        assert value["OGPU_STOP_GRACE"] == 2.5
        assert value["OGPU_READY_TIMEOUT"] == 120 and type(value["OGPU_READY_TIMEOUT"]) is float
        assert value["OGPU_MAY_OVERRIDE"] == ["CUDA_VISIBLE_DEVICES", "OLLAMA_LLM_LIBRARY"]
        assert value["OGPU_DRIVER_LIB_DIRS"] == ["/opt/a", "/opt/b"]
        assert value["OGPU_METRICS_ADDR"] == {"host": "::1", "port": 9835}
        assert value["OGPU_SHIM"] is None and value["OGPU_RECORD"] is None
        assert value["OGPU_MODE"] == "auto"
        assert settings["OGPU_STOP_GRACE"]["text"] == "2.5s"
        assert settings["OGPU_REQUIRE_GPU"]["text"] == "yes"

    def test_text_table_shows_the_text_as_given(self, tmp_path: Path) -> None:
        """The table keeps showing what the operator wrote."""
        proc = run_cli(["--require-gpu", "yes", "config"], clean_env(tmp_path))
        assert proc.returncode == 0
        row = next(line for line in proc.stdout.splitlines() if line.startswith("OGPU_REQUIRE_GPU "))
        assert row.split("=", 1)[1].split("#")[0].strip() == "yes"
        assert row.endswith("# command line")


class TestBadInput:
    @pytest.mark.parametrize(
        ("line", "expected"),
        [
            ("OGPU_MODE=fast", "expected one of auto, advise, observe, off"),
            ("OGPU_RESTART_MAX=-1", "expected a whole number from 0 to 1000"),
            ("OGPU_RESTART_MAX=many", "expected a whole number from 0 to 1000"),
            ("OGPU_STOP_GRACE=inf", "expected seconds from 0 to 3600"),
            ("OGPU_REQUIRE_GPU=maybe", "expected a boolean"),
            ("OGPU_SHIM=relative/x.so", "expected an absolute path"),
            ("OGPU_MAY_OVERRIDE=CUDA-VISIBLE", "expected environment variable names"),
            ("OGPU_DRIVER_LIB_DIRS=lib64", "expected absolute directories"),
        ],
    )
    def test_bad_value_in_file(self, tmp_path: Path, line: str, expected: str) -> None:
        """One line naming file:line, key, value and what is expected; exit 2; no traceback."""
        env_file = write(tmp_path / "bad.env", f"# first\n{line}\n")
        proc = run_cli(["--env-file", str(env_file), "config"], clean_env(tmp_path))
        assert proc.returncode == 2
        assert proc.stdout == ""
        key, value = line.split("=", 1)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert f"{env_file}:2" in lines[0]
        assert f"{key}={value!r}" in lines[0]
        assert expected in lines[0]

    def test_bad_value_in_environment(self, tmp_path: Path) -> None:
        """A bad value from the environment is attributed to the environment."""
        proc = run_cli(["config"], clean_env(tmp_path, {"OGPU_LOG_FORMAT": "xml"}))
        assert proc.returncode == 2
        assert proc.stderr.strip() == (
            "ollama-gpu: configuration error: environment: OGPU_LOG_FORMAT='xml': expected one of auto, console, json"
        )

    def test_bad_value_on_command_line(self, tmp_path: Path) -> None:
        """A bad flag value is attributed to the command line."""
        proc = run_cli(["--remedy-max", "1e9", "config"], clean_env(tmp_path))
        assert proc.returncode == 2
        assert "command line: OGPU_REMEDY_MAX='1e9': expected a whole number" in proc.stderr
        assert_no_traceback(proc.stderr)

    def test_missing_env_file(self, tmp_path: Path) -> None:
        """A missing --env-file is an error naming the file, not silently skipped."""
        proc = run_cli(["--env-file", str(tmp_path / "nope.env"), "config"], clean_env(tmp_path))
        assert proc.returncode == 2
        assert proc.stderr.strip() == f"ollama-gpu: configuration error: {tmp_path / 'nope.env'}: no such file"

    @pytest.mark.parametrize(
        ("content", "expected"),
        [(None, "is a directory"), (b"OGPU_MODE=\xff\xfe\n", "is not UTF-8 text")],
    )
    def test_unreadable_env_file(self, tmp_path: Path, content: bytes | None, expected: str) -> None:
        """A file that cannot be read as text is one clear line, exit 2."""
        target = tmp_path / "f.env"
        if content is None:
            target.mkdir()
        else:
            target.write_bytes(content)
        proc = run_cli(["--env-file", str(target), "config"], clean_env(tmp_path))
        assert proc.returncode == 2
        assert expected in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert_no_traceback(proc.stderr)

    def test_permission_denied_is_a_config_error(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An env file we may not read raises ConfigError (root reads anything, so the open is refused here)."""
        target = write(tmp_path / "secret.env", "OGPU_MODE=off\n")

        def refuse(*_args: object, **_kwargs: object) -> None:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr("launcher.envfile.os.open", refuse)
        with pytest.raises(ConfigError, match="cannot be read"):
            read_env_file(target, required=True)

    def test_malformed_line(self, tmp_path: Path) -> None:
        """A line that is not KEY=VALUE is reported with its line number."""
        env_file = write(tmp_path / "m.env", "OGPU_MODE=auto\nthis is not an assignment\n")
        proc = run_cli(["--env-file", str(env_file), "config"], clean_env(tmp_path))
        assert proc.returncode == 2
        assert f"{env_file}:2: cannot parse" in proc.stderr

    def test_unknown_key_warns_with_nearest(self, tmp_path: Path) -> None:
        """A misspelt OGPU_ key is a warning naming the nearest valid key; the command still runs."""
        env_file = write(tmp_path / "t.env", "OGPU_REQUIRE_GUP=1\n")
        proc = run_cli(["--env-file", str(env_file), "config", "--json"], clean_env(tmp_path))
        assert proc.returncode == 0
        assert "OGPU_REQUIRE_GPU" in proc.stderr
        assert f"{env_file}:1" in proc.stderr
        assert '"OGPU_REQUIRE_GUP"' in proc.stderr

    def test_usage_error_exits_2(self, tmp_path: Path) -> None:
        """An unknown command is a usage error."""
        proc = run_cli(["frobnicate"], clean_env(tmp_path))
        assert proc.returncode == 2
        assert_no_traceback(proc.stderr)


def test_defaults_and_shim_sources_found_in_a_bare_checkout() -> None:
    """Run from a checkout that was never installed (as on the GPU machine), config/ and shim/ are still found."""
    import subprocess
    import sys

    from tests.cli_helpers import REPO

    code = ("import sys; sys.meta_path[:] = [m for m in sys.meta_path if 'editable' not in repr(m).lower()]; "
            f"sys.path.insert(0, {str(REPO)!r}); "
            "from launcher.config import packaged_file; from launcher.shim_build import shim_source_dir; "
            "print(packaged_file()); print(shim_source_dir())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == [str(REPO / "config" / "ollama-gpu.env"), str(REPO / "shim")]
