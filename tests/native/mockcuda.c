/* Mock CUDA driver: libcuda.so.1 for tests, configured by environment.  Reused by every issue that needs a driver.
 *
 * Environment (read at cuInit, like the real driver reads CUDA_VISIBLE_DEVICES):
 *   MOCKCUDA_DEVICES        the physical devices: ';' between devices, ',' between key=value fields of one
 *                           device.  Keys: name, uuid (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx or MIG-...),
 *                           pci (0000:01:00.0), mem_mib (total memory in MiB), cc (major.minor), vmm (0/1).
 *                           Missing keys get per-index defaults; "" means no devices at all.
 *                           e.g. "name=NVIDIA H100 80GB HBM3,pci=0000:00:06.0;name=NVIDIA A100-SXM4-40GB,cc=8.0"
 *   MOCKCUDA_DEVICE_COUNT   n default devices (NVIDIA H100 80GB HBM3, 81079 MiB, cc 9.0) when MOCKCUDA_DEVICES is
 *                           unset; default 1.
 *   MOCKCUDA_DRIVER_VERSION what cuDriverGetVersion reports (default 13000).
 *   MOCKCUDA_INIT_ERROR     cuInit returns this CUresult (e.g. 999, 100, 803) and the driver stays uninitialised.
 *                           Built with -DMOCKCUDA_INIT_ERROR_DEFAULT=n, n when the variable is unset (a failing
 *                           driver a test swaps in under a running process tree whose environment is fixed).
 *   MOCKCUDA_STATE          a file of `key=value` lines re-read by every cuInit, so a test changes the driver of a
 *                           process tree that is already running (the environment is fixed at spawn, a file is not;
 *                           write a temporary file and rename it over).  Keys:
 *                             init_error=<code>  cuInit returns it, as MOCKCUDA_INIT_ERROR (which wins when set);
 *                                                999 after a scripted suspend/resume broke nvidia_uvm, 0 or no key
 *                                                once it is reloaded.  A missing file means no key.
 *   MOCKCUDA_STUB=1         behave like the toolkit's stubs/libcuda.so: every call returns 34
 *                           (CUDA_ERROR_STUB_LIBRARY). Built with -DMOCKCUDA_ALWAYS_STUB the library is a stub
 *                           whatever the environment (tests put it in a `stubs/` directory, first on the path).
 *   MOCKCUDA_FAIL           "fn=code[,fn=code]": these exported functions return `code` (after cuInit), e.g.
 *                           "cuLaunchKernel=700" or "cuLibraryGetKernel=209".
 *   CUDA_VISIBLE_DEVICES    as the real driver: a comma list of indices or UUIDs (GPU-/MIG- prefix, a unique
 *                           prefix is enough); parsing stops at the first entry that matches nothing (or repeats
 *                           one); no visible device => cuInit returns 100 (CUDA_ERROR_NO_DEVICE).
 *
 * cuMemGetInfo reports the device of the calling thread's current context (cuCtxCreate*, cuCtxSetCurrent): its total
 * memory, and 512 MiB less as free, so GPUs of mixed sizes show their own room.
 * Device memory is host memory (so copies and the two built-in kernels compute real results); launches run the
 * kernel synchronously.  Kernels, by name from any module: "noop" and "add_one" (params: CUdeviceptr*, int*
 * count; adds 1 to each int).  cuGetProcAddress{,_v2} return this library's own exported functions, choosing the
 * ABI by version and the per-thread flag like the real driver.  mockcuda_launches() returns launches executed.
 * Built twice: libcuda.so.1, and with -DMOCKCUDA_NO_VA_RESERVE a copy lacking cuMemAddressReserve (to reproduce
 * GGML's "undefined symbol: cuMemAddressReserve").
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long cuuint64_t;
typedef struct { unsigned char bytes[16]; } CUuuid;

enum {
    OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_INITIALIZED = 3, STUB = 34, NO_DEVICE = 100,
    INVALID_DEVICE = 101, INVALID_IMAGE = 200, INVALID_CONTEXT = 201, NOT_FOUND = 500,
};

#define MAXDEV 64
struct dev {
    char name[256];
    char uuid[64]; /* as configured, with its GPU-/MIG- prefix */
    unsigned char uuid_bytes[16];
    char pci[32];
    unsigned long long mem;
    int cc_major, cc_minor, vmm;
};

static struct dev phys[MAXDEV];
static int nphys;
static int visible[MAXDEV]; /* visible ordinal -> physical index */
static int nvisible;
static _Atomic int initialised;
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic unsigned long long launches;

#define MAXFAIL 16
static struct { char fn[64]; int code; } fails[MAXFAIL];
static int nfails;

