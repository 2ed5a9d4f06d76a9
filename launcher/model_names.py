"""A runner's argv → the model name an operator knows (`llama3:8b`), read from Ollama's manifests; a bounded label."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from launcher.log import get as get_logger

log = get_logger(__name__)

BLOB: Final = re.compile(r"sha256-(?P<hex>[0-9a-f]{64})\Z")
MODEL_LAYER: Final = "application/vnd.ollama.image.model"
DEFAULT_REGISTRY: Final = "registry.ollama.ai"
MAX_MANIFESTS: Final = 10_000  # a models directory is walked at most this far
MAX_NAME: Final = 200
NO_MODEL: Final = "(none)"  # a process without --model: the server, a discovery runner


def model_arg(argv: Sequence[str]) -> str | None:
    """The value of `--model`/`-m` (also `--model=X`) in a runner's argv, or None."""
    for i, arg in enumerate(argv):
        if arg in ("--model", "-m") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--model="):
            return arg.split("=", 1)[1]
    return None


def display_name(host: str, namespace: str, model: str, tag: str) -> str:
    """Ollama's short form: `model:tag` for the library, `ns/model:tag` on its registry, else the full name."""
    if host == DEFAULT_REGISTRY:
        return f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
    return f"{host}/{namespace}/{model}:{tag}"


def read_manifests(models: Path) -> dict[str, str]:
    """digest hex → model name for every manifest under `models/manifests` (the first name in sorted order wins)."""
    found: dict[str, str] = {}
    root = models / "manifests"
    try:
        paths = sorted(itertools.islice(root.glob("*/*/*/*"), MAX_MANIFESTS))
    except OSError:
        return found
    for path in paths:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            layers = doc.get("layers", []) if isinstance(doc, dict) else []
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        host, namespace, model, tag = path.relative_to(root).parts
        for layer in layers:
            digest = layer.get("digest", "") if isinstance(layer, dict) else ""
            if layer.get("mediaType") == MODEL_LAYER and isinstance(digest, str) and digest.startswith("sha256:"):
                found.setdefault(digest.removeprefix("sha256:"), display_name(host, namespace, model, tag))
    return found


class ModelNames:
    """Resolves `--model` values to names; a models directory is read again only when an unknown blob shows up."""

    def __init__(self) -> None:
        self._by_dir: dict[Path, dict[str, str]] = {}

    def name(self, argv: Sequence[str]) -> str:
        """The model's name, `sha256-<12 hex>` when no manifest names the blob, or NO_MODEL without `--model`."""
        value = model_arg(argv)
        if not value:
            return NO_MODEL
        path = Path(value)
        blob = BLOB.match(path.name)
        if blob is None:
            return (path.name if "/" in value else value)[-MAX_NAME:]  # MLX runners pass the name itself
        digest = blob["hex"]
        models = path.parent.parent
        known = self._by_dir.get(models)
        if known is None or digest not in known:
            known = read_manifests(models)
            self._by_dir[models] = known
            if digest not in known:
                log.debug("model_name_unknown", blob=path.name, models=str(models))
        return known.get(digest, f"sha256-{digest[:12]}")
