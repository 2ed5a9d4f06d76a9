/* Mock NVML: libnvidia-ml.so.1 for tests, whose state a test scripts by rewriting one file while the process runs.
 *
 * MOCKNVML_STATE names a file of `key=value` lines, re-read by every call (so a test moves a live supervisor from
 * healthy to lost and back by rewriting it; write a temporary file and rename it over, never truncate in place).
 * A missing file or key means the default in brackets:
 *   init=<code>        nvmlInit*'s return code [0]; 9 driver not loaded, 18 library/driver version mismatch,
 *                      999 "Unknown Error" (a container whose device access was revoked)
 *   all=<code>         every call after init returns this code [0] (18 after a driver upgrade, 999 revoked access)
 *   count=<n>          GPUs [1]; uuids GPU-6d6f636b-1000-2000-3000-000000400000 + index, as the mock libcuda's
 *   driver=<text>      nvmlSystemGetDriverVersion [580.65.06]
 *   gpu<i>=<code>      calls on GPU i return this code [0]; 15 = NVML_ERROR_GPU_IS_LOST (fell off the bus)
 *   absent<i>=1        GPU i is not enumerated (and its UUID is not found)
 *   ecc<i>=<n>         volatile double-bit (uncorrected) ECC errors of GPU i [0]
 *   xids=<g>:<xid>,... events delivered, in order, by nvmlEventSetWait_v2 to a set that registered GPU g
 *   events=<code>      nvmlDeviceRegisterEvents's return code [0] (3 = not supported)
 *   procs<i>=<pid>,... compute processes running on GPU i (NVML's pids, 1 GiB each) [none]: a process holding the GPU
 * Handles are pointers into a static table, so they stay valid across re-reads; graphics process lists are empty.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))
#define MAXDEV 16
#define MAXXID 64
#define MAXPROC 8

enum { OK = 0, UNINIT = 1, INVALID_ARG = 2, NOT_SUPPORTED = 3, NOT_FOUND = 6, INSUFFICIENT = 7, TIMEOUT = 10 };

struct dev { int index; };
static struct dev devs[MAXDEV];

struct state {
    int init, all, count, events, gpu[MAXDEV], absent[MAXDEV];
    unsigned long long ecc[MAXDEV];
    char driver[80];
    int nxid, xid_gpu[MAXXID], xid[MAXXID];
    int nproc[MAXDEV];
    unsigned proc[MAXDEV][MAXPROC];
};

static void read_state(struct state *s)
{
    memset(s, 0, sizeof *s);
    s->count = 1;
    snprintf(s->driver, sizeof s->driver, "580.65.06");
    const char *path = getenv("MOCKNVML_STATE");
    FILE *f = path ? fopen(path, "r") : NULL;
    if (!f)
        return;
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        char *eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq = 0;
        const char *k = line, *v = eq + 1;
        int i;
        if (strcmp(k, "init") == 0) s->init = atoi(v);
        else if (strcmp(k, "all") == 0) s->all = atoi(v);
        else if (strcmp(k, "events") == 0) s->events = atoi(v);
        else if (strcmp(k, "count") == 0) { s->count = atoi(v); if (s->count > MAXDEV) s->count = MAXDEV; }
        else if (strcmp(k, "driver") == 0) snprintf(s->driver, sizeof s->driver, "%s", v);
        else if (sscanf(k, "gpu%d", &i) == 1 && i >= 0 && i < MAXDEV) s->gpu[i] = atoi(v);
        else if (sscanf(k, "absent%d", &i) == 1 && i >= 0 && i < MAXDEV) s->absent[i] = atoi(v);
        else if (sscanf(k, "ecc%d", &i) == 1 && i >= 0 && i < MAXDEV) s->ecc[i] = strtoull(v, NULL, 10);
        else if (sscanf(k, "procs%d", &i) == 1 && i >= 0 && i < MAXDEV) {
            char buf[256];
            snprintf(buf, sizeof buf, "%s", v);
            char *save = NULL;
            for (char *tok = strtok_r(buf, ",", &save); tok && s->nproc[i] < MAXPROC; tok = strtok_r(NULL, ",", &save))
                s->proc[i][s->nproc[i]++] = (unsigned)strtoul(tok, NULL, 10);
        }
        else if (strcmp(k, "xids") == 0) {
            char buf[1024];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *tok = strtok(buf, ","); tok && s->nxid < MAXXID; tok = strtok(NULL, ",")) {
                int g, x;
                if (sscanf(tok, "%d:%d", &g, &x) == 2) {
                    s->xid_gpu[s->nxid] = g;
                    s->xid[s->nxid++] = x;
                }
            }
        }
    }
    fclose(f);
}

static int initialised;

/* The physical index of the i-th enumerated GPU (absent ones skipped), or -1. */
static int nth_present(const struct state *s, unsigned n)
{
    unsigned seen = 0;
    for (int i = 0; i < s->count; i++) {
        if (s->absent[i])
            continue;
        if (seen++ == n)
            return i;
    }
    return -1;
}

