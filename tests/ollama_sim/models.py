"""Ollama's model store on disk: manifests under OLLAMA_MODELS/manifests, blobs under OLLAMA_MODELS/blobs."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

MODEL_MEDIA = "application/vnd.ollama.image.model"
DEFAULT_HOST, DEFAULT_NS, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"


def models_dir() -> Path:
    """OLLAMA_MODELS or ~/.ollama/models."""
    raw = os.environ.get("OLLAMA_MODELS")
    return Path(raw) if raw else Path.home() / ".ollama" / "models"


@dataclass(frozen=True)
class Model:
    """A resolved model name."""

    name: str  # as shown by /api/ps: tiny:latest
    blob: Path
    digest: str


def split_name(name: str) -> tuple[str, str, str, str]:
    """host, namespace, model, tag, with Ollama's defaults."""
    base, _, tag = name.partition(":")
    parts = base.split("/")
    host, ns = DEFAULT_HOST, DEFAULT_NS
    if len(parts) == 3:
        host, ns, model = parts
    elif len(parts) == 2:
        ns, model = parts
    else:
        model = parts[0]
    return host, ns, model, tag or DEFAULT_TAG


def resolve(name: str, root: Path | None = None) -> Model | None:
    """Find the model layer of a manifest; None when the model is not installed."""
    root = root or models_dir()
    host, ns, model, tag = split_name(name)
    manifest = root / "manifests" / host / ns / model / tag
    try:
        doc = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    for layer in doc.get("layers", []):
        if layer.get("mediaType") == MODEL_MEDIA:
            digest = str(layer["digest"])
            short = f"{model}:{tag}" if ns == DEFAULT_NS and host == DEFAULT_HOST else name
            return Model(short, root / "blobs" / digest.replace(":", "-"), digest)
    return None


def install(root: Path, name: str, data: bytes) -> Model:
    """Write a blob and a manifest the way `ollama create`/`pull` leave them."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob = root / "blobs" / digest.replace(":", "-")
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    host, ns, model, tag = split_name(name)
    manifest = root / "manifests" / host / ns / model / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2,
                                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                                    "layers": [{"mediaType": MODEL_MEDIA, "digest": digest, "size": len(data)}]}))
    found = resolve(name, root)
    assert found is not None
    return found


def count_blobs(root: Path | None = None) -> int:
    """`total blobs: N`."""
    d = (root or models_dir()) / "blobs"
    return sum(1 for p in d.iterdir() if p.name.startswith("sha256-")) if d.is_dir() else 0
