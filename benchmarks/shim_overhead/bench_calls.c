/* Callgrind target: N calls of one driver entry point, obtained the way cudart obtains it (dlsym of
 * cuGetProcAddress_v2 on the libcuda handle, then the self-query), so that under the shim the loop calls the
 * shim's wrapper and without it the driver directly.  Only the loop_* functions are measured
 * (valgrind --toggle-collect=loop_*), so start-up, the event socket and exit are not counted.
 *
 *   bench_calls launch|launch_ptsz|copy_async|alloc_free|graph|attr N
 * `attr` (cuDeviceGetAttribute) is not wrapped: the control, expected to add 0. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef CUresult (*gpa_t)(const char *, void **, int, unsigned long long, int *);
typedef CUresult (*launch_t)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *,
                             void **, void **);
typedef CUresult (*copy_t)(unsigned long long, const void *, size_t, void *);
typedef CUresult (*alloc_t)(unsigned long long *, size_t);
typedef CUresult (*free_t)(unsigned long long);
typedef CUresult (*graph_t)(void *, void *);
typedef CUresult (*attr_t)(int *, int, int);

static gpa_t gpa;
static void *entry(const char *name, int ver, unsigned long long flags)
{
    void *p = NULL;
    int st = 0;
    if (gpa(name, &p, ver, flags, &st) || !p) {
        fprintf(stderr, "no %s\n", name);
        exit(2);
    }
    return p;
}

__attribute__((noinline)) void loop_launch(launch_t f, void *fn, long n)
{
    for (long i = 0; i < n; i++)
        f(fn, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
}
__attribute__((noinline)) void loop_copy(copy_t f, unsigned long long d, const void *s, long n)
{
    for (long i = 0; i < n; i++)
        f(d, s, 8, NULL);
}
__attribute__((noinline)) void loop_alloc_free(alloc_t a, free_t f, long n)
{
    for (long i = 0; i < n; i++) {
        unsigned long long p;
        a(&p, 64);
        f(p);
    }
}
__attribute__((noinline)) void loop_graph(graph_t f, long n)
{
    for (long i = 0; i < n; i++)
        f((void *)1, NULL);
}
__attribute__((noinline)) void loop_attr(attr_t f, long n)
{
    int v;
    for (long i = 0; i < n; i++)
        f(&v, 75, 0);
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 64;
    long n = atol(argv[2]);
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) {
        fprintf(stderr, "%s\n", dlerror());
        return 2;
    }
    gpa = (gpa_t)dlsym(h, "cuGetProcAddress_v2");
    gpa = entry("cuGetProcAddress", 12000, 0);
    CUresult (*init)(unsigned) = entry("cuInit", 2000, 0);
    if (init(0))
        return 3;
    CUresult (*load)(void **, const void *) = entry("cuModuleLoadData", 2000, 0);
    CUresult (*getfn)(void **, void *, const char *) = entry("cuModuleGetFunction", 2000, 0);
    alloc_t alloc = entry("cuMemAlloc", 3020, 0);
    void *mod, *fn;
    load(&mod, "// ptx");
    getfn(&fn, mod, "noop");
    unsigned long long buf;
    char src[8] = {0};
    alloc(&buf, 64);
    const char *m = argv[1];
    if (!strcmp(m, "launch"))
        loop_launch(entry("cuLaunchKernel", 4000, 0), fn, n);
    else if (!strcmp(m, "launch_ptsz"))
        loop_launch(entry("cuLaunchKernel", 7000, 2), fn, n);
    else if (!strcmp(m, "copy_async"))
        loop_copy(entry("cuMemcpyHtoDAsync", 3020, 0), buf, src, n);
    else if (!strcmp(m, "alloc_free"))
        loop_alloc_free(alloc, entry("cuMemFree", 3020, 0), n);
    else if (!strcmp(m, "graph"))
        loop_graph(entry("cuGraphLaunch", 10000, 0), n);
    else if (!strcmp(m, "attr"))
        loop_attr(entry("cuDeviceGetAttribute", 2000, 0), n);
    else
        return 64;
    return 0;
}
