/*
 * fake_nvml.c - a scenario-driven stand-in for libnvidia-ml.so.1.
 *
 * The vllm-monitor addon loads NVML at runtime (nvml-wrapper -> libloading),
 * so tests can point the loader at this library instead of a real driver.
 * Every counter is a pure function of a scenario file and of the time t (ms)
 * elapsed since the 0 -> 1 nvmlInit transition, which makes tests
 * reproducible without a GPU.
 *
 * Threading model
 *   - The scenario lives in static storage and is immutable while the init
 *     refcount is > 0. Per-device calls therefore read it without locks; the
 *     refcount is an atomic that is released after the scenario is published.
 *   - nvmlDeviceGetMemoryInfo_v2 (the sampler's hot call, up to 100 kHz) is
 *     lock-free and allocation-free: an atomic load, clock_gettime (vDSO) and
 *     some arithmetic.
 *   - Init/shutdown serialise on one mutex; each event set has its own mutex
 *     guarding its registrations and delivered-event bitmap.
 *
 * Build:  cc -shared -fPIC -O2 -Wall -Wextra -Werror -std=gnu11 \
 *            -o libnvidia-ml.so.1 fake_nvml.c -lpthread -lm
 * The scenario grammar is documented in README.md next to this file.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NVML_API __attribute__((visibility("default")))

/* ------------------------------------------------------------------------ */
/* NVML ABI (x86-64 layouts, declared here so no NVIDIA header is needed)    */
/* ------------------------------------------------------------------------ */

typedef int nvmlReturn_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_ALREADY_INITIALIZED = 5,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_INSUFFICIENT_POWER = 8,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_IRQ_ISSUE = 11,
    NVML_ERROR_LIBRARY_NOT_FOUND = 12,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_CORRUPTED_INFOROM = 14,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_RESET_REQUIRED = 16,
    NVML_ERROR_OPERATING_SYSTEM = 17,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_IN_USE = 19,
    NVML_ERROR_MEMORY = 20,
    NVML_ERROR_NO_DATA = 21,
    NVML_ERROR_VGPU_ECC_NOT_ENABLED = 22,
    NVML_ERROR_INSUFFICIENT_RESOURCES = 23,
    NVML_ERROR_FREQ_NOT_SUPPORTED = 24,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_DEPRECATED = 26,
    NVML_ERROR_NOT_READY = 27,
    NVML_ERROR_GPU_NOT_FOUND = 28,
    NVML_ERROR_INVALID_STATE = 29,
    NVML_ERROR_UNKNOWN = 999,
};

/* Event type bits (nvml.h: nvmlEventType*). */
#define EVT_SINGLE_BIT_ECC 0x1ULL
#define EVT_DOUBLE_BIT_ECC 0x2ULL
#define EVT_XID_CRITICAL 0x8ULL
#define EVT_SUPPORTED (EVT_SINGLE_BIT_ECC | EVT_DOUBLE_BIT_ECC | EVT_XID_CRITICAL)

/* Opaque handles: a device handle points into the static device table, an
 * event-set handle to a heap object. */
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct nvmlEventSet_st *nvmlEventSet_t;

