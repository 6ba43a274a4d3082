/* Unit test of policy/breaker.c with fake time: the consecutive and the
 * error-rate triggers, window expiry, the open period and retry_after,
 * half-open probe permits, late reports, transition counters, reloads, the
 * concurrency cap, and two races between threads (opening, and the move to
 * half-open) that must each be won exactly once. */
#include "policy/breaker.h"

#include <pthread.h>
#include <stdio.h>

#include "tap.h"

/* Opens after 3 failures in a row; rate trigger off; 500 ms open. */
static const struct gw_breaker_params base = {
    .failures = 3,
    .error_rate = 0,
    .window_ms = 1000,
    .min_requests = 10,
    .open_ms = 500,
    .half_open_requests = 1,
};

/* Rate trigger only: 50% over 1000 ms (buckets of 100 ms), from 10 requests. */
static const struct gw_breaker_params rate = {
    .failures = 0,
    .error_rate = 0.5,
    .window_ms = 1000,
    .min_requests = 10,
    .open_ms = 500,
    .half_open_requests = 1,
};

/* n requests admitted at now_ms and reported with `success`; returns how
 * many allow() passed (the report is made either way, as a late one would). */
static int feed(struct gw_breaker *b, int n, bool success, uint64_t now_ms)
{
    int passed = 0;

    for (int i = 0; i < n; i++) {
        passed += gw_breaker_allow(b, now_ms, NULL) == GW_BREAKER_PASS;
        gw_breaker_report(b, false, success, now_ms);
    }
    return passed;
}

static bool counts(const struct gw_breaker *b, uint64_t closed, uint64_t half, uint64_t open)
{
    uint64_t c = gw_breaker_transitions(b, GW_BREAKER_CLOSED);
    uint64_t h = gw_breaker_transitions(b, GW_BREAKER_HALF_OPEN);
    uint64_t o = gw_breaker_transitions(b, GW_BREAKER_OPEN);

    if (c == closed && h == half && o == open)
        return true;
    printf("#   transitions closed %llu half-open %llu open %llu\n", (unsigned long long)c,
           (unsigned long long)h, (unsigned long long)o);
    return false;
}

static void test_closed(void)
{
    struct gw_breaker_params p = base;
    struct gw_breaker *b;
    int passed = 0;

    p.error_rate = 0.5;
    b = gw_breaker_new(&p);
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "a new breaker is closed");
    for (uint64_t t = 0; t < 5000; t += 5)
        passed += feed(b, 1, true, t);
    is(passed, 1000, "every request passes while closed");
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "successes keep it closed");
    ok(counts(b, 0, 0, 0), "no transitions");
    gw_breaker_unref(b);
}

static void test_consecutive(void)
{
    struct gw_breaker *b = gw_breaker_new(&base);

    feed(b, 2, false, 1000);
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "2 failures of 3: closed");
    is(feed(b, 1, false, 1000), 1, "the third is still admitted");
    is(gw_breaker_state(b), GW_BREAKER_OPEN, "3 failures in a row open");
    ok(counts(b, 0, 0, 1), "one transition to open");
    gw_breaker_unref(b);

    b = gw_breaker_new(&base);
    for (int i = 0; i < 100; i++) {
        feed(b, 2, false, 1000);
        feed(b, 1, true, 1000);
    }
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "200 failures, none 3 in a row: closed");
    feed(b, 2, false, 1000);
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "a success reset the count");
    feed(b, 1, false, 1000);
    is(gw_breaker_state(b), GW_BREAKER_OPEN, "then 3 in a row open");
    gw_breaker_unref(b);

    {
        struct gw_breaker_params off = rate;
        off.error_rate = 0;
        b = gw_breaker_new(&off);
        feed(b, 1000, false, 1000);
        is(gw_breaker_state(b), GW_BREAKER_CLOSED, "both triggers off: never opens");
        gw_breaker_unref(b);
    }
}