static int stub_mode(void)
{
#ifdef MOCKCUDA_ALWAYS_STUB /* the toolkit's stubs/libcuda.so itself, as a file: no environment needed */
    return 1;
#endif
    const char *s = getenv("MOCKCUDA_STUB");
    return s && strcmp(s, "1") == 0;
}

static int forced(const char *fn)
{
    for (int i = 0; i < nfails; i++)
        if (strcmp(fails[i].fn, fn) == 0)
            return fails[i].code;
    return 0;
}

#define ENTER() \
    do { \
        if (stub_mode()) \
            return STUB; \
        if (!atomic_load(&initialised)) \
            return NOT_INITIALIZED; \
        int f_ = forced(__func__); \
        if (f_) \
            return f_; \
    } while (0)

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void uuid_parse(struct dev *d)
{
    const char *s = d->uuid + 4; /* after GPU- / MIG- */
    int k = 0, hi = -1;
    for (; *s && k < 16; s++) {
        int v = hexval(*s);
        if (v < 0)
            continue;
        if (hi < 0)
            hi = v;
        else {
            d->uuid_bytes[k++] = (unsigned char)(hi << 4 | v);
            hi = -1;
        }
    }
}

static void set_defaults(struct dev *d, int i)
{
    snprintf(d->name, sizeof d->name, "NVIDIA H100 80GB HBM3");
    snprintf(d->uuid, sizeof d->uuid, "GPU-%08x-%04x-%04x-%04x-%012x", 0x6d6f636bu + (unsigned)i, 0x1000u + (unsigned)i,
             0x2000u, 0x3000u, 0x400000u + (unsigned)i);
    snprintf(d->pci, sizeof d->pci, "0000:%02X:00.0", 1 + i);
    d->mem = 81079ull << 20;
    d->cc_major = 9;
    d->cc_minor = 0;
    d->vmm = 1;
}

static void parse_devices(void)
{
    nphys = 0;
    const char *spec = getenv("MOCKCUDA_DEVICES");
    if (!spec) {
        const char *c = getenv("MOCKCUDA_DEVICE_COUNT");
        int n = c ? atoi(c) : 1;
        for (int i = 0; i < n && i < MAXDEV; i++)
            set_defaults(&phys[nphys++], i);
    } else {
        char buf[8192];
        snprintf(buf, sizeof buf, "%s", spec);
        char *save_dev = NULL;
        for (char *devs = strtok_r(buf, ";", &save_dev); devs && nphys < MAXDEV; devs = strtok_r(NULL, ";", &save_dev)) {
            struct dev *d = &phys[nphys];
            set_defaults(d, nphys);
            char *save_kv = NULL;
            for (char *kv = strtok_r(devs, ",", &save_kv); kv; kv = strtok_r(NULL, ",", &save_kv)) {
                char *eq = strchr(kv, '=');
                if (!eq)
                    continue;
                *eq = 0;
                const char *k = kv, *v = eq + 1;
                if (strcmp(k, "name") == 0) snprintf(d->name, sizeof d->name, "%s", v);
                else if (strcmp(k, "uuid") == 0) snprintf(d->uuid, sizeof d->uuid, "%s", v);
                else if (strcmp(k, "pci") == 0) snprintf(d->pci, sizeof d->pci, "%s", v);
                else if (strcmp(k, "mem_mib") == 0) d->mem = strtoull(v, NULL, 10) << 20;
                else if (strcmp(k, "cc") == 0) sscanf(v, "%d.%d", &d->cc_major, &d->cc_minor);
                else if (strcmp(k, "vmm") == 0) d->vmm = atoi(v);
            }
            nphys++;
        }
    }
    for (int i = 0; i < nphys; i++)
        uuid_parse(&phys[i]);
}

/* CUDA_VISIBLE_DEVICES as the driver reads it: indices or (partial) UUIDs, stop at the first bad entry. */
static void apply_visible(void)
{
    const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
    nvisible = 0;
    if (!cvd) {
        for (int i = 0; i < nphys; i++)
            visible[nvisible++] = i;
        return;
    }
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", cvd);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        int idx = -1;
        if (strncmp(tok, "GPU-", 4) == 0 || strncmp(tok, "MIG-", 4) == 0) {
            size_t n = strlen(tok);
            for (int i = 0; i < nphys; i++) {
                if (strncmp(phys[i].uuid, tok, n) == 0) {
                    if (idx >= 0) { idx = -2; break; } /* ambiguous prefix */
                    idx = i;
                }
            }
        } else {
            char *end;
            long v = strtol(tok, &end, 10);
            if (end != tok && *end == 0 && v >= 0 && v < nphys)
                idx = (int)v;
        }
        if (idx < 0)
            break;
        for (int j = 0; j < nvisible; j++)
            if (visible[j] == idx)
                idx = -1;
        if (idx < 0)
            break;
        visible[nvisible++] = idx;
    }
}

