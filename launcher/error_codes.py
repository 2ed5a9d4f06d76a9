"""Error-code tables: CUDA driver results, CUDA runtime errors, NVML return codes and HIP errors, as data.

Each row is one code as a library defines and prints it (number, symbolic name, the text its error-string function
returns, as it appears in Ollama's and GGML's log lines) and the cause it implies, or None where the code alone does
not name one. `find` reads a code out of a log line or a shim field by name, by printed text or by number in the
words that carry one (`cuInit err: 802`, `nvml vram init failure: 18`, `CUDA error 800`, `hipErrorNoBinaryForGpu`).

Provenance (names and numbers are facts, read, not copied): CUresult from the CUDA driver API's `cuda.h` (toolkit
12.x/13.0; texts as `cuGetErrorString` returns them); cudaError_t from `driver_types.h` (texts as
`cudaGetErrorString` returns them, which ggml prints in `ggml_cuda_init: failed to initialize CUDA: <text>` and
`CUDA error: <text>`); nvmlReturn_t from `nvml.h` as shipped in nvidia-ml-py 12.x (`NVML_ERROR_*` constants; texts as
`nvmlErrorString` returns them, and as `nvidia-smi` prints the two it words differently); hipError_t from ROCm's
`hip/hip_runtime_api.h` (ROCm 6.x; texts as `hipGetErrorString` returns them, which ggml prints as `ROCm error: …`).
Checked against public copies found with the search tools (NVIDIA/cuda-python bindings, ROCm/HIP headers).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

Family: TypeAlias = Literal["cu", "cudart", "nvml", "hip"]
FAMILIES: Final[tuple[Family, ...]] = ("cu", "cudart", "nvml", "hip")


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One code: family, number, symbolic name, the texts it is printed as, and the cause it implies (or None)."""

    family: Family
    code: int
    name: str
    texts: tuple[str, ...]
    cause: str | None = None

    @property
    def text(self) -> str:
        """The text as the library's error-string function returns it."""
        return self.texts[0]


def _rows(family: Family, rows: Iterable[tuple[int, str, str | tuple[str, ...], str | None]]) -> tuple[ErrorCode, ...]:
    return tuple(ErrorCode(family, code, name, (texts,) if isinstance(texts, str) else texts, cause)
                 for code, name, texts, cause in rows)


