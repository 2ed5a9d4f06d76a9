/* libollama_gpu_shim.so: observe a process's CUDA from the inside, change nothing (DESIGN.md principle 3).
 *
 * What is hooked, and why (reference/cuda-interposition.md sections 1, 3, 4, 7, 8):
 *   dlopen   library loads of interest (libggml*, libcudart*, libcublas*, libcuda.so*, libnvidia-ml*) and the
 *            loader's error text.  glibc resolves a bare name with the *caller's* DT_RUNPATH/DT_RPATH, expands
 *            $ORIGIN relative to the caller and loads into the caller's namespace, all from the return address
 *            of the dlopen call.  A hook that simply calls the real dlopen makes the shim the caller and breaks
 *            RUNPATH-relative loads (verified: a library with RUNPATH=$ORIGIN/deps loading "libdep.so" fails under
 *            such a hook).  So: names we do not watch are tail-jumped to the real dlopen (no frame of ours); watched
 *            names on x86-64 call the real dlopen with a return address *inside the caller's object* (a `ret`
 *            byte found in its executable segment) which returns into our continuation; elsewhere (or with shadow
 *            stacks on) watched names with a '/' and no '$' are called normally (caller-independent) and bare
 *            names are tail-jumped unobserved.
 *   dlsym    RTLD_NEXT and RTLD_DEFAULT depend on the caller (next object after the caller; the caller's own
 *            scope), so they are tail-jumped.  A lookup on a real handle is forwarded, and a result that is the
 *            real address of a wrapped driver symbol (resolved on that same handle) is replaced by its wrapper.
 *   dlerror  the dlopen hook has to take the loader's text with the real dlerror(); it keeps a copy and hands it
 *            to the caller's next dlerror() exactly once, so the caller sees what it would have seen (the text, and
 *            the errno glibc's dlerror() sets from the loader's error code).
 *   dlclose, dlinfo, dlmopen  forwarded unchanged; they only clear that pending text as glibc would.
 *   cuGetProcAddress{,_v2}  wrapped (never exported): the real call first with the caller's exact arguments, then
 *            *pfn is replaced only when it equals the real address of a wrapped symbol; this also covers the
 *            self-query ("cuGetProcAddress" at 11030/12000), through which cudart gets every other entry point.
 * No cu* symbol is exported (exports.map; a test checks nm -D): an exported cu* symbol could satisfy another
 * library's undefined reference and turn a load failure into a success.
 * dlvsym is deliberately not interposed: it is how the shim finds the real dlsym (with RTLD_NEXT), not _dl_sym
 * (GLIBC_PRIVATE, gone in new glibc: HAMi-core #174) and not dlopen("libc.so.6")+dlsym (recurses into the hook:
 * vgpu-manager PR #89).
 */
#define _GNU_SOURCE
#include "shim.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __has_attribute
#define __has_attribute(x) 0
#endif
#if __has_attribute(musttail)
#define OGPU_MUSTTAIL __attribute__((musttail))
#else
#define OGPU_MUSTTAIL /* gcc -O2 turns `return f(args);` with identical arguments into a jump; tests check */
#endif

typedef void *(*dlopen_fn)(const char *, int);
typedef void *(*dlsym_fn)(void *, const char *);
typedef char *(*dlerror_fn)(void);
typedef int (*dlclose_fn)(void *);
typedef int (*dlinfo_fn)(void *, int, void *);
typedef void *(*dlmopen_fn)(Lmid_t, const char *, int);

/* Real functions: resolved lazily and idempotently by whichever thread needs them first (no lock: a hook may
 * run inside the loader's lock, from another library's constructor, before our constructor). */
static _Atomic(dlsym_fn) real_dlsym;
static _Atomic(dlopen_fn) real_dlopen;
static _Atomic(dlerror_fn) real_dlerror;
static _Atomic(dlclose_fn) real_dlclose;
static _Atomic(dlinfo_fn) real_dlinfo;
static _Atomic(dlmopen_fn) real_dlmopen;

static OGPU_TLS int tls_resolving;

#if defined(__x86_64__)
#define OGPU_GLIBC_BASE "GLIBC_2.2.5"
#elif defined(__aarch64__) || defined(__powerpc64__)
#define OGPU_GLIBC_BASE "GLIBC_2.17"
#elif defined(__riscv)
#define OGPU_GLIBC_BASE "GLIBC_2.27"
#else
#define OGPU_GLIBC_BASE "GLIBC_2.2"
#endif