static void test_error_rate(void)
{
    struct gw_breaker *b = gw_breaker_new(&rate);

    feed(b, 9, false, 1000);
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "9 of 9 failed, below min_requests: closed");
    feed(b, 1, false, 1000);
    is(gw_breaker_state(b), GW_BREAKER_OPEN, "10 of 10 failed: open");
    gw_breaker_unref(b);

    b = gw_breaker_new(&rate);
    feed(b, 6, true, 1000);
    feed(b, 5, false, 1010);
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "5 of 11 failed, under 50%%: closed");
    feed(b, 1, false, 1020);
    is(gw_breaker_state(b), GW_BREAKER_OPEN, "6 of 12 failed, exactly 50%%: open");
    ok(counts(b, 0, 0, 1), "one transition to open");
    gw_breaker_unref(b);

    {
        struct gw_breaker_params p = rate;
        p.error_rate = 0.3;
        p.min_requests = 0;
        b = gw_breaker_new(&p);
        feed(b, 7, true, 1000);
        feed(b, 2, false, 1000);
        is(gw_breaker_state(b), GW_BREAKER_CLOSED, "2 of 9 failed, under 30%%: closed");
        feed(b, 1, false, 1000);
        is(gw_breaker_state(b), GW_BREAKER_OPEN, "3 of 10 failed, exactly 30%%: open");
        gw_breaker_unref(b);
    }
}

static void test_window_expiry(void)
{
    const uint64_t t0 = 1000000000000ull; /* a large clock: epochs must not wrap */
    struct gw_breaker *b = gw_breaker_new(&rate);

    feed(b, 9, false, t0);
    feed(b, 1, false, t0 + 950);
    is(gw_breaker_state(b), GW_BREAKER_OPEN, "failures 950 ms apart share the window");
    gw_breaker_unref(b);

    b = gw_breaker_new(&rate);
    feed(b, 9, false, t0);
    feed(b, 1, false, t0 + 1500);
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "failures older than window_ms don't count");
    gw_breaker_unref(b);

    /* t0 + 1000 falls in the same slot as t0: the slot must be emptied. */
    b = gw_breaker_new(&rate);
    feed(b, 9, false, t0);
    feed(b, 9, false, t0 + 1000);
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "a reused bucket starts empty");
    feed(b, 1, false, t0 + 1050);
    is(gw_breaker_state(b), GW_BREAKER_OPEN, "the new failures count");
    gw_breaker_unref(b);

    /* A worker whose clock lags a whole window must not wipe the slot that
     * a worker ahead of it has already moved on. */
    b = gw_breaker_new(&rate);
    feed(b, 9, false, t0 + 1000);
    feed(b, 5, false, t0);
    feed(b, 1, false, t0 + 1000);
    is(gw_breaker_state(b), GW_BREAKER_OPEN, "a report older than its bucket is dropped");
    gw_breaker_unref(b);
}

/* Three failures at now_ms open a breaker made with `base` failures. */
static void open_at(struct gw_breaker *b, uint64_t now_ms)
{
    while (gw_breaker_state(b) == GW_BREAKER_CLOSED)
        gw_breaker_report(b, false, false, now_ms);
}

static void test_open(void)
{
    struct gw_breaker *b = gw_breaker_new(&base);
    uint64_t retry = 0;
    int wrong = 0, denied = 0;

    open_at(b, 1000);
    for (uint64_t t = 1000; t < 1500; t++) {
        retry = 0;
        denied += gw_breaker_allow(b, t, &retry) == GW_BREAKER_DENY;
        wrong += retry != 1500 - t;
    }
    is(denied, 500, "every request denied for open_ms");
    is(wrong, 0, "retry_after counts down to the end of open_ms (500 .. 1)");
    is(gw_breaker_allow(b, 1499, NULL), GW_BREAKER_DENY, "retry_after may be NULL");
    is(gw_breaker_state(b), GW_BREAKER_OPEN, "still open at 1499");
    ok(counts(b, 0, 0, 1), "no transition while open");

    is(gw_breaker_allow(b, 1500, NULL), GW_BREAKER_PROBE, "after open_ms the first is a probe");
    is(gw_breaker_state(b), GW_BREAKER_HALF_OPEN, "and the circuit is half-open");
    ok(counts(b, 0, 1, 1), "one transition to half-open");
    retry = 0;
    is(gw_breaker_allow(b, 1500, &retry), GW_BREAKER_DENY, "the only permit is out: deny");
    is(retry, 500, "half-open full: retry_after is open_ms");
    is(gw_breaker_allow(b, 9000, NULL), GW_BREAKER_DENY, "still denied much later");
    ok(counts(b, 0, 1, 1), "denials in half-open are no transitions");

    gw_breaker_report(b, true, true, 1600);
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "probe success closes");
    is(gw_breaker_allow(b, 1600, NULL), GW_BREAKER_PASS, "and requests pass again");
    gw_breaker_unref(b);
}