static void parse_fails(void)
{
    nfails = 0;
    const char *s = getenv("MOCKCUDA_FAIL");
    if (!s)
        return;
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", s);
    char *save = NULL;
    for (char *kv = strtok_r(buf, ",", &save); kv && nfails < MAXFAIL; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq)
            continue;
        *eq = 0;
        snprintf(fails[nfails].fn, sizeof fails[nfails].fn, "%s", kv);
        fails[nfails].code = atoi(eq + 1);
        nfails++;
    }
}

static int driver_version(void)
{
    const char *v = getenv("MOCKCUDA_DRIVER_VERSION");
    return v ? atoi(v) : 13000;
}

/* MOCKCUDA_STATE's init_error, re-read at every call (0: none, or no file). */
static int state_init_error(void)
{
    const char *path = getenv("MOCKCUDA_STATE");
    FILE *f = path ? fopen(path, "r") : NULL;
    if (!f)
        return 0;
    int code = 0;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "init_error=", 11) == 0)
            code = atoi(line + 11);
    }
    fclose(f);
    return code;
}

EXPORT CUresult cuInit(unsigned int flags)
{
    if (stub_mode())
        return STUB;
    if (flags != 0)
        return INVALID_VALUE;
    const char *e = getenv("MOCKCUDA_INIT_ERROR");
#ifdef MOCKCUDA_INIT_ERROR_DEFAULT
    if (!e)
        return MOCKCUDA_INIT_ERROR_DEFAULT;
#endif
    if (e && atoi(e) != 0)
        return atoi(e);
    int scripted = state_init_error();
    if (scripted != 0)
        return scripted;
    pthread_mutex_lock(&init_lock);
    if (!atomic_load(&initialised)) {
        parse_devices();
        apply_visible();
        parse_fails();
        if (nvisible > 0)
            atomic_store(&initialised, 1);
    }
    pthread_mutex_unlock(&init_lock);
    if (!atomic_load(&initialised))
        return NO_DEVICE;
    return forced("cuInit");
}

EXPORT CUresult cuDriverGetVersion(int *v)
{
    if (stub_mode())
        return STUB;
    if (!v)
        return INVALID_VALUE;
    *v = driver_version();
    return OK;
}

static struct dev *device(CUdevice d)
{
    return d >= 0 && d < nvisible ? &phys[visible[d]] : NULL;
}

EXPORT CUresult cuDeviceGetCount(int *n)
{
    ENTER();
    if (!n) return INVALID_VALUE;
    *n = nvisible;
    return OK;
}

EXPORT CUresult cuDeviceGet(CUdevice *d, int ordinal)
{
    ENTER();
    if (!d) return INVALID_VALUE;
    if (ordinal < 0 || ordinal >= nvisible) return INVALID_DEVICE;
    *d = ordinal;
    return OK;
}

EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice d)
{
    ENTER();
    struct dev *x = device(d);
    if (!x) return INVALID_DEVICE;
    if (!name || len <= 0) return INVALID_VALUE;
    snprintf(name, (size_t)len, "%s", x->name);
    return OK;
}

static CUresult get_uuid(CUuuid *u, CUdevice d)
{
    struct dev *x = device(d);
    if (!x) return INVALID_DEVICE;
    if (!u) return INVALID_VALUE;
    memcpy(u->bytes, x->uuid_bytes, 16);
    return OK;
}
EXPORT CUresult cuDeviceGetUuid(CUuuid *u, CUdevice d) { ENTER(); return get_uuid(u, d); }
EXPORT CUresult cuDeviceGetUuid_v2(CUuuid *u, CUdevice d) { ENTER(); return get_uuid(u, d); }

EXPORT CUresult cuDeviceGetPCIBusId(char *bus, int len, CUdevice d)
{
    ENTER();
    struct dev *x = device(d);
    if (!x) return INVALID_DEVICE;
    if (!bus || len <= 0) return INVALID_VALUE;
    snprintf(bus, (size_t)len, "%s", x->pci);
    return OK;
}

EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice d)
{
    ENTER();
    struct dev *x = device(d);
    if (!x) return INVALID_DEVICE;
    if (!bytes) return INVALID_VALUE;
    *bytes = x->mem;
    return OK;
}

