/* Protocol v1 (DESIGN.md "Shim event protocol v1"): one SOCK_SEQPACKET connection per process to $OGPU_EVENTS,
 * opened lazily at the first event, non-blocking, retried at most once a second, re-opened after fork; JSON
 * messages of at most 4096 bytes.
 *
 * Snapshots piggy-back on hooked calls instead of a background thread: every 64th hot call per thread reads a
 * coarse clock (vDSO, no syscall) and, if 250 ms have passed, one thread sends a cumulative snapshot when the
 * totals changed.  Why not a thread: a thread in every CUDA process changes what the host sees (thread lists,
 * signal delivery, fork/unshare/seccomp expectations), must be re-created after fork and can delay exit.  The
 * cost: counts of the last < 250 ms before a long idle arrive with the next call or at exit (and are lost on
 * abort/SIGKILL); the very first hot call of a process sends one at once, so "kernels were launched" is never
 * late.  Senders never block: a full socket drops the message and counts it in `dropped`.
 */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

struct ogpu_shard ogpu_shards[OGPU_SHARDS];
_Atomic int ogpu_active;
OGPU_TLS unsigned ogpu_tls_shard;
OGPU_TLS unsigned ogpu_tls_tick;

static _Atomic unsigned next_shard;
static _Atomic int config_state; /* 0 not read, 1 reading, 2 done */
static char events_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static int debug_level;

unsigned ogpu_assign_shard(void)
{
    unsigned s = atomic_fetch_add_explicit(&next_shard, 1, memory_order_relaxed) % OGPU_SHARDS + 1;
    ogpu_tls_shard = s;
    return s;
}

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int ogpu_debug_enabled(void) { return debug_level; }

void ogpu_debug(const char *msg)
{
    if (debug_level != 1)
        return;
    char line[512];
    size_t n = 0;
    const char *prefix = "ollama-gpu-shim: ";
    for (const char *p = prefix; *p && n < sizeof line - 2; p++)
        line[n++] = *p;
    for (const char *p = msg; *p && n < sizeof line - 2; p++)
        line[n++] = *p;
    line[n++] = '\n';
    ssize_t w = write(2, line, n);
    (void)w;
}

/* --- JSON writer: stack buffers, no allocation ------------------------------------------------------------ */

static void put(struct ogpu_json *j, const char *s, size_t n)
{
    if (j->overflow || j->len + n > j->cap) {
        j->overflow = 1;
        return;
    }
    memcpy(j->buf + j->len, s, n);
    j->len += n;
}

void ogpu_j_raw(struct ogpu_json *j, const char *s) { put(j, s, strlen(s)); }

void ogpu_j_u64(struct ogpu_json *j, uint64_t v)
{
    char tmp[24];
    int i = (int)sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(j, tmp + i, sizeof tmp - (size_t)i);
}

void ogpu_j_i64(struct ogpu_json *j, int64_t v)
{
    if (v < 0) {
        put(j, "-", 1);
        ogpu_j_u64(j, (uint64_t)0 - (uint64_t)v);
    } else {
        ogpu_j_u64(j, (uint64_t)v);
    }
}

void ogpu_j_key(struct ogpu_json *j, const char *key)
{
    put(j, ",\"", 2);
    ogpu_j_raw(j, key);
    put(j, "\":", 2);
}

/* Length of the well-formed UTF-8 sequence at s (at most n bytes), or 0 if it is not one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t k;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf)
        k = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        k = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f; /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else
        return 0;
    if (k > n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < k; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return k;
}

/* One input character at s: how many input bytes it takes and its escaped form in out (returns its size). */
static size_t escape_one(const unsigned char *s, size_t n, size_t *used, char out[8])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char c = s[0];
    if (c == '"' || c == '\\') {
        out[0] = '\\';
        out[1] = (char)c;
        *used = 1;
        return 2;
    }
    if (c < 0x20) {
        *used = 1;
        out[0] = '\\';
        switch (c) {
        case '\n': out[1] = 'n'; return 2;
        case '\t': out[1] = 't'; return 2;
        case '\r': out[1] = 'r'; return 2;
        default:
            memcpy(out + 1, "u00", 3);
            out[4] = hex[c >> 4];
            out[5] = hex[c & 15];
            return 6;
        }
    }
    size_t k = utf8_len(s, n);
    if (k == 0) { /* not UTF-8: U+FFFD, one byte at a time */
        *used = 1;
        memcpy(out, "\xef\xbf\xbd", 3);
        return 3;
    }
    memcpy(out, s, k);
    *used = k;
    return k;
}

