"""The README stays true: its test command is what CI runs, and its settings table matches the code."""

from __future__ import annotations

import re

from launcher.config import SPECS
from tests.cli_helpers import REPO


def _shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)\n```", text, flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run contains, verbatim, the README's test command (install test deps + run the suite)."""
    readme = (REPO / "README.md").read_text()
    (test_command,) = [b.strip() for b in _shell_blocks(readme) if "pytest" in b]
    ci = (REPO / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


def test_settings_table_matches_code() -> None:
    """Each setting has a README row with its flag and default."""
    readme = (REPO / "README.md").read_text()
    for spec in SPECS:
        assert f"| `{spec.key}` | `{spec.flag}` | `{spec.default}` |" in readme, spec.key


def test_every_package_ships() -> None:
    """pyproject lists every package under launcher/, so a non-editable install is complete."""
    line = re.search(r"^packages = \[(.*)\]$", (REPO / "pyproject.toml").read_text(), flags=re.M)
    assert line is not None
    listed = set(re.findall(r'"([^"]+)"', line.group(1)))
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "launcher").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