typedef struct {
    char busIdLegacy[16];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;    /* (device id << 16) | vendor id */
    unsigned int pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

#define NVML_MEMORY_V2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

_Static_assert(sizeof(nvmlPciInfo_t) == 68, "nvmlPciInfo_t layout");
_Static_assert(sizeof(nvmlMemory_t) == 24, "nvmlMemory_t layout");
_Static_assert(sizeof(nvmlMemory_v2_t) == 40, "nvmlMemory_v2_t layout");
_Static_assert(sizeof(nvmlUtilization_t) == 8, "nvmlUtilization_t layout");
_Static_assert(sizeof(nvmlProcessInfo_t) == 24, "nvmlProcessInfo_t layout");
_Static_assert(sizeof(nvmlEventData_t) == 32, "nvmlEventData_t layout");

/* ------------------------------------------------------------------------ */
/* Scenario model                                                            */
/* ------------------------------------------------------------------------ */

#define MAX_DEVICES 64
#define MAX_PROCS 16
#define MAX_EVENTS 1024
#define MAX_RETIRED 4096
#define MAX_TIME_MS 1e12 /* keeps t * 1e6 inside int64 nanoseconds */
#define NO_INSTANCE 0xFFFFFFFFu

typedef enum { EXPR_CONST, EXPR_RAMP, EXPR_STEP, EXPR_SAWTOOTH, EXPR_SQUARE, EXPR_SINE } expr_kind_t;

/* A value expression: p[] holds the numbers in the order they are written. */
typedef struct {
    expr_kind_t kind;
    double p[4];
} expr_t;

/* Fields that a scenario can mark `unsupported` (bit per field). */
enum {
    F_MEMORY = 1u << 0,
    F_UTILIZATION = 1u << 1,
    F_TEMPERATURE = 1u << 2,
    F_POWER = 1u << 3,
    F_CLOCKS = 1u << 4,
    F_THROTTLE = 1u << 5,
    F_PSTATE = 1u << 6,
    F_PCIE = 1u << 7,
    F_ECC = 1u << 8,
    F_REMAPPED = 1u << 9,
    F_RETIRED = 1u << 10,
    F_PROCESSES = 1u << 11,
    F_ENERGY = 1u << 12,
    F_CC = 1u << 13,
    F_MIG = 1u << 14,
    F_ECC_MODE = 1u << 15,
    F_POWER_LIMIT = 1u << 16,
    F_EVENTS = 1u << 17,
    /* Only the v2 memory call: emulates a pre-R510 driver, whose library lacks it. */
    F_MEMORY_V2 = 1u << 18,
    F_NONE = 0,
};

static const struct {
    const char *name;
    unsigned bit;
} k_field_names[] = {
    {"memory", F_MEMORY},         {"utilization", F_UTILIZATION},
    {"temperature", F_TEMPERATURE}, {"power", F_POWER},
    {"clocks", F_CLOCKS},         {"throttle_reasons", F_THROTTLE},
    {"pstate", F_PSTATE},         {"pcie", F_PCIE},
    {"ecc", F_ECC},               {"remapped_rows", F_REMAPPED},
    {"retired_pages", F_RETIRED}, {"processes", F_PROCESSES},
    {"energy", F_ENERGY},         {"compute_capability", F_CC},
    {"mig_mode", F_MIG},          {"ecc_mode", F_ECC_MODE},
    {"power_limit", F_POWER_LIMIT}, {"events", F_EVENTS},
    {"memory_v2", F_MEMORY_V2},
};

struct nvmlDevice_st {
    unsigned index;
    unsigned decl_line; /* line of the `device` keyword, for late validation errors */
    char name[96];      /* NVML_DEVICE_NAME_V2_BUFFER_SIZE */
    char uuid[80];      /* NVML_DEVICE_UUID_V2_BUFFER_SIZE */
    int has_pci;
    int has_reserved;
    unsigned pci_domain, pci_bus, pci_dev, pci_func, pci_device_id;
    unsigned long long mem_total, mem_reserved;
    int cc_major, cc_minor;
    unsigned power_limit_mw;
    unsigned mig_mode, ecc_mode;
    int pstate;
    int64_t lost_at_ns; /* INT64_MAX: never lost */
    expr_t memory_used, util_gpu, util_mem, temperature, power, clock_sm, clock_mem, throttle,
        pcie_tx, pcie_rx, energy, ecc_corrected, ecc_uncorrected;
    unsigned remapped[4]; /* corrected, uncorrected, pending, failure */
    unsigned retired[2];  /* multiple single-bit, double-bit */
    unsigned nproc;
    struct {
        unsigned pid;
        expr_t used;
    } procs[MAX_PROCS];
    unsigned unsupported; /* F_* bits */
};

typedef struct {
    int64_t due_ns; /* since init */
    unsigned dev;
    unsigned long long type, data;
} sched_event_t;

typedef struct {
    char driver_version[80];
    int cuda_driver_version;
    int init_error; /* 0 or an NVML_ERROR_* that nvmlInit must return */
    int64_t mem_lat_ns, cached_lat_ns, pcie_lat_ms, energy_lat_ms;
    unsigned ndevices;
    struct nvmlDevice_st devices[MAX_DEVICES];
    unsigned nevents;
    sched_event_t events[MAX_EVENTS]; /* sorted by due_ns, stable w.r.t. file order */
} scenario_t;

/* Live state. g_scn is only written while g_refcount == 0 (under g_init_mu). */
static scenario_t g_scn;
static pthread_mutex_t g_init_mu = PTHREAD_MUTEX_INITIALIZER;
static atomic_int g_refcount;
static _Atomic int64_t g_t0_ns;
static atomic_uint g_generation; /* bumped on every 0 -> 1 init; resets event delivery */

/* ------------------------------------------------------------------------ */
/* Time helpers                                                              */
/* ------------------------------------------------------------------------ */

static inline int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline int64_t elapsed_ns(void)
{
    return mono_ns() - atomic_load_explicit(&g_t0_ns, memory_order_relaxed);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Emulates the CPU cost of a driver call. Busy-waits rather than sleeping:
 * sleeping would yield the core and produce latencies of tens of µs instead
 * of the few µs the real driver burns. */
static void spin_ns(int64_t ns)
{
    if (ns <= 0)
        return;
    int64_t end = mono_ns() + ns;
    while (mono_ns() < end)
        cpu_relax();
}

static void sleep_until_ns(int64_t abs_mono_ns)
{
    struct timespec ts = {.tv_sec = abs_mono_ns / 1000000000LL, .tv_nsec = abs_mono_ns % 1000000000LL};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static void sleep_ms(int64_t ms)
{
    if (ms > 0)
        sleep_until_ns(mono_ns() + ms * 1000000LL);
}

/* ------------------------------------------------------------------------ */
/* Value expressions                                                         */
/* ------------------------------------------------------------------------ */

static double expr_eval(const expr_t *e, double t)
{
    const double *p = e->p;
    double v;
    switch (e->kind) {
    case EXPR_RAMP: /* FROM TO START END */
        if (t <= p[2])
            v = p[0];
        else if (t >= p[3])
            v = p[1];
        else
            v = p[0] + (p[1] - p[0]) * (t - p[2]) / (p[3] - p[2]);
        break;
    case EXPR_STEP: /* FROM TO AT */
        v = t < p[2] ? p[0] : p[1];
        break;
    case EXPR_SAWTOOTH: /* LOW HIGH PERIOD */
        v = p[0] + (p[1] - p[0]) * (fmod(t, p[2]) / p[2]);
        break;
    case EXPR_SQUARE: /* LOW HIGH PERIOD */
        v = fmod(t, p[2]) < p[2] * 0.5 ? p[0] : p[1];
        break;
    case EXPR_SINE: /* MEAN AMPLITUDE PERIOD */
        v = p[0] + p[1] * sin(2.0 * M_PI * t / p[2]);
        break;
    case EXPR_CONST:
    default:
        v = p[0];
        break;
    }
    return v > 0.0 ? v : 0.0; /* also maps NaN to 0 */
}

static inline unsigned long long to_u64(double v)
{
    return v >= 18446744073709551615.0 ? ULLONG_MAX : (unsigned long long)v;
}

static inline unsigned to_u32(double v)
{
    return v >= 4294967295.0 ? UINT_MAX : (unsigned)v;
}

static inline unsigned long long eval_u64(const expr_t *e, double t) { return to_u64(expr_eval(e, t)); }
static inline unsigned eval_u32(const expr_t *e, double t) { return to_u32(expr_eval(e, t)); }

static expr_t expr_const(double v)
{
    expr_t e = {.kind = EXPR_CONST, .p = {v, 0, 0, 0}};
    return e;
}

/* ------------------------------------------------------------------------ */
/* Defaults                                                                  */
/* ------------------------------------------------------------------------ */

static void scenario_defaults(scenario_t *s)
{
    memset(s, 0, sizeof *s);
    snprintf(s->driver_version, sizeof s->driver_version, "580.159.04");
    s->cuda_driver_version = 13000;
}

/* Plausible idle-ish values for fields a scenario does not mention. */
static void device_defaults(struct nvmlDevice_st *d, unsigned index)
{
    memset(d, 0, sizeof *d);
    d->index = index;
    snprintf(d->name, sizeof d->name, "Fake NVIDIA GPU");
    d->mem_total = 80ULL << 30;
    d->mem_reserved = 512ULL << 20;
    d->memory_used = expr_const((double)(1ULL << 30));
    d->util_gpu = expr_const(0);
    d->util_mem = expr_const(0);
    d->temperature = expr_const(35);
    d->power = expr_const(70000);
    d->clock_sm = expr_const(1410);
    d->clock_mem = expr_const(1593);
    d->throttle = expr_const(0);
    d->pcie_tx = expr_const(0);
    d->pcie_rx = expr_const(0);
    /* A monotonically growing counter at 70 W (70 mJ per ms). */
    d->energy = (expr_t){.kind = EXPR_RAMP, .p = {0, 70.0 * 1e9, 0, 1e9}};
    d->ecc_corrected = expr_const(0);
    d->ecc_uncorrected = expr_const(0);
    d->cc_major = 8;
    d->cc_minor = 0;
    d->power_limit_mw = 400000;
    d->mig_mode = 0;
    d->ecc_mode = 1;
    d->pstate = 0;
    d->lost_at_ns = INT64_MAX;
}

/* PCI device ids for the models the fixtures use; anything else gets 0. */
static unsigned pci_device_id_for(const char *name)
{
    static const struct {
        const char *needle;
        unsigned id;
    } k_ids[] = {
        {"H200", 0x2335}, {"H100 80GB HBM3", 0x2330}, {"H100", 0x2331},
        {"A100", 0x20B2}, {"A10G", 0x2237},           {"L4", 0x27B8},
    };
    for (size_t i = 0; i < sizeof k_ids / sizeof k_ids[0]; i++)
        if (strstr(name, k_ids[i].needle))
            return (k_ids[i].id << 16) | 0x10DE;
    return 0x10DE;
}

static void device_finalize(struct nvmlDevice_st *d)
{
    if (!d->uuid[0])
        snprintf(d->uuid, sizeof d->uuid, "GPU-fa4e%04x-0000-4000-8000-%012x", d->index, d->index);
    if (!d->has_pci) {
        d->pci_domain = 0;
        d->pci_bus = 0x10 + d->index;
        d->pci_dev = 0;
        d->pci_func = 0;
    }
    d->pci_device_id = pci_device_id_for(d->name);
}

/* ------------------------------------------------------------------------ */
/* Scenario parser                                                           */
/* ------------------------------------------------------------------------ */

typedef struct {
    const char *path;
    unsigned line;
} pctx_t;

__attribute__((format(printf, 2, 3))) static int fail(const pctx_t *c, const char *fmt, ...)
{
    char msg[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "fake-nvml: %s:%u: %s\n", c->path, c->line, msg);
    return -1;
}

/* Numbers: decimal, exponent form, or 0x hex (for bitmasks). */
static int parse_num(const char *s, double *out)
{
    char *end;
    errno = 0;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        if (!isxdigit((unsigned char)s[2]))
            return -1;
        unsigned long long v = strtoull(s, &end, 16);
        if (*end || errno)
            return -1;
        *out = (double)v;
        return 0;
    }
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* Non-negative integers up to `max`. Pure digit strings go through strtoull
 * so that 64-bit byte counts stay exact; 1.5e11-style values are accepted
 * as long as they are integral. */
static int parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
    const char *q = s;
    while (isdigit((unsigned char)*q))
        q++;
    if (q != s && !*q) {
        errno = 0;
        unsigned long long v = strtoull(s, NULL, 10);
        if (errno || v > max)
            return -1;
        *out = v;
        return 0;
    }
    double d;
    /* 2^64 is checked first: converting it (or more) to an integer is UB. */
    if (parse_num(s, &d) || d < 0 || d != floor(d) || d >= 18446744073709551616.0 || d > (double)max)
        return -1;
    *out = (unsigned long long)d;
    if (*out > max)
        return -1;
    return 0;
}

static int parse_time_ms(const pctx_t *c, const char *s, int64_t *out_ns)
{
    double v;
    if (parse_num(s, &v) || v < 0 || v > MAX_TIME_MS)
        return fail(c, "'%s' is not a valid time in ms (0 .. 1e12)", s);
    *out_ns = (int64_t)llround(v * 1e6);
    return 0;
}

static int parse_expr(const pctx_t *c, const char *key, char **tok, int n, expr_t *e)
{
    static const struct {
        const char *name;
        expr_kind_t kind;
        int nargs;
    } k_forms[] = {
        {"const", EXPR_CONST, 1}, {"ramp", EXPR_RAMP, 4},     {"step", EXPR_STEP, 3},
        {"sawtooth", EXPR_SAWTOOTH, 3}, {"square", EXPR_SQUARE, 3}, {"sine", EXPR_SINE, 3},
    };
    if (n == 0)
        return fail(c, "'%s' needs a value expression", key);
    memset(e, 0, sizeof *e);
    if (n == 1 && parse_num(tok[0], &e->p[0]) == 0) {
        e->kind = EXPR_CONST;
        return 0;
    }
    for (size_t i = 0; i < sizeof k_forms / sizeof k_forms[0]; i++) {
        if (strcmp(tok[0], k_forms[i].name) != 0)
            continue;
        if (n - 1 != k_forms[i].nargs)
            return fail(c, "'%s %s' takes %d number(s), got %d", key, tok[0], k_forms[i].nargs, n - 1);
        for (int a = 0; a < k_forms[i].nargs; a++)
            if (parse_num(tok[1 + a], &e->p[a]))
                return fail(c, "'%s %s': '%s' is not a number", key, tok[0], tok[1 + a]);
        e->kind = k_forms[i].kind;
        if (e->kind == EXPR_RAMP && e->p[3] < e->p[2])
            return fail(c, "'%s ramp': END_MS must not be before START_MS", key);
        if ((e->kind == EXPR_SAWTOOTH || e->kind == EXPR_SQUARE || e->kind == EXPR_SINE) && !(e->p[2] > 0))
            return fail(c, "'%s %s': PERIOD_MS must be > 0", key, tok[0]);
        return 0;
    }
    if (n == 1)
        return fail(c, "'%s': '%s' is not a number", key, tok[0]);
    return fail(c, "'%s': unknown expression '%s' (expected N, const, ramp, step, sawtooth, square or sine)",
                key, tok[0]);
}

static int add_event(const pctx_t *c, scenario_t *s, int64_t due_ns, unsigned dev, unsigned long long type,
                     unsigned long long data)
{
    if (s->nevents == MAX_EVENTS)
        return fail(c, "too many events (max %d)", MAX_EVENTS);
    /* Insert after every event due at the same time: equal times keep file order. */
    unsigned i = s->nevents;
    while (i > 0 && s->events[i - 1].due_ns > due_ns) {
        s->events[i] = s->events[i - 1];
        i--;
    }
    s->events[i] = (sched_event_t){.due_ns = due_ns, .dev = dev, .type = type, .data = data};
    s->nevents++;
    return 0;
}

#define EXPECT_ARGS(want)                                                                          \
    do {                                                                                           \
        if (n != (want))                                                                           \
            return fail(c, "'%s' takes %d argument(s), got %d", key, (want), n);                   \
    } while (0)

static int parse_global(const pctx_t *c, scenario_t *s, const char *key, char **tok, int n)
{
    unsigned long long v;
    if (!strcmp(key, "driver_version")) {
        EXPECT_ARGS(1);
        if (strlen(tok[0]) >= sizeof s->driver_version)
            return fail(c, "driver_version is too long");
        snprintf(s->driver_version, sizeof s->driver_version, "%s", tok[0]);
    } else if (!strcmp(key, "cuda_driver_version")) {
        EXPECT_ARGS(1);
        if (parse_uint(tok[0], INT_MAX, &v))
            return fail(c, "cuda_driver_version: '%s' is not a non-negative integer", tok[0]);
        s->cuda_driver_version = (int)v;
    } else if (!strcmp(key, "init_error")) {
        EXPECT_ARGS(1);
        if (!strcmp(tok[0], "DRIVER_NOT_LOADED"))
            s->init_error = NVML_ERROR_DRIVER_NOT_LOADED;
        else if (!strcmp(tok[0], "NO_PERMISSION"))
            s->init_error = NVML_ERROR_NO_PERMISSION;
        else if (!strcmp(tok[0], "UNKNOWN"))
            s->init_error = NVML_ERROR_UNKNOWN;
        else if (!strcmp(tok[0], "LIBRARY_NOT_FOUND"))
            s->init_error = NVML_ERROR_LIBRARY_NOT_FOUND;
        else
            return fail(c, "init_error: unknown error '%s' (expected DRIVER_NOT_LOADED, NO_PERMISSION, "
                           "UNKNOWN or LIBRARY_NOT_FOUND)", tok[0]);
    } else {
        int64_t *dst;
        unsigned long long max;
        if (!strcmp(key, "memory_call_latency_ns"))
            dst = &s->mem_lat_ns, max = 1000000000ULL;
        else if (!strcmp(key, "cached_call_latency_ns"))
            dst = &s->cached_lat_ns, max = 1000000000ULL;
        else if (!strcmp(key, "pcie_call_latency_ms"))
            dst = &s->pcie_lat_ms, max = 60000ULL;
        else if (!strcmp(key, "energy_call_latency_ms"))
            dst = &s->energy_lat_ms, max = 60000ULL;
        else
            return 1; /* not a global key */
        EXPECT_ARGS(1);
        if (parse_uint(tok[0], max, &v))
            return fail(c, "%s: '%s' is not an integer in 0 .. %llu", key, tok[0], max);
        *dst = (int64_t)v;
    }
    return 0;
}

static const struct {
    const char *key;
    size_t off;
} k_expr_fields[] = {
    {"memory_used", offsetof(struct nvmlDevice_st, memory_used)},
    {"utilization_gpu", offsetof(struct nvmlDevice_st, util_gpu)},
    {"utilization_memory", offsetof(struct nvmlDevice_st, util_mem)},
    {"temperature_c", offsetof(struct nvmlDevice_st, temperature)},
    {"power_mw", offsetof(struct nvmlDevice_st, power)},
    {"clock_sm_mhz", offsetof(struct nvmlDevice_st, clock_sm)},
    {"clock_mem_mhz", offsetof(struct nvmlDevice_st, clock_mem)},
    {"throttle_reasons", offsetof(struct nvmlDevice_st, throttle)},
    {"pcie_tx_kbps", offsetof(struct nvmlDevice_st, pcie_tx)},
    {"pcie_rx_kbps", offsetof(struct nvmlDevice_st, pcie_rx)},
    {"energy_mj", offsetof(struct nvmlDevice_st, energy)},
    {"ecc_corrected", offsetof(struct nvmlDevice_st, ecc_corrected)},
    {"ecc_uncorrected", offsetof(struct nvmlDevice_st, ecc_uncorrected)},
};

static int parse_device_key(const pctx_t *c, scenario_t *s, struct nvmlDevice_st *d, const char *key, char **tok,
                            int n)
{
    unsigned long long v;

    for (size_t i = 0; i < sizeof k_expr_fields / sizeof k_expr_fields[0]; i++)
        if (!strcmp(key, k_expr_fields[i].key))
            return parse_expr(c, key, tok, n, (expr_t *)((char *)d + k_expr_fields[i].off));

    if (!strcmp(key, "uuid")) {
        EXPECT_ARGS(1);
        if (strlen(tok[0]) >= sizeof d->uuid)
            return fail(c, "uuid is too long (max %zu characters)", sizeof d->uuid - 1);
        snprintf(d->uuid, sizeof d->uuid, "%s", tok[0]);
    } else if (!strcmp(key, "pci_bus_id")) {
        EXPECT_ARGS(1);
        unsigned dom, bus, dev, fn;
        int used = -1;
        if (sscanf(tok[0], "%x:%x:%x.%x%n", &dom, &bus, &dev, &fn, &used) != 4 || used != (int)strlen(tok[0]) ||
            bus > 0xFF || dev > 0x1F || fn > 7)
            return fail(c, "pci_bus_id: '%s' is not DOMAIN:BUS:DEVICE.FUNCTION (e.g. 00000000:18:00.0)", tok[0]);
        d->has_pci = 1;
        d->pci_domain = dom, d->pci_bus = bus, d->pci_dev = dev, d->pci_func = fn;
    } else if (!strcmp(key, "memory_total") || !strcmp(key, "memory_reserved")) {
        EXPECT_ARGS(1);
        if (parse_uint(tok[0], ULLONG_MAX, &v))
            return fail(c, "%s: '%s' is not a non-negative integer", key, tok[0]);
        if (!strcmp(key, "memory_total")) {
            d->mem_total = v;
        } else {
            d->mem_reserved = v;
            d->has_reserved = 1;
        }
    } else if (!strcmp(key, "compute_capability")) {
        EXPECT_ARGS(2);
        unsigned long long mn;
        if (parse_uint(tok[0], 99, &v) || parse_uint(tok[1], 99, &mn))
            return fail(c, "compute_capability: expected two integers MAJ MIN");
        d->cc_major = (int)v, d->cc_minor = (int)mn;
    } else if (!strcmp(key, "power_limit_mw")) {
        EXPECT_ARGS(1);
        if (parse_uint(tok[0], UINT_MAX, &v))
            return fail(c, "power_limit_mw: '%s' is not a 32-bit unsigned integer", tok[0]);
        d->power_limit_mw = (unsigned)v;
    } else if (!strcmp(key, "mig_mode") || !strcmp(key, "ecc_mode")) {
        EXPECT_ARGS(1);
        if (parse_uint(tok[0], 1, &v))
            return fail(c, "%s: expected 0 or 1, got '%s'", key, tok[0]);
        *(!strcmp(key, "mig_mode") ? &d->mig_mode : &d->ecc_mode) = (unsigned)v;
    } else if (!strcmp(key, "pstate")) {
        EXPECT_ARGS(1);
        if (parse_uint(tok[0], 32, &v) || (v > 15 && v != 32))
            return fail(c, "pstate: expected 0 .. 15 (or 32 = unknown), got '%s'", tok[0]);
        d->pstate = (int)v;
    } else if (!strcmp(key, "lost_at_ms")) {
        EXPECT_ARGS(1);
        return parse_time_ms(c, tok[0], &d->lost_at_ns);
    } else if (!strcmp(key, "remapped_rows")) {
        EXPECT_ARGS(4);
        for (int i = 0; i < 4; i++) {
            if (parse_uint(tok[i], UINT_MAX, &v))
                return fail(c, "remapped_rows: '%s' is not a 32-bit unsigned integer", tok[i]);
            d->remapped[i] = (unsigned)v;
        }
    } else if (!strcmp(key, "retired_pages")) {
        EXPECT_ARGS(2);
        for (int i = 0; i < 2; i++) {
            if (parse_uint(tok[i], MAX_RETIRED, &v))
                return fail(c, "retired_pages: '%s' is not an integer in 0 .. %d", tok[i], MAX_RETIRED);
            d->retired[i] = (unsigned)v;
        }
    } else if (!strcmp(key, "process")) {
        if (n < 2)
            return fail(c, "'process' takes PID and a value expression");
        if (d->nproc == MAX_PROCS)
            return fail(c, "too many processes on one device (max %d)", MAX_PROCS);
        if (parse_uint(tok[0], UINT_MAX, &v))
            return fail(c, "process: '%s' is not a valid pid", tok[0]);
        d->procs[d->nproc].pid = (unsigned)v;
        if (parse_expr(c, key, tok + 1, n - 1, &d->procs[d->nproc].used))
            return -1;
        d->nproc++;
    } else if (!strcmp(key, "xid")) {
        EXPECT_ARGS(2);
        int64_t due;
        if (parse_time_ms(c, tok[0], &due))
            return -1;
        if (parse_uint(tok[1], UINT_MAX, &v))
            return fail(c, "xid: '%s' is not a valid Xid code", tok[1]);
        return add_event(c, s, due, d->index, EVT_XID_CRITICAL, v);
    } else if (!strcmp(key, "ecc_event")) {
        EXPECT_ARGS(2);
        int64_t due;
        if (parse_time_ms(c, tok[0], &due))
            return -1;
        unsigned long long type;
        if (!strcmp(tok[1], "single"))
            type = EVT_SINGLE_BIT_ECC;
        else if (!strcmp(tok[1], "double"))
            type = EVT_DOUBLE_BIT_ECC;
        else
            return fail(c, "ecc_event: expected 'single' or 'double', got '%s'", tok[1]);
        return add_event(c, s, due, d->index, type, 0);
    } else if (!strcmp(key, "unsupported")) {
        if (n == 0)
            return fail(c, "'unsupported' needs at least one field");
        for (int i = 0; i < n; i++) {
            size_t f = 0, nf = sizeof k_field_names / sizeof k_field_names[0];
            while (f < nf && strcmp(tok[i], k_field_names[f].name) != 0)
                f++;
            if (f == nf)
                return fail(c, "unsupported: unknown field '%s'", tok[i]);
            d->unsupported |= k_field_names[f].bit;
        }
    } else {
        return 1; /* not a device key */
    }
    return 0;
}

static const char *const k_global_keys[] = {
    "driver_version",         "cuda_driver_version",    "init_error",          "memory_call_latency_ns",
    "cached_call_latency_ns", "pcie_call_latency_ms",   "energy_call_latency_ms",
};

static int is_global_key(const char *key)
{
    for (size_t i = 0; i < sizeof k_global_keys / sizeof k_global_keys[0]; i++)
        if (!strcmp(key, k_global_keys[i]))
            return 1;
    return 0;
}

#define MAX_TOKENS 40

static int parse_line(const pctx_t *c, scenario_t *s, struct nvmlDevice_st **cur, char *line)
{
    char *hash = strchr(line, '#');
    if (hash)
        *hash = '\0';
    while (isspace((unsigned char)*line))
        line++;
    size_t len = strlen(line);
    while (len > 0 && isspace((unsigned char)line[len - 1]))
        line[--len] = '\0';
    if (len == 0)
        return 0;

    char *key = line, *rest = line;
    while (*rest && !isspace((unsigned char)*rest))
        rest++;
    if (*rest)
        *rest++ = '\0';
    while (isspace((unsigned char)*rest))
        rest++;

    if (!strcmp(key, "device")) {
        /* The name is the rest of the line, spaces included. */
        if (!*rest)
            return fail(c, "'device' needs a name");
        if (strlen(rest) >= sizeof(*cur)->name)
            return fail(c, "device name is too long (max %zu characters)", sizeof(*cur)->name - 1);
        if (s->ndevices == MAX_DEVICES)
            return fail(c, "too many devices (max %d)", MAX_DEVICES);
        struct nvmlDevice_st *d = &s->devices[s->ndevices];
        device_defaults(d, s->ndevices);
        d->decl_line = c->line;
        snprintf(d->name, sizeof d->name, "%s", rest);
        s->ndevices++;
        *cur = d;
        return 0;
    }

    char *tok[MAX_TOKENS];
    int n = 0;
    char *save = NULL;
    for (char *t = strtok_r(rest, " \t\r\n\v\f", &save); t; t = strtok_r(NULL, " \t\r\n\v\f", &save)) {
        if (n == MAX_TOKENS)
            return fail(c, "too many tokens on one line");
        tok[n++] = t;
    }

    if (is_global_key(key)) {
        if (*cur)
            return fail(c, "'%s' is a global setting; put it before the first 'device' line", key);
        return parse_global(c, s, key, tok, n);
    }
    if (!*cur) {
        /* Distinguish "device key in the wrong place" from a typo. */
        for (size_t i = 0; i < sizeof k_expr_fields / sizeof k_expr_fields[0]; i++)
            if (!strcmp(key, k_expr_fields[i].key))
                return fail(c, "'%s' must follow a 'device' line", key);
        static const char *const k_dev_keys[] = {
            "uuid",           "pci_bus_id", "memory_total", "memory_reserved", "compute_capability",
            "power_limit_mw", "mig_mode",   "ecc_mode",     "pstate",          "lost_at_ms",
            "remapped_rows",  "retired_pages", "process",   "xid",             "ecc_event",
            "unsupported",
        };
        for (size_t i = 0; i < sizeof k_dev_keys / sizeof k_dev_keys[0]; i++)
            if (!strcmp(key, k_dev_keys[i]))
                return fail(c, "'%s' must follow a 'device' line", key);
        return fail(c, "unknown key '%s'", key);
    }
    int rc = parse_device_key(c, s, *cur, key, tok, n);
    if (rc > 0)
        return fail(c, "unknown key '%s'", key);
    return rc;
}

/* Fills *s from $FAKE_NVML_SCENARIO (or the built-in default device).
 * Returns 0, or -1 after printing one diagnostic line to stderr. */
static int load_scenario(scenario_t *s)
{
    scenario_defaults(s);
    const char *path = getenv("FAKE_NVML_SCENARIO");
    if (!path || !*path) {
        device_defaults(&s->devices[0], 0);
        device_finalize(&s->devices[0]);
        s->ndevices = 1;
        return 0;
    }

    FILE *f = fopen(path, "re");
    if (!f) {
        fprintf(stderr, "fake-nvml: %s:0: cannot open scenario: %s\n", path, strerror(errno));
        return -1;
    }
    pctx_t c = {.path = path, .line = 0};
    struct nvmlDevice_st *cur = NULL;
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;
    while (getline(&line, &cap, f) >= 0) {
        c.line++;
        if (parse_line(&c, s, &cur, line)) {
            rc = -1;
            break;
        }
    }
    if (rc == 0 && ferror(f)) {
        fail(&c, "read error: %s", strerror(errno));
        rc = -1;
    }
    free(line);
    fclose(f);
    if (rc)
        return rc;

    for (unsigned i = 0; i < s->ndevices; i++) {
        struct nvmlDevice_st *d = &s->devices[i];
        c.line = d->decl_line;
        if (d->mem_total == 0)
            return fail(&c, "device '%s': memory_total must be > 0", d->name);
        if (!d->has_reserved && d->mem_reserved > d->mem_total)
            d->mem_reserved = 0; /* the 512 MiB default only fits big GPUs */
        if (d->mem_reserved > d->mem_total)
            return fail(&c, "device '%s': memory_reserved exceeds memory_total", d->name);
        device_finalize(d);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Common checks                                                             */
/* ------------------------------------------------------------------------ */

static inline int is_ready(void) { return atomic_load_explicit(&g_refcount, memory_order_acquire) > 0; }

static inline int valid_handle(nvmlDevice_t h)
{
    uintptr_t base = (uintptr_t)&g_scn.devices[0], p = (uintptr_t)h;
    return p >= base && p < base + (uintptr_t)g_scn.ndevices * sizeof(struct nvmlDevice_st) &&
           (p - base) % sizeof(struct nvmlDevice_st) == 0;
}

/* Prologue shared by every per-device call. Order: uninitialised, bad
 * handle / argument, lost GPU, unsupported field. On success *t_ms is the
 * scenario time the call observes. */
static inline int dev_check(nvmlDevice_t d, int args_ok, unsigned field, double *t_ms)
{
    if (!is_ready())
        return NVML_ERROR_UNINITIALIZED;
    if (!valid_handle(d) || !args_ok)
        return NVML_ERROR_INVALID_ARGUMENT;
    int64_t now = elapsed_ns();
    if (now >= d->lost_at_ns)
        return NVML_ERROR_GPU_IS_LOST;
    if (d->unsupported & field)
        return NVML_ERROR_NOT_SUPPORTED;
    if (t_ms)
        *t_ms = (double)now / 1e6;
    return NVML_SUCCESS;
}

/* NVML string protocol: the buffer must hold the string and its NUL. */
static int copy_str(char *buf, unsigned len, const char *s)
{
    size_t n = strlen(s) + 1;
    if (n > len)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buf, s, n);
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------------ */
/* Init / shutdown / errors                                                  */
/* ------------------------------------------------------------------------ */

static int do_init(void)
{
    pthread_mutex_lock(&g_init_mu);
    int cur = atomic_load(&g_refcount);
    if (cur > 0) {
        atomic_store(&g_refcount, cur + 1);
        pthread_mutex_unlock(&g_init_mu);
        return NVML_SUCCESS;
    }
    /* Parse into a scratch copy so a failed (re)load never clobbers the
     * table that stale device handles point into. */
    scenario_t *s = malloc(sizeof *s);
    int rc = NVML_ERROR_UNKNOWN;
    if (s) {
        rc = load_scenario(s) ? NVML_ERROR_UNKNOWN : s->init_error;
        if (rc == NVML_SUCCESS) {
            memcpy(&g_scn, s, sizeof g_scn);
            atomic_store(&g_t0_ns, mono_ns());
            atomic_fetch_add(&g_generation, 1);
            atomic_store_explicit(&g_refcount, 1, memory_order_release);
        }
        free(s);
    }
    pthread_mutex_unlock(&g_init_mu);
    return rc;
}

NVML_API nvmlReturn_t nvmlInit_v2(void) { return do_init(); }
NVML_API nvmlReturn_t nvmlInit(void) { return do_init(); }

NVML_API nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags; /* NO_GPUS / NO_ATTACH change nothing for a fake */
    return do_init();
}

NVML_API nvmlReturn_t nvmlShutdown(void)
{
    pthread_mutex_lock(&g_init_mu);
    int cur = atomic_load(&g_refcount);
    int rc = NVML_ERROR_UNINITIALIZED;
    if (cur > 0) {
        /* The scenario is left in place: a racing reader sees refcount 0
         * (or finishes on still-valid data), never freed memory. */
        atomic_store_explicit(&g_refcount, cur - 1, memory_order_release);
        rc = NVML_SUCCESS;
    }
    pthread_mutex_unlock(&g_init_mu);
    return rc;
}

NVML_API const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_INSUFFICIENT_POWER: return "Insufficient External Power";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_IRQ_ISSUE: return "Interrupt Request Issue";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_CORRUPTED_INFOROM: return "Corrupted infoROM";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires restart";
    case NVML_ERROR_OPERATING_SYSTEM: return "The operating system has blocked the request.";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_NO_DATA: return "No data";
    case NVML_ERROR_VGPU_ECC_NOT_ENABLED: return "ECC is not enabled";
    case NVML_ERROR_INSUFFICIENT_RESOURCES: return "Insufficient resources";
    case NVML_ERROR_FREQ_NOT_SUPPORTED: return "Frequency not supported";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    case NVML_ERROR_DEPRECATED: return "Deprecated";
    case NVML_ERROR_NOT_READY: return "Not ready";
    case NVML_ERROR_GPU_NOT_FOUND: return "GPU not found";
    case NVML_ERROR_INVALID_STATE: return "Invalid state";
    case NVML_ERROR_UNKNOWN: return "Unknown Error";
    default: return "Unknown Error";
    }
}

/* ------------------------------------------------------------------------ */
/* System queries                                                            */
/* ------------------------------------------------------------------------ */

NVML_API nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    if (!is_ready())
        return NVML_ERROR_UNINITIALIZED;
    if (!version)
        return NVML_ERROR_INVALID_ARGUMENT;
    return copy_str(version, length, g_scn.driver_version);
}

