/* Monotonic time. Workers read the clock once per loop turn into a
 * thread-local cache (gw_now_ms) so that policy and timers agree on "now"
 * within a turn and do not pay a clock read per decision. */
#ifndef GW_CORE_CLOCK_H
#define GW_CORE_CLOCK_H

#include <stdint.h>

extern _Thread_local uint64_t gw_now_ms;

/* Reads CLOCK_MONOTONIC, refreshes gw_now_ms and returns it. */
uint64_t gw_clock_update(void);
/* Microseconds, read fresh (for request durations). */
uint64_t gw_clock_us(void);
/* Wall-clock time in microseconds since the epoch (for log lines). */
uint64_t gw_clock_wall_us(void);

/* Days from 1970-01-01 to a proleptic Gregorian date (month 1..12). */
int64_t gw_days_from_civil(int64_t y, unsigned m, unsigned d);

/* Wall clock in milliseconds since the epoch. */
static inline int64_t gw_clock_wall_ms(void)
{
    return (int64_t)(gw_clock_wall_us() / 1000);
}

#endif