void ogpu_j_strn(struct ogpu_json *j, const char *str, size_t n, size_t max_out)
{
    const unsigned char *s = (const unsigned char *)str;
    char piece[8];
    size_t used, total = 0;
    for (size_t i = 0; i < n; i += used)
        total += escape_one(s + i, n - i, &used, piece);
    put(j, "\"", 1);
    if (total <= max_out) {
        for (size_t i = 0; i < n; i += used)
            put(j, piece, escape_one(s + i, n - i, &used, piece));
    } else { /* truncated at a character boundary and marked with U+2026 */
        size_t out = 0;
        for (size_t i = 0; i < n; i += used) {
            size_t k = escape_one(s + i, n - i, &used, piece);
            if (out + k + 3 > max_out)
                break;
            put(j, piece, k);
            out += k;
        }
        put(j, "\xe2\x80\xa6", 3);
    }
    put(j, "\"", 1);
}

void ogpu_j_str(struct ogpu_json *j, const char *s, size_t max_out)
{
    if (!s)
        ogpu_j_raw(j, "null");
    else
        ogpu_j_strn(j, s, strlen(s), max_out);
}

/* --- the connection ---------------------------------------------------------------------------------------- */

static _Atomic int send_lock;
static int conn_fd = -1;
static dev_t conn_dev;
static ino_t conn_ino;
static uint64_t next_connect_ns;
static uint64_t seq;           /* under send_lock */
static int hello_done;         /* this process has had a connection */
static pid_t my_pid;
static _Atomic uint64_t dropped;
static OGPU_TLS int tls_in_emit;

static void process_reset(void);