EXPORT CUresult cuDeviceGetAttribute(int *v, int attr, CUdevice d)
{
    ENTER();
    struct dev *x = device(d);
    if (!x) return INVALID_DEVICE;
    if (!v) return INVALID_VALUE;
    unsigned bus = 0, dom = 0, slot = 0;
    sscanf(x->pci, "%x:%x:%x", &dom, &bus, &slot);
    switch (attr) {
    case 16: *v = 132; break;               /* MULTIPROCESSOR_COUNT */
    case 33: *v = (int)bus; break;          /* PCI_BUS_ID */
    case 34: *v = (int)slot; break;         /* PCI_DEVICE_ID */
    case 50: *v = (int)dom; break;          /* PCI_DOMAIN_ID */
    case 75: *v = x->cc_major; break;       /* COMPUTE_CAPABILITY_MAJOR */
    case 76: *v = x->cc_minor; break;       /* COMPUTE_CAPABILITY_MINOR */
    case 102: *v = x->vmm; break;           /* VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED */
    default: *v = 0;
    }
    return OK;
}

/* contexts: one fake handle per device; the calling thread's current one decides what cuMemGetInfo reports */
static char ctx_tag[MAXDEV];
static __thread int current_dev;
EXPORT CUresult cuDevicePrimaryCtxRetain(void **ctx, CUdevice d)
{
    ENTER();
    if (!device(d)) return INVALID_DEVICE;
    if (!ctx) return INVALID_VALUE;
    *ctx = &ctx_tag[d];
    return OK;
}
EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice d) { ENTER(); return device(d) ? OK : INVALID_DEVICE; }
EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) { ENTER(); return device(d) ? OK : INVALID_DEVICE; }
EXPORT CUresult cuCtxCreate_v2(void **ctx, unsigned int fl, CUdevice d)
{
    (void)fl;
    if (device(d))
        current_dev = d;
    return cuDevicePrimaryCtxRetain(ctx, d);
}
EXPORT CUresult cuCtxCreate_v3(void **ctx, void *aff, int n, unsigned int fl, CUdevice d)
{
    (void)aff; (void)n; (void)fl;
    if (device(d))
        current_dev = d;
    return cuDevicePrimaryCtxRetain(ctx, d);
}
EXPORT CUresult cuCtxCreate_v4(void **ctx, void *params, unsigned int fl, CUdevice d)
{
    (void)params; (void)fl;
    if (device(d))
        current_dev = d;
    return cuDevicePrimaryCtxRetain(ctx, d);
}
EXPORT CUresult cuCtxSetCurrent(void *ctx)
{
    ENTER();
    long d = (char *)ctx - ctx_tag;
    if (ctx && d >= 0 && d < nvisible)
        current_dev = (int)d;
    return OK;
}
EXPORT CUresult cuCtxDestroy_v2(void *ctx) { ENTER(); (void)ctx; return OK; }
EXPORT CUresult cuCtxSynchronize(void) { ENTER(); return OK; }
EXPORT CUresult cuStreamSynchronize(void *s) { ENTER(); (void)s; return OK; }
EXPORT CUresult cuStreamSynchronize_ptsz(void *s) { ENTER(); (void)s; return OK; }

EXPORT CUresult cuMemGetInfo_v2(size_t *fr, size_t *total)
{
    ENTER();
    if (!fr || !total) return INVALID_VALUE;
    *total = phys[visible[current_dev < nvisible ? current_dev : 0]].mem;
    *fr = *total - (512ull << 20);
    return OK;
}

/* memory: host memory stands in for device memory */
static CUresult alloc(CUdeviceptr *p, size_t n)
{
    if (!p) return INVALID_VALUE;
    void *m = calloc(1, n ? n : 1);
    if (!m) return OUT_OF_MEMORY;
    *p = (CUdeviceptr)(uintptr_t)m;
    return OK;
}
EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) { ENTER(); return alloc(p, n); }
EXPORT CUresult cuMemAllocManaged(CUdeviceptr *p, size_t n, unsigned int f) { ENTER(); (void)f; return alloc(p, n); }
EXPORT CUresult cuMemAllocAsync(CUdeviceptr *p, size_t n, void *s) { ENTER(); (void)s; return alloc(p, n); }
EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *p, size_t n, void *s) { ENTER(); (void)s; return alloc(p, n); }
EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *p, size_t n, void *pool, void *s)
{
    ENTER(); (void)pool; (void)s; return alloc(p, n);
}
EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *p, size_t n, void *pool, void *s)
{
    ENTER(); (void)pool; (void)s; return alloc(p, n);
}
EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *p, size_t *pitch, size_t w, size_t h, unsigned int esz)
{
    ENTER();
    (void)esz;
    if (!pitch) return INVALID_VALUE;
    *pitch = (w + 511) & ~(size_t)511;
    return alloc(p, *pitch * h);
}
static CUresult release(CUdeviceptr p)
{
    free((void *)(uintptr_t)p);
    return OK;
}
EXPORT CUresult cuMemFree_v2(CUdeviceptr p) { ENTER(); return release(p); }
EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, void *s) { ENTER(); (void)s; return release(p); }
EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, void *s) { ENTER(); (void)s; return release(p); }
EXPORT CUresult cuMemHostAlloc(void **p, size_t n, unsigned int f) { ENTER(); (void)f; *p = calloc(1, n ? n : 1); return OK; }
EXPORT CUresult cuMemFreeHost(void *p) { ENTER(); free(p); return OK; }