# CUresult (cuda.h). Causes: 34/35/803/804/999 as the seed investigation and the fixtures showed them; 800 and 802 as
# issue 13 names them (a container's revoked device access; NVSwitch without its fabric manager).
CU: Final = _rows("cu", (
    (0, "CUDA_SUCCESS", "no error", None),
    (1, "CUDA_ERROR_INVALID_VALUE", "invalid argument", None),
    (2, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory", "insufficient_vram"),
    (3, "CUDA_ERROR_NOT_INITIALIZED", "initialization error", None),
    (4, "CUDA_ERROR_DEINITIALIZED", "driver shutting down", None),
    (34, "CUDA_ERROR_STUB_LIBRARY", "CUDA driver is a stub library", "stub_library"),
    (46, "CUDA_ERROR_DEVICE_UNAVAILABLE", "CUDA-capable device(s) is/are busy or unavailable", "permission_denied"),
    (100, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected", "device_filter_hides_gpu"),
    (101, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal", None),
    (102, "CUDA_ERROR_DEVICE_NOT_LICENSED", "device doesn't have valid Grid license", None),
    (200, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid", None),
    (201, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context", None),
    (209, "CUDA_ERROR_NO_BINARY_FOR_GPU", "no kernel image is available for execution on the device",
     "unsupported_compute_capability"),
    (214, "CUDA_ERROR_ECC_UNCORRECTABLE", "uncorrectable ECC error encountered", None),
    (221, "CUDA_ERROR_JIT_COMPILER_NOT_FOUND", "PTX JIT compiler library not found", None),
    (222, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION", "the provided PTX was compiled with an unsupported toolchain.",
     "driver_too_old"),
    (500, "CUDA_ERROR_NOT_FOUND", "named symbol not found", "driver_container_incompat"),
    (700, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered", None),
    (702, "CUDA_ERROR_LAUNCH_TIMEOUT", "the launch timed out and was terminated", None),
    (719, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure", None),
    (800, "CUDA_ERROR_NOT_PERMITTED", "operation not permitted", "container_gpu_access_lost"),
    (801, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported", None),
    (802, "CUDA_ERROR_SYSTEM_NOT_READY", "system not yet initialized", "fabric_manager_not_running"),
    (803, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH", "system has unsupported display driver / cuda driver combination",
     "driver_library_mismatch"),
    (804, "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE", "forward compatibility was attempted on non supported HW",
     "driver_library_mismatch"),
    (999, "CUDA_ERROR_UNKNOWN", "unknown error", "uvm_not_loaded"),
))

# cudaError_t (driver_types.h): what ggml prints after `failed to initialize CUDA:` and `CUDA error:`.
CUDART: Final = _rows("cudart", (
    (0, "cudaSuccess", "no error", None),
    (1, "cudaErrorInvalidValue", "invalid argument", None),
    (2, "cudaErrorMemoryAllocation", "out of memory", "insufficient_vram"),
    (3, "cudaErrorInitializationError", "initialization error", None),
    (4, "cudaErrorCudartUnloading", "driver shutting down", None),
    (34, "cudaErrorStubLibrary", "CUDA driver is a stub library", "stub_library"),
    (35, "cudaErrorInsufficientDriver", "CUDA driver version is insufficient for CUDA runtime version",
     "driver_too_old"),
    (36, "cudaErrorCallRequiresNewerDriver", "API call is not supported in the installed CUDA driver",
     "driver_too_old"),
    (46, "cudaErrorDevicesUnavailable", "CUDA-capable device(s) is/are busy or unavailable", "permission_denied"),
    (100, "cudaErrorNoDevice", "no CUDA-capable device is detected", "device_filter_hides_gpu"),
    (101, "cudaErrorInvalidDevice", "invalid device ordinal", None),
    (209, "cudaErrorNoKernelImageForDevice", "no kernel image is available for execution on the device",
     "unsupported_compute_capability"),
    (222, "cudaErrorUnsupportedPtxVersion", "the provided PTX was compiled with an unsupported toolchain.",
     "driver_too_old"),
    (500, "cudaErrorSymbolNotFound", "named symbol not found", "driver_container_incompat"),
    (700, "cudaErrorIllegalAddress", "an illegal memory access was encountered", None),
    (719, "cudaErrorLaunchFailure", "unspecified launch failure", None),
    (800, "cudaErrorNotPermitted", "operation not permitted", "container_gpu_access_lost"),
    (801, "cudaErrorNotSupported", "operation not supported", None),
    (802, "cudaErrorSystemNotReady", "system not yet initialized", "fabric_manager_not_running"),
    (803, "cudaErrorSystemDriverMismatch", "system has unsupported display driver / cuda driver combination",
     "driver_library_mismatch"),
    (804, "cudaErrorCompatNotSupportedOnDevice", "forward compatibility was attempted on non supported HW",
     "driver_library_mismatch"),
    (999, "cudaErrorUnknown", "unknown error", "uvm_not_loaded"),
))

# nvmlReturn_t (nvml.h). 999 "Unknown Error" names no cause by itself: at start it is any broken driver state; after
# NVML had answered, in a running container, it is `container_gpu_access_lost` (the board's rule, not this row).
NVML: Final = _rows("nvml", (
    (0, "NVML_SUCCESS", "Success", None),
    (1, "NVML_ERROR_UNINITIALIZED", "Uninitialized", None),
    (2, "NVML_ERROR_INVALID_ARGUMENT", "Invalid Argument", None),
    (3, "NVML_ERROR_NOT_SUPPORTED", "Not Supported", None),
    (4, "NVML_ERROR_NO_PERMISSION", "Insufficient Permissions", "permission_denied"),
    (6, "NVML_ERROR_NOT_FOUND", "Not Found", None),
    (9, "NVML_ERROR_DRIVER_NOT_LOADED", "Driver Not Loaded", None),
    (10, "NVML_ERROR_TIMEOUT", "Timeout", None),
    (12, "NVML_ERROR_LIBRARY_NOT_FOUND", "NVML Shared Library Not Found", None),
    (13, "NVML_ERROR_FUNCTION_NOT_FOUND", "Function Not Found", None),
    (15, "NVML_ERROR_GPU_IS_LOST", "GPU is lost", "gpu_lost"),
    (16, "NVML_ERROR_RESET_REQUIRED", "GPU requires reset", None),
    (17, "NVML_ERROR_OPERATING_SYSTEM", "The operating system has blocked the request", None),
    (18, "NVML_ERROR_LIB_RM_VERSION_MISMATCH", ("RM has detected an NVML/RM version mismatch",
                                                 "Driver/library version mismatch"), "driver_library_mismatch"),
    (19, "NVML_ERROR_IN_USE", "GPU is currently in use", None),
    (20, "NVML_ERROR_MEMORY", "Insufficient Memory", None),
    (27, "NVML_ERROR_NOT_READY", "System is not ready for the request", None),
    (28, "NVML_ERROR_GPU_NOT_FOUND", "No GPUs were found", None),
    (999, "NVML_ERROR_UNKNOWN", "Unknown Error", None),
))

# hipError_t (hip_runtime_api.h): ggml's HIP build prints `failed to initialize ROCm: <text>` and `ROCm error: <text>`.
HIP: Final = _rows("hip", (
    (0, "hipSuccess", "no error", None),
    (1, "hipErrorInvalidValue", "invalid argument", None),
    (2, "hipErrorOutOfMemory", "out of memory", "insufficient_vram"),
    (3, "hipErrorNotInitialized", "initialization error", None),
    (35, "hipErrorInsufficientDriver", "driver version is insufficient for runtime version", "driver_too_old"),
    (98, "hipErrorInvalidDeviceFunction", "invalid device function", "unsupported_gpu_arch"),
    (100, "hipErrorNoDevice", "no ROCm-capable device is detected", None),
    (101, "hipErrorInvalidDevice", "invalid device ordinal", None),
    (200, "hipErrorInvalidImage", "device kernel image is invalid", None),
    (209, "hipErrorNoBinaryForGpu", "no kernel image is available for execution on the device",
     "unsupported_gpu_arch"),
    (500, "hipErrorNotFound", "named symbol not found", None),
    (700, "hipErrorIllegalAddress", "an illegal memory access was encountered", None),
    (719, "hipErrorLaunchFailure", "unspecified launch failure", None),
    (999, "hipErrorUnknown", "unknown error", None),
))

TABLES: Final[Mapping[Family, tuple[ErrorCode, ...]]] = {"cu": CU, "cudart": CUDART, "nvml": NVML, "hip": HIP}
_BY_CODE: Final = {(r.family, r.code): r for rows in TABLES.values() for r in rows}
_BY_NAME: Final = {r.name.lower(): r for rows in TABLES.values() for r in rows}

# Words around a number that say which library's code it is (checked in this order: NVML and HIP lines also say
# "init failure", and ggml's HIP build says "CUDA" in function names).
_FAMILY_WORDS: Final[tuple[tuple[Family, re.Pattern[str]], ...]] = (
    ("nvml", re.compile(r"nvml|nvidia-smi|management library", re.I)),
    ("hip", re.compile(r"\bhip|rocm|amdgpu|rocblas", re.I)),
    ("cudart", re.compile(r"cudart|cuda runtime|ggml_cuda|CUDA error|failed to initialize CUDA", re.I)),
    ("cu", re.compile(r"cuInit|nvcuda|cuda driver|CUresult|libcuda", re.I)),
)
# A number in the words that carry one: `err: 999`, `init failure: 18`, `error 802`, `code=800`, `(error 9)`.
_NUMBER: Final = re.compile(r"(?:\berr(?:or)?|failure|code|result|returned)\b[:=]?\s*\(?(?P<code>\d{1,4})\b", re.I)
# Ollama's Go errors end with the code (`fmt.Errorf("...: %d", ret)`), so a number closing a quoted error value is one
# even when the word before it did not survive a paste ("init failur   e: 802", a terminal's wrap gap).
_TRAILING: Final = re.compile(r"\berror=\"[^\"]*?:\s*(?P<code>\d{1,4})\"")
_NAME: Final = re.compile(r"\b(CUDA_ERROR_[A-Z_]+|CUDA_SUCCESS|cuda(?:Error|Success)\w*|NVML_ERROR_[A-Z_]+|"
                          r"hip(?:Error|Success)\w*)\b")


def lookup(family: Family, code: int) -> ErrorCode | None:
    """The row of `code` in `family`'s table."""
    return _BY_CODE.get((family, code))


def family_of(text: str) -> Family | None:
    """Which library a line's code belongs to, from the words around it."""
    return next((fam for fam, words in _FAMILY_WORDS if words.search(text)), None)


def _by_text(text: str, family: Family | None) -> ErrorCode | None:
    low = text.lower()
    order = [family] if family is not None else []
    order += [f for f in FAMILIES if f not in order]
    best: ErrorCode | None = None
    for fam in order:
        for row in TABLES[fam]:
            for printed in row.texts:
                if len(printed) >= 10 and printed.lower() in low and (best is None or len(printed) > len(best.text)):
                    best = row
        if best is not None:
            return best
    return None


def find(text: str, family: Family | None = None) -> ErrorCode | None:
    """The code a line carries: by symbolic name, else by printed text, else by a number in the words that carry one
    (its family from `family` or from the line). None when the line carries no code we know."""
    m = _NAME.search(text)
    if m and m[1].lower() in _BY_NAME:
        return _BY_NAME[m[1].lower()]
    fam = family or family_of(text)
    by_text = _by_text(text, fam)
    if by_text is not None and by_text.cause is not None:
        return by_text
    by_number = _by_number(text, fam) if fam is not None else None
    return by_number if by_number is not None and (by_text is None or by_number.cause is not None) else by_text


def _by_number(text: str, fam: Family) -> ErrorCode | None:
    for n in [*_NUMBER.finditer(text), *_TRAILING.finditer(text)]:
        row = lookup(fam, int(n["code"]))
        if row is None and fam == "cu":
            row = lookup("cudart", int(n["code"]))  # gen A/B's libcudart fallback prints its codes in the same words
        if row is not None and row.code != 0:
            return row
    return None


def cause_of(text: str, family: Family | None = None) -> str | None:
    """The cause a line's code implies (None: no code we know, or one that names no cause)."""
    row = find(text, family)
    return row.cause if row is not None else None


def code_cause(family: Family, code: int) -> str | None:
    """The cause of a numeric code (the shim's `cu_init` result is a CUresult: `cu`, then `cudart` for codes only the
    runtime defines, which the mock driver and older discovery print in the same place)."""
    row = lookup(family, code) or (lookup("cudart", code) if family == "cu" else None)
    return row.cause if row is not None else None