static int lock_send(int wait)
{
    for (int i = 0; i < 20000; i++) {
        int expected = 0;
        if (atomic_compare_exchange_weak_explicit(&send_lock, &expected, 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return 1;
        if (!wait)
            return 0;
        if (i > 64)
            sched_yield();
    }
    return 0; /* a holder that never lets go (it cannot, but never spin forever): drop */
}

static void unlock_send(void) { atomic_store_explicit(&send_lock, 0, memory_order_release); }

static int fd_is_ours(void)
{
    struct stat st;
    return conn_fd >= 0 && fstat(conn_fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == conn_dev &&
           st.st_ino == conn_ino;
}

static void drop_connection(int close_it)
{
    if (close_it && fd_is_ours())
        close(conn_fd);
    conn_fd = -1; /* if it is no longer ours (the host closed and reused the number) it is not ours to close */
}

static void header(struct ogpu_json *h, const char *kind, uint64_t t_ns)
{
    ogpu_j_raw(h, "{\"v\":1,\"ev\":\"");
    ogpu_j_raw(h, kind);
    ogpu_j_raw(h, "\",\"pid\":");
    ogpu_j_i64(h, my_pid);
    ogpu_j_raw(h, ",\"seq\":");
    ogpu_j_u64(h, ++seq);
    ogpu_j_raw(h, ",\"t_ns\":");
    ogpu_j_u64(h, t_ns);
}

/* 1 sent, 0 dropped.  Caller holds send_lock and the connection is open. */
static int send_locked(const char *kind, const struct ogpu_json *body, uint64_t t_ns)
{
    char hb[128];
    struct ogpu_json h = {hb, 0, sizeof hb, 0};
    uint64_t saved_seq = seq;
    header(&h, kind, t_ns);
    if (h.overflow || body->overflow || h.len + body->len > OGPU_MSG_MAX) {
        seq = saved_seq;
        return 0;
    }
    struct iovec iov[2] = {{hb, h.len}, {body->buf, body->len}};
    struct msghdr msg = {0};
    msg.msg_iov = iov;
    msg.msg_iovlen = 2;
    ssize_t n;
    do
        n = sendmsg(conn_fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n >= 0)
        return 1;
    seq = saved_seq;
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS)
        drop_connection(1); /* EPIPE, ECONNRESET, ENOTCONN...: the server went away; reconnect later */
    return 0;
}

static void build_hello(struct ogpu_json *j)
{
    char path[1024];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    ogpu_j_key(j, "exe");
    if (n > 0)
        ogpu_j_strn(j, path, (size_t)n, 512);
    else
        ogpu_j_raw(j, "\"\"");

    ogpu_j_key(j, "argv");
    ogpu_j_raw(j, "[");
    char cmd[2048];
    size_t len = 0;
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t r;
        while (len < sizeof cmd && (r = read(fd, cmd + len, sizeof cmd - len)) > 0)
            len += (size_t)r;
        close(fd);
    }
    size_t budget = 1536, start = 0;
    int first = 1;
    while (start < len) {
        size_t end = start;
        while (end < len && cmd[end])
            end++;
        if (!first)
            ogpu_j_raw(j, ",");
        first = 0;
        if (budget < 16 || (end == len && len == sizeof cmd)) { /* out of room: one marker element */
            ogpu_j_raw(j, "\"\xe2\x80\xa6\"");
            break;
        }
        size_t before = j->len;
        ogpu_j_strn(j, cmd + start, end - start, budget > 256 ? 256 : budget - 8);
        size_t used = j->len - before;
        budget = used < budget ? budget - used : 0;
        start = end + 1;
    }
    ogpu_j_raw(j, "]");
    ogpu_j_key(j, "ppid");
    ogpu_j_i64(j, getppid());
    ogpu_j_key(j, "ld_preload");
    ogpu_j_str(j, getenv("LD_PRELOAD"), 512);
    ogpu_j_key(j, "ld_library_path");
    ogpu_j_str(j, getenv("LD_LIBRARY_PATH"), 768);
    ogpu_j_key(j, "cuda_visible_devices");
    ogpu_j_str(j, getenv("CUDA_VISIBLE_DEVICES"), 256);
    ogpu_j_raw(j, "}");
}

/* Caller holds send_lock.  Opens the connection (at most one attempt a second) and sends hello first. */
static int connect_locked(void)
{
    uint64_t now = clock_ns(CLOCK_MONOTONIC);
    if (now < next_connect_ns)
        return 0;
    next_connect_ns = now + 1000000000ull;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    /* Keep clear of the low descriptors a host may expect to get back from its next open(). */
    int high = fcntl(fd, F_DUPFD_CLOEXEC, 100);
    if (high >= 0) {
        close(fd);
        fd = high;
    } else if (fd < 3) {
        close(fd);
        return 0;
    }
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, events_path, sizeof sa.sun_path);
    int rc;
    do
        rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    while (rc < 0 && errno == EINTR);
    struct stat st;
    if (rc < 0 || fstat(fd, &st) < 0) {
        close(fd);
        ogpu_debug("cannot connect to OGPU_EVENTS; retrying at most once a second");
        return 0;
    }
    conn_fd = fd;
    conn_dev = st.st_dev;
    conn_ino = st.st_ino;
    char buf[OGPU_MSG_MAX];
    struct ogpu_json j = {buf, 0, sizeof buf, 0};
    build_hello(&j);
    if (!send_locked("hello", &j, now)) {
        drop_connection(1);
        return 0;
    }
    hello_done = 1;
    return 1;
}

static int emit_at(const char *kind, const struct ogpu_json *body, int wait)
{
    if (!atomic_load_explicit(&ogpu_active, memory_order_relaxed) || tls_in_emit)
        return 0;
    tls_in_emit = 1;
    int saved = errno;
    pid_t pid = getpid();
    if (pid != my_pid && my_pid != 0)
        process_reset(); /* a raw clone/fork that skipped pthread_atfork */
    my_pid = pid;
    int sent = 0;
    uint64_t t = clock_ns(CLOCK_MONOTONIC);
    if (lock_send(wait)) {
        if ((conn_fd >= 0 && fd_is_ours()) || (drop_connection(0), connect_locked()))
            sent = send_locked(kind, body, t);
        unlock_send();
    }
    if (!sent)
        atomic_fetch_add_explicit(&dropped, 1, memory_order_relaxed);
    errno = saved;
    tls_in_emit = 0;
    return sent;
}

void ogpu_emit(const char *kind, const struct ogpu_json *body) { (void)emit_at(kind, body, 1); }