static void resolve_real(void)
{
    if (tls_resolving)
        return;
    tls_resolving = 1;
    int saved = errno;
    /* Both versions of dlsym are the same code; try the one this glibc has first so that no failed lookup
     * leaves an error behind (a failed dl* call would replace the caller's pending dlerror text). */
#if __GLIBC_PREREQ(2, 34)
    const char *first = "GLIBC_2.34", *second = OGPU_GLIBC_BASE;
#else
    const char *first = OGPU_GLIBC_BASE, *second = "GLIBC_2.34";
#endif
    int failed = 0;
    dlsym_fn ds = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", first);
    if (!ds) {
        failed = 1;
        ds = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", second);
    }
    if (ds) {
        /* Called through a pointer from the shim, RTLD_NEXT means "after the shim": libc/libdl (or the next
         * preloaded interposer), with their default versions. */
        atomic_store(&real_dlopen, (dlopen_fn)ds(RTLD_NEXT, "dlopen"));
        atomic_store(&real_dlerror, (dlerror_fn)ds(RTLD_NEXT, "dlerror"));
        atomic_store(&real_dlclose, (dlclose_fn)ds(RTLD_NEXT, "dlclose"));
        atomic_store(&real_dlinfo, (dlinfo_fn)ds(RTLD_NEXT, "dlinfo"));
        atomic_store(&real_dlmopen, (dlmopen_fn)ds(RTLD_NEXT, "dlmopen"));
        atomic_store(&real_dlsym, ds);
        dlerror_fn de = atomic_load(&real_dlerror);
        if (failed && de)
            (void)de(); /* consume the failed first attempt's message */
    }
    errno = saved;
    tls_resolving = 0;
}

static inline void ensure_init(void)
{
    if (OGPU_UNLIKELY(atomic_load_explicit(&real_dlsym, memory_order_acquire) == NULL))
        resolve_real();
    ogpu_events_init();
}

/* --- the caller's pending dlerror() text ------------------------------------------------------------------ */

#define OGPU_ERRBUF 2048
static OGPU_TLS int tls_pending;
static OGPU_TLS const char *tls_pending_text;
/* glibc's dlerror() formats "…: %m" with errno set to the loader's error code (dlfcn/dlerror.c), so a caller's
 * dlerror() after a failed dlopen of a missing file leaves errno == ENOENT.  The hook's own dlerror() call has that
 * effect inside our save/restore; the value is kept and set again when the caller takes the text (issue 15). */
static OGPU_TLS int tls_pending_errno; /* 0: glibc's dlerror() left errno alone */
static __thread char tls_errbuf[OGPU_ERRBUF]; /* default TLS model: keeps the static TLS use small */

static inline void clear_pending(void) { tls_pending = 0; }

/* Take the loader's message for a failed dlopen.  The copy outlives glibc's buffer, which any later dl* call
 * may free; a longer message is handed back as glibc's own pointer (what glibc itself would return). */
static const char *take_dlerror(void)
{
    dlerror_fn de = atomic_load(&real_dlerror);
    errno = 0; /* the caller's errno is saved by ogpu_dlopen_done */
    char *e = de ? de() : NULL;
    tls_pending_errno = errno;
    if (!e)
        return NULL;
    size_t n = strlen(e);
    char *buf = tls_errbuf;
    if (n < OGPU_ERRBUF) {
        memcpy(buf, e, n + 1);
        tls_pending_text = buf;
    } else {
        tls_pending_text = e;
    }
    tls_pending = 1;
    return tls_pending_text;
}

__attribute__((visibility("default"))) char *dlerror(void)
{
    if (tls_pending) {
        tls_pending = 0;
        if (tls_pending_errno)
            errno = tls_pending_errno; /* what glibc's own dlerror() would have left */
        return (char *)tls_pending_text;
    }
    ensure_init();
    dlerror_fn de = atomic_load(&real_dlerror);
    return de ? de() : NULL;
}

__attribute__((visibility("default"))) int dlclose(void *handle)
{
    ensure_init();
    clear_pending();
    dlclose_fn f = atomic_load(&real_dlclose);
    return f ? f(handle) : -1;
}

__attribute__((visibility("default"))) int dlinfo(void *handle, int request, void *arg)
{
    ensure_init();
    clear_pending();
    dlinfo_fn f = atomic_load(&real_dlinfo);
    return f ? f(handle, request, arg) : -1;
}

/* --- identity tables: one per libcuda copy ---------------------------------------------------------------- */

