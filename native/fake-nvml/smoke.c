/*
 * smoke.c - end-to-end check of the fake libnvidia-ml.so.1.
 *
 *   gcc -O2 -Wall -Wextra -o /tmp/smoke smoke.c -ldl -lpthread
 *   FAKE_NVML_SCENARIO=test/fixtures/fake-nvml/multi-gpu.scenario /tmp/smoke /tmp/libnvidia-ml.so.1
 *
 * The first part expects multi-gpu.scenario (H200 with a memory ramp + Xid 48
 * at 200 ms + DBE at 250 ms, H100 with Xid 79 at 300 ms and lost at 400 ms,
 * A10G with unsupported fields). Later parts write their own scenarios to
 * /tmp to cover the default device, parse errors, init_error and latency
 * emulation. Exits non-zero if any check fails.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef void *dev_t_;
typedef void *set_t_;
typedef struct { unsigned version; unsigned long long total, reserved, free, used; } mem2_t;
typedef struct { unsigned long long total, free, used; } mem1_t;
typedef struct { unsigned pid; unsigned long long used; unsigned gi, ci; } proc_t;
typedef struct { dev_t_ device; unsigned long long type, data; unsigned gi, ci; } event_t;
#define MEM_V2 (40u | (2u << 24))

static int (*Init)(void), (*Shutdown)(void);
static const char *(*ErrStr)(int);
static int (*DriverVersion)(char *, unsigned), (*Count)(unsigned *), (*Handle)(unsigned, dev_t_ *);
static int (*Index)(dev_t_, unsigned *), (*Name)(dev_t_, char *, unsigned);
static int (*Mem2)(dev_t_, mem2_t *), (*Mem1)(dev_t_, mem1_t *);
static int (*Temp)(dev_t_, int, unsigned *), (*Power)(dev_t_, unsigned *);
static int (*Procs)(dev_t_, unsigned *, proc_t *), (*Retired)(dev_t_, int, unsigned *, unsigned long long *);
static int (*Remapped)(dev_t_, unsigned *, unsigned *, unsigned *, unsigned *);
static int (*ThrottleR)(dev_t_, unsigned long long *);
static int (*SetCreate)(set_t_ *), (*Register)(dev_t_, unsigned long long, set_t_), (*SetFree)(set_t_);
static int (*Wait)(set_t_, event_t *, unsigned);

static int failures;
static int64_t t0;

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
static double since_init_ms(void) { return (mono_ns() - t0) / 1e6; }
static void sleep_until_ms(double ms)
{
    double d = ms - since_init_ms();
    if (d > 0)
        usleep((useconds_t)(d * 1000));
}

#define CHECK(cond, ...)                                                                                   \
    do {                                                                                                   \
        int ok_ = (cond);                                                                                  \
        printf("%s ", ok_ ? "ok  " : "FAIL");                                                              \
        printf(__VA_ARGS__);                                                                               \
        printf("\n");                                                                                      \
        if (!ok_)                                                                                          \
            failures++;                                                                                    \
    } while (0)

static void *sym(void *lib, const char *name)
{
    void *p = dlsym(lib, name);
    if (!p) {
        fprintf(stderr, "missing symbol %s\n", name);
        exit(2);
    }
    return p;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f)) {
        perror(path);
        exit(2);
    }
}

/* --- concurrency: 4 threads hammer the hot call, 1 waits for events --- */
static dev_t_ g_dev0;
static atomic_int g_stop;
struct hammer { long calls, bad; };

