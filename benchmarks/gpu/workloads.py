"""GPU workloads for run_gpu.py, each printing only deterministic text (compared with and without the shim).

    python3 workloads.py torch   # matmul loop on cuda:0, prints the device and a checksum
    python3 workloads.py cupy    # an ElementwiseKernel loop (NVRTC-compiled), prints a checksum
"""

from __future__ import annotations

import sys


def torch_loop() -> None:
    import torch

    torch.manual_seed(0)
    x = torch.randn(1024, 1024, device="cuda")
    w = torch.randn(1024, 1024, device="cuda") / 32
    for _ in range(50):
        x = torch.tanh(x @ w)
    torch.cuda.synchronize()
    props = torch.cuda.get_device_properties(0)
    print("device", torch.cuda.get_device_name(0))
    print("uuid", f"GPU-{props.uuid}" if not str(props.uuid).startswith("GPU-") else props.uuid)
    print("checksum", f"{x.double().sum().item():.6e}")


def cupy_loop() -> None:
    import cupy as cp

    k = cp.ElementwiseKernel("float32 x", "float32 y", "y = x * 0.5f + 1.0f", "ogpu_affine")
    x = cp.arange(1 << 20, dtype=cp.float32)
    for _ in range(100):
        x = k(x)
    cp.cuda.Device(0).synchronize()
    print("device", cp.cuda.runtime.getDeviceProperties(0)["name"].decode())
    print("checksum", f"{float(x.sum()):.6e}")


if __name__ == "__main__":
    {"torch": torch_loop, "cupy": cupy_loop}[sys.argv[1]]()
