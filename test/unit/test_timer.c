/* Timer heap: ordering, moving, cancelling, re-arming from a callback. */
#include "io/timer.h"
#include "tap.h"

#include <stddef.h>

static int fired[16];
static int nfired;
static struct gw_timers ts;

struct item {
    struct gw_timer t;
    int id;
    int rearm_ms; /* >0: arm again from the callback */
};

static void on_fire(struct gw_timer *t)
{
    struct item *it = (struct item *)((char *)t - offsetof(struct item, t));
    fired[nfired++] = it->id;
    if (it->rearm_ms > 0) {
        gw_timer_set(&ts, t, t->at_ms + (uint64_t)it->rearm_ms);
        it->rearm_ms = 0;
    }
}

static void test_order(void)
{
    struct item it[6];
    uint64_t at[6] = {50, 10, 30, 10, 70, 20};

    gw_timers_init(&ts);
    nfired = 0;
    for (int i = 0; i < 6; i++) {
        it[i].id = i;
        it[i].rearm_ms = 0;
        gw_timer_init(&it[i].t, on_fire);
        gw_timer_set(&ts, &it[i].t, at[i]);
    }
    is(gw_timers_wait_ms(&ts, 0, 1000), 10, "wait until the earliest deadline");
    is(gw_timers_wait_ms(&ts, 0, 5), 5, "wait is capped");
    gw_timers_run(&ts, 25);
    is(nfired, 3, "three timers due by 25");
    ok(fired[2] == 5, "the 20 ms timer fired last of them");
    ok(!gw_timer_armed(&it[1].t) && gw_timer_armed(&it[0].t), "fired timers are disarmed");

    gw_timer_set(&ts, &it[4].t, 26); /* move earlier */
    gw_timer_cancel(&ts, &it[2].t);
    gw_timer_cancel(&ts, &it[2].t); /* cancelling twice is harmless */
    gw_timers_run(&ts, 40);
    is(nfired, 4, "moved timer fired, cancelled one did not");
    is(fired[3], 4, "the moved timer");
    gw_timers_run(&ts, 1000);
    is(nfired, 5, "the rest fired");
    is(gw_timers_wait_ms(&ts, 1000, 77), 77, "empty heap waits the maximum");
    gw_timers_free(&ts);
}

static void test_rearm_and_many(void)
{
    static struct item it[500];
    uint64_t last = 0;
    int in_order = 1;

    gw_timers_init(&ts);
    nfired = 0;
    struct item r = {.id = 9, .rearm_ms = 5};
    gw_timer_init(&r.t, on_fire);
    gw_timer_set(&ts, &r.t, 10);
    gw_timers_run(&ts, 12);
    is(nfired, 1, "fired once");
    ok(gw_timer_armed(&r.t), "re-armed from its callback");
    gw_timers_run(&ts, 15);
    is(nfired, 2, "re-armed timer fired again");

    /* Many timers with pseudo-random deadlines come out sorted. */
    unsigned x = 12345;
    for (int i = 0; i < 500; i++) {
        x = x * 1103515245u + 12345u;
        it[i].id = 0;
        it[i].rearm_ms = 0;
        gw_timer_init(&it[i].t, on_fire);
        gw_timer_set(&ts, &it[i].t, 100 + (x >> 16) % 10000);
    }
    for (int i = 0; i < 500; i += 3)
        gw_timer_cancel(&ts, &it[i].t);
    while (ts.n > 0) {
        struct gw_timer *t = ts.heap[1];
        if (t->at_ms < last)
            in_order = 0;
        last = t->at_ms;
        gw_timer_cancel(&ts, t);
    }
    ok(in_order, "heap yields deadlines in order after cancels");
    gw_timers_free(&ts);
}

int main(void)
{
    subtest("order", test_order);
    subtest("rearm and many", test_rearm_and_many);
    return done_testing();
}