static void *hammer_thread(void *arg)
{
    struct hammer *h = arg;
    while (!g_stop) {
        mem2_t m = {.version = MEM_V2};
        if (Mem2(g_dev0, &m) != 0 || m.used + m.free + m.reserved != m.total)
            h->bad++;
        h->calls++;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s path/to/libnvidia-ml.so.1  (FAKE_NVML_SCENARIO=multi-gpu.scenario)\n", argv[0]);
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 2;
    }
    *(void **)&Init = sym(lib, "nvmlInit_v2");
    *(void **)&Shutdown = sym(lib, "nvmlShutdown");
    *(void **)&ErrStr = sym(lib, "nvmlErrorString");
    *(void **)&DriverVersion = sym(lib, "nvmlSystemGetDriverVersion");
    *(void **)&Count = sym(lib, "nvmlDeviceGetCount_v2");
    *(void **)&Handle = sym(lib, "nvmlDeviceGetHandleByIndex_v2");
    *(void **)&Index = sym(lib, "nvmlDeviceGetIndex");
    *(void **)&Name = sym(lib, "nvmlDeviceGetName");
    *(void **)&Mem2 = sym(lib, "nvmlDeviceGetMemoryInfo_v2");
    *(void **)&Mem1 = sym(lib, "nvmlDeviceGetMemoryInfo");
    *(void **)&Temp = sym(lib, "nvmlDeviceGetTemperature");
    *(void **)&Power = sym(lib, "nvmlDeviceGetPowerUsage");
    *(void **)&Procs = sym(lib, "nvmlDeviceGetComputeRunningProcesses_v3");
    *(void **)&Retired = sym(lib, "nvmlDeviceGetRetiredPages");
    *(void **)&Remapped = sym(lib, "nvmlDeviceGetRemappedRows");
    *(void **)&ThrottleR = sym(lib, "nvmlDeviceGetCurrentClocksThrottleReasons");
    *(void **)&SetCreate = sym(lib, "nvmlEventSetCreate");
    *(void **)&Register = sym(lib, "nvmlDeviceRegisterEvents");
    *(void **)&SetFree = sym(lib, "nvmlEventSetFree");
    *(void **)&Wait = sym(lib, "nvmlEventSetWait_v2");

    const char *scenario = getenv("FAKE_NVML_SCENARIO");
    printf("scenario: %s\n", scenario ? scenario : "(unset)");
    unsigned n = 99;
    int rc;

    /* ---- before init ---- */
    CHECK(Count(&n) == 1, "device call before init -> 1 (UNINITIALIZED)");
    CHECK(Shutdown() == 1, "shutdown before init -> 1");

    /* ---- init / enumeration ---- */
    /* The library's time base is set inside Init: it lies in [t0, t_after]. */
    t0 = mono_ns();
    rc = Init();
    const int64_t t_after = mono_ns();
    CHECK(rc == 0, "nvmlInit_v2 -> %d (%s)", rc, ErrStr(rc));
    char buf[96];
    rc = DriverVersion(buf, sizeof buf);
    CHECK(rc == 0, "driver version %s", rc == 0 ? buf : "?");
    CHECK(DriverVersion(buf, 4) == 7, "driver version into 4-byte buffer -> 7 (INSUFFICIENT_SIZE)");
    CHECK(Count(&n) == 0 && n == 3, "device count = %u", n);
    dev_t_ d[3];
    for (unsigned i = 0; i < 3; i++) {
        rc = Handle(i, &d[i]);
        unsigned idx = 99;
        Index(d[i], &idx);
        Name(d[i], buf, sizeof buf);
        CHECK(rc == 0 && idx == i, "handle %u -> index %u, name \"%s\"", i, idx, buf);
    }
    dev_t_ bogus;
    CHECK(Handle(3, &bogus) == 2, "handle 3 -> 2 (INVALID_ARGUMENT)");
    CHECK(Count(NULL) == 2, "NULL out pointer -> 2");

    /* ---- memory ramp on the H200 ---- */
    mem2_t m1 = {.version = MEM_V2}, m2 = {.version = MEM_V2}, bad = {.version = 1};
    rc = Mem2(d[0], &m1);
    double tm1 = since_init_ms();
    CHECK(rc == 0 && m1.total == 150754820096ULL && m1.reserved == 556793856ULL &&
              m1.used + m1.free + m1.reserved == m1.total,
          "t=%6.1f ms memory_v2: total=%llu reserved=%llu used=%llu free=%llu", tm1, m1.total, m1.reserved,
          m1.used, m1.free);
    sleep_until_ms(150);
    const int64_t c0 = mono_ns();
    rc = Mem2(d[0], &m2);
    const int64_t c1 = mono_ns();
    double tm2 = since_init_ms();
    /* ramp 2e9 -> 1.3e11 over 2000 ms = 6.4e7 bytes per ms, evaluated at a
     * library time somewhere in [c0 - t_after, c1 - t0]. */
    double lo = 2e9 + 6.4e7 * ((c0 - t_after) / 1e6), hi = 2e9 + 6.4e7 * ((c1 - t0) / 1e6);
    CHECK(rc == 0 && m2.used > m1.used && (double)m2.used >= lo - 1 && (double)m2.used <= hi + 1,
          "t=%6.1f ms memory_v2: used=%llu (ramp: expected %.0f .. %.0f)", tm2, m2.used, lo, hi);
    CHECK(Mem2(d[0], &bad) == 25, "memory_v2 with wrong version -> 25 (ARGUMENT_VERSION_MISMATCH)");
    mem1_t v1;
    rc = Mem1(d[0], &v1);
    CHECK(rc == 0 && v1.total == m1.total && v1.used + v1.free == v1.total && v1.used >= m2.used + m1.reserved,
          "memory v1: used=%llu free=%llu (used includes reserved)", v1.used, v1.free);
    unsigned long long thr = 0;
    CHECK(ThrottleR(d[1], &thr) == 0 && thr == 0x4, "H100 throttle reasons = 0x%llx (hex const)", thr);

    /* ---- unsupported fields on the A10G ---- */
    unsigned u, a, b, c2;
    CHECK(Temp(d[2], 0, &u) == 3, "A10G temperature -> 3 (NOT_SUPPORTED)");
    CHECK(Power(d[2], &u) == 3, "A10G power -> 3");
    CHECK(Remapped(d[2], &u, &a, &b, &c2) == 3, "A10G remapped rows -> 3");
    unsigned pc = 0;
    CHECK(Procs(d[2], &pc, NULL) == 3, "A10G processes -> 3");
    CHECK(Temp(d[0], 0, &u) == 0 && u == 62, "H200 temperature = %u C", u);

    /* ---- process list / retired pages size-query protocol ---- */
    pc = 0;
    rc = Procs(d[0], &pc, NULL);
    CHECK(rc == 7 && pc == 2, "H200 processes size query -> %d, count %u", rc, pc);
    proc_t pi[4];
    pc = 4;
    rc = Procs(d[0], &pc, pi);
    CHECK(rc == 0 && pc == 2 && pi[0].pid == 4242 && pi[1].used == 500000000ULL && pi[0].gi == 0xFFFFFFFFu,
          "H200 processes: pid %u %llu B, pid %u %llu B", pi[0].pid, pi[0].used, pi[1].pid, pi[1].used);
    unsigned long long dummy;
    unsigned rp = 0;
    CHECK(Retired(d[0], 1, &rp, &dummy) == 0 && rp == 0, "H200 retired pages (double-bit) count query -> 0 pages");

    /* ---- events ---- */
    set_t_ set, set2;
    CHECK(SetCreate(&set) == 0, "event set create");
    for (int i = 0; i < 3; i++)
        CHECK(Register(d[i], 0x1 | 0x2 | 0x8, set) == 0, "register events on device %d", i);
    CHECK(Register(d[0], 0x4, set) == 3, "register an unsupported event type -> 3");
    struct { unsigned dev; unsigned long long type, data; double at; } want[] = {
        {0, 0x8, 48, 200}, {0, 0x2, 0, 250}, {1, 0x8, 79, 300}};
    for (int i = 0; i < 3; i++) {
        event_t e;
        memset(&e, 0, sizeof e);
        rc = Wait(set, &e, 1000);
        double t = since_init_ms();
        unsigned idx = 99;
        if (rc == 0)
            Index(e.device, &idx);
        CHECK(rc == 0 && idx == want[i].dev && e.type == want[i].type && e.data == want[i].data &&
                  t >= want[i].at && t < want[i].at + 20,
              "t=%6.1f ms wait -> rc %d device %u type 0x%llx data %llu", t, rc, idx, e.type, e.data);
    }
    {
        event_t e;
        double before = since_init_ms();
        rc = Wait(set, &e, 40);
        double t = since_init_ms();
        CHECK(rc == 10 && t - before >= 39, "t=%6.1f ms wait(40 ms) with nothing due -> %d (TIMEOUT) after %.1f ms",
              t, rc, t - before);
    }
    /* A second set sees the already-due events again: delivery is per set. */
    CHECK(SetCreate(&set2) == 0 && Register(d[0], 0x8, set2) == 0, "second event set, device 0 Xid only");
    {
        event_t e;
        rc = Wait(set2, &e, 0);
        CHECK(rc == 0 && e.type == 0x8 && e.data == 48, "second set wait(0) -> rc %d Xid %llu immediately", rc,
              e.data);
        CHECK(Wait(set2, &e, 0) == 10, "second set wait(0) again -> 10 (TIMEOUT)");
    }

    /* ---- lost GPU ---- */
    mem2_t mh = {.version = MEM_V2};
    double tl = since_init_ms();
    CHECK(tl < 400 && Mem2(d[1], &mh) == 0, "t=%6.1f ms H100 memory before lost_at -> 0", tl);
    sleep_until_ms(405);
    unsigned idx = 99;
    dev_t_ again;
    tl = since_init_ms();
    CHECK(Mem2(d[1], &mh) == 15, "t=%6.1f ms H100 memory after lost_at -> 15 (GPU_IS_LOST)", tl);
    CHECK(Name(d[1], buf, sizeof buf) == 15, "H100 name after lost_at -> 15");
    CHECK(Index(d[1], &idx) == 0 && idx == 1 && Handle(1, &again) == 0 && again == d[1],
          "H100 GetIndex / GetHandleByIndex still work");
    CHECK(Mem2(d[0], &mh) == 0, "H200 unaffected");

    /* ---- concurrency: 4 hot threads + an event waiter ---- */
    {
        g_dev0 = d[0];
        pthread_t th[4];
        struct hammer hs[4];
        memset(hs, 0, sizeof hs);
        g_stop = 0;
        int64_t s = mono_ns();
        for (int i = 0; i < 4; i++)
            pthread_create(&th[i], NULL, hammer_thread, &hs[i]);
        event_t e;
        rc = Wait(set, &e, 200); /* all events already delivered to `set` */
        g_stop = 1;
        long calls = 0, badc = 0;
        for (int i = 0; i < 4; i++) {
            pthread_join(th[i], NULL);
            calls += hs[i].calls;
            badc += hs[i].bad;
        }
        double secs = (mono_ns() - s) / 1e9;
        CHECK(rc == 10 && badc == 0 && calls > 0,
              "4 threads x memory_v2 for %.2f s: %ld calls (%.0f ns/call/thread), %ld bad; waiter -> %d", secs,
              calls, secs * 4e9 / (double)calls, badc, rc);
    }
    CHECK(SetFree(set) == 0 && SetFree(set2) == 0, "free event sets");

    /* ---- refcount ---- */
    CHECK(Init() == 0, "second init (refcount 2)");
    CHECK(Shutdown() == 0 && Count(&n) == 0, "shutdown -> refcount 1, still usable");
    CHECK(Shutdown() == 0, "shutdown -> refcount 0");
    CHECK(Count(&n) == 1 && Mem2(d[0], &m1) == 1, "calls after shutdown -> 1 (UNINITIALIZED)");
    CHECK(Shutdown() == 1, "extra shutdown -> 1");

    /* ---- default device (no scenario) ---- */
    unsetenv("FAKE_NVML_SCENARIO");
    CHECK(Init() == 0 && Count(&n) == 0 && n == 1, "no scenario: init, %u device", n);
    dev_t_ dd;
    Handle(0, &dd);
    Name(dd, buf, sizeof buf);
    mem2_t md = {.version = MEM_V2};
    rc = Mem2(dd, &md);
    CHECK(rc == 0 && !strcmp(buf, "Fake NVIDIA GPU") && md.total == 80ULL << 30 && md.used == 1ULL << 30,
          "default device \"%s\": total %llu used %llu", buf, md.total, md.used);
    CHECK(Name(dd, buf, 5) == 7, "name into 5-byte buffer -> 7");
    Shutdown();

    /* ---- parse error ---- */
    const char *bad_path = "/tmp/fake_nvml_smoke_bad.scenario";
    write_file(bad_path, "driver_version 1.2.3\ndevice X\nmemory_used ramp 1 2 3\n");
    setenv("FAKE_NVML_SCENARIO", bad_path, 1);
    printf("     (expect one diagnostic line on stderr:)\n");
    fflush(stdout);
    rc = Init();
    CHECK(rc == 999 && Count(&n) == 1, "malformed scenario -> init %d (UNKNOWN), still uninitialized", rc);

    /* ---- init_error ---- */
    const char *dnl_path = "/tmp/fake_nvml_smoke_dnl.scenario";
    write_file(dnl_path, "init_error DRIVER_NOT_LOADED\n");
    setenv("FAKE_NVML_SCENARIO", dnl_path, 1);
    rc = Init();
    CHECK(rc == 9, "init_error DRIVER_NOT_LOADED -> init %d (%s)", rc, ErrStr(rc));

    /* ---- latency emulation ---- */
    const char *lat_path = "/tmp/fake_nvml_smoke_lat.scenario";
    write_file(lat_path, "memory_call_latency_ns 6200\ncached_call_latency_ns 350\ndevice Lat GPU\n"
                         "memory_used 7e10\nmemory_total 150754820096\n");
    setenv("FAKE_NVML_SCENARIO", lat_path, 1);
    if (Init() == 0) {
        Handle(0, &dd);
        const int N = 2000;
        int64_t s = mono_ns();
        for (int i = 0; i < N; i++) {
            md.version = MEM_V2;
            Mem2(dd, &md);
        }
        double per = (mono_ns() - s) / (double)N;
        CHECK(per >= 6200 && md.used == 70000000000ULL, "memory_call_latency_ns 6200: %.0f ns per call", per);
        s = mono_ns();
        for (int i = 0; i < N; i++)
            Temp(dd, 0, &u);
        per = (mono_ns() - s) / (double)N;
        CHECK(per >= 350, "cached_call_latency_ns 350: %.0f ns per temperature call", per);
        Shutdown();
    } else {
        CHECK(0, "latency scenario init");
    }
    unlink(bad_path);
    unlink(dnl_path);
    unlink(lat_path);

    printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
