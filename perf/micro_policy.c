/* micro_policy: the CPU price of each policy check on the request path, in
 * nanoseconds per call, single-threaded and with 2 threads sharing the same
 * state (a route bucket, a server breaker). Complements perf/bench.py,
 * whose req/s on this box swing more than these checks cost.
 *
 *   build/perf/micro_policy [iterations]   (default 20000000) */
#include "policy/breaker.h"
#include "policy/ratelimit.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static long iters = 20000000;
static struct gw_ratelimit *rl_route, *rl_keys;
static struct gw_breaker *br;
static volatile uint64_t sink;
static char ips[256][16];

enum job { J_HASH = 0, J_RL_ROUTE, J_RL_KEYS, J_BREAKER, J_CLOCK };

static void *run(void *arg)
{
    enum job j = (enum job)(uintptr_t)arg;
    struct gw_ratelimit_result res;
    uint64_t acc = 0;

    for (long i = 0; i < iters; i++) {
        switch (j) {
        case J_HASH:
            acc += gw_ratelimit_hash(ips[i & 255], strlen(ips[i & 255]), 42);
            break;
        case J_RL_ROUTE:
            gw_ratelimit_take(rl_route, 0, (uint64_t)i, &res);
            acc += res.allowed;
            break;
        case J_RL_KEYS:
            /* 4096 distinct clients cycling through a 65536-key table */
            gw_ratelimit_take(rl_keys, 0x9e3779b97f4a7c15ull * (uint64_t)((i & 4095) + 1),
                              (uint64_t)i, &res);
            acc += res.allowed;
            break;
        case J_BREAKER: {
            enum gw_breaker_verdict v = gw_breaker_allow(br, (uint64_t)i / 1000, NULL);
            gw_breaker_report(br, v == GW_BREAKER_PROBE, true, (uint64_t)i / 1000);
            acc += v;
            break;
        }
        case J_CLOCK: {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            acc += (uint64_t)ts.tv_nsec;
            break;
        }
        }
    }
    sink += acc;
    return NULL;
}

static double measure(enum job j, int threads)
{
    pthread_t t[2];
    uint64_t t0 = now_ns();

    for (int k = 0; k < threads; k++)
        pthread_create(&t[k], NULL, run, (void *)(uintptr_t)j);
    for (int k = 0; k < threads; k++)
        pthread_join(t[k], NULL);
    return (double)(now_ns() - t0) / (double)iters;
}

int main(int argc, char **argv)
{
    static const char *const names[] = {
        "hash of a client address (\"10.0.0.N\")", "rate limit, one bucket (key route)",
        "rate limit, 4096 keys in a 65536 table", "breaker allow + report (closed)",
        "clock_gettime (for scale)"};
    struct gw_ratelimit_params rp = {1e9, 100000000};
    struct gw_breaker_params bp = {5, 0.5, 10000, 20, 5000, 1};

    if (argc > 1)
        iters = atol(argv[1]);
    for (int i = 0; i < 256; i++)
        snprintf(ips[i], sizeof(ips[i]), "10.0.0.%d", i);
    rl_route = gw_ratelimit_new(&rp, 0);
    rl_keys = gw_ratelimit_new(&rp, 65536);
    br = gw_breaker_new(&bp);
    printf("%-46s %12s %18s\n", "check", "ns/call 1 thr", "ns/call 2 thr each");
    for (int j = J_HASH; j <= J_CLOCK; j++) {
        double one = measure((enum job)j, 1);
        double two = measure((enum job)j, 2);
        printf("%-46s %12.1f %18.1f\n", names[j], one, two);
    }
    gw_ratelimit_unref(rl_route);
    gw_ratelimit_unref(rl_keys);
    gw_breaker_unref(br);
    return 0;
}