#define OGPU_SLOTS 2
static void *real_tab[OGPU_SLOTS][FN_COUNT];
static _Atomic(uintptr_t) slot_base[OGPU_SLOTS]; /* load base of the object; 0 = free */
static _Atomic int slot_ready[OGPU_SLOTS];

const char *const ogpu_fn_names[FN_COUNT] = {
#define OGPU_NAME(name, cls, params, args, after) #name,
    OGPU_CUDA_FUNCTIONS(OGPU_NAME)
#undef OGPU_NAME
};

static int fn_index(const char *name)
{
    for (int i = 0; i < FN_COUNT; i++)
        if (strcmp(name, ogpu_fn_names[i]) == 0)
            return i;
    return -1;
}

/* --- wrappers, generated from the one list ---------------------------------------------------------------- */

/* One body for every wrapper: call the driver, the entry's own `after`, then the class's `tail`. */
#define OGPU_WRAP_BODY(slot, name, params, args, after, tail) \
    static CUresult w##slot##_##name params \
    { \
        CUresult r = ((CUresult(*) params)real_tab[slot][FN_##name]) args; \
        after; \
        tail; \
        return r; \
    }
#define OGPU_REPORT_ERROR(name) \
    if (OGPU_UNLIKELY(r != 0)) \
        ogpu_cuda_error(FN_##name, r)
#define OGPU_WRAP_HOT(slot, name, params, args, after) \
    OGPU_WRAP_BODY(slot, name, params, args, after, OGPU_REPORT_ERROR(name); ogpu_tick())
/* Cold wrappers do not tick: the first hot call of a thread is the one that looks at the clock, so the first
 * launch/alloc/copy of a process sends a snapshot at once. */
#define OGPU_WRAP_COLD(slot, name, params, args, after) \
    OGPU_WRAP_BODY(slot, name, params, args, after, OGPU_REPORT_ERROR(name))
#define OGPU_WRAP_INIT(slot, name, params, args, after) OGPU_WRAP_BODY(slot, name, params, args, after, (void)0)
#define OGPU_WRAP_GPA(slot, name, params, args, after) /* hand-written below */

#define OGPU_WRAP0(name, cls, params, args, after) OGPU_WRAP_##cls(0, name, params, args, after)
#define OGPU_WRAP1(name, cls, params, args, after) OGPU_WRAP_##cls(1, name, params, args, after)
OGPU_CUDA_FUNCTIONS(OGPU_WRAP0)
OGPU_CUDA_FUNCTIONS(OGPU_WRAP1)

static void *substitute_any(void *p);

typedef CUresult (*gpa4_fn)(const char *, void **, int, cuuint64_t);
typedef CUresult (*gpa5_fn)(const char *, void **, int, cuuint64_t, int *);

/* Rules of reference section 1.4: real call first with the caller's exact arguments; result and status
 * unchanged; *pfn replaced only by identity; NULL pfn/status and the "" probe pass through. */
#define OGPU_GPA_WRAPPERS(slot) \
    static CUresult w##slot##_cuGetProcAddress(const char *sym, void **pfn, int ver, cuuint64_t flags) \
    { \
        CUresult r = ((gpa4_fn)real_tab[slot][FN_cuGetProcAddress])(sym, pfn, ver, flags); \
        if (r == 0 && pfn && *pfn) \
            *pfn = substitute_any(*pfn); \
        return r; \
    } \
    static CUresult w##slot##_cuGetProcAddress_v2(const char *sym, void **pfn, int ver, cuuint64_t flags, \
                                                  int *status) \
    { \
        CUresult r = ((gpa5_fn)real_tab[slot][FN_cuGetProcAddress_v2])(sym, pfn, ver, flags, status); \
        if (r == 0 && pfn && *pfn) \
            *pfn = substitute_any(*pfn); \
        return r; \
    }
OGPU_GPA_WRAPPERS(0)
OGPU_GPA_WRAPPERS(1)

static void *const wrappers[OGPU_SLOTS][FN_COUNT] = {
#define OGPU_ENTRY0(name, cls, params, args, after) (void *)w0_##name,
#define OGPU_ENTRY1(name, cls, params, args, after) (void *)w1_##name,
    {OGPU_CUDA_FUNCTIONS(OGPU_ENTRY0)},
    {OGPU_CUDA_FUNCTIONS(OGPU_ENTRY1)},
#undef OGPU_ENTRY0
#undef OGPU_ENTRY1
};

static void *substitute_any(void *p)
{
    for (int s = 0; s < OGPU_SLOTS; s++) {
        if (!atomic_load_explicit(&slot_ready[s], memory_order_acquire))
            continue;
        for (int i = 0; i < FN_COUNT; i++)
            if (real_tab[s][i] == p)
                return wrappers[s][i];
    }
    return p;
}

/* Fill a slot for the object that defines `p`, resolving every wrapped name on the caller's own handle (never
 * on ours or the global scope: that finds the hook itself, HAMi-core PRs #215/#326).  Lock-free: a thread that
 * loses the race, or finds the slot still being filled, just does not wrap this time (fail open). */
static int slot_for(void *handle, void *p)
{
    Dl_info info;
    if (!dladdr(p, &info) || !info.dli_fbase)
        return -1;
    uintptr_t base = (uintptr_t)info.dli_fbase;
    for (int s = 0; s < OGPU_SLOTS; s++)
        if (atomic_load(&slot_base[s]) == base)
            return atomic_load_explicit(&slot_ready[s], memory_order_acquire) ? s : -1;
    for (int s = 0; s < OGPU_SLOTS; s++) {
        uintptr_t expected = 0;
        if (!atomic_compare_exchange_strong(&slot_base[s], &expected, base))
            continue;
        dlsym_fn ds = atomic_load(&real_dlsym);
        int missing = 0;
        for (int i = 0; i < FN_COUNT; i++) {
            real_tab[s][i] = ds(handle, ogpu_fn_names[i]);
            missing |= real_tab[s][i] == NULL;
        }
        if (missing) {
            dlerror_fn de = atomic_load(&real_dlerror);
            if (de)
                (void)de(); /* the caller's lookup succeeded: leave no error behind, as glibc would */
        }
        atomic_store_explicit(&slot_ready[s], 1, memory_order_release);
        return s;
    }
    return -1;
}

/* --- dlsym ------------------------------------------------------------------------------------------------ */

OGPU_HIDDEN __attribute__((used)) void *ogpu_dlsym_handle(void *handle, const char *name)
{
    dlsym_fn ds = atomic_load(&real_dlsym);
    void *p = ds(handle, name);
    if (!p || !name || name[0] != 'c' || name[1] != 'u')
        return p;
    int id = fn_index(name);
    if (id < 0)
        return p;
    int saved = errno;
    void *out = p;
    for (int s = 0; s < OGPU_SLOTS && out == p; s++)
        if (atomic_load_explicit(&slot_ready[s], memory_order_acquire) && real_tab[s][id] == p)
            out = wrappers[s][id];
    if (out == p) {
        int s = slot_for(handle, p);
        if (s >= 0 && real_tab[s][id] == p)
            out = wrappers[s][id];
    }
    errno = saved;
    return out;
}

/* Decides where dlsym jumps; the stub below jumps there with the caller's return address untouched. */
OGPU_HIDDEN __attribute__((used)) void *ogpu_dlsym_plan(void *handle, const char *name)
{
    (void)name;
    ensure_init();
    clear_pending();
    void *real = (void *)atomic_load(&real_dlsym);
    if (handle == RTLD_NEXT || handle == RTLD_DEFAULT || !atomic_load_explicit(&ogpu_active, memory_order_relaxed))
        return real;
    return real ? (void *)ogpu_dlsym_handle : NULL;
}

OGPU_HIDDEN __attribute__((used)) void *ogpu_dlmopen_plan(void)
{
    ensure_init();
    clear_pending();
    return (void *)atomic_load(&real_dlmopen);
}

/* --- dlopen ----------------------------------------------------------------------------------------------- */

struct ogpu_plan {
    void *fn;     /* where to jump with the caller's arguments */
    void *gadget; /* non-NULL: call fn with this return address (a `ret` in the caller's object) */
};

static _Atomic int dlopen_events;
#define OGPU_MAX_DLOPEN_EVENTS 64

static int watched(const char *name)
{
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    return strncmp(base, "libggml", 7) == 0 || strncmp(base, "libcudart", 9) == 0 ||
           strncmp(base, "libcublas", 9) == 0 || strncmp(base, "libcuda.so", 10) == 0 ||
           strncmp(base, "libnvidia-ml", 12) == 0;
}

static void report_dlopen(const char *name, int mode, void *handle, const char *err)
{
    char buf[OGPU_MSG_MAX];
    struct ogpu_json j = {buf, 0, sizeof buf, 0};
    ogpu_j_key(&j, "name");
    ogpu_j_str(&j, name, 1024);
    ogpu_j_key(&j, "ok");
    ogpu_j_raw(&j, handle ? "true" : "false");
    ogpu_j_key(&j, "flags");
    ogpu_j_i64(&j, mode);
    if (handle) {
        struct link_map *lm = NULL;
        dlinfo_fn di = atomic_load(&real_dlinfo);
        /* After a successful dlopen glibc holds no error, and a successful dlinfo leaves none either. */
        if (di && di(handle, RTLD_DI_LINKMAP, &lm) == 0 && lm && lm->l_name) {
            ogpu_j_key(&j, "path");
            ogpu_j_str(&j, lm->l_name, 1024);
        }
    } else {
        ogpu_j_key(&j, "error");
        ogpu_j_str(&j, err ? err : "", 2048);
    }
    ogpu_j_raw(&j, "}");
    ogpu_emit("dlopen", &j);
}

/* After the real dlopen returned (both the gadget path and the plain-call path end here). */
OGPU_HIDDEN __attribute__((used)) void *ogpu_dlopen_done(void *handle, const char *name, int mode)
{
    int saved = errno;
    const char *err = NULL;
    if (!handle)
        err = take_dlerror();
    report_dlopen(name, mode, handle, err);
    errno = saved;
    return handle;
}

/* Used where the caller does not matter (a path with '/' and no '$'): an ordinary call. */
static void *dlopen_observed(const char *name, int mode)
{
    dlopen_fn f = atomic_load(&real_dlopen);
    return ogpu_dlopen_done(f(name, mode), name, mode);
}

#if defined(__x86_64__)
static _Atomic int shstk_state; /* 0 unknown, 1 off, 2 on */

static int shadow_stack_on(void)
{
    int st = atomic_load_explicit(&shstk_state, memory_order_relaxed);
    if (st == 0) {
        int saved = errno;
        unsigned long features = 0;
        /* ARCH_SHSTK_STATUS (Linux 6.6+): a fake return address would fault under a shadow stack. */
        long rc = syscall(SYS_arch_prctl, 0x5005, &features);
        st = (rc == 0 && (features & 1)) ? 2 : 1;
        atomic_store_explicit(&shstk_state, st, memory_order_relaxed);
        errno = saved;
    }
    return st == 2;
}

struct gadget_search {
    uintptr_t ret;
    void *found;
    void *main_gadget;
    int first;
};

static void *find_ret_byte(struct dl_phdr_info *info)
{
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X) || !(ph->p_flags & PF_R))
            continue;
        const unsigned char *p = (const unsigned char *)(info->dlpi_addr + ph->p_vaddr);
        const void *hit = memchr(p, 0xc3, ph->p_filesz);
        if (hit)
            return (void *)hit;
    }
    return NULL;
}

