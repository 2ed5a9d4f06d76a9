/* Probe programs for the shim tests: one tiny path per mode, printing only deterministic text, so that stdout,
 * stderr and the exit code can be compared with and without the shim.
 *
 *   probe raw            dlopen("libcuda.so.1") + dlsym of concrete names, as cuBLASLt does
 *   probe gpa            cudart 12/13: dlsym cuGetProcAddress_v2, "" probe, cuInit@2000, self-query @11030/@12000,
 *                        then everything through the self-queried pointer, legacy and per-thread (flags 2)
 *   probe threads T N    gpa setup, then T threads x N launches of the noop kernel
 *   probe fork A B C     gpa setup; A launches; fork: the child makes B launches and exits; the parent C more
 *   probe errors N       gpa setup, then N launches (the test makes the mock fail them: MOCKCUDA_FAIL)
 *   probe dlfail MISSING UNRESOLVED   failed dlopens: what dlerror() says, twice each
 *   probe dlerrno MISSING UNRESOLVED  errno after each dl* call (set to a sentinel before it), and dlerror()'s text
 *   probe ggml PATH [N]  load a GGML backend like load_backend(); with N, run mockggml_compute(N)
 *   probe runpath LIB NAME  dlopen LIB, then LIB dlopens NAME by its own RUNPATH (caller_load)
 *   probe scope LIB      dlopen LIB RTLD_LOCAL; LIB finds its own dependency's symbol with dlsym(RTLD_DEFAULT)
 *   probe next           calls ogpu_probe_next(), whose preloaded definition chains with dlsym(RTLD_NEXT)
 *   probe_direct         (separate binary) linked against libcuda.so.1, calls the driver through its PLT
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct { unsigned char bytes[16]; } CUuuid;
typedef CUresult (*gpa_t)(const char *, void **, int, unsigned long long, int *);
typedef CUresult (*launch_t)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *,
                             void **, void **);

static void *lib;
static gpa_t gpa;

static void *need(void *p, const char *what)
{
    if (!p) {
        printf("missing %s\n", what);
        exit(3);
    }
    return p;
}

#define CHECK(call) \
    do { \
        CUresult r_ = (call); \
        printf("%s = %d\n", #call, r_); \
        if (r_) \
            exit(4); \
    } while (0)

static void *entry(const char *name, int ver, unsigned long long flags)
{
    void *p = NULL;
    int status = -1;
    CUresult r = gpa(name, &p, ver, flags, &status);
    if (r != 0 || status != 0 || !p) {
        printf("cuGetProcAddress(%s@%d/%llu) = %d status %d\n", name, ver, flags, r, status);
        exit(5);
    }
    return p;
}

static void open_driver(void)
{
    lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib) {
        printf("dlopen libcuda.so.1 failed: %s\n", dlerror());
        exit(2);
    }
}

/* cudart's sequence (reference 1.1 steps 1-4). */
static void cudart_setup(void)
{
    open_driver();
    gpa = need(dlsym(lib, "cuGetProcAddress_v2"), "cuGetProcAddress_v2");
    void *p = (void *)1;
    int status = -1;
    CUresult r = gpa("", &p, 0, 0, &status);
    printf("probe \"\" = %d status %d null %d\n", r, status, p == NULL);
    CUresult (*init)(unsigned) = entry("cuInit", 2000, 0);
    gpa_t v1 = entry("cuGetProcAddress", 11030, 0);
    gpa_t v2 = entry("cuGetProcAddress", 12000, 0);
    (void)v1;
    gpa = v2;
    CHECK(init(0));
}

