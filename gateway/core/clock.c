/* Owns the per-thread cached monotonic clock. */
#include "core/clock.h"

#include <time.h>

_Thread_local uint64_t gw_now_ms;

uint64_t gw_clock_update(void)
{
    gw_now_ms = gw_clock_us() / 1000;
    return gw_now_ms;
}

uint64_t gw_clock_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t gw_clock_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