/* --- snapshots and rate-limited errors --------------------------------------------------------------------- */

static _Atomic uint64_t last_flush_ns;
static uint64_t sent_totals[C_COUNT + 1]; /* + dropped; under flush_lock */
static int sent_any;
static _Atomic int flush_lock;

static _Atomic uint64_t err_count[FN_COUNT];
static _Atomic int err_code[FN_COUNT];
static uint64_t err_sent[FN_COUNT];
static uint64_t err_sent_ns[FN_COUNT];

static void send_error(int fn, uint64_t count, int code, int wait)
{
    char buf[256];
    struct ogpu_json j = {buf, 0, sizeof buf, 0};
    ogpu_j_key(&j, "fn");
    ogpu_j_str(&j, ogpu_fn_names[fn], 64);
    ogpu_j_key(&j, "code");
    ogpu_j_i64(&j, code);
    ogpu_j_key(&j, "count");
    ogpu_j_u64(&j, count);
    ogpu_j_raw(&j, "}");
    (void)emit_at("cuda_error", &j, wait);
}

void ogpu_cuda_error(enum ogpu_fn fn, CUresult r)
{
    atomic_store_explicit(&err_code[fn], r, memory_order_relaxed);
    uint64_t n = atomic_fetch_add_explicit(&err_count[fn], 1, memory_order_relaxed) + 1;
    if (n == 1) { /* the first error of a function is evidence: send it now; later ones ride on flushes */
        int expected = 0;
        if (atomic_compare_exchange_strong(&flush_lock, &expected, 1)) {
            err_sent[fn] = 1;
            err_sent_ns[fn] = clock_ns(CLOCK_MONOTONIC_COARSE);
            atomic_store(&flush_lock, 0);
        }
        send_error(fn, 1, r, 1);
    }
}

static void flush(int final)
{
    int expected = 0;
    if (!atomic_compare_exchange_strong(&flush_lock, &expected, 1))
        return;
    uint64_t now = clock_ns(CLOCK_MONOTONIC_COARSE);
    uint64_t tot[C_COUNT + 1] = {0};
    for (int s = 0; s < OGPU_SHARDS; s++)
        for (int c = 0; c < C_COUNT; c++)
            tot[c] += atomic_load_explicit(&ogpu_shards[s].c[c], memory_order_relaxed);
    tot[C_COUNT] = atomic_load_explicit(&dropped, memory_order_relaxed);
    int changed = !sent_any;
    for (int c = 0; c <= C_COUNT; c++)
        changed |= tot[c] != sent_totals[c];
    int any = 0;
    for (int c = 0; c < C_COUNT; c++)
        any |= tot[c] != 0;
    if (changed && (any || sent_any)) {
        char buf[512];
        struct ogpu_json j = {buf, 0, sizeof buf, 0};
        static const char *const names[C_COUNT] = {
            "kernel", "kernel_ex", "cooperative", "graph", "allocs", "frees", "alloc_bytes", "free_bytes",
            "htod_bytes", "dtoh_bytes", "dtod_bytes"};
        for (int c = 0; c < C_COUNT; c++) {
            if (c == C_KERNEL || c == C_ALLOCS || c == C_HTOD) {
                ogpu_j_raw(&j, c == C_KERNEL ? ",\"launches\":{" : c == C_ALLOCS ? "},\"mem\":{" : "},\"copies\":{");
            } else {
                ogpu_j_raw(&j, ",");
            }
            ogpu_j_raw(&j, "\"");
            ogpu_j_raw(&j, names[c]);
            ogpu_j_raw(&j, "\":");
            ogpu_j_u64(&j, tot[c]);
        }
        ogpu_j_raw(&j, "},\"dropped\":");
        ogpu_j_u64(&j, tot[C_COUNT]);
        ogpu_j_raw(&j, "}");
        if (emit_at("snapshot", &j, final)) {
            memcpy(sent_totals, tot, sizeof tot);
            sent_totals[C_COUNT] = atomic_load_explicit(&dropped, memory_order_relaxed);
            sent_any = 1;
        }
    }
    for (int fn = 0; fn < FN_COUNT; fn++) {
        uint64_t n = atomic_load_explicit(&err_count[fn], memory_order_relaxed);
        if (n != err_sent[fn] && (final || now - err_sent_ns[fn] >= 1000000000ull)) {
            err_sent[fn] = n;
            err_sent_ns[fn] = now;
            send_error(fn, n, atomic_load_explicit(&err_code[fn], memory_order_relaxed), final);
        }
    }
    atomic_store(&flush_lock, 0);
}

