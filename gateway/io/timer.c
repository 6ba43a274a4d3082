/* Owns the timer heap. */
#include "io/timer.h"

#include "core/mem.h"

#include <stdlib.h>

void gw_timers_init(struct gw_timers *ts)
{
    ts->cap = 64;
    ts->n = 0;
    ts->heap = gw_xmalloc(sizeof(*ts->heap) * (ts->cap + 1));
}

void gw_timers_free(struct gw_timers *ts)
{
    free(ts->heap);
    ts->heap = NULL;
    ts->n = ts->cap = 0;
}

static void place(struct gw_timers *ts, unsigned i, struct gw_timer *t)
{
    ts->heap[i] = t;
    t->slot = i;
}

static void sift_up(struct gw_timers *ts, unsigned i)
{
    struct gw_timer *t = ts->heap[i];
    while (i > 1 && ts->heap[i / 2]->at_ms > t->at_ms) {
        place(ts, i, ts->heap[i / 2]);
        i /= 2;
    }
    place(ts, i, t);
}

static void sift_down(struct gw_timers *ts, unsigned i)
{
    struct gw_timer *t = ts->heap[i];
    for (;;) {
        unsigned c = i * 2;
        if (c > ts->n)
            break;
        if (c + 1 <= ts->n && ts->heap[c + 1]->at_ms < ts->heap[c]->at_ms)
            c++;
        if (ts->heap[c]->at_ms >= t->at_ms)
            break;
        place(ts, i, ts->heap[c]);
        i = c;
    }
    place(ts, i, t);
}

void gw_timer_set(struct gw_timers *ts, struct gw_timer *t, uint64_t at_ms)
{
    if (t->slot) {
        uint64_t old = t->at_ms;
        t->at_ms = at_ms;
        if (at_ms < old)
            sift_up(ts, t->slot);
        else
            sift_down(ts, t->slot);
        return;
    }
    if (ts->n == ts->cap) {
        ts->cap *= 2;
        ts->heap = gw_xrealloc(ts->heap, sizeof(*ts->heap) * (ts->cap + 1));
    }
    t->at_ms = at_ms;
    ts->n++;
    place(ts, ts->n, t);
    sift_up(ts, ts->n);
}

void gw_timer_cancel(struct gw_timers *ts, struct gw_timer *t)
{
    unsigned i = t->slot;
    struct gw_timer *last;

    if (i == 0)
        return;
    t->slot = 0;
    last = ts->heap[ts->n--];
    if (i > ts->n)
        return;
    place(ts, i, last);
    if (i > 1 && ts->heap[i / 2]->at_ms > last->at_ms)
        sift_up(ts, i);
    else
        sift_down(ts, i);
}

unsigned gw_timers_wait_ms(const struct gw_timers *ts, uint64_t now_ms, unsigned max_ms)
{
    if (ts->n == 0)
        return max_ms;
    uint64_t at = ts->heap[1]->at_ms;
    if (at <= now_ms)
        return 0;
    return at - now_ms < max_ms ? (unsigned)(at - now_ms) : max_ms;
}

void gw_timers_run(struct gw_timers *ts, uint64_t now_ms)
{
    while (ts->n > 0 && ts->heap[1]->at_ms <= now_ms) {
        struct gw_timer *t = ts->heap[1];
        gw_timer_cancel(ts, t);
        t->cb(t);
    }
}