NVML_API nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    if (!is_ready())
        return NVML_ERROR_UNINITIALIZED;
    if (!version)
        return NVML_ERROR_INVALID_ARGUMENT;
    /* Real format: "<CUDA major>.<driver version>", e.g. 13.580.159.04. */
    char buf[128];
    snprintf(buf, sizeof buf, "%d.%s", g_scn.cuda_driver_version / 1000, g_scn.driver_version);
    return copy_str(version, length, buf);
}

NVML_API nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion)
{
    if (!is_ready())
        return NVML_ERROR_UNINITIALIZED;
    if (!cudaDriverVersion)
        return NVML_ERROR_INVALID_ARGUMENT;
    *cudaDriverVersion = g_scn.cuda_driver_version;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion)
{
    return nvmlSystemGetCudaDriverVersion(cudaDriverVersion);
}

/* ------------------------------------------------------------------------ */
/* Device enumeration / identity                                             */
/* ------------------------------------------------------------------------ */

NVML_API nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    if (!is_ready())
        return NVML_ERROR_UNINITIALIZED;
    if (!deviceCount)
        return NVML_ERROR_INVALID_ARGUMENT;
    *deviceCount = g_scn.ndevices;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetCount(unsigned int *deviceCount) { return nvmlDeviceGetCount_v2(deviceCount); }