void ogpu_maybe_flush(void)
{
    if (!atomic_load_explicit(&ogpu_active, memory_order_relaxed))
        return;
    uint64_t now = clock_ns(CLOCK_MONOTONIC_COARSE);
    uint64_t last = atomic_load_explicit(&last_flush_ns, memory_order_relaxed);
    if (last != 0 && now - last < 250000000ull)
        return;
    if (!atomic_compare_exchange_strong(&last_flush_ns, &last, now ? now : 1))
        return;
    int saved = errno;
    flush(0);
    errno = saved;
}

/* --- cold recorders: init, devices, contexts --------------------------------------------------------------- */

static _Atomic int init_sent = -1; /* last cu_init result sent; -1 none */

void ogpu_on_init(CUresult r)
{
    int prev = atomic_exchange(&init_sent, r);
    if (prev == r)
        return;
    char buf[64];
    struct ogpu_json j = {buf, 0, sizeof buf, 0};
    ogpu_j_key(&j, "result");
    ogpu_j_i64(&j, r);
    ogpu_j_raw(&j, "}");
    ogpu_emit("cu_init", &j);
}

#define OGPU_DEVS 64
struct dev_info {
    _Atomic int lock;
    unsigned have; /* bit 0 name, 1 uuid, 2 pci, 3 total_mem */
    char name[256];
    char uuid[48];
    char pci[64];
    uint64_t total_mem;
};
static struct dev_info devs[OGPU_DEVS];
static _Atomic int dev_ordinal[OGPU_DEVS]; /* CUdevice handle -> ordinal + 1 (cuDevice handles are ordinals) */

void ogpu_on_device_get(CUresult r, CUdevice *dev, int ordinal)
{
    if (r == 0 && dev && *dev >= 0 && *dev < OGPU_DEVS && ordinal >= 0)
        atomic_store_explicit(&dev_ordinal[*dev], ordinal + 1, memory_order_relaxed);
}

static int ordinal_of(CUdevice dev)
{
    if (dev >= 0 && dev < OGPU_DEVS) {
        int o = atomic_load_explicit(&dev_ordinal[dev], memory_order_relaxed);
        if (o > 0)
            return o - 1;
    }
    return dev;
}

enum { HAVE_NAME = 1, HAVE_UUID = 2, HAVE_PCI = 4, HAVE_MEM = 8 };

/* Update what is known about a device and send it (all fields the host queried so far) if anything changed. */
static void device_update(CUdevice dev, unsigned field, const char *s, size_t n, uint64_t mem)
{
    int ordinal = ordinal_of(dev);
    if (ordinal < 0)
        return;
    char buf[1024];
    struct ogpu_json j = {buf, 0, sizeof buf, 0};
    ogpu_j_key(&j, "ordinal");
    ogpu_j_i64(&j, ordinal);
    if (ordinal >= OGPU_DEVS) { /* beyond the table: this field alone */
        ogpu_j_key(&j, field == HAVE_NAME ? "name" : field == HAVE_UUID ? "uuid" : field == HAVE_PCI ? "pci_bus_id"
                                                                                                    : "total_mem");
        if (field == HAVE_MEM)
            ogpu_j_u64(&j, mem);
        else
            ogpu_j_strn(&j, s, n, 255);
        ogpu_j_raw(&j, "}");
        ogpu_emit("device", &j);
        return;
    }
    struct dev_info *d = &devs[ordinal];
    int expected = 0;
    while (!atomic_compare_exchange_weak(&d->lock, &expected, 1)) {
        expected = 0;
        sched_yield();
    }
    int changed = !(d->have & field);
    if (field == HAVE_MEM) {
        changed |= d->total_mem != mem;
        d->total_mem = mem;
    } else {
        char *dst = field == HAVE_NAME ? d->name : field == HAVE_UUID ? d->uuid : d->pci;
        size_t cap = field == HAVE_NAME ? sizeof d->name : field == HAVE_UUID ? sizeof d->uuid : sizeof d->pci;
        if (n >= cap)
            n = cap - 1;
        changed |= strncmp(dst, s, n) != 0 || dst[n] != 0;
        memcpy(dst, s, n);
        dst[n] = 0;
    }
    d->have |= field;
    if (changed) {
        if (d->have & HAVE_NAME) {
            ogpu_j_key(&j, "name");
            ogpu_j_str(&j, d->name, 255);
        }
        if (d->have & HAVE_UUID) {
            ogpu_j_key(&j, "uuid");
            ogpu_j_str(&j, d->uuid, 64);
        }
        if (d->have & HAVE_PCI) {
            ogpu_j_key(&j, "pci_bus_id");
            ogpu_j_str(&j, d->pci, 64);
        }
        if (d->have & HAVE_MEM) {
            ogpu_j_key(&j, "total_mem");
            ogpu_j_u64(&j, d->total_mem);
        }
        ogpu_j_raw(&j, "}");
    }
    atomic_store(&d->lock, 0);
    if (changed)
        ogpu_emit("device", &j);
}