static int gpa_mode(void)
{
    cudart_setup();
    CUresult (*count)(int *) = entry("cuDeviceGetCount", 2000, 0);
    CUresult (*get)(CUdevice *, int) = entry("cuDeviceGet", 2000, 0);
    CUresult (*name)(char *, int, CUdevice) = entry("cuDeviceGetName", 2000, 0);
    CUresult (*uuid)(CUuuid *, CUdevice) = entry("cuDeviceGetUuid", 11040, 0);
    CUresult (*mem)(size_t *, CUdevice) = entry("cuDeviceTotalMem", 3020, 0);
    CUresult (*retain)(void **, CUdevice) = entry("cuDevicePrimaryCtxRetain", 7000, 0);
    CUresult (*alloc)(CUdeviceptr *, size_t) = entry("cuMemAlloc", 3020, 0);
    CUresult (*freef)(CUdeviceptr) = entry("cuMemFree", 3020, 0);
    CUresult (*htod)(CUdeviceptr, const void *, size_t) = entry("cuMemcpyHtoD", 7000, 2);
    CUresult (*dtoh)(void *, CUdeviceptr, size_t) = entry("cuMemcpyDtoH", 3020, 0);
    CUresult (*dtod_async)(CUdeviceptr, CUdeviceptr, size_t, void *) = entry("cuMemcpyDtoDAsync", 7000, 2);
    CUresult (*load)(void **, const void *) = entry("cuModuleLoadData", 2000, 0);
    CUresult (*getfn)(void **, void *, const char *) = entry("cuModuleGetFunction", 2000, 0);
    launch_t launch = entry("cuLaunchKernel", 4000, 0);
    launch_t launch_pt = entry("cuLaunchKernel", 7000, 2);
    CUresult (*graph)(void *, void *) = entry("cuGraphLaunch", 10000, 2);
    int n = 0;
    CHECK(count(&n));
    printf("devices %d\n", n);
    for (int i = 0; i < n; i++) {
        CUdevice d;
        char nm[128];
        CUuuid u;
        size_t bytes;
        CHECK(get(&d, i));
        CHECK(name(nm, sizeof nm, d));
        CHECK(uuid(&u, d));
        CHECK(mem(&bytes, d));
        printf("device %d: %s uuid[0]=%02x mem=%zu\n", i, nm, u.bytes[0], bytes);
    }
    CUdevice d0;
    void *ctx, *mod, *fn;
    CUdeviceptr a, b;
    int host[64], cnt = 64;
    for (int i = 0; i < 64; i++)
        host[i] = i;
    CHECK(get(&d0, 0));
    CHECK(retain(&ctx, d0));
    CHECK(alloc(&a, sizeof host));
    CHECK(alloc(&b, 1000));
    CHECK(htod(a, host, sizeof host));
    CHECK(load(&mod, "// ptx"));
    CHECK(getfn(&fn, mod, "add_one"));
    void *params[] = {&a, &cnt};
    for (int i = 0; i < 3; i++)
        CHECK(launch(fn, 1, 1, 1, 64, 1, 1, 0, NULL, params, NULL));
    for (int i = 0; i < 2; i++)
        CHECK(launch_pt(fn, 1, 1, 1, 64, 1, 1, 0, NULL, params, NULL));
    CHECK(graph((void *)1, NULL));
    CHECK(dtod_async(b, a, 100, NULL));
    CHECK(dtoh(host, a, sizeof host));
    CHECK(freef(a));
    CHECK(freef(b));
    long sum = 0;
    for (int i = 0; i < 64; i++)
        sum += host[i];
    printf("sum %ld\n", sum);
    return 0;
}

static int raw_mode(void)
{
    open_driver();
    CUresult (*init)(unsigned) = need(dlsym(lib, "cuInit"), "cuInit");
    CUresult (*get)(CUdevice *, int) = need(dlsym(lib, "cuDeviceGet"), "cuDeviceGet");
    CUresult (*name)(char *, int, CUdevice) = need(dlsym(lib, "cuDeviceGetName"), "cuDeviceGetName");
    CUresult (*pci)(char *, int, CUdevice) = need(dlsym(lib, "cuDeviceGetPCIBusId"), "cuDeviceGetPCIBusId");
    CUresult (*ctxc)(void **, unsigned, CUdevice) = need(dlsym(lib, "cuCtxCreate_v2"), "cuCtxCreate_v2");
    CUresult (*alloc)(CUdeviceptr *, size_t) = need(dlsym(lib, "cuMemAlloc_v2"), "cuMemAlloc_v2");
    CUresult (*freef)(CUdeviceptr) = need(dlsym(lib, "cuMemFree_v2"), "cuMemFree_v2");
    CUresult (*htod)(CUdeviceptr, const void *, size_t) = need(dlsym(lib, "cuMemcpyHtoD_v2"), "htod");
    CUresult (*dtoh)(void *, CUdeviceptr, size_t) = need(dlsym(lib, "cuMemcpyDtoH_v2"), "dtoh");
    CUresult (*libload)(void **, const void *, void *, void **, unsigned, void *, void **, unsigned) =
        need(dlsym(lib, "cuLibraryLoadData"), "cuLibraryLoadData");
    CUresult (*getk)(void **, void *, const char *) = need(dlsym(lib, "cuLibraryGetKernel"), "cuLibraryGetKernel");
    CUresult (*launch_ex)(const void *, void *, void **, void **) = need(dlsym(lib, "cuLaunchKernelEx"), "Ex");
    CUresult (*coop)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **) =
        need(dlsym(lib, "cuLaunchCooperativeKernel"), "coop");
    CHECK(init(0));
    CUdevice d;
    char nm[128], bus[64];
    void *ctx, *l, *k;
    CHECK(get(&d, 0));
    CHECK(name(nm, sizeof nm, d));
    CHECK(pci(bus, sizeof bus, d));
    printf("device 0: %s at %s\n", nm, bus);
    CHECK(ctxc(&ctx, 0, d));
    CUdeviceptr a;
    int host[16], cnt = 16;
    for (int i = 0; i < 16; i++)
        host[i] = 100 * i;
    CHECK(alloc(&a, sizeof host));
    CHECK(htod(a, host, sizeof host));
    CHECK(libload(&l, "fatbin", NULL, NULL, 0, NULL, NULL, 0));
    CUresult missing = getk(&k, l, "no_such_kernel");
    printf("cuLibraryGetKernel(no_such_kernel) = %d\n", missing);
    CHECK(getk(&k, l, "add_one"));
    void *params[] = {&a, &cnt};
    for (int i = 0; i < 4; i++)
        CHECK(launch_ex(NULL, k, params, NULL));
    CHECK(coop(k, 1, 1, 1, 16, 1, 1, 0, NULL, params));
    CHECK(dtoh(host, a, sizeof host));
    CHECK(freef(a));
    printf("host[3] = %d\n", host[3]);
    return 0;
}

