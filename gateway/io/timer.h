/* Per-worker timers: a binary min-heap of deadlines in milliseconds, driven
 * by the worker loop's wait timeout. Used for header, idle, request and
 * drain deadlines; one-shot operation deadlines use linked timeouts. */
#ifndef GW_IO_TIMER_H
#define GW_IO_TIMER_H

#include <stdbool.h>
#include <stdint.h>

struct gw_timer;
typedef void gw_timer_cb(struct gw_timer *t);

struct gw_timer {
    uint64_t at_ms;
    unsigned slot; /* 1-based heap position; 0 when not armed */
    gw_timer_cb *cb;
};

struct gw_timers {
    struct gw_timer **heap; /* heap[1..n] */
    unsigned n, cap;
};

void gw_timers_init(struct gw_timers *ts);
void gw_timers_free(struct gw_timers *ts);

static inline void gw_timer_init(struct gw_timer *t, gw_timer_cb *cb)
{
    t->at_ms = 0;
    t->slot = 0;
    t->cb = cb;
}

static inline bool gw_timer_armed(const struct gw_timer *t)
{
    return t->slot != 0;
}

/* Arms t for at_ms, moving it if it is already armed. */
void gw_timer_set(struct gw_timers *ts, struct gw_timer *t, uint64_t at_ms);
/* Disarms t; does nothing if it is not armed. */
void gw_timer_cancel(struct gw_timers *ts, struct gw_timer *t);
/* Milliseconds from now_ms to the earliest deadline, capped at max_ms. */
unsigned gw_timers_wait_ms(const struct gw_timers *ts, uint64_t now_ms, unsigned max_ms);
/* Fires (disarms, then calls) every timer due at now_ms. A callback may arm
 * timers again; one armed for now_ms or earlier fires in this call too. */
void gw_timers_run(struct gw_timers *ts, uint64_t now_ms);

#endif