void ogpu_on_device_str(CUresult r, int which, const char *s, int len, CUdevice dev)
{
    if (r != 0 || !s || len <= 0)
        return;
    size_t n = strnlen(s, (size_t)len);
    device_update(dev, which == OGPU_DEV_NAME ? HAVE_NAME : HAVE_PCI, s, n, 0);
}

void ogpu_on_device_uuid(CUresult r, const CUuuid *uuid, CUdevice dev)
{
    if (r != 0 || !uuid)
        return;
    /* nvidia-smi's form: GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx */
    static const char hex[] = "0123456789abcdef";
    char s[48];
    size_t n = 0;
    memcpy(s, "GPU-", 4);
    n = 4;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            s[n++] = '-';
        s[n++] = hex[uuid->bytes[i] >> 4];
        s[n++] = hex[uuid->bytes[i] & 15];
    }
    device_update(dev, HAVE_UUID, s, n, 0);
}

void ogpu_on_device_mem(CUresult r, const size_t *bytes, CUdevice dev)
{
    if (r == 0 && bytes)
        device_update(dev, HAVE_MEM, NULL, 0, *bytes);
}

static _Atomic int ctx_events;
static _Atomic uint64_t ctx_ok_sent; /* bit per device whose successful context was reported */

void ogpu_on_ctx(CUresult r, CUdevice dev)
{
    int ordinal = ordinal_of(dev);
    if (r == 0 && ordinal >= 0 && ordinal < 64) {
        uint64_t bit = 1ull << ordinal;
        if (atomic_fetch_or(&ctx_ok_sent, bit) & bit)
            return;
    }
    if (atomic_fetch_add(&ctx_events, 1) >= 32)
        return;
    char buf[96];
    struct ogpu_json j = {buf, 0, sizeof buf, 0};
    ogpu_j_key(&j, "device");
    ogpu_j_i64(&j, ordinal);
    ogpu_j_key(&j, "result");
    ogpu_j_i64(&j, r);
    ogpu_j_raw(&j, "}");
    ogpu_emit("ctx", &j);
}

/* --- device pointer -> size, for free_bytes: fixed open addressing, lock-free ------------------------------- */

#define OGPU_PTRS 16384 /* power of two */
#define OGPU_PROBE 64
#define OGPU_TOMB 1ull
struct ptr_slot {
    _Atomic uint64_t key;
    _Atomic uint64_t size;
};
static struct ptr_slot ptrs[OGPU_PTRS];

static inline unsigned ptr_hash(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return (unsigned)k & (OGPU_PTRS - 1);
}

void ogpu_track_alloc(uint64_t key, uint64_t bytes)
{
    if (key <= OGPU_TOMB)
        return;
    unsigned h = ptr_hash(key);
    for (unsigned i = 0; i < OGPU_PROBE; i++) {
        struct ptr_slot *s = &ptrs[(h + i) & (OGPU_PTRS - 1)];
        uint64_t k = atomic_load_explicit(&s->key, memory_order_relaxed);
        if ((k == 0 || k == OGPU_TOMB) &&
            atomic_compare_exchange_strong_explicit(&s->key, &k, key, memory_order_relaxed, memory_order_relaxed)) {
            atomic_store_explicit(&s->size, bytes, memory_order_release);
            return;
        }
    }
    /* table full around this hash: this allocation's free will not add to free_bytes */
}