static int gadget_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct gadget_search *g = data;
    if (g->first) {
        g->first = 0;
        g->main_gadget = find_ret_byte(info); /* glibc treats a caller outside every object as the main program */
    }
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && g->ret >= lo && g->ret < lo + ph->p_memsz) {
            g->found = find_ret_byte(info);
            return 1;
        }
    }
    return 0;
}

static void *caller_gadget(void *ret)
{
    if (shadow_stack_on() || ogpu_debug_enabled() == 2)
        return NULL;
    struct gadget_search g = {(uintptr_t)ret, NULL, NULL, 1};
    int hit = dl_iterate_phdr(gadget_cb, &g);
    return hit ? g.found : g.main_gadget;
}
#else
static void *caller_gadget(void *ret)
{
    (void)ret;
    return NULL;
}
#endif

OGPU_HIDDEN __attribute__((used)) struct ogpu_plan ogpu_dlopen_plan(const char *name, int mode, void *ret)
{
    (void)mode;
    ensure_init();
    clear_pending();
    struct ogpu_plan plan = {(void *)atomic_load(&real_dlopen), NULL};
    if (!plan.fn || !name || !atomic_load_explicit(&ogpu_active, memory_order_relaxed) || !watched(name))
        return plan;
    if (atomic_fetch_add(&dlopen_events, 1) >= OGPU_MAX_DLOPEN_EVENTS)
        return plan;
    int saved = errno;
    plan.gadget = caller_gadget(ret);
    errno = saved;
    if (!plan.gadget && strchr(name, '/') && !strchr(name, '$'))
        plan.fn = (void *)dlopen_observed;
    return plan;
}