static int device_call(void *handle, struct state *s, int *index)
{
    read_state(s);
    if (!initialised) return UNINIT;
    if (s->all) return s->all;
    struct dev *d = handle;
    if (!d || d < devs || d >= devs + MAXDEV) return INVALID_ARG;
    *index = d->index;
    if (*index >= s->count || s->absent[*index]) return 15;
    return s->gpu[*index];
}

static void uuid_of(int i, char *out, size_t len)
{
    snprintf(out, len, "GPU-%08x-%04x-%04x-%04x-%012x", 0x6d6f636bu + (unsigned)i, 0x1000u + (unsigned)i, 0x2000u,
             0x3000u, 0x400000u + (unsigned)i);
}

EXPORT int nvmlInitWithFlags(unsigned flags)
{
    (void)flags;
    struct state s;
    read_state(&s);
    for (int i = 0; i < MAXDEV; i++) devs[i].index = i;
    if (s.init) return s.init;
    initialised = 1;
    return OK;
}
EXPORT int nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
EXPORT int nvmlInit(void) { return nvmlInitWithFlags(0); }
EXPORT int nvmlShutdown(void) { initialised = 0; return OK; }

EXPORT const char *nvmlErrorString(int code)
{
    switch (code) {
    case 0: return "Success";
    case 3: return "Not Supported";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 15: return "GPU is lost";
    case 18: return "Driver/library version mismatch";
    case 999: return "Unknown Error";
    default: return "Mock NVML error";
    }
}

static int system_call(struct state *s)
{
    read_state(s);
    if (!initialised) return UNINIT;
    return s->all;
}

EXPORT int nvmlSystemGetDriverVersion(char *out, unsigned len)
{
    struct state s;
    int rc = system_call(&s);
    if (rc) return rc;
    snprintf(out, len, "%s", s.driver);
    return OK;
}

EXPORT int nvmlSystemGetCudaDriverVersion(int *v)
{
    struct state s;
    int rc = system_call(&s);
    if (rc) return rc;
    *v = 13000;
    return OK;
}
EXPORT int nvmlSystemGetCudaDriverVersion_v2(int *v) { return nvmlSystemGetCudaDriverVersion(v); }

EXPORT int nvmlDeviceGetCount_v2(unsigned *n)
{
    struct state s;
    int rc = system_call(&s);
    if (rc) return rc;
    unsigned c = 0;
    for (int i = 0; i < s.count; i++) c += !s.absent[i];
    *n = c;
    return OK;
}
EXPORT int nvmlDeviceGetCount(unsigned *n) { return nvmlDeviceGetCount_v2(n); }

EXPORT int nvmlDeviceGetHandleByIndex_v2(unsigned n, void **h)
{
    struct state s;
    int rc = system_call(&s);
    if (rc) return rc;
    int i = nth_present(&s, n);
    if (i < 0) return INVALID_ARG;
    *h = &devs[i];
    return OK;
}
EXPORT int nvmlDeviceGetHandleByIndex(unsigned n, void **h) { return nvmlDeviceGetHandleByIndex_v2(n, h); }

EXPORT int nvmlDeviceGetHandleByUUID(const char *uuid, void **h)
{
    struct state s;
    int rc = system_call(&s);
    if (rc) return rc;
    for (int i = 0; i < s.count; i++) {
        char u[80];
        uuid_of(i, u, sizeof u);
        if (strcmp(u, uuid) == 0) {
            if (s.absent[i]) return NOT_FOUND;
            if (s.gpu[i]) return s.gpu[i];
            *h = &devs[i];
            return OK;
        }
    }
    return NOT_FOUND;
}

#define DEVICE_PROLOGUE(h)            \
    struct state s;                   \
    int idx = 0;                      \
    int rc = device_call(h, &s, &idx); \
    if (rc) return rc

EXPORT int nvmlDeviceGetUUID(void *h, char *out, unsigned len)
{
    DEVICE_PROLOGUE(h);
    uuid_of(idx, out, len);
    return OK;
}

EXPORT int nvmlDeviceGetName(void *h, char *out, unsigned len)
{
    DEVICE_PROLOGUE(h);
    snprintf(out, len, "NVIDIA H100 80GB HBM3");
    return OK;
}

struct memory { unsigned long long total, free, used; };
EXPORT int nvmlDeviceGetMemoryInfo(void *h, struct memory *m)
{
    DEVICE_PROLOGUE(h);
    m->total = 81559ull << 20;
    m->used = 512ull << 20;
    m->free = m->total - m->used;
    return OK;
}

