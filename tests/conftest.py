"""Fixtures shared by the test modules: the native test doubles and one shim cache, each built once a session."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ollama_sim import native


@pytest.fixture(scope="session")
def libs() -> native.NativeLibs:
    """tests/native's mock CUDA driver (normal, stub and no-cuMemAddressReserve builds) and fake GGML CUDA backend."""
    return native.build()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One shim cache (CACHE_DIRECTORY) for the session: the shim is compiled once, not per test."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path for Unix sockets (sun_path holds 107 bytes; pytest's tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="ogpu-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