static launch_t t_launch;
static void *t_fn;
static int t_iters;
static void *worker(void *arg)
{
    (void)arg;
    for (int i = 0; i < t_iters; i++)
        if (t_launch(t_fn, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL) != 0)
            abort();
    return NULL;
}

static void *noop_kernel(void)
{
    CUresult (*load)(void **, const void *) = entry("cuModuleLoadData", 2000, 0);
    CUresult (*getfn)(void **, void *, const char *) = entry("cuModuleGetFunction", 2000, 0);
    void *mod, *fn;
    CHECK(load(&mod, "// ptx"));
    CHECK(getfn(&fn, mod, "noop"));
    return fn;
}

static unsigned long long mock_launches(void)
{
    unsigned long long (*f)(void) = need(dlsym(lib, "mockcuda_launches"), "mockcuda_launches");
    return f();
}

static int threads_mode(int nthreads, int iters)
{
    cudart_setup();
    t_launch = entry("cuLaunchKernel", 4000, 0);
    t_fn = noop_kernel();
    t_iters = iters;
    pthread_t th[256];
    for (int i = 0; i < nthreads; i++)
        pthread_create(&th[i], NULL, worker, NULL);
    for (int i = 0; i < nthreads; i++)
        pthread_join(th[i], NULL);
    printf("driver saw %llu launches\n", mock_launches());
    return 0;
}