/* The opening time is kept in full, however large the clock. */
static void test_open_large_clock(void)
{
    const uint64_t t0 = (1ull << 40) + 12345;
    struct gw_breaker *b = gw_breaker_new(&base);
    uint64_t retry = 0;

    open_at(b, t0);
    is(gw_breaker_allow(b, t0 + 499, &retry), GW_BREAKER_DENY, "denied at t0 + 499");
    is(retry, 1, "1 ms left");
    retry = 0;
    is(gw_breaker_allow(b, t0 - 5, &retry), GW_BREAKER_DENY, "a lagging clock is denied");
    is(retry, 505, "and waits the lag longer");
    is(gw_breaker_allow(b, t0 + 500, NULL), GW_BREAKER_PROBE, "probe at t0 + 500");
    gw_breaker_unref(b);
}

static void test_half_open_three(void)
{
    struct gw_breaker_params p = base;
    struct gw_breaker *b;
    int probes = 0;

    p.half_open_requests = 3;
    b = gw_breaker_new(&p);
    open_at(b, 1000);
    for (int i = 0; i < 3; i++)
        probes += gw_breaker_allow(b, 1500, NULL) == GW_BREAKER_PROBE;
    is(probes, 3, "three probes at once");
    is(gw_breaker_allow(b, 1500, NULL), GW_BREAKER_DENY, "the fourth is denied");
    ok(counts(b, 0, 1, 1), "one transition to half-open for three probes");

    gw_breaker_report(b, true, true, 1510);
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "the first probe success closes");
    gw_breaker_report(b, true, false, 1520);
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "a later probe failure does not re-open");
    gw_breaker_report(b, true, true, 1530);
    ok(counts(b, 1, 1, 1), "the other probes changed no counter");

    /* All three permits came back: the next half-open period has three. */
    open_at(b, 2000);
    probes = 0;
    for (int i = 0; i < 5; i++)
        probes += gw_breaker_allow(b, 2500, NULL) == GW_BREAKER_PROBE;
    is(probes, 3, "permits returned: three probes again");
    gw_breaker_unref(b);
}

static void test_probe_failure(void)
{
    struct gw_breaker *b = gw_breaker_new(&base);
    uint64_t retry = 0;

    open_at(b, 1000);
    is(gw_breaker_allow(b, 1500, NULL), GW_BREAKER_PROBE, "probe");
    gw_breaker_report(b, true, false, 1700);
    is(gw_breaker_state(b), GW_BREAKER_OPEN, "probe failure re-opens");
    ok(counts(b, 0, 1, 2), "second transition to open");
    is(gw_breaker_allow(b, 1700, &retry), GW_BREAKER_DENY, "denied right after");
    is(retry, 500, "for a full open_ms from the failure");
    is(gw_breaker_allow(b, 2199, &retry), GW_BREAKER_DENY, "denied at 2199");
    is(retry, 1, "1 ms left");
    is(gw_breaker_allow(b, 2200, NULL), GW_BREAKER_PROBE, "probe again at 2200");
    gw_breaker_unref(b);
}

