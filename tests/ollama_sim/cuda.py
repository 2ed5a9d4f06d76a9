"""The CUDA driver API through ctypes: what Ollama's cgo discovery and ggml-cuda ask libcuda (mock or real)."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

CUDA_SUCCESS = 0
ATTR_CC_MAJOR = 75
ATTR_CC_MINOR = 76
# The symbols Ollama's gen A/B discovery resolves before calling anything (discover/gpu_info_nvcuda.c).
REQUIRED_SYMBOLS = ("cuInit", "cuDriverGetVersion", "cuDeviceGetCount", "cuDeviceGet", "cuDeviceGetAttribute",
                    "cuDeviceGetUuid", "cuDeviceGetName", "cuCtxCreate_v3", "cuMemGetInfo_v2")


@dataclass(frozen=True)
class Device:
    """One CUDA device as the driver describes it."""

    ordinal: int
    name: str
    uuid: str
    cc: tuple[int, int]
    total: int
    free: int
    pci_bus_id: str


class DriverError(Exception):
    """The driver library could not be opened or lacks a symbol; the text is the loader's or Ollama's reason."""


def dlopen(path: str, *, lazy: bool = False, global_: bool = False) -> ctypes.CDLL:
    """libc dlopen through ctypes (an LD_PRELOAD shim sees it); raises OSError with dlerror()'s text."""
    mode = (os.RTLD_LAZY if lazy else os.RTLD_NOW) | (os.RTLD_GLOBAL if global_ else os.RTLD_LOCAL)
    return ctypes.CDLL(path, mode=mode)


class Driver:
    """An opened libcuda with the calls we need; missing optional symbols degrade, never crash."""

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        self.lib = lib
        self.path = path

    @classmethod
    def open(cls, path: str, *, required: tuple[str, ...] = ()) -> Driver:
        """dlopen `path` (a soname or a file) and check `required` symbols as Ollama's C code does."""
        try:
            lib = dlopen(path, lazy=True)
        except OSError as exc:
            raise DriverError(f"Unable to load {path} library to query for Nvidia GPUs: {exc}") from exc
        for sym in required:
            if not hasattr(lib, sym):
                raise DriverError(f"symbol lookup for {sym} failed: {path}: undefined symbol: {sym}")
        return cls(lib, path)

    def _call(self, name: str, *args: object) -> int:
        fn = getattr(self.lib, name, None)
        if fn is None:
            return -1
        return int(fn(*args))

    def init(self) -> int:
        """cuInit(0)."""
        return self._call("cuInit", ctypes.c_uint(0))

    def driver_version(self) -> int:
        """cuDriverGetVersion, e.g. 13000; 0 when it fails."""
        v = ctypes.c_int(0)
        return v.value if self._call("cuDriverGetVersion", ctypes.byref(v)) == CUDA_SUCCESS else 0

    def count(self) -> int:
        """cuDeviceGetCount; 0 when it fails."""
        n = ctypes.c_int(0)
        return n.value if self._call("cuDeviceGetCount", ctypes.byref(n)) == CUDA_SUCCESS else 0

    def device(self, ordinal: int) -> Device:
        """Name, UUID, compute capability, memory and PCI bus id of one device."""
        dev = ctypes.c_int(0)
        self._call("cuDeviceGet", ctypes.byref(dev), ctypes.c_int(ordinal))
        name = ctypes.create_string_buffer(256)
        self._call("cuDeviceGetName", name, ctypes.c_int(256), dev)
        raw = (ctypes.c_ubyte * 16)()
        uuid = ""
        if self._call("cuDeviceGetUuid", raw, dev) == CUDA_SUCCESS:
            h = bytes(raw).hex()
            uuid = f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        self._call("cuDeviceGetAttribute", ctypes.byref(major), ctypes.c_int(ATTR_CC_MAJOR), dev)
        self._call("cuDeviceGetAttribute", ctypes.byref(minor), ctypes.c_int(ATTR_CC_MINOR), dev)
        total = ctypes.c_size_t(0)
        self._call("cuDeviceTotalMem_v2", ctypes.byref(total), dev)
        free = self._free_memory(dev) or total.value
        pci = ctypes.create_string_buffer(64)
        self._call("cuDeviceGetPCIBusId", pci, ctypes.c_int(64), dev)
        return Device(ordinal, name.value.decode(errors="replace"), uuid, (major.value, minor.value),
                      total.value, free, pci.value.decode(errors="replace").lower())

    def _free_memory(self, dev: ctypes.c_int) -> int:
        ctx = ctypes.c_void_p()
        create = "cuCtxCreate_v2" if hasattr(self.lib, "cuCtxCreate_v2") else "cuCtxCreate"
        if self._call(create, ctypes.byref(ctx), ctypes.c_uint(0), dev) != CUDA_SUCCESS:
            return 0
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        ok = self._call("cuMemGetInfo_v2", ctypes.byref(free), ctypes.byref(total)) == CUDA_SUCCESS
        self._call("cuCtxDestroy_v2" if hasattr(self.lib, "cuCtxDestroy_v2") else "cuCtxDestroy", ctx)
        return free.value if ok else 0

    def devices(self) -> list[Device]:
        """Every device the driver shows (it applies CUDA_VISIBLE_DEVICES itself)."""
        return [self.device(i) for i in range(self.count())]


def mib(n: int) -> int:
    """Bytes to whole MiB as ggml prints them."""
    return n // (1024 * 1024)