OGPU_HIDDEN void ogpu_dl_reset_after_fork(void)
{
    atomic_store(&dlopen_events, 0);
}

/* --- the exported entry points: stubs that keep the caller's return address -------------------------------- */

#if defined(__x86_64__)
__asm__(
    "    .text\n"
    "    .globl dlsym\n"
    "    .type dlsym, @function\n"
    "    .p2align 4\n"
    "dlsym:\n"
    "    endbr64\n"
    "    pushq %rdi\n"
    "    pushq %rsi\n"
    "    subq $8, %rsp\n"
    "    call ogpu_dlsym_plan\n"
    "    addq $8, %rsp\n"
    "    popq %rsi\n"
    "    popq %rdi\n"
    "    testq %rax, %rax\n"
    "    jz 1f\n"
    "    jmp *%rax\n" /* tail jump: real dlsym sees the caller's return address */
    "1:  ret\n"
    "    .size dlsym, .-dlsym\n"

    "    .globl dlmopen\n"
    "    .type dlmopen, @function\n"
    "    .p2align 4\n"
    "dlmopen:\n"
    "    endbr64\n"
    "    pushq %rdi\n"
    "    pushq %rsi\n"
    "    pushq %rdx\n"
    "    call ogpu_dlmopen_plan\n"
    "    popq %rdx\n"
    "    popq %rsi\n"
    "    popq %rdi\n"
    "    testq %rax, %rax\n"
    "    jz 1f\n"
    "    jmp *%rax\n"
    "1:  ret\n"
    "    .size dlmopen, .-dlmopen\n"

    "    .globl dlopen\n"
    "    .type dlopen, @function\n"
    "    .p2align 4\n"
    "dlopen:\n"
    "    endbr64\n"
    "    pushq %rdi\n"
    "    pushq %rsi\n"
    "    subq $8, %rsp\n"
    "    movq 24(%rsp), %rdx\n" /* the caller's return address */
    "    call ogpu_dlopen_plan\n" /* -> rax: function, rdx: gadget or 0 */
    "    addq $8, %rsp\n"
    "    popq %rsi\n"
    "    popq %rdi\n"
    "    testq %rdx, %rdx\n"
    "    jnz 2f\n"
    "    testq %rax, %rax\n"
    "    jz 1f\n"
    "    jmp *%rax\n" /* tail jump (unwatched name, or the plain observed call) */
    "1:  ret\n"
    /* Watched name: real dlopen(name, mode) with return address = a `ret` byte in the caller's object, which
     * then returns to 3: below.  Stack at the jump: gadget, continuation, name, mode, caller's return address. */
    "2:  subq $32, %rsp\n"
    "    movq %rdi, 16(%rsp)\n"
    "    movq %rsi, 24(%rsp)\n"
    "    leaq 3f(%rip), %r11\n"
    "    movq %r11, 8(%rsp)\n"
    "    movq %rdx, (%rsp)\n"
    "    jmp *%rax\n"
    "3:  movq %rax, %rdi\n"
    "    movq (%rsp), %rsi\n"
    "    movl 8(%rsp), %edx\n"
    "    subq $8, %rsp\n"
    "    call ogpu_dlopen_done\n"
    "    addq $24, %rsp\n"
    "    ret\n"
    "    .size dlopen, .-dlopen\n");
#else
/* Portable fallback: the same plans, reached through C tail calls (musttail where the compiler has it; gcc -O2
 * emits a jump for these).  No gadget: bare watched names are tail-called unobserved. */
__attribute__((visibility("default"))) void *dlsym(void *handle, const char *name)
{
    dlsym_fn f = (dlsym_fn)ogpu_dlsym_plan(handle, name);
    if (!f)
        return NULL;
    OGPU_MUSTTAIL return f(handle, name);
}

__attribute__((visibility("default"))) void *dlmopen(Lmid_t lmid, const char *name, int mode)
{
    dlmopen_fn f = (dlmopen_fn)ogpu_dlmopen_plan();
    if (!f)
        return NULL;
    OGPU_MUSTTAIL return f(lmid, name, mode);
}

__attribute__((visibility("default"))) void *dlopen(const char *name, int mode)
{
    struct ogpu_plan plan = ogpu_dlopen_plan(name, mode, __builtin_return_address(0));
    dlopen_fn f = (dlopen_fn)plan.fn;
    if (!f)
        return NULL;
    OGPU_MUSTTAIL return f(name, mode);
}
#endif

__attribute__((constructor)) static void ogpu_constructor(void)
{
    ensure_init();
}
