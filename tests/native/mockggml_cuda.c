/* Fake GGML CUDA backend: libggml-cuda.so for tests (and the Ollama simulator), DT_NEEDED on libcuda.so.1.
 *
 * It reaches the driver the two ways the real one does (reference/cuda-interposition.md 1.1 and 6):
 *   - like its CUDA runtime: dlopen("libcuda.so.1"), dlsym(handle, "cuGetProcAddress_v2"), the "" probe,
 *     cuInit@2000, the self-query cuGetProcAddress@11030 and @12000, then every entry point through the
 *     self-queried pointer (cuDeviceGetCount, cuDeviceGet, cuDeviceGetName, cuDeviceTotalMem, cuDeviceGetUuid,
 *     cuDeviceGetAttribute);
 *   - like ggml-cuda.cu itself, through its own PLT: cuDeviceGet/cuDeviceGetAttribute (the VMM check) and a
 *     reference to cuMemAddressReserve, so that a libcuda.so.1 without it fails the load with
 *     "undefined symbol: cuMemAddressReserve" exactly as in fixtures/ggml-real.
 * and prints GGML's real lines (to stderr, as ggml_log does by default) for what actually happened:
 *   ggml_cuda_init: failed to initialize CUDA: <cudaGetErrorString text>
 *   ggml_cuda_init: found N CUDA devices (Total VRAM: M MiB):          (MOCKGGML_STYLE unset or "upstream")
 *     Device 0: NVIDIA H100 80GB HBM3, compute capability 9.0, VMM: yes, VRAM: 81079 MiB
 *   ggml_cuda_init: found N CUDA devices:                               (MOCKGGML_STYLE=ollama)
 *     Device 0: NVIDIA H100 80GB HBM3, compute capability 9.0, VMM: yes, ID: GPU-...
 * Environment: MOCKGGML_STYLE (above); MOCKGGML_RUNTIME_VERSION (the "cudart" version, default 13000: a driver
 * whose major version is lower gives error 35 "CUDA driver version is insufficient for CUDA runtime version",
 * as does a libcuda.so.1 that cannot be dlopen'ed).
 *
 * Exports ggml_backend_init() like a GGML_BACKEND_DL backend (it returns the registry even with 0 devices, so
 * a loader prints "loaded CUDA backend" after a failed init, as the real one does).  No ggml_backend_score: the
 * real CUDA backend exports none (only the CPU variants do).  mockggml_device_count() and mockggml_compute(n)
 * (allocate, copy in, n launches of add_one, copy out, free; returns 0 when the result is right) are test hooks.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct { unsigned char bytes[16]; } CUuuid;

/* direct PLT references, as ggml-cuda.cu has them */
extern CUresult cuDeviceGet(CUdevice *, int);
extern CUresult cuDeviceGetAttribute(int *, int, CUdevice);
extern CUresult cuMemAddressReserve(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);

typedef CUresult (*gpa_t)(const char *, void **, int, unsigned long long, int *);
static gpa_t gpa;
static int ndev = -1;
static struct {
    int (*init)(unsigned);
    int (*count)(int *);
    int (*get)(CUdevice *, int);
    int (*name)(char *, int, CUdevice);
    int (*mem)(size_t *, CUdevice);
    int (*uuid)(CUuuid *, CUdevice);
    int (*attr)(int *, int, CUdevice);
    int (*retain)(void **, CUdevice);
    int (*alloc)(CUdeviceptr *, size_t);
    int (*free)(CUdeviceptr);
    int (*htod)(CUdeviceptr, const void *, size_t);
    int (*dtoh)(void *, CUdeviceptr, size_t);
    int (*load)(void **, const void *);
    int (*getfn)(void **, void *, const char *);
    int (*launch)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **,
                  void **);
} cu;

static const char *runtime_error_text(int code)
{
    switch (code) {
    case 3: return "initialization error";
    case 34: return "CUDA driver is a stub library";
    case 35: return "CUDA driver version is insufficient for CUDA runtime version";
    case 100: return "no CUDA-capable device is detected";
    case 803: return "system has unsupported display driver / cuda driver combination";
    case 999: return "unknown error";
    default: return "unknown error";
    }
}

static void *entry(const char *name, int ver, unsigned long long flags)
{
    void *p = NULL;
    int status = 0;
    if (gpa(name, &p, ver, flags, &status) != 0 || status != 0)
        return NULL;
    return p;
}