static void test_cancel_probe(void)
{
    struct gw_breaker *b = gw_breaker_new(&base);

    open_at(b, 1000);
    is(gw_breaker_allow(b, 1500, NULL), GW_BREAKER_PROBE, "probe");
    is(gw_breaker_allow(b, 1500, NULL), GW_BREAKER_DENY, "no second permit");
    gw_breaker_cancel_probe(b);
    is(gw_breaker_state(b), GW_BREAKER_HALF_OPEN, "a cancel decides nothing");
    is(gw_breaker_allow(b, 1501, NULL), GW_BREAKER_PROBE, "the permit came back");
    is(gw_breaker_allow(b, 1501, NULL), GW_BREAKER_DENY, "only that one");
    ok(counts(b, 0, 1, 1), "no transitions from cancel");
    gw_breaker_report(b, true, true, 1502);
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "the new probe decides");
    gw_breaker_unref(b);
}

static void test_late_reports(void)
{
    struct gw_breaker *b = gw_breaker_new(&base);
    uint64_t retry = 0;

    open_at(b, 1000);
    feed(b, 50, false, 1200);
    feed(b, 50, true, 1300);
    is(gw_breaker_state(b), GW_BREAKER_OPEN, "late reports while open: still open");
    ok(counts(b, 0, 0, 1), "late failures did not re-open");
    is(gw_breaker_allow(b, 1499, &retry), GW_BREAKER_DENY, "denied at 1499");
    is(retry, 1, "the open period was not extended");
    is(gw_breaker_allow(b, 1500, NULL), GW_BREAKER_PROBE, "probe at 1500");

    feed(b, 50, true, 1510);
    is(gw_breaker_state(b), GW_BREAKER_HALF_OPEN, "late successes in half-open don't close");
    feed(b, 50, false, 1520);
    is(gw_breaker_state(b), GW_BREAKER_HALF_OPEN, "late failures in half-open don't re-open");
    ok(counts(b, 0, 1, 1), "no transitions from late reports");
    is(gw_breaker_allow(b, 1530, NULL), GW_BREAKER_DENY, "late reports give no permit back");

    gw_breaker_report(b, true, true, 1540);
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "the probe closes");
    feed(b, 2, false, 1550);
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "late failures did not count toward the next open");
    feed(b, 1, false, 1550);
    is(gw_breaker_state(b), GW_BREAKER_OPEN, "3 fresh failures open");
    gw_breaker_unref(b);

    /* The same for the window: late failures at 1200 would still be in it
     * at 1600. */
    b = gw_breaker_new(&rate);
    feed(b, 10, false, 1000);
    is(gw_breaker_state(b), GW_BREAKER_OPEN, "rate opened");
    feed(b, 100, false, 1200);
    is(gw_breaker_allow(b, 1500, NULL), GW_BREAKER_PROBE, "probe");
    gw_breaker_report(b, true, true, 1500);
    feed(b, 9, false, 1600);
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "late failures are not in the window");
    feed(b, 1, false, 1600);
    is(gw_breaker_state(b), GW_BREAKER_OPEN, "10 fresh failures open");
    gw_breaker_unref(b);
}

static void test_transitions(void)
{
    struct gw_breaker *b = gw_breaker_new(&base);

    ok(counts(b, 0, 0, 0), "new: none");
    open_at(b, 1000);
    ok(counts(b, 0, 0, 1), "closed -> open");
    gw_breaker_allow(b, 1500, NULL);
    ok(counts(b, 0, 1, 1), "open -> half-open");
    gw_breaker_report(b, true, false, 1510);
    ok(counts(b, 0, 1, 2), "half-open -> open");
    gw_breaker_allow(b, 1900, NULL);
    ok(counts(b, 0, 1, 2), "no change before open_ms");
    gw_breaker_allow(b, 2010, NULL);
    ok(counts(b, 0, 2, 2), "open -> half-open again");
    gw_breaker_report(b, true, true, 2020);
    ok(counts(b, 1, 2, 2), "half-open -> closed");
    open_at(b, 3000);
    ok(counts(b, 1, 2, 3), "closed -> open again");
    gw_breaker_unref(b);
}