/* VMM: handles and address ranges are numbers only */
static _Atomic unsigned long long next_handle = 0x1000;
EXPORT CUresult cuMemCreate(unsigned long long *h, size_t n, const void *prop, unsigned long long fl)
{
    ENTER(); (void)n; (void)prop; (void)fl;
    if (!h) return INVALID_VALUE;
    *h = atomic_fetch_add(&next_handle, 1);
    return OK;
}
EXPORT CUresult cuMemRelease(unsigned long long h) { ENTER(); (void)h; return OK; }
#ifndef MOCKCUDA_NO_VA_RESERVE
static _Atomic unsigned long long next_va = 0x7f0000000000ull;
EXPORT CUresult cuMemAddressReserve(CUdeviceptr *p, size_t n, size_t align, CUdeviceptr addr, unsigned long long fl)
{
    ENTER(); (void)align; (void)addr; (void)fl;
    if (!p) return INVALID_VALUE;
    *p = atomic_fetch_add(&next_va, (n + 0xfffff) & ~0xfffffull);
    return OK;
}
#endif
EXPORT CUresult cuMemAddressFree(CUdeviceptr p, size_t n) { ENTER(); (void)p; (void)n; return OK; }
EXPORT CUresult cuMemMap(CUdeviceptr p, size_t n, size_t off, unsigned long long h, unsigned long long fl)
{
    ENTER(); (void)p; (void)n; (void)off; (void)h; (void)fl; return OK;
}
EXPORT CUresult cuMemUnmap(CUdeviceptr p, size_t n) { ENTER(); (void)p; (void)n; return OK; }
EXPORT CUresult cuMemSetAccess(CUdeviceptr p, size_t n, const void *d, size_t c)
{
    ENTER(); (void)p; (void)n; (void)d; (void)c; return OK;
}
EXPORT CUresult cuMemGetAllocationGranularity(size_t *g, const void *prop, int opt)
{
    ENTER(); (void)prop; (void)opt;
    if (!g) return INVALID_VALUE;
    *g = 2u << 20;
    return OK;
}

/* copies */
static CUresult copy(void *d, const void *s, size_t n)
{
    if (n && (!d || !s)) return INVALID_VALUE;
    memmove(d, s, n);
    return OK;
}
#define P(x) ((void *)(uintptr_t)(x))
EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void *s, size_t n) { ENTER(); return copy(P(d), s, n); }
EXPORT CUresult cuMemcpyHtoD_v2_ptds(CUdeviceptr d, const void *s, size_t n) { ENTER(); return copy(P(d), s, n); }
EXPORT CUresult cuMemcpyDtoH_v2(void *d, CUdeviceptr s, size_t n) { ENTER(); return copy(d, P(s), n); }
EXPORT CUresult cuMemcpyDtoH_v2_ptds(void *d, CUdeviceptr s, size_t n) { ENTER(); return copy(d, P(s), n); }
EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { ENTER(); return copy(P(d), P(s), n); }
EXPORT CUresult cuMemcpyDtoD_v2_ptds(CUdeviceptr d, CUdeviceptr s, size_t n) { ENTER(); return copy(P(d), P(s), n); }
EXPORT CUresult cuMemcpy(CUdeviceptr d, CUdeviceptr s, size_t n) { ENTER(); return copy(P(d), P(s), n); }
EXPORT CUresult cuMemcpy_ptds(CUdeviceptr d, CUdeviceptr s, size_t n) { ENTER(); return copy(P(d), P(s), n); }
EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *s, size_t n, void *st)
{
    ENTER(); (void)st; return copy(P(d), s, n);
}
EXPORT CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr d, const void *s, size_t n, void *st)
{
    ENTER(); (void)st; return copy(P(d), s, n);
}
EXPORT CUresult cuMemcpyDtoHAsync_v2(void *d, CUdeviceptr s, size_t n, void *st)
{
    ENTER(); (void)st; return copy(d, P(s), n);
}
EXPORT CUresult cuMemcpyDtoHAsync_v2_ptsz(void *d, CUdeviceptr s, size_t n, void *st)
{
    ENTER(); (void)st; return copy(d, P(s), n);
}
EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void *st)
{
    ENTER(); (void)st; return copy(P(d), P(s), n);
}
EXPORT CUresult cuMemcpyDtoDAsync_v2_ptsz(CUdeviceptr d, CUdeviceptr s, size_t n, void *st)
{
    ENTER(); (void)st; return copy(P(d), P(s), n);
}
EXPORT CUresult cuMemcpyAsync(CUdeviceptr d, CUdeviceptr s, size_t n, void *st) { ENTER(); (void)st; return copy(P(d), P(s), n); }
EXPORT CUresult cuMemcpyAsync_ptsz(CUdeviceptr d, CUdeviceptr s, size_t n, void *st)
{
    ENTER(); (void)st; return copy(P(d), P(s), n);
}