static int fork_mode(int before, int in_child, int after)
{
    cudart_setup();
    launch_t launch = entry("cuLaunchKernel", 4000, 0);
    void *fn = noop_kernel();
    for (int i = 0; i < before; i++)
        launch(fn, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        for (int i = 0; i < in_child; i++)
            launch(fn, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
        printf("child launched %d\n", in_child);
        exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    for (int i = 0; i < after; i++)
        launch(fn, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
    printf("parent: child exit %d, driver saw %llu launches here\n", WEXITSTATUS(st), mock_launches());
    return 0;
}

static int errors_mode(int n)
{
    cudart_setup();
    launch_t launch = entry("cuLaunchKernel", 4000, 0);
    void *fn = noop_kernel();
    int failed = 0, last = 0;
    for (int i = 0; i < n; i++) {
        last = launch(fn, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
        failed += last != 0;
    }
    printf("%d of %d launches failed, last with %d\n", failed, n, last);
    return 0;
}

static void show(const char *what, const char *e) { printf("%s: %s\n", what, e ? e : "(null)"); }

static int dlfail_mode(const char *missing, const char *unresolved)
{
    void *h = dlopen(missing, RTLD_NOW);
    printf("dlopen(missing) %s\n", h ? "ok" : "NULL");
    show("dlerror", dlerror());
    show("dlerror again", dlerror());
    h = dlopen(unresolved, RTLD_NOW | RTLD_LOCAL);
    printf("dlopen(unresolved) %s\n", h ? "ok" : "NULL");
    const char *e = dlerror();
    show("dlerror", e);
    show("dlerror again", dlerror());
    h = dlopen(missing, RTLD_LAZY);
    void *s = dlsym(RTLD_DEFAULT, "ogpu_no_such_symbol");
    printf("dlsym after failed dlopen: %s\n", s ? "found" : "NULL");
    show("dlerror (from dlsym)", dlerror());
    h = dlopen(missing, RTLD_NOW);
    void *self = dlopen(NULL, RTLD_NOW);
    printf("dlopen(NULL) after failed dlopen: %s\n", self ? "ok" : "NULL");
    show("dlerror (after a success)", dlerror());
    printf("dlsym(RTLD_DEFAULT, cuInit): %s\n", dlsym(RTLD_DEFAULT, "cuInit") ? "found" : "NULL");
    show("dlerror", dlerror());
    return 0;
}

/* errno as the caller sees it after each dl* call.  glibc's dlopen may or may not touch errno on failure; whatever
 * it leaves must be what the caller gets with the shim too, so each call starts from a sentinel value. */
#define ERRNO_SENTINEL 4242
#define AFTER(what, call) \
    do { \
        errno = ERRNO_SENTINEL; \
        call; \
        printf("%s: errno %d\n", what, errno); \
    } while (0)

static int dlerrno_mode(const char *missing, const char *unresolved)
{
    void *h = NULL;
    const char *e = NULL;
    AFTER("dlopen(missing, RTLD_NOW)", h = dlopen(missing, RTLD_NOW));
    AFTER("dlerror", e = dlerror());
    show("  text", e);
    AFTER("dlerror again", e = dlerror());
    show("  text", e);
    AFTER("dlopen(unresolved, RTLD_NOW|RTLD_LOCAL)", h = dlopen(unresolved, RTLD_NOW | RTLD_LOCAL));
    AFTER("dlerror", e = dlerror());
    show("  text", e);
    AFTER("dlopen(missing, RTLD_LAZY)", h = dlopen(missing, RTLD_LAZY));
    AFTER("dlsym(RTLD_DEFAULT, ogpu_no_such_symbol)", (void)dlsym(RTLD_DEFAULT, "ogpu_no_such_symbol"));
    AFTER("dlerror", e = dlerror());
    show("  text", e);
    AFTER("dlopen(libcuda.so.1)", h = dlopen("libcuda.so.1", RTLD_NOW));
    printf("  handle: %s\n", h ? "ok" : "NULL");
    if (h) {
        AFTER("dlsym(libcuda, cuInit)", (void)dlsym(h, "cuInit"));
        AFTER("dlclose(libcuda)", (void)dlclose(h));
    }
    AFTER("dlerror", e = dlerror());
    show("  text", e);
    return 0;
}

static int ggml_mode(const char *path, int compute)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "load_backend: failed to load %s: %s\n", path, dlerror());
        return 1;
    }
    void *(*init)(void) = dlsym(h, "ggml_backend_init");
    if (!init) {
        fprintf(stderr, "load_backend: failed to find ggml_backend_init in %s\n", path);
        return 1;
    }
    if (!init()) {
        fprintf(stderr, "load_backend: failed to initialize backend from %s: ggml_backend_init returned NULL\n",
                path);
        return 1;
    }
    fprintf(stderr, "load_backend: loaded CUDA backend from %s\n", path);
    if (compute > 0) {
        int (*run)(int) = need(dlsym(h, "mockggml_compute"), "mockggml_compute");
        printf("compute(%d) = %d\n", compute, run(compute));
    }
    return 0;
}

static int runpath_mode(const char *libpath, const char *name)
{
    void *h = dlopen(libpath, RTLD_NOW);
    if (!h) {
        printf("dlopen %s: %s\n", libpath, dlerror());
        return 1;
    }
    int (*load)(const char *) = need(dlsym(h, "caller_load"), "caller_load");
    return load(name);
}

static int scope_mode(const char *libpath)
{
    void *h = dlopen(libpath, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        printf("dlopen %s: %s\n", libpath, dlerror());
        return 1;
    }
    int (*check)(void) = need(dlsym(h, "scope_check"), "scope_check");
    printf("dlsym(RTLD_DEFAULT) from a RTLD_LOCAL library found its dependency's symbol: %s\n",
           check() ? "yes" : "no");
    return 0;
}

static int next_mode(void)
{
    int (*f)(void) = need(dlsym(RTLD_DEFAULT, "ogpu_probe_next"), "ogpu_probe_next");
    printf("ogpu_probe_next() = %d\n", f());
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2)
        return 64;
    const char *m = argv[1];
    if (!strcmp(m, "gpa"))
        return gpa_mode();
    if (!strcmp(m, "raw"))
        return raw_mode();
    if (!strcmp(m, "threads") && argc == 4)
        return threads_mode(atoi(argv[2]), atoi(argv[3]));
    if (!strcmp(m, "fork") && argc == 5)
        return fork_mode(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
    if (!strcmp(m, "errors") && argc == 3)
        return errors_mode(atoi(argv[2]));
    if (!strcmp(m, "dlfail") && argc == 4)
        return dlfail_mode(argv[2], argv[3]);
    if (!strcmp(m, "dlerrno") && argc == 4)
        return dlerrno_mode(argv[2], argv[3]);
    if (!strcmp(m, "ggml") && argc >= 3)
        return ggml_mode(argv[2], argc > 3 ? atoi(argv[3]) : 0);
    if (!strcmp(m, "runpath") && argc == 4)
        return runpath_mode(argv[2], argv[3]);
    if (!strcmp(m, "scope") && argc == 3)
        return scope_mode(argv[2]);
    if (!strcmp(m, "next"))
        return next_mode();
    return 64;
}