void ogpu_track_free(uint64_t key)
{
    if (key <= OGPU_TOMB)
        return;
    unsigned h = ptr_hash(key);
    for (unsigned i = 0; i < OGPU_PROBE; i++) {
        struct ptr_slot *s = &ptrs[(h + i) & (OGPU_PTRS - 1)];
        uint64_t k = atomic_load_explicit(&s->key, memory_order_relaxed);
        if (k == 0)
            return;
        if (k == key) {
            uint64_t bytes = atomic_load_explicit(&s->size, memory_order_acquire);
            if (atomic_compare_exchange_strong_explicit(&s->key, &k, OGPU_TOMB, memory_order_relaxed,
                                                        memory_order_relaxed))
                ogpu_count(C_FREE_BYTES, bytes);
            return;
        }
    }
}

/* --- lifecycle --------------------------------------------------------------------------------------------- */

void ogpu_dl_reset_after_fork(void);

/* The child of a fork is a new process: its own connection, sequence, counters and device view. */
static void process_reset(void)
{
    if (conn_fd >= 0)
        drop_connection(1);
    conn_fd = -1;
    next_connect_ns = 0;
    seq = 0;
    hello_done = 0;
    my_pid = getpid();
    atomic_store(&send_lock, 0);
    atomic_store(&flush_lock, 0);
    atomic_store(&dropped, 0);
    atomic_store(&last_flush_ns, 0);
    memset(sent_totals, 0, sizeof sent_totals);
    sent_any = 0;
    for (int s = 0; s < OGPU_SHARDS; s++)
        for (int c = 0; c < C_COUNT; c++)
            atomic_store_explicit(&ogpu_shards[s].c[c], 0, memory_order_relaxed);
    for (int f = 0; f < FN_COUNT; f++) {
        atomic_store(&err_count[f], 0);
        err_sent[f] = 0;
        err_sent_ns[f] = 0;
    }
    atomic_store(&init_sent, -1);
    memset(devs, 0, sizeof devs);
    atomic_store(&ctx_events, 0);
    atomic_store(&ctx_ok_sent, 0);
    ogpu_dl_reset_after_fork();
    /* the device-pointer table describes memory the child still maps: keep it */
}

static void atfork_child(void)
{
    if (atomic_load(&config_state) == 2 && atomic_load(&ogpu_active)) {
        int saved = errno;
        process_reset();
        errno = saved;
    }
}

void ogpu_events_init(void)
{
    if (OGPU_LIKELY(atomic_load_explicit(&config_state, memory_order_acquire) == 2))
        return;
    int expected = 0;
    if (!atomic_compare_exchange_strong(&config_state, &expected, 1))
        return; /* another thread is reading the configuration: no events from this call (fail open) */
    int saved = errno;
    const char *dbg = getenv("OGPU_SHIM_DEBUG");
    debug_level = dbg && strcmp(dbg, "1") == 0 ? 1 : dbg && strcmp(dbg, "nogadget") == 0 ? 2 : 0;
    const char *p = getenv("OGPU_EVENTS");
    if (p && *p && strlen(p) < sizeof events_path) {
        memcpy(events_path, p, strlen(p) + 1);
        my_pid = getpid();
        pthread_atfork(NULL, NULL, atfork_child);
        atomic_store(&ogpu_active, 1);
    } else if (p && *p) {
        ogpu_debug("OGPU_EVENTS is longer than a socket path may be; no events");
    }
    atomic_store_explicit(&config_state, 2, memory_order_release);
    errno = saved;
}

__attribute__((destructor)) static void ogpu_destructor(void)
{
    if (!atomic_load(&ogpu_active) || tls_in_emit)
        return;
    int saved = errno;
    if (getpid() != my_pid)
        process_reset();
    flush(1);
    if (hello_done) {
        char buf[8];
        struct ogpu_json j = {buf, 0, sizeof buf, 0};
        ogpu_j_raw(&j, "}");
        (void)emit_at("bye", &j, 1);
    }
    errno = saved;
}