/* modules and kernels */
struct kernel { const char *name; void (*run)(void **params); };
static void k_noop(void **params) { (void)params; }
static void k_add_one(void **params)
{
    int *a = (int *)(uintptr_t)*(CUdeviceptr *)params[0];
    int n = *(int *)params[1];
    for (int i = 0; i < n; i++)
        a[i] += 1;
}
static struct kernel kernels[] = {{"noop", k_noop}, {"add_one", k_add_one}};
static char module_tag;

EXPORT CUresult cuModuleLoadData(void **mod, const void *image)
{
    ENTER();
    if (!mod || !image) return INVALID_VALUE;
    *mod = &module_tag;
    return OK;
}
EXPORT CUresult cuModuleLoadDataEx(void **mod, const void *image, unsigned int n, void *o, void **v)
{
    (void)n; (void)o; (void)v;
    return cuModuleLoadData(mod, image);
}
EXPORT CUresult cuModuleUnload(void *mod) { ENTER(); (void)mod; return OK; }
static CUresult find_kernel(void **f, const char *name)
{
    if (!f || !name) return INVALID_VALUE;
    for (size_t i = 0; i < sizeof kernels / sizeof kernels[0]; i++)
        if (strcmp(kernels[i].name, name) == 0) {
            *f = &kernels[i];
            return OK;
        }
    return NOT_FOUND;
}
EXPORT CUresult cuModuleGetFunction(void **f, void *mod, const char *name) { ENTER(); (void)mod; return find_kernel(f, name); }
EXPORT CUresult cuLibraryLoadData(void **lib, const void *code, void *jo, void **jv, unsigned int nj, void *lo,
                                  void **lv, unsigned int nl)
{
    ENTER(); (void)jo; (void)jv; (void)nj; (void)lo; (void)lv; (void)nl;
    if (!lib || !code) return INVALID_VALUE;
    *lib = &module_tag;
    return OK;
}
EXPORT CUresult cuLibraryGetKernel(void **k, void *lib, const char *name) { ENTER(); (void)lib; return find_kernel(k, name); }

