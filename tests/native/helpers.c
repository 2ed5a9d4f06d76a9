/* Small libraries for the loader-semantics probes, one per -D flag:
 *   HELPER_CALLER    libcaller.so (RUNPATH $ORIGIN/deps): caller_load(name) dlopens `name` from here
 *   HELPER_DEP       deps/libggml-dep.so: the library only that RUNPATH finds
 *   HELPER_SCOPE     libscope.so (NEEDED libscopedep.so): scope_check() looks scopedep_fn up with RTLD_DEFAULT
 *   HELPER_SCOPEDEP  libscopedep.so
 *   HELPER_NEXT_A / HELPER_NEXT_B  two preloaded definitions of ogpu_probe_next(); A chains to B via RTLD_NEXT */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>

#if defined(HELPER_CALLER)
int caller_load(const char *name)
{
    void *h = dlopen(name, RTLD_NOW);
    if (!h) {
        printf("caller_load(%s): %s\n", name, dlerror());
        return 1;
    }
    int (*f)(void) = (int (*)(void))dlsym(h, "dep_fn");
    printf("caller_load(%s): ok, dep_fn() = %d, dlerror() = %s\n", name, f ? f() : -1, dlerror() ? "set" : "(null)");
    return 0;
}
#elif defined(HELPER_DEP)
int dep_fn(void) { return 42; }
#elif defined(HELPER_SCOPE)
int scopedep_fn(void);
int scope_check(void) { return dlsym(RTLD_DEFAULT, "scopedep_fn") != NULL && scopedep_fn() == 7; }
#elif defined(HELPER_SCOPEDEP)
int scopedep_fn(void) { return 7; }
#elif defined(HELPER_NEXT_A)
int ogpu_probe_next(void)
{
    int (*next)(void) = (int (*)(void))dlsym(RTLD_NEXT, "ogpu_probe_next");
    if (next == ogpu_probe_next)
        return -1; /* would recurse forever */
    return next ? next() + 1 : -2;
}
#elif defined(HELPER_NEXT_B)
int ogpu_probe_next(void) { return 42; }
#else
#error "choose a HELPER_* flag"
#endif