/* What cudart does on its first call; returns a cudaError_t-like code. */
static int runtime_init(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h)
        return 35;
    gpa = (gpa_t)dlsym(h, "cuGetProcAddress_v2");
    if (!gpa)
        return 35;
    void *probe = NULL;
    int status = 0;
    if (gpa("", &probe, 0, 0, &status) != 0)
        return 34; /* the stub answers everything with 34 */
    cu.init = entry("cuInit", 2000, 0);
    gpa_t v1 = entry("cuGetProcAddress", 11030, 0);
    gpa_t v2 = entry("cuGetProcAddress", 12000, 0);
    if (!cu.init || !v1 || !v2)
        return 35;
    gpa = v2; /* everything else through the self-queried pointer */
    int rv = 13000;
    const char *e = getenv("MOCKGGML_RUNTIME_VERSION");
    if (e)
        rv = atoi(e);
    int (*drv)(int *) = entry("cuDriverGetVersion", 2020, 0);
    int dv = 0;
    if (!drv || drv(&dv) != 0 || dv / 1000 < rv / 1000)
        return 35;
    int r = cu.init(0);
    if (r != 0)
        return r;
    cu.count = entry("cuDeviceGetCount", 2000, 0);
    cu.get = entry("cuDeviceGet", 2000, 0);
    cu.name = entry("cuDeviceGetName", 2000, 0);
    cu.mem = entry("cuDeviceTotalMem", 3020, 0);
    cu.uuid = entry("cuDeviceGetUuid", 11040, 0);
    cu.attr = entry("cuDeviceGetAttribute", 2000, 0);
    cu.retain = entry("cuDevicePrimaryCtxRetain", 7000, 0);
    cu.alloc = entry("cuMemAlloc", 3020, 0);
    cu.free = entry("cuMemFree", 3020, 0);
    cu.htod = entry("cuMemcpyHtoD", 3020, 0);
    cu.dtoh = entry("cuMemcpyDtoH", 3020, 0);
    cu.load = entry("cuModuleLoadData", 2000, 0);
    cu.getfn = entry("cuModuleGetFunction", 2000, 0);
    cu.launch = entry("cuLaunchKernel", 7000, 2); /* GGML builds with per-thread default stream off; cuBLAS on */
    int n = 0;
    r = cu.count(&n);
    if (r != 0)
        return r;
    return n == 0 ? 100 : 0;
}

static void ggml_cuda_init(void)
{
    if (ndev >= 0)
        return;
    ndev = 0;
    int err = runtime_init();
    if (err != 0) {
        fprintf(stderr, "ggml_cuda_init: failed to initialize CUDA: %s\n", runtime_error_text(err));
        return;
    }
    int n = 0;
    cu.count(&n);
    const char *style = getenv("MOCKGGML_STYLE");
    int ollama = style && strcmp(style, "ollama") == 0;
    size_t total = 0;
    size_t mem[64] = {0};
    for (int i = 0; i < n && i < 64; i++) {
        CUdevice d;
        cu.get(&d, i);
        cu.mem(&mem[i], d);
        total += mem[i];
    }
    if (ollama)
        fprintf(stderr, "ggml_cuda_init: found %d CUDA devices:\n", n);
    else
        fprintf(stderr, "ggml_cuda_init: found %d CUDA devices (Total VRAM: %zu MiB):\n", n, total >> 20);
    for (int i = 0; i < n && i < 64; i++) {
        CUdevice d, dd;
        cu.get(&d, i);
        char name[256] = "";
        cu.name(name, sizeof name, d);
        int major = 0, minor = 0, vmm = 0;
        cu.attr(&major, 75, d);
        cu.attr(&minor, 76, d);
        cuDeviceGet(&dd, i); /* ggml-cuda.cu: the VMM check calls the driver directly */
        cuDeviceGetAttribute(&vmm, 102, dd);
        if (ollama) {
            CUuuid u;
            cu.uuid(&u, d);
            char id[64];
            int k = snprintf(id, sizeof id, "GPU-");
            for (int b = 0; b < 16; b++)
                k += snprintf(id + k, sizeof id - (size_t)k, "%s%02x",
                              (b == 4 || b == 6 || b == 8 || b == 10) ? "-" : "", u.bytes[b]);
            fprintf(stderr, "  Device %d: %s, compute capability %d.%d, VMM: %s, ID: %s\n", i, name, major, minor,
                    vmm ? "yes" : "no", id);
        } else {
            fprintf(stderr, "  Device %d: %s, compute capability %d.%d, VMM: %s, VRAM: %zu MiB\n", i, name, major,
                    minor, vmm ? "yes" : "no", mem[i] >> 20);
        }
    }
    ndev = n;
}

static struct { int api_version; const char *name; } registry = {2, "CUDA"};

__attribute__((visibility("default"))) void *ggml_backend_init(void)
{
    ggml_cuda_init();
    return &registry;
}

__attribute__((visibility("default"))) int mockggml_device_count(void)
{
    ggml_cuda_init();
    return ndev;
}

/* A small "graph": copy in, n launches of add_one, copy out.  0 when the result is right. */
__attribute__((visibility("default"))) int mockggml_compute(int launches)
{
    ggml_cuda_init();
    if (ndev <= 0)
        return -1;
    CUdevice d;
    void *ctx, *mod, *fn;
    CUdeviceptr buf;
    int host[256];
    for (int i = 0; i < 256; i++)
        host[i] = i;
    int n = 256;
    if (cu.get(&d, 0) || cu.retain(&ctx, d) || cu.alloc(&buf, sizeof host) || cu.htod(buf, host, sizeof host) ||
        cu.load(&mod, "ptx") || cu.getfn(&fn, mod, "add_one"))
        return -2;
    void *params[] = {&buf, &n};
    for (int i = 0; i < launches; i++)
        if (cu.launch(fn, 1, 1, 1, 256, 1, 1, 0, NULL, params, NULL))
            return -3;
    if (cu.dtoh(host, buf, sizeof host) || cu.free(buf))
        return -4;
    CUdeviceptr va;
    if (cuMemAddressReserve(&va, 1u << 21, 0, 0, 0)) /* the VMM pool's reservation, direct */
        return -5;
    for (int i = 0; i < 256; i++)
        if (host[i] != i + launches)
            return -6;
    return 0;
}