static void test_set_params(void)
{
    struct gw_breaker_params p = base;
    struct gw_breaker *b = gw_breaker_new(&base);
    uint64_t retry = 0;
    int probes = 0;

    open_at(b, 1000);
    p.open_ms = 2000;
    gw_breaker_set_params(b, &p);
    is(gw_breaker_state(b), GW_BREAKER_OPEN, "reload keeps open");
    ok(counts(b, 0, 0, 1), "reload is no transition");
    is(gw_breaker_allow(b, 1100, &retry), GW_BREAKER_DENY, "denied");
    is(retry, 1900, "the new open_ms counts from the original opening");
    is(gw_breaker_allow(b, 2999, NULL), GW_BREAKER_DENY, "denied at 2999");
    is(gw_breaker_allow(b, 3000, NULL), GW_BREAKER_PROBE, "probe at 3000");

    p.half_open_requests = 3;
    gw_breaker_set_params(b, &p);
    is(gw_breaker_state(b), GW_BREAKER_HALF_OPEN, "reload keeps half-open");
    for (int i = 0; i < 5; i++)
        probes += gw_breaker_allow(b, 3000, NULL) == GW_BREAKER_PROBE;
    is(probes, 2, "more permits apply at once, the one out still counts");
    gw_breaker_report(b, true, true, 3001);

    p.failures = 1;
    gw_breaker_set_params(b, &p);
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "reload keeps closed");
    feed(b, 1, false, 3002);
    is(gw_breaker_state(b), GW_BREAKER_OPEN, "a lower threshold applies at once");
    gw_breaker_unref(b);

    p = rate;
    b = gw_breaker_new(&p);
    feed(b, 9, false, 1000);
    p.open_ms = 700;
    gw_breaker_set_params(b, &p);
    feed(b, 1, false, 1010);
    is(gw_breaker_state(b), GW_BREAKER_OPEN, "same window_ms: the window is kept");
    gw_breaker_unref(b);

    p = rate;
    b = gw_breaker_new(&p);
    feed(b, 9, false, 1000);
    p.window_ms = 2000;
    gw_breaker_set_params(b, &p);
    feed(b, 1, false, 1010);
    is(gw_breaker_state(b), GW_BREAKER_CLOSED, "new window_ms: the window starts empty");
    gw_breaker_unref(b);
}

static void test_refs(void)
{
    struct gw_breaker *b = gw_breaker_new(&base);

    ok(gw_breaker_ref(b) == b, "ref returns the breaker");
    gw_breaker_unref(b);
    open_at(b, 1000);
    is(gw_breaker_state(b), GW_BREAKER_OPEN, "usable after dropping one of two refs");
    gw_breaker_unref(b); /* ASan reports a leak or a double free here if counting is off */
    gw_breaker_unref(NULL);
    ok(1, "unref(NULL) does nothing");
}

static void test_limit(void)
{
    _Atomic uint32_t n = 0;
    int taken = 0;

    for (int i = 0; i < 5; i++)
        taken += gw_breaker_limit_take(&n, 0);
    is(taken, 5, "max 0: no cap");
    is(atomic_load(&n), 5, "max 0: counted");
    for (int i = 0; i < 5; i++)
        gw_breaker_limit_put(&n);
    is(atomic_load(&n), 0, "put back to 0");

    ok(gw_breaker_limit_take(&n, 1), "max 1: first taken");
    ok(!gw_breaker_limit_take(&n, 1), "max 1: second refused");
    is(atomic_load(&n), 1, "a refusal leaves the count");
    gw_breaker_limit_put(&n);
    ok(gw_breaker_limit_take(&n, 1), "max 1: taken again after put");
    gw_breaker_limit_put(&n);

    taken = 0;
    for (int i = 0; i < 5; i++)
        taken += gw_breaker_limit_take(&n, 3);
    is(taken, 3, "max 3: three of five taken");
    is(atomic_load(&n), 3, "count at the cap");
    gw_breaker_limit_put(&n);
    is(atomic_load(&n), 2, "put decrements");
    ok(gw_breaker_limit_take(&n, 3), "max 3: one more after a put");
    ok(!gw_breaker_limit_take(&n, 3), "max 3: then full again");
}

#define NTHREADS 4
#define ROUNDS 100

struct racer {
    struct gw_breaker *b;
    pthread_barrier_t *start;
    uint64_t now_ms;
    int iters;
    long pass, probe, deny;
};

