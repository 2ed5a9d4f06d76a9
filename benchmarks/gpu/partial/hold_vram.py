#!/usr/bin/env python3
"""Hold N bytes of GPU memory the way another program would (a training job, a notebook): one CUDA context through
the driver API (libcuda.so.1 via ctypes, no toolkit needed), one allocation, then wait until stdin closes or a signal.

usage: hold_vram.py BYTES [DEVICE]     prints `held BYTES` on stdout once the memory is allocated.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable


def main() -> int:
    size = int(sys.argv[1])
    ordinal = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        print(f"error libcuda.so.1 {exc}", flush=True)
        return 1
    dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
    steps: tuple[tuple[str, Callable[[], int]], ...] = (("cuInit", lambda: cuda.cuInit(0)),
                       ("cuDeviceGet", lambda: cuda.cuDeviceGet(ctypes.byref(dev), ordinal)),
                       ("cuDevicePrimaryCtxRetain", lambda: cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev)),
                       ("cuCtxSetCurrent", lambda: cuda.cuCtxSetCurrent(ctx)),
                       ("cuMemAlloc_v2", lambda: cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(size))))
    for name, call in steps:
        rc = call()
        if rc != 0:
            print(f"error {name} {rc}", flush=True)
            return 1
    print(f"held {size}", flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or kills us): the driver frees the memory at exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