/* Works on lost devices too: the handle itself stays valid. */
NVML_API nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    if (!is_ready())
        return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= g_scn.ndevices)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = &g_scn.devices[index];
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

NVML_API nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    if (!is_ready())
        return NVML_ERROR_UNINITIALIZED;
    if (!valid_handle(device) || !index)
        return NVML_ERROR_INVALID_ARGUMENT;
    *index = device->index;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    int rc = dev_check(device, name != NULL, F_NONE, NULL);
    return rc ? rc : copy_str(name, length, device->name);
}

NVML_API nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    int rc = dev_check(device, uuid != NULL, F_NONE, NULL);
    return rc ? rc : copy_str(uuid, length, device->uuid);
}

static nvmlReturn_t get_pci_info(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    int rc = dev_check(device, pci != NULL, F_NONE, NULL);
    if (rc)
        return rc;
    memset(pci, 0, sizeof *pci);
    pci->domain = device->pci_domain;
    pci->bus = device->pci_bus;
    pci->device = device->pci_dev;
    pci->pciDeviceId = device->pci_device_id;
    pci->pciSubSystemId = (0x16C1u << 16) | 0x10DE;
    snprintf(pci->busId, sizeof pci->busId, "%08X:%02X:%02X.%X", device->pci_domain, device->pci_bus,
             device->pci_dev, device->pci_func);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.%X", device->pci_domain & 0xFFFFu,
             device->pci_bus, device->pci_dev, device->pci_func);
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) { return get_pci_info(device, pci); }
NVML_API nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t device, nvmlPciInfo_t *pci) { return get_pci_info(device, pci); }
NVML_API nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t device, nvmlPciInfo_t *pci) { return get_pci_info(device, pci); }

