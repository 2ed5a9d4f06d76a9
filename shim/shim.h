/* Internal declarations of libollama_gpu_shim.so.  Nothing here is exported (see exports.map). */
#ifndef OGPU_SHIM_H
#define OGPU_SHIM_H

#include <features.h> /* defines __GLIBC__ on glibc, not on musl */

#if !defined(__linux__) || !defined(__GLIBC__)
/* musl (Alpine) and other C libraries are not supported: their dlopen/dlerror/RTLD_NEXT semantics differ and
 * nothing in Ollama's world ships for them.  shim_build reports this and the supervisor runs without the shim. */
#error "ollama-gpu shim: glibc required (musl is not supported)"
#endif

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#if __SIZEOF_POINTER__ != 8
#error "ollama-gpu shim: 64-bit targets only (CUdeviceptr is 64-bit there)"
#endif

#define OGPU_HIDDEN __attribute__((visibility("hidden")))
#define OGPU_TLS __thread __attribute__((tls_model("initial-exec")))
#define OGPU_LIKELY(x) __builtin_expect(!!(x), 1)
#define OGPU_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* --- the few CUDA driver types we need, declared by hand (no cuda.h on user machines) ------------------------ */
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long cuuint64_t;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef void *CUcontext;
typedef void *CUmodule;
typedef void *CUfunction;
typedef void *CUstream;
typedef void *CUgraphExec;
typedef void *CUlibrary;
typedef void *CUkernel;
typedef struct { unsigned char bytes[16]; } CUuuid;

#include "cuda_fns.h"

enum ogpu_fn {
#define OGPU_ENUM(name, cls, params, args, after) FN_##name,
    OGPU_CUDA_FUNCTIONS(OGPU_ENUM)
#undef OGPU_ENUM
    FN_COUNT
};

/* --- counters: sharded, relaxed atomics, summed when a snapshot is built ------------------------------------ */
enum { OGPU_L_KERNEL, OGPU_L_KERNEL_EX, OGPU_L_COOP, OGPU_L_GRAPH };
enum { OGPU_HTOD, OGPU_DTOH, OGPU_DTOD };
enum { OGPU_DEV_NAME, OGPU_DEV_PCI };

enum ogpu_counter {
    C_KERNEL, C_KERNEL_EX, C_COOP, C_GRAPH,     /* = OGPU_L_* */
    C_ALLOCS, C_FREES, C_ALLOC_BYTES, C_FREE_BYTES,
    C_HTOD, C_DTOH, C_DTOD,                     /* = C_HTOD + OGPU_* direction */
    C_COUNT
};

#define OGPU_SHARDS 64
struct ogpu_shard {
    _Atomic uint64_t c[C_COUNT];
} __attribute__((aligned(128)));

OGPU_HIDDEN extern struct ogpu_shard ogpu_shards[OGPU_SHARDS];
OGPU_HIDDEN extern _Atomic int ogpu_active;            /* 1 when OGPU_EVENTS is usable */
OGPU_HIDDEN extern OGPU_TLS unsigned ogpu_tls_shard;     /* shard index + 1; 0 = not assigned yet */
OGPU_HIDDEN extern OGPU_TLS unsigned ogpu_tls_tick;

OGPU_HIDDEN unsigned ogpu_assign_shard(void);
OGPU_HIDDEN void ogpu_maybe_flush(void);

/* The whole hot path: one relaxed add on this thread's shard, and every 64th call a look at a coarse clock. */
static inline void ogpu_count(enum ogpu_counter c, uint64_t n)
{
    unsigned s = ogpu_tls_shard;
    if (OGPU_UNLIKELY(s == 0))
        s = ogpu_assign_shard();
    atomic_fetch_add_explicit(&ogpu_shards[s - 1].c[c], n, memory_order_relaxed);
}

static inline void ogpu_tick(void)
{
    if (OGPU_UNLIKELY((ogpu_tls_tick++ & 63u) == 0))
        ogpu_maybe_flush();
}

