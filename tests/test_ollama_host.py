"""OLLAMA_HOST parsed as Ollama's envconfig.Host() parses it."""

from __future__ import annotations

import pytest

from launcher.ollama_host import parse_ollama_host


@pytest.mark.parametrize(
    ("raw", "netloc", "probe"),
    [
        (None, "127.0.0.1:11434", "http://127.0.0.1:11434/api/version"),
        ("", "127.0.0.1:11434", "http://127.0.0.1:11434/api/version"),
        ("0.0.0.0", "0.0.0.0:11434", "http://127.0.0.1:11434/api/version"),
        ("0.0.0.0:8080", "0.0.0.0:8080", "http://127.0.0.1:8080/api/version"),
        (":11500", ":11500", "http://127.0.0.1:11500/api/version"),
        ("[::]:1234", "[::]:1234", "http://[::1]:1234/api/version"),
        ("::1", "[::1]:11434", "http://[::1]:11434/api/version"),
        ("[fe80::1]", "[fe80::1]:11434", "http://[fe80::1]:11434/api/version"),
        ("http://example.com", "example.com:80", "http://example.com:80/api/version"),
        ("https://example.com", "example.com:443", "https://example.com:443/api/version"),
        ('"127.0.0.1:5"', "127.0.0.1:5", "http://127.0.0.1:5/api/version"),
        ("  localhost:77  ", "localhost:77", "http://localhost:77/api/version"),
        ("host:99999", "host:11434", "http://host:11434/api/version"),
        ("host:abc", "host:11434", "http://host:11434/api/version"),
    ],
)
def test_parse(raw: str | None, netloc: str, probe: str) -> None:
    """Scheme optional, default port, wildcard -> loopback for the probe, brackets for IPv6, bad port -> default."""
    host = parse_ollama_host(raw)
    assert host.netloc == netloc
    assert host.url("/api/version") == probe


def test_slug_is_file_name_safe() -> None:
    """The instance name has no characters that need quoting in a path."""
    slug = parse_ollama_host("[fe80::1%eth0]:80").slug
    assert "/" not in slug and ":" not in slug and "%" not in slug