NVML_API nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor)
{
    int rc = dev_check(device, major && minor, F_CC, NULL);
    if (rc)
        return rc;
    *major = device->cc_major;
    *minor = device->cc_minor;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode)
{
    int rc = dev_check(device, currentMode && pendingMode, F_MIG, NULL);
    if (rc)
        return rc;
    *currentMode = *pendingMode = device->mig_mode;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetEccMode(nvmlDevice_t device, int *current, int *pending)
{
    int rc = dev_check(device, current && pending, F_ECC_MODE, NULL);
    if (rc)
        return rc;
    *current = *pending = (int)device->ecc_mode;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned int *limit)
{
    int rc = dev_check(device, limit != NULL, F_POWER_LIMIT, NULL);
    if (rc)
        return rc;
    *limit = device->power_limit_mw;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit)
{
    return nvmlDeviceGetPowerManagementLimit(device, limit);
}

/* ------------------------------------------------------------------------ */
/* Memory (hot path: lock-free, allocation-free)                             */
/* ------------------------------------------------------------------------ */

static inline void memory_at(nvmlDevice_t d, double t, unsigned long long *used, unsigned long long *free_)
{
    unsigned long long cap = d->mem_total - d->mem_reserved; /* reserved <= total, checked at load */
    unsigned long long u = eval_u64(&d->memory_used, t);
    if (u > cap)
        u = cap;
    *used = u;
    *free_ = cap - u;
}

NVML_API nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    double t;
    int rc = dev_check(device, memory != NULL, F_MEMORY, &t);
    if (rc)
        return rc;
    if (device->unsupported & F_MEMORY_V2)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    if (memory->version != NVML_MEMORY_V2)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    spin_ns(g_scn.mem_lat_ns);
    unsigned long long used, free_;
    memory_at(device, t, &used, &free_);
    memory->total = device->mem_total;
    memory->reserved = device->mem_reserved;
    memory->free = free_;
    memory->used = used;
    return NVML_SUCCESS;
}

