/* Host-side time per cuLaunchKernel, through the entry point the way cudart gets it (dlopen libcuda.so.1, dlsym
 * cuGetProcAddress_v2, self-query), so that with LD_PRELOAD=libollama_gpu_shim.so the shim's wrapper is in the
 * path.  A trivial kernel from embedded PTX (no nvcc needed; the driver JITs it).  Works on the mock driver too.
 *
 *   launch_timing [samples] [launches_per_sample] [inproc]
 * prints one JSON line: median/p10/p90 ns per launch over the samples.  Each sample times a back-to-back burst
 * of asynchronous launches (below the launch queue's depth) and then synchronises outside the timed region.
 * With "inproc" (run it under the shim) each sample is a pair of bursts in the same process, one through the
 * driver's own cuLaunchKernel (dlsym(RTLD_DEFAULT), which the shim passes through untouched) and one through the
 * pointer cuGetProcAddress handed out (the shim's wrapper), in alternating order; it prints the median of the
 * per-pair differences.  Without the shim both pointers are the driver's: the control. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef int CUresult;
typedef CUresult (*gpa_t)(const char *, void **, int, unsigned long long, int *);
typedef CUresult (*launch_t)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *,
                             void **, void **);

static const char ptx[] =
    ".version 7.0\n"
    ".target sm_50\n"
    ".address_size 64\n"
    ".visible .entry noop()\n"
    "{\n"
    "    ret;\n"
    "}\n";

static gpa_t gpa;
static void *entry(const char *name, int ver, unsigned long long flags)
{
    void *p = NULL;
    int st = 0;
    CUresult r = gpa(name, &p, ver, flags, &st);
    if (r || !p) {
        fprintf(stderr, "cuGetProcAddress(%s) = %d\n", name, r);
        exit(2);
    }
    return p;
}

#define CK(x) \
    do { \
        CUresult r_ = (x); \
        if (r_) { \
            fprintf(stderr, "%s = %d\n", #x, r_); \
            exit(3); \
        } \
    } while (0)

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    int samples = argc > 1 ? atoi(argv[1]) : 300;
    int burst = argc > 2 ? atoi(argv[2]) : 200;
    int inproc = argc > 3 && argv[3][0] == 'i';
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        fprintf(stderr, "%s\n", dlerror());
        return 2;
    }
    gpa = (gpa_t)dlsym(h, "cuGetProcAddress_v2");
    if (!gpa)
        return 2;
    gpa = entry("cuGetProcAddress", 12000, 0);
    CUresult (*init)(unsigned) = entry("cuInit", 2000, 0);
    CUresult (*get)(int *, int) = entry("cuDeviceGet", 2000, 0);
    CUresult (*retain)(void **, int) = entry("cuDevicePrimaryCtxRetain", 7000, 0);
    CUresult (*setcur)(void *) = entry("cuCtxSetCurrent", 4000, 0);
    CUresult (*load)(void **, const void *) = entry("cuModuleLoadData", 2000, 0);
    CUresult (*getfn)(void **, void *, const char *) = entry("cuModuleGetFunction", 2000, 0);
    CUresult (*sync)(void) = entry("cuCtxSynchronize", 2000, 0);
    launch_t launch = entry("cuLaunchKernel", 4000, 0);
    int dev;
    void *ctx, *mod, *fn;
    CK(init(0));
    CK(get(&dev, 0));
    CK(retain(&ctx, dev));
    CK(setcur(ctx));
    CK(load(&mod, ptx));
    CK(getfn(&fn, mod, "noop"));
    for (int i = 0; i < 2000; i++) /* warm-up */
        CK(launch(fn, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL));
    CK(sync());
    if (inproc) {
        launch_t raw = (launch_t)dlsym(RTLD_DEFAULT, "cuLaunchKernel");
        if (!raw)
            return 2;
        double *d = malloc(sizeof(double) * (size_t)samples), *a = malloc(sizeof(double) * (size_t)samples),
               *b = malloc(sizeof(double) * (size_t)samples);
        for (int s = 0; s < samples; s++) {
            double t[2];
            for (int k = 0; k < 2; k++) {
                launch_t f = ((s + k) & 1) ? launch : raw;
                double t0 = now_ns();
                for (int i = 0; i < burst; i++)
                    f(fn, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL);
                double t1 = now_ns();
                CK(sync());
                t[f == launch && launch != raw ? 1 : ((s + k) & 1)] = (t1 - t0) / burst;
            }
            a[s] = t[0];
            b[s] = t[1];
            d[s] = t[1] - t[0];
        }
        qsort(d, (size_t)samples, sizeof(double), cmp);
        qsort(a, (size_t)samples, sizeof(double), cmp);
        qsort(b, (size_t)samples, sizeof(double), cmp);
        printf("{\"median_added_ns\": %.2f, \"p10_added_ns\": %.2f, \"p90_added_ns\": %.2f, "
               "\"driver_median_ns\": %.2f, \"wrapper_median_ns\": %.2f, \"wrapped\": %s, \"pairs\": %d}\n",
               d[samples / 2], d[samples / 10], d[samples * 9 / 10], a[samples / 2], b[samples / 2],
               launch != raw ? "true" : "false", samples);
        return 0;
    }
    double *ns = malloc(sizeof(double) * (size_t)samples);
    for (int s = 0; s < samples; s++) {
        double t0 = now_ns();
        for (int i = 0; i < burst; i++)
            launch(fn, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL);
        double t1 = now_ns();
        CK(sync());
        ns[s] = (t1 - t0) / burst;
    }
    qsort(ns, (size_t)samples, sizeof(double), cmp);
    printf("{\"median_ns\": %.2f, \"p10_ns\": %.2f, \"p90_ns\": %.2f, \"launches\": %d}\n", ns[samples / 2],
           ns[samples / 10], ns[samples * 9 / 10], samples * burst + 2000);
    return 0;
}
