"""A minimal GGUF v3 writer and key/value reader: enough for test models with real headers, and for corrupt ones."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"GGUF"
_U32, _I32, _F32, _BOOL, _STR, _U64 = 4, 5, 6, 7, 8, 10
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class GGUFError(Exception):
    """The file is not a usable GGUF; the text is what llama.cpp's loader would report."""


@dataclass(frozen=True)
class ModelInfo:
    """What the runners need from a model file."""

    path: str
    kv: dict[str, object]
    n_tensors: int
    size: int

    @property
    def arch(self) -> str:
        """general.architecture."""
        return str(self.kv.get("general.architecture", "llama"))

    @property
    def n_layer(self) -> int:
        """<arch>.block_count."""
        return int(self.kv.get(f"{self.arch}.block_count", 0))  # type: ignore[call-overload]

    @property
    def n_embd(self) -> int:
        """<arch>.embedding_length."""
        return int(self.kv.get(f"{self.arch}.embedding_length", 0))  # type: ignore[call-overload]

    @property
    def n_head(self) -> int:
        """<arch>.attention.head_count."""
        return int(self.kv.get(f"{self.arch}.attention.head_count", 1))  # type: ignore[call-overload]


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def write(path: Path, kv: dict[str, object], payload: int = 0) -> Path:
    """Write a GGUF v3 file with `kv` (str, int -> u32, float -> f32, bool) and `payload` bytes of zero data."""
    out = bytearray(MAGIC + struct.pack("<IQQ", 3, 0, len(kv)))
    for key, val in kv.items():
        out += _s(key)
        if isinstance(val, bool):
            out += struct.pack("<I?", _BOOL, val)
        elif isinstance(val, int):
            out += struct.pack("<II", _U32, val)
        elif isinstance(val, float):
            out += struct.pack("<If", _F32, val)
        else:
            out += struct.pack("<I", _STR) + _s(str(val))
    path.write_bytes(bytes(out) + bytes(payload))
    return path


def read(path: str) -> ModelInfo:
    """Read the header of a GGUF file, raising GGUFError with llama.cpp's wording when it is not one."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise GGUFError(f"failed to open GGUF file '{path}' ({exc.strerror})") from exc
    if data[:4] != MAGIC:
        magic = data[:4].decode("latin-1")
        raise GGUFError(f"invalid magic characters: '{magic}', expected 'GGUF'")
    try:
        _version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
        off = 24
        kv: dict[str, object] = {}
        for _ in range(n_kv):
            (klen,) = struct.unpack_from("<Q", data, off)
            key = data[off + 8: off + 8 + klen].decode()
            off += 8 + klen
            (typ,) = struct.unpack_from("<I", data, off)
            off += 4
            if typ == _STR:
                (slen,) = struct.unpack_from("<Q", data, off)
                kv[key] = data[off + 8: off + 8 + slen].decode()
                off += 8 + slen
            elif typ in _SCALARS:
                fmt = _SCALARS[typ]
                (kv[key],) = struct.unpack_from(fmt, data, off)
                off += struct.calcsize(fmt)
            else:
                raise GGUFError(f"key '{key}' has unsupported type {typ}")
    except struct.error as exc:
        raise GGUFError("failed to read key-value pairs: file is truncated") from exc
    return ModelInfo(path=str(p), kv=kv, n_tensors=n_tensors, size=len(data))


def tiny_llama(path: Path, *, n_layer: int = 2, n_embd: int = 64, n_head: int = 4, size_mib: float = 8.0) -> Path:
    """A tiny llama-shaped model like the one in the real fixtures (2 layers, n_embd 64, 4 heads)."""
    kv: dict[str, object] = {
        "general.architecture": "llama", "general.name": "tiny-random", "llama.context_length": 2048,
        "llama.embedding_length": n_embd, "llama.block_count": n_layer, "llama.feed_forward_length": 128,
        "llama.attention.head_count": n_head, "llama.attention.head_count_kv": n_head, "llama.vocab_size": 32000,
        "general.file_type": 1,
    }
    return write(path, kv, payload=int(size_mib * 1024 * 1024))