/* v1 semantics: `used` includes the driver-reserved memory. */
NVML_API nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    double t;
    int rc = dev_check(device, memory != NULL, F_MEMORY, &t);
    if (rc)
        return rc;
    spin_ns(g_scn.mem_lat_ns);
    unsigned long long used, free_;
    memory_at(device, t, &used, &free_);
    memory->total = device->mem_total;
    memory->free = free_;
    memory->used = used + device->mem_reserved;
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------------ */
/* "Cached" counters (cheap on the real driver: served from a driver cache)  */
/* ------------------------------------------------------------------------ */

NVML_API nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization)
{
    double t;
    int rc = dev_check(device, utilization != NULL, F_UTILIZATION, &t);
    if (rc)
        return rc;
    spin_ns(g_scn.cached_lat_ns);
    utilization->gpu = eval_u32(&device->util_gpu, t);
    utilization->memory = eval_u32(&device->util_mem, t);
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensorType, unsigned int *temp)
{
    double t;
    int rc = dev_check(device, temp != NULL && sensorType == 0 /* NVML_TEMPERATURE_GPU */, F_TEMPERATURE, &t);
    if (rc)
        return rc;
    spin_ns(g_scn.cached_lat_ns);
    *temp = eval_u32(&device->temperature, t);
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power)
{
    double t;
    int rc = dev_check(device, power != NULL, F_POWER, &t);
    if (rc)
        return rc;
    spin_ns(g_scn.cached_lat_ns);
    *power = eval_u32(&device->power, t);
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, int type, unsigned int *clock)
{
    double t;
    int rc = dev_check(device, clock != NULL && type >= 0 && type <= 3, F_CLOCKS, &t);
    if (rc)
        return rc;
    spin_ns(g_scn.cached_lat_ns);
    /* 0 graphics, 1 SM, 3 video all follow the SM clock; 2 is memory. */
    *clock = eval_u32(type == 2 ? &device->clock_mem : &device->clock_sm, t);
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t device, unsigned long long *reasons)
{
    double t;
    int rc = dev_check(device, reasons != NULL, F_THROTTLE, &t);
    if (rc)
        return rc;
    spin_ns(g_scn.cached_lat_ns);
    *reasons = eval_u64(&device->throttle, t);
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device, unsigned long long *reasons)
{
    return nvmlDeviceGetCurrentClocksEventReasons(device, reasons);
}