static CUresult launch(void *f, void **params)
{
    if (!f) return INVALID_VALUE;
    ((struct kernel *)f)->run(params);
    atomic_fetch_add_explicit(&launches, 1, memory_order_relaxed);
    return OK;
}
EXPORT CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                               unsigned shm, void *s, void **kp, void **ex)
{
    ENTER(); (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shm; (void)s; (void)ex;
    return launch(f, kp);
}
EXPORT CUresult cuLaunchKernel_ptsz(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                    unsigned bz, unsigned shm, void *s, void **kp, void **ex)
{
    ENTER(); (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shm; (void)s; (void)ex;
    return launch(f, kp);
}
EXPORT CUresult cuLaunchKernelEx(const void *cfg, void *f, void **kp, void **ex) { ENTER(); (void)cfg; (void)ex; return launch(f, kp); }
EXPORT CUresult cuLaunchKernelEx_ptsz(const void *cfg, void *f, void **kp, void **ex)
{
    ENTER(); (void)cfg; (void)ex; return launch(f, kp);
}
EXPORT CUresult cuLaunchCooperativeKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                          unsigned bz, unsigned shm, void *s, void **kp)
{
    ENTER(); (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shm; (void)s;
    return launch(f, kp);
}
EXPORT CUresult cuLaunchCooperativeKernel_ptsz(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                               unsigned by, unsigned bz, unsigned shm, void *s, void **kp)
{
    ENTER(); (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shm; (void)s;
    return launch(f, kp);
}
EXPORT CUresult cuGraphLaunch(void *g, void *s) { ENTER(); (void)g; (void)s; atomic_fetch_add(&launches, 1); return OK; }
EXPORT CUresult cuGraphLaunch_ptsz(void *g, void *s) { ENTER(); (void)g; (void)s; atomic_fetch_add(&launches, 1); return OK; }

EXPORT CUresult cuGetErrorString(CUresult e, const char **s)
{
    if (!s) return INVALID_VALUE;
    switch (e) {
    case OK: *s = "no error"; break;
    case NOT_INITIALIZED: *s = "initialization error"; break;
    case STUB: *s = "CUDA driver is a stub library"; break;
    case NO_DEVICE: *s = "no CUDA-capable device is detected"; break;
    case 999: *s = "unknown error"; break;
    default: *s = NULL; return INVALID_VALUE;
    }
    return OK;
}

/* Entry points by (base name, first version, per-thread): the ABI the driver hands out. */
typedef CUresult (*anyfn)(void);
#define F(x) ((void *)(x))
EXPORT CUresult cuGetProcAddress(const char *sym, void **pfn, int ver, cuuint64_t flags);
EXPORT CUresult cuGetProcAddress_v2(const char *sym, void **pfn, int ver, cuuint64_t flags, int *status);
static const struct entry { const char *base; int ver; int ptds; void *fn; } entries[] = {
    {"cuGetProcAddress", 11030, 0, F(cuGetProcAddress)}, {"cuGetProcAddress", 12000, 0, F(cuGetProcAddress_v2)},
    {"cuInit", 2000, 0, F(cuInit)}, {"cuDriverGetVersion", 2020, 0, F(cuDriverGetVersion)},
    {"cuDeviceGetCount", 2000, 0, F(cuDeviceGetCount)}, {"cuDeviceGet", 2000, 0, F(cuDeviceGet)},
    {"cuDeviceGetName", 2000, 0, F(cuDeviceGetName)}, {"cuDeviceGetUuid", 9020, 0, F(cuDeviceGetUuid)},
    {"cuDeviceGetUuid", 11040, 0, F(cuDeviceGetUuid_v2)}, {"cuDeviceGetPCIBusId", 4010, 0, F(cuDeviceGetPCIBusId)},
    {"cuDeviceTotalMem", 3020, 0, F(cuDeviceTotalMem_v2)}, {"cuDeviceGetAttribute", 2000, 0, F(cuDeviceGetAttribute)},
    {"cuDevicePrimaryCtxRetain", 7000, 0, F(cuDevicePrimaryCtxRetain)},
    {"cuDevicePrimaryCtxRelease", 7000, 0, F(cuDevicePrimaryCtxRelease)},
    {"cuDevicePrimaryCtxRelease", 11000, 0, F(cuDevicePrimaryCtxRelease_v2)},
    {"cuCtxCreate", 3020, 0, F(cuCtxCreate_v2)}, {"cuCtxCreate", 11040, 0, F(cuCtxCreate_v3)},
    {"cuCtxCreate", 12050, 0, F(cuCtxCreate_v4)}, {"cuCtxSetCurrent", 4000, 0, F(cuCtxSetCurrent)},
    {"cuCtxSynchronize", 2000, 0, F(cuCtxSynchronize)},
    {"cuStreamSynchronize", 2000, 0, F(cuStreamSynchronize)}, {"cuStreamSynchronize", 7000, 1, F(cuStreamSynchronize_ptsz)},
    {"cuMemGetInfo", 3020, 0, F(cuMemGetInfo_v2)},
    {"cuMemAlloc", 3020, 0, F(cuMemAlloc_v2)}, {"cuMemFree", 3020, 0, F(cuMemFree_v2)},
    {"cuMemAllocManaged", 6000, 0, F(cuMemAllocManaged)}, {"cuMemAllocPitch", 3020, 0, F(cuMemAllocPitch_v2)},
    {"cuMemAllocAsync", 11020, 0, F(cuMemAllocAsync)}, {"cuMemAllocAsync", 11020, 1, F(cuMemAllocAsync_ptsz)},
    {"cuMemFreeAsync", 11020, 0, F(cuMemFreeAsync)}, {"cuMemFreeAsync", 11020, 1, F(cuMemFreeAsync_ptsz)},
    {"cuMemAllocFromPoolAsync", 11020, 0, F(cuMemAllocFromPoolAsync)},
    {"cuMemAllocFromPoolAsync", 11020, 1, F(cuMemAllocFromPoolAsync_ptsz)},
    {"cuMemCreate", 10020, 0, F(cuMemCreate)}, {"cuMemRelease", 10020, 0, F(cuMemRelease)},
    {"cuMemHostAlloc", 2020, 0, F(cuMemHostAlloc)}, {"cuMemFreeHost", 2000, 0, F(cuMemFreeHost)},
    {"cuMemcpyHtoD", 3020, 0, F(cuMemcpyHtoD_v2)}, {"cuMemcpyHtoD", 7000, 1, F(cuMemcpyHtoD_v2_ptds)},
    {"cuMemcpyDtoH", 3020, 0, F(cuMemcpyDtoH_v2)}, {"cuMemcpyDtoH", 7000, 1, F(cuMemcpyDtoH_v2_ptds)},
    {"cuMemcpyDtoD", 3020, 0, F(cuMemcpyDtoD_v2)}, {"cuMemcpyDtoD", 7000, 1, F(cuMemcpyDtoD_v2_ptds)},
    {"cuMemcpy", 4000, 0, F(cuMemcpy)}, {"cuMemcpy", 7000, 1, F(cuMemcpy_ptds)},
    {"cuMemcpyHtoDAsync", 3020, 0, F(cuMemcpyHtoDAsync_v2)}, {"cuMemcpyHtoDAsync", 7000, 1, F(cuMemcpyHtoDAsync_v2_ptsz)},
    {"cuMemcpyDtoHAsync", 3020, 0, F(cuMemcpyDtoHAsync_v2)}, {"cuMemcpyDtoHAsync", 7000, 1, F(cuMemcpyDtoHAsync_v2_ptsz)},
    {"cuMemcpyDtoDAsync", 3020, 0, F(cuMemcpyDtoDAsync_v2)}, {"cuMemcpyDtoDAsync", 7000, 1, F(cuMemcpyDtoDAsync_v2_ptsz)},
    {"cuMemcpyAsync", 4000, 0, F(cuMemcpyAsync)}, {"cuMemcpyAsync", 7000, 1, F(cuMemcpyAsync_ptsz)},
    {"cuModuleLoadData", 2000, 0, F(cuModuleLoadData)}, {"cuModuleLoadDataEx", 2010, 0, F(cuModuleLoadDataEx)},
    {"cuModuleGetFunction", 2000, 0, F(cuModuleGetFunction)}, {"cuModuleUnload", 2000, 0, F(cuModuleUnload)},
    {"cuLibraryLoadData", 12000, 0, F(cuLibraryLoadData)}, {"cuLibraryGetKernel", 12000, 0, F(cuLibraryGetKernel)},
    {"cuLaunchKernel", 4000, 0, F(cuLaunchKernel)}, {"cuLaunchKernel", 7000, 1, F(cuLaunchKernel_ptsz)},
    {"cuLaunchKernelEx", 11060, 0, F(cuLaunchKernelEx)}, {"cuLaunchKernelEx", 11060, 1, F(cuLaunchKernelEx_ptsz)},
    {"cuLaunchCooperativeKernel", 9000, 0, F(cuLaunchCooperativeKernel)},
    {"cuLaunchCooperativeKernel", 9000, 1, F(cuLaunchCooperativeKernel_ptsz)},
    {"cuGraphLaunch", 10000, 0, F(cuGraphLaunch)}, {"cuGraphLaunch", 10000, 1, F(cuGraphLaunch_ptsz)},
    {"cuGetErrorString", 6000, 0, F(cuGetErrorString)},
};

/* flags: 0 default (legacy here), 1 legacy stream, 2 per-thread default stream (falls back to legacy). */
static void *lookup(const char *sym, int ver, cuuint64_t flags, int *status)
{
    const struct entry *best = NULL;
    int found_name = 0;
    int want_pt = (flags & 2) != 0;
    for (int pass = want_pt ? 1 : 0; pass >= 0 && !best; pass--) {
        for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++) {
            const struct entry *e = &entries[i];
            if (strcmp(e->base, sym) != 0)
                continue;
            found_name = 1;
            if (e->ptds != pass || e->ver > ver)
                continue;
            if (!best || e->ver > best->ver)
                best = e;
        }
    }
    *status = best ? 0 : found_name ? 2 : 1;
    return best ? best->fn : NULL;
}

EXPORT CUresult cuGetProcAddress_v2(const char *sym, void **pfn, int ver, cuuint64_t flags, int *status)
{
    if (stub_mode())
        return STUB;
    if (!sym || !pfn)
        return INVALID_VALUE;
    if (ver > driver_version())
        return INVALID_VALUE;
    int st;
    *pfn = lookup(sym, ver, flags, &st);
    if (status)
        *status = st;
    return OK;
}

EXPORT CUresult cuGetProcAddress(const char *sym, void **pfn, int ver, cuuint64_t flags)
{
    if (stub_mode())
        return STUB;
    if (!sym || !pfn)
        return INVALID_VALUE;
    int st;
    *pfn = lookup(sym, ver, flags, &st);
    return st == 0 ? OK : NOT_FOUND;
}

EXPORT CUresult cuGetExportTable(const void **table, const void *id) { (void)id; if (table) *table = NULL; return NOT_FOUND; }

EXPORT unsigned long long mockcuda_launches(void) { return atomic_load(&launches); }
