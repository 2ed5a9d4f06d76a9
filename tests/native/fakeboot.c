/* A clock seam for end-to-end tests of resume detection (issue 16): preloaded into one process (the supervisor under
 * test), it adds the seconds written in the file named by FAKEBOOT_FILE to CLOCK_BOOTTIME, as if the host had been
 * suspended that long; CLOCK_MONOTONIC and every other clock are the real ones.  libfaketime's idea cut down to the
 * one clock the product reads for this, so the product needs no test-only setting.
 *
 * Only the process it is preloaded into: its constructor removes itself from LD_PRELOAD (and FAKEBOOT_FILE) before
 * the program reads its environment, so Ollama, its runners and the probes the supervisor spawns keep the real clock.
 * CPython's time.clock_gettime reaches libc's clock_gettime through the PLT (libpython imports
 * clock_gettime@GLIBC_2.17), so this definition, first in the symbol search order, is the one it calls.
 * The file is re-read at each BOOTTIME read (the supervisor reads it once per health check); a missing or unreadable
 * file is an offset of 0.  Reentrancy: nothing here calls clock_gettime.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int (*clock_fn)(clockid_t, struct timespec *);
static _Atomic(clock_fn) real_clock_gettime;
static char offset_file[4096];

/* LD_PRELOAD without this library (its entries are separated by spaces or colons). */
static void drop_self(void)
{
    const char *preload = getenv("LD_PRELOAD");
    if (!preload)
        return;
    char in[8192], out[8192] = "";
    size_t used = 0;
    snprintf(in, sizeof in, "%s", preload);
    char *save = NULL;
    for (char *tok = strtok_r(in, " :", &save); tok; tok = strtok_r(NULL, " :", &save)) {
        if (strstr(tok, "libfakeboot.so"))
            continue;
        int n = snprintf(out + used, sizeof out - used, "%s%s", used ? " " : "", tok);
        if (n < 0 || (size_t)n >= sizeof out - used)
            break;
        used += (size_t)n;
    }
    if (used)
        setenv("LD_PRELOAD", out, 1);
    else
        unsetenv("LD_PRELOAD");
}

__attribute__((constructor)) static void fakeboot_init(void)
{
    const char *file = getenv("FAKEBOOT_FILE");
    if (file)
        snprintf(offset_file, sizeof offset_file, "%s", file);
    unsetenv("FAKEBOOT_FILE");
    drop_self();
}

static double offset_seconds(void)
{
    if (!offset_file[0])
        return 0.0;
    FILE *f = fopen(offset_file, "r");
    if (!f)
        return 0.0;
    double value = 0.0;
    if (fscanf(f, "%lf", &value) != 1 || value < 0.0 || value > 1e9)
        value = 0.0;
    fclose(f);
    return value;
}

__attribute__((visibility("default"))) int clock_gettime(clockid_t clock, struct timespec *ts)
{
    clock_fn real = atomic_load_explicit(&real_clock_gettime, memory_order_relaxed);
    if (!real) {
        real = (clock_fn)dlsym(RTLD_NEXT, "clock_gettime");
        atomic_store_explicit(&real_clock_gettime, real, memory_order_relaxed);
    }
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    int rc = real(clock, ts);
    if (rc != 0 || clock != CLOCK_BOOTTIME) /* rc 0: the real call wrote *ts */
        return rc;
    double offset = offset_seconds();
    if (offset <= 0.0)
        return rc;
    long long whole = (long long)offset;
    ts->tv_sec += (time_t)whole;
    ts->tv_nsec += (long)((offset - (double)whole) * 1e9);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_nsec -= 1000000000L;
        ts->tv_sec += 1;
    }
    return rc;
}