/* allow() at a fixed now, and a failure for every request that passed. */
static void *race(void *arg)
{
    struct racer *r = arg;

    pthread_barrier_wait(r->start);
    for (int i = 0; i < r->iters; i++) {
        switch (gw_breaker_allow(r->b, r->now_ms, NULL)) {
        case GW_BREAKER_PASS:
            r->pass++;
            gw_breaker_report(r->b, false, false, r->now_ms);
            break;
        case GW_BREAKER_PROBE:
            r->probe++; /* held: no report, so the permit stays out */
            break;
        case GW_BREAKER_DENY:
            r->deny++;
            break;
        }
    }
    return NULL;
}

/* Runs NTHREADS racers on b from one barrier; sums their verdicts. */
static void run_race(struct gw_breaker *b, uint64_t now_ms, int iters, long *pass, long *probe)
{
    pthread_t th[NTHREADS];
    struct racer r[NTHREADS];
    pthread_barrier_t start;

    pthread_barrier_init(&start, NULL, NTHREADS);
    for (int i = 0; i < NTHREADS; i++) {
        r[i] = (struct racer){.b = b, .start = &start, .now_ms = now_ms, .iters = iters};
        pthread_create(&th[i], NULL, race, &r[i]);
    }
    *pass = *probe = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        *pass += r[i].pass;
        *probe += r[i].probe;
    }
    pthread_barrier_destroy(&start);
}

static void test_race_open(void)
{
    struct gw_breaker_params p = base;
    int bad_count = 0, bad_state = 0, too_few = 0;

    /* Both triggers on, so both race to open. */
    p.failures = 5;
    p.error_rate = 0.5;
    p.min_requests = 20;
    for (int round = 0; round < ROUNDS; round++) {
        struct gw_breaker *b = gw_breaker_new(&p);
        long pass, probe;

        run_race(b, 1000, 2000, &pass, &probe);
        bad_count += !counts(b, 0, 0, 1);
        bad_state += gw_breaker_state(b) != GW_BREAKER_OPEN;
        too_few += pass < 5;
        gw_breaker_unref(b);
    }
    is(bad_count, 0, "%d rounds of %d threads: exactly one closed -> open each", ROUNDS, NTHREADS);
    is(bad_state, 0, "and the circuit stays open at a fixed now");
    is(too_few, 0, "at least `failures` requests passed before it opened");
}

static void test_race_half_open(uint32_t permits)
{
    struct gw_breaker_params p = base;
    int bad_probes = 0, bad_count = 0, passed = 0;

    p.half_open_requests = permits;
    for (int round = 0; round < ROUNDS; round++) {
        struct gw_breaker *b = gw_breaker_new(&p);
        long pass, probe;

        open_at(b, 1000);
        run_race(b, 1500, 500, &pass, &probe);
        bad_probes += probe != permits;
        bad_count += !counts(b, 0, 1, 1);
        passed += pass != 0;
        gw_breaker_unref(b);
    }
    is(bad_probes, 0, "half_open_requests = %u: exactly %u probes per round", permits, permits);
    is(bad_count, 0, "exactly one open -> half-open per round");
    is(passed, 0, "nothing passed as if closed");
}

static void test_race_half_open_1(void)
{
    test_race_half_open(1);
}

static void test_race_half_open_3(void)
{
    test_race_half_open(3);
}

int main(void)
{
    subtest("closed under successes", test_closed);
    subtest("consecutive failures", test_consecutive);
    subtest("error rate", test_error_rate);
    subtest("window expiry", test_window_expiry);
    subtest("open, retry_after, half-open", test_open);
    subtest("open with a large clock", test_open_large_clock);
    subtest("three probes", test_half_open_three);
    subtest("probe failure re-opens", test_probe_failure);
    subtest("cancel_probe", test_cancel_probe);
    subtest("late reports", test_late_reports);
    subtest("transition counters", test_transitions);
    subtest("set_params", test_set_params);
    subtest("references", test_refs);
    subtest("concurrency cap", test_limit);
    subtest("race to open", test_race_open);
    subtest("race to half-open, 1 permit", test_race_half_open_1);
    subtest("race to half-open, 3 permits", test_race_half_open_3);
    return done_testing();
}