NVML_API nvmlReturn_t nvmlDeviceGetPerformanceState(nvmlDevice_t device, int *pState)
{
    int rc = dev_check(device, pState != NULL, F_PSTATE, NULL);
    if (rc)
        return rc;
    spin_ns(g_scn.cached_lat_ns);
    *pState = device->pstate;
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------------ */
/* Slow counters                                                             */
/* ------------------------------------------------------------------------ */

/* The real call blocks for a ~20 ms sampling window; pcie_call_latency_ms
 * lets a scenario reproduce that so callers keep it off the hot thread. */
NVML_API nvmlReturn_t nvmlDeviceGetPcieThroughput(nvmlDevice_t device, int counter, unsigned int *value)
{
    double t;
    int rc = dev_check(device, value != NULL && (counter == 0 || counter == 1), F_PCIE, &t);
    if (rc)
        return rc;
    sleep_ms(g_scn.pcie_lat_ms);
    *value = eval_u32(counter == 0 ? &device->pcie_tx : &device->pcie_rx, t);
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *energy)
{
    double t;
    int rc = dev_check(device, energy != NULL, F_ENERGY, &t);
    if (rc)
        return rc;
    sleep_ms(g_scn.energy_lat_ms);
    *energy = eval_u64(&device->energy, t);
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, int errorType, int counterType,
                                                  unsigned long long *eccCounts)
{
    double t;
    int ok = eccCounts != NULL && (errorType == 0 || errorType == 1) && (counterType == 0 || counterType == 1);
    int rc = dev_check(device, ok, F_ECC, &t);
    if (rc)
        return rc;
    /* Volatile and aggregate counters report the same value: a fake GPU has
     * never been rebooted. */
    *eccCounts = eval_u64(errorType == 0 ? &device->ecc_corrected : &device->ecc_uncorrected, t);
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corrRows, unsigned int *uncRows,
                                                unsigned int *isPending, unsigned int *failureOccurred)
{
    int rc = dev_check(device, corrRows && uncRows && isPending && failureOccurred, F_REMAPPED, NULL);
    if (rc)
        return rc;
    *corrRows = device->remapped[0];
    *uncRows = device->remapped[1];
    *isPending = device->remapped[2];
    *failureOccurred = device->remapped[3];
    return NVML_SUCCESS;
}

static nvmlReturn_t get_retired_pages(nvmlDevice_t device, int cause, unsigned int *pageCount,
                                      unsigned long long *addresses, unsigned long long *timestamps, int want_ts)
{
    int rc = dev_check(device, pageCount != NULL && (cause == 0 || cause == 1), F_RETIRED, NULL);
    if (rc)
        return rc;
    unsigned n = device->retired[cause];
    if (n == 0) {
        *pageCount = 0;
        return NVML_SUCCESS;
    }
    if (*pageCount < n) {
        *pageCount = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (!addresses || (want_ts && !timestamps))
        return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned i = 0; i < n; i++) {
        /* Fabricated but stable: distinct 4 KiB pages per device and cause. */
        addresses[i] = 0x100000000ULL + ((unsigned long long)device->index << 32) +
                       ((unsigned long long)cause << 28) + (unsigned long long)i * 0x1000ULL;
        if (want_ts)
            timestamps[i] = 1700000000ULL + (unsigned long long)cause * 86400ULL + (unsigned long long)i * 600ULL;
    }
    *pageCount = n;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetRetiredPages(nvmlDevice_t device, int cause, unsigned int *pageCount,
                                                unsigned long long *addresses)
{
    return get_retired_pages(device, cause, pageCount, addresses, NULL, 0);
}

NVML_API nvmlReturn_t nvmlDeviceGetRetiredPages_v2(nvmlDevice_t device, int cause, unsigned int *pageCount,
                                                   unsigned long long *addresses, unsigned long long *timestamps)
{
    return get_retired_pages(device, cause, pageCount, addresses, timestamps, 1);
}

static nvmlReturn_t get_processes(nvmlDevice_t device, unsigned int *infoCount, nvmlProcessInfo_t *infos)
{
    double t;
    int rc = dev_check(device, infoCount != NULL, F_PROCESSES, &t);
    if (rc)
        return rc;
    unsigned n = device->nproc;
    if (*infoCount < n) {
        *infoCount = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (n > 0 && !infos)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned i = 0; i < n; i++) {
        infos[i].pid = device->procs[i].pid;
        infos[i].usedGpuMemory = eval_u64(&device->procs[i].used, t);
        infos[i].gpuInstanceId = NO_INSTANCE;
        infos[i].computeInstanceId = NO_INSTANCE;
    }
    *infoCount = n;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                              nvmlProcessInfo_t *infos)
{
    return get_processes(device, infoCount, infos);
}

NVML_API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                              nvmlProcessInfo_t *infos)
{
    return get_processes(device, infoCount, infos);
}

/* ------------------------------------------------------------------------ */
/* Events                                                                    */
/* ------------------------------------------------------------------------ */

#define EVENTSET_MAGIC 0x46414b45u /* "FAKE" */
#define WAIT_STEP_NS 5000000LL     /* poll granularity while nothing is due */

struct nvmlEventSet_st {
    unsigned magic;
    pthread_mutex_t mu;
    unsigned generation;                   /* g_generation the bitmap belongs to */
    unsigned long long mask[MAX_DEVICES];  /* registered event types per device */
    unsigned char delivered[MAX_EVENTS];   /* per scheduled event, for this set */
};

static inline int valid_set(nvmlEventSet_t set) { return set && set->magic == EVENTSET_MAGIC; }

NVML_API nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *eventTypes)
{
    int rc = dev_check(device, eventTypes != NULL, F_EVENTS, NULL);
    if (rc)
        return rc;
    *eventTypes = EVT_SUPPORTED;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set)
{
    if (!is_ready())
        return NVML_ERROR_UNINITIALIZED;
    if (!set)
        return NVML_ERROR_INVALID_ARGUMENT;
    struct nvmlEventSet_st *s = calloc(1, sizeof *s);
    if (!s)
        return NVML_ERROR_MEMORY;
    pthread_mutex_init(&s->mu, NULL);
    s->generation = atomic_load(&g_generation);
    s->magic = EVENTSET_MAGIC;
    *set = s;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long eventTypes, nvmlEventSet_t set)
{
    int rc = dev_check(device, valid_set(set), F_EVENTS, NULL);
    if (rc)
        return rc;
    /* Like the real driver: asking for a type the device cannot raise fails. */
    if (eventTypes & ~EVT_SUPPORTED)
        return NVML_ERROR_NOT_SUPPORTED;
    pthread_mutex_lock(&set->mu);
    set->mask[device->index] |= eventTypes;
    pthread_mutex_unlock(&set->mu);
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set)
{
    if (!is_ready())
        return NVML_ERROR_UNINITIALIZED;
    if (!valid_set(set))
        return NVML_ERROR_INVALID_ARGUMENT;
    set->magic = 0;
    pthread_mutex_destroy(&set->mu);
    free(set);
    return NVML_SUCCESS;
}