/* --- events (events.c) --------------------------------------------------------------------------------------- */
#define OGPU_MSG_MAX 4096

struct ogpu_json {
    char *buf;
    size_t len, cap;
    int overflow;
};

OGPU_HIDDEN void ogpu_j_raw(struct ogpu_json *j, const char *s);
OGPU_HIDDEN void ogpu_j_str(struct ogpu_json *j, const char *s, size_t max_out); /* quoted, escaped, "…" */
OGPU_HIDDEN void ogpu_j_strn(struct ogpu_json *j, const char *s, size_t n, size_t max_out);
OGPU_HIDDEN void ogpu_j_u64(struct ogpu_json *j, uint64_t v);
OGPU_HIDDEN void ogpu_j_i64(struct ogpu_json *j, int64_t v);
OGPU_HIDDEN void ogpu_j_key(struct ogpu_json *j, const char *key); /* ,"key": */

/* Send one message: `kind` and a body that is either empty or starts with ',' (fields after the header).
 * Cold paths only.  Never blocks for long, never raises SIGPIPE, preserves errno. */
OGPU_HIDDEN void ogpu_emit(const char *kind, const struct ogpu_json *body);
OGPU_HIDDEN void ogpu_events_init(void);
OGPU_HIDDEN int ogpu_debug_enabled(void);
OGPU_HIDDEN void ogpu_debug(const char *msg);

/* recorders called by the wrappers (shim.c / events.c) */
OGPU_HIDDEN void ogpu_on_init(CUresult r);
OGPU_HIDDEN void ogpu_on_device_get(CUresult r, CUdevice *dev, int ordinal);
OGPU_HIDDEN void ogpu_on_device_str(CUresult r, int which, const char *s, int len, CUdevice dev);
OGPU_HIDDEN void ogpu_on_device_uuid(CUresult r, const CUuuid *uuid, CUdevice dev);
OGPU_HIDDEN void ogpu_on_device_mem(CUresult r, const size_t *bytes, CUdevice dev);
OGPU_HIDDEN void ogpu_on_ctx(CUresult r, CUdevice dev);
OGPU_HIDDEN void ogpu_cuda_error(enum ogpu_fn fn, CUresult r);
OGPU_HIDDEN void ogpu_track_alloc(uint64_t key, uint64_t bytes);
OGPU_HIDDEN void ogpu_track_free(uint64_t key);
OGPU_HIDDEN extern const char *const ogpu_fn_names[FN_COUNT];

static inline void ogpu_on_launch(CUresult r, int kind)
{
    if (OGPU_LIKELY(r == 0))
        ogpu_count((enum ogpu_counter)kind, 1);
}

static inline void ogpu_on_copy(CUresult r, int dir, size_t n)
{
    if (OGPU_LIKELY(r == 0))
        ogpu_count((enum ogpu_counter)(C_HTOD + dir), n);
}

static inline void ogpu_on_alloc(CUresult r, const CUdeviceptr *p, size_t n)
{
    if (r == 0 && p) {
        ogpu_count(C_ALLOCS, 1);
        ogpu_count(C_ALLOC_BYTES, n);
        ogpu_track_alloc(*p, n);
    }
}

static inline void ogpu_on_free(CUresult r, CUdeviceptr p)
{
    if (r == 0 && p) {
        ogpu_count(C_FREES, 1);
        ogpu_track_free(p);
    }
}

/* VMM physical allocations: keyed apart from device pointers (~handle cannot collide with a user address). */
static inline void ogpu_on_create(CUresult r, const CUmemGenericAllocationHandle *h, size_t n)
{
    if (r == 0 && h) {
        ogpu_count(C_ALLOCS, 1);
        ogpu_count(C_ALLOC_BYTES, n);
        ogpu_track_alloc(~*h, n);
    }
}

static inline void ogpu_on_release(CUresult r, CUmemGenericAllocationHandle h)
{
    if (r == 0) {
        ogpu_count(C_FREES, 1);
        ogpu_track_free(~h);
    }
}

#endif