struct pci {
    char busIdLegacy[16];
    unsigned domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
};
EXPORT int nvmlDeviceGetPciInfo_v3(void *h, struct pci *p)
{
    DEVICE_PROLOGUE(h);
    memset(p, 0, sizeof *p);
    p->bus = (unsigned)idx + 1;
    snprintf(p->busId, sizeof p->busId, "00000000:%02X:00.0", idx + 1);
    snprintf(p->busIdLegacy, sizeof p->busIdLegacy, "0000:%02X:00.0", idx + 1);
    return OK;
}

EXPORT int nvmlDeviceGetCudaComputeCapability(void *h, int *major, int *minor)
{
    DEVICE_PROLOGUE(h);
    *major = 9;
    *minor = 0;
    return OK;
}

EXPORT int nvmlDeviceGetMigMode(void *h, unsigned *current, unsigned *pending)
{
    DEVICE_PROLOGUE(h);
    *current = *pending = 0;
    return OK;
}

struct procinfo { unsigned pid; unsigned long long used; unsigned gi, ci; }; /* nvmlProcessInfo_v2_t (= v3) */
EXPORT int nvmlDeviceGetComputeRunningProcesses_v3(void *h, unsigned *count, struct procinfo *infos)
{
    DEVICE_PROLOGUE(h);
    unsigned n = (unsigned)s.nproc[idx];
    if (n == 0) {
        *count = 0;
        return OK;
    }
    if (!infos || *count < n) { /* pynvml asks for the size first */
        *count = n;
        return INSUFFICIENT;
    }
    for (unsigned k = 0; k < n; k++) {
        infos[k].pid = s.proc[idx][k];
        infos[k].used = 1ull << 30;
        infos[k].gi = infos[k].ci = 0xFFFFFFFFu;
    }
    *count = n;
    return OK;
}
EXPORT int nvmlDeviceGetGraphicsRunningProcesses_v3(void *h, unsigned *count, struct procinfo *infos)
{
    (void)infos;
    DEVICE_PROLOGUE(h);
    *count = 0;
    return OK;
}

/* errorType 1 = NVML_MEMORY_ERROR_TYPE_UNCORRECTED, counterType 0 = NVML_VOLATILE_ECC */
EXPORT int nvmlDeviceGetTotalEccErrors(void *h, int errorType, int counterType, unsigned long long *n)
{
    DEVICE_PROLOGUE(h);
    *n = (errorType == 1 && counterType == 0) ? s.ecc[idx] : 0;
    return OK;
}

/* --- events: one set per process is plenty for the supervisor ------------------------------------------------- */
struct eventset { unsigned long long registered; int delivered; };
static struct eventset the_set;

EXPORT int nvmlEventSetCreate(void **set)
{
    struct state s;
    int rc = system_call(&s);
    if (rc) return rc;
    the_set.registered = 0;
    the_set.delivered = 0;
    *set = &the_set;
    return OK;
}

EXPORT int nvmlDeviceGetSupportedEventTypes(void *h, unsigned long long *types)
{
    DEVICE_PROLOGUE(h);
    *types = s.events ? 0 : 0x8ull | 0x4ull | 0x2ull; /* Xid, double-bit ECC, single-bit ECC */
    return OK;
}

EXPORT int nvmlDeviceRegisterEvents(void *h, unsigned long long types, void *set)
{
    DEVICE_PROLOGUE(h);
    (void)types;
    if (set != &the_set) return INVALID_ARG;
    if (s.events) return s.events;
    the_set.registered |= 1ull << idx;
    return OK;
}

struct eventdata { void *device; unsigned long long eventType, eventData; unsigned gi, ci; };
EXPORT int nvmlEventSetWait_v2(void *set, struct eventdata *out, unsigned timeout_ms)
{
    if (set != &the_set) return INVALID_ARG;
    /* Polls the state file every 100 ms (the real NVML blocks in poll(2)): cheap enough for the idle benchmark. */
    for (unsigned waited = 0;;) {
        struct state s;
        int rc = system_call(&s);
        if (rc) return rc;
        while (the_set.delivered < s.nxid) {
            int k = the_set.delivered++;
            int g = s.xid_gpu[k];
            if (g < 0 || g >= MAXDEV || !(the_set.registered & (1ull << g)))
                continue;
            memset(out, 0, sizeof *out);
            out->device = &devs[g];
            out->eventType = 0x8ull; /* nvmlEventTypeXidCriticalError */
            out->eventData = (unsigned long long)s.xid[k];
            return OK;
        }
        if (waited >= timeout_ms) return TIMEOUT;
        unsigned step = timeout_ms - waited < 100 ? timeout_ms - waited : 100;
        struct timespec ts = {0, (long)step * 1000 * 1000};
        nanosleep(&ts, NULL);
        waited += step;
    }
}
EXPORT int nvmlEventSetWait(void *set, struct eventdata *out, unsigned timeout_ms)
{
    return nvmlEventSetWait_v2(set, out, timeout_ms);
}

EXPORT int nvmlEventSetFree(void *set)
{
    (void)set;
    the_set.registered = 0;
    return OK;
}