static nvmlReturn_t event_wait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
    if (!is_ready())
        return NVML_ERROR_UNINITIALIZED;
    if (!valid_set(set) || !data)
        return NVML_ERROR_INVALID_ARGUMENT;

    const int64_t deadline = mono_ns() + (int64_t)timeoutms * 1000000LL;
    for (;;) {
        /* A shutdown while blocked ends the wait early (the real library's
         * behaviour is undefined here); it keeps a consumer's teardown from
         * stalling for the full timeout. */
        if (!is_ready())
            return NVML_ERROR_UNINITIALIZED;
        const int64_t t0 = atomic_load_explicit(&g_t0_ns, memory_order_relaxed);
        const int64_t now = mono_ns();
        int64_t next_due = INT64_MAX; /* absolute monotonic ns */

        pthread_mutex_lock(&set->mu);
        unsigned gen = atomic_load(&g_generation);
        if (set->generation != gen) { /* re-init since last use: replay from scratch */
            memset(set->delivered, 0, sizeof set->delivered);
            set->generation = gen;
        }
        for (unsigned i = 0; i < g_scn.nevents; i++) {
            const sched_event_t *e = &g_scn.events[i];
            if (set->delivered[i] || !(set->mask[e->dev] & e->type))
                continue;
            if (t0 + e->due_ns <= now) {
                set->delivered[i] = 1;
                pthread_mutex_unlock(&set->mu);
                data->device = &g_scn.devices[e->dev];
                data->eventType = e->type;
                data->eventData = e->data;
                data->gpuInstanceId = NO_INSTANCE;
                data->computeInstanceId = NO_INSTANCE;
                return NVML_SUCCESS;
            }
            next_due = t0 + e->due_ns; /* events are sorted: this is the next one */
            break;
        }
        pthread_mutex_unlock(&set->mu);

        if (now >= deadline)
            return NVML_ERROR_TIMEOUT;
        /* Short steps keep late registrations / re-inits visible; waking
         * exactly at next_due keeps delivery latency near zero. */
        int64_t wake = now + WAIT_STEP_NS;
        if (deadline < wake)
            wake = deadline;
        if (next_due < wake)
            wake = next_due;
        sleep_until_ns(wake);
    }
}

NVML_API nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
    return event_wait(set, data, timeoutms);
}

NVML_API nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
    return event_wait(set, data, timeoutms);
}
