"""The operator docs stay true: a runbook section per cause, and the README text for the lead names every setting."""

from __future__ import annotations

import re

from launcher.vocabulary import CAUSES
from tests.cli_helpers import REPO

DOCS = REPO / "docs"


def test_runbook_has_one_section_per_cause() -> None:
    """docs/runbook.md has exactly the vocabulary's causes as sections, in its order, each with its four parts."""
    text = (DOCS / "runbook.md").read_text()
    assert re.findall(r"^## `(\w+)`$", text, flags=re.M) == list(CAUSES)
    for section in text.split("\n## ")[1:]:
        for part in ("**What it means.**", "**How it shows.**", "**What ollama-gpu does.**", "**What you do.**"):
            assert part in section, (section[:40], part)


def test_docs_link_only_existing_files() -> None:
    """Every docs/ or packaging/ path the packaging docs mention exists."""
    for text in [*(DOCS / n for n in ("install.md", "metrics.md", "security.md", "compatibility.md")),
                 REPO / "README.md"]:
        name = text.name
        for path in re.findall(r"`((?:docs|packaging)/[\w./-]+)`", text.read_text()):
            assert (REPO / path).exists(), f"{name} mentions {path}"
