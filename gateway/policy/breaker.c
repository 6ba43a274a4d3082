/* Owns the circuit breaker of one upstream server and the shared
 * concurrency cap.
 *
 * Why atomics and no mutex: one breaker is shared by every worker thread
 * (a server is one server, whichever worker talks to it), and allow() runs
 * on every request. In the common case, closed, allow() is one relaxed load
 * of the state word, which is a plain mov on x86 and keeps the cache line
 * shared between cores. A change of state is a CAS on that word, so exactly
 * one thread makes each transition, counts it and resets the counters; the
 * losers see the new word and act on it. The state word packs the state
 * (low 2 bits) with the ms at which it was entered, so a reader gets both
 * from one load and nothing else has to be published alongside: relaxed
 * loads are enough everywhere. The word cannot come back to an earlier
 * value (no ABA): a cycle back to a state passes through OPEN, which lasts
 * at least open_ms >= 1 ms, so the time differs.
 *
 * Races we accept, each bounded and harmless:
 * - A report that read CLOSED just before another thread opened the
 *   circuit still adds to the consecutive count or the window after the
 *   opener reset them. At most one stale count per racing thread; the
 *   counters are reset again when the circuit closes, so they never reach
 *   the next closed period.
 * - A window bucket that turns over (its epoch is stale) is reset by the
 *   thread that wins the CAS on its epoch; a count added by another thread
 *   between that CAS and the zeroing is lost. That is one request in a
 *   window of many, and the rate is a heuristic anyway.
 * - Workers read the clock at different loop turns, so their now_ms differ
 *   by a few ms. A report older than a bucket's epoch is dropped rather
 *   than resetting a newer bucket; an allow() whose now is behind the
 *   opener's gets a slightly longer retry_after.
 * - set_params stores each field on its own: for an instant a reader may
 *   mix old and new fields, each of which is valid.
 * - A probe admitted in one half-open period may report in the next one
 *   (it failed slowly after another probe re-opened the circuit). Its
 *   outcome is still fresh news about the server, so it decides. */
#include "policy/breaker.h"

#include <assert.h>
#include <stdlib.h>

#include "core/mem.h"

#define NBUCKETS 10
#define EPOCH_NONE UINT64_MAX /* a bucket that holds nothing */
#define PPM 1000000u

#define STATE_BITS 2
#define STATE_MASK ((uint64_t)3)

struct bucket {
    _Atomic uint64_t epoch; /* now_ms / bucket_ms of the counts below */
    _Atomic uint32_t total, failed;
};

/* Owned jointly by its references: one breaker per upstream server, kept
 * across reloads for a server whose name did not change. */
struct gw_breaker {
    /* Read by allow() on every request, written only on transitions. */
    _Atomic uint64_t word; /* entered_ms << STATE_BITS | state */
    _Atomic uint32_t failures;
    _Atomic uint32_t rate_ppm; /* error_rate in millionths: exact integer compare */
    _Atomic uint32_t window_ms;
    _Atomic uint32_t min_requests;
    _Atomic uint32_t open_ms;
    _Atomic uint32_t half_open_requests;
    _Atomic uint32_t refs;
    /* Keeps the counters below, written by report() on every request while
     * the window is on, off the line that allow() reads. */
    char pad[64];
    _Atomic uint32_t consecutive; /* failures in a row while closed */
    _Atomic uint32_t probes;      /* probe permits out */
    struct bucket buckets[NBUCKETS];
    _Atomic uint64_t transitions[3]; /* by target state */
};

static inline uint64_t word_of(enum gw_breaker_state s, uint64_t now_ms)
{
    return now_ms << STATE_BITS | (uint64_t)s;
}

static inline enum gw_breaker_state state_of(uint64_t w)
{
    return (enum gw_breaker_state)(w & STATE_MASK);
}

static inline uint64_t since_of(uint64_t w)
{
    return w >> STATE_BITS;
}

static uint32_t rate_to_ppm(double r)
{
    if (!(r > 0))
        return 0;
    if (r >= 1)
        return PPM;
    /* Any positive rate stays on, however small. */
    uint32_t ppm = (uint32_t)(r * PPM + 0.5);
    return ppm ? ppm : 1;
}

static uint64_t bucket_ms(const struct gw_breaker *b)
{
    uint32_t ms = atomic_load_explicit(&b->window_ms, memory_order_relaxed) / NBUCKETS;
    return ms ? ms : 1;
}

static void reset_window(struct gw_breaker *b)
{
    for (int i = 0; i < NBUCKETS; i++) {
        atomic_store_explicit(&b->buckets[i].epoch, EPOCH_NONE, memory_order_relaxed);
        atomic_store_explicit(&b->buckets[i].total, 0, memory_order_relaxed);
        atomic_store_explicit(&b->buckets[i].failed, 0, memory_order_relaxed);
    }
}

static void reset_counts(struct gw_breaker *b)
{
    atomic_store_explicit(&b->consecutive, 0, memory_order_relaxed);
    reset_window(b);
}

/* Moves the state from w to `to` if nobody did since w was read. Only the
 * winner counts the transition, so each one is counted exactly once. */
static bool transition(struct gw_breaker *b, uint64_t w, enum gw_breaker_state to, uint64_t now_ms)
{
    /* Nothing else is published through the word, so relaxed would do;
     * acq_rel is free on x86 (cmpxchg is locked anyway) and keeps the
     * resets around a transition from moving across it. */
    if (!atomic_compare_exchange_strong_explicit(&b->word, &w, word_of(to, now_ms),
                                                 memory_order_acq_rel, memory_order_relaxed))
        return false;
    atomic_fetch_add_explicit(&b->transitions[to], 1, memory_order_relaxed);
    return true;
}

static void open_circuit(struct gw_breaker *b, uint64_t w, uint64_t now_ms)
{
    if (transition(b, w, GW_BREAKER_OPEN, now_ms))
        reset_counts(b);
}

/* Counts one outcome into the bucket of now_ms, resetting that bucket
 * first if it still holds an older epoch (its slot came round again). */
static void window_add(struct gw_breaker *b, bool failed, uint64_t now_ms)
{
    uint64_t epoch = now_ms / bucket_ms(b);
    struct bucket *k = &b->buckets[epoch % NBUCKETS];
    uint64_t e = atomic_load_explicit(&k->epoch, memory_order_relaxed);

    if (e != epoch) {
        /* A worker whose clock is ahead already moved this slot on: the
         * report belongs to a bucket that is gone. */
        if (e != EPOCH_NONE && e > epoch)
            return;
        if (atomic_compare_exchange_strong_explicit(&k->epoch, &e, epoch, memory_order_relaxed,
                                                    memory_order_relaxed)) {
            atomic_store_explicit(&k->total, 0, memory_order_relaxed);
            atomic_store_explicit(&k->failed, 0, memory_order_relaxed);
        }
    }
    atomic_fetch_add_explicit(&k->total, 1, memory_order_relaxed);
    if (failed)
        atomic_fetch_add_explicit(&k->failed, 1, memory_order_relaxed);
}

/* Has the error rate over the last NBUCKETS buckets reached the threshold? */
static bool rate_tripped(struct gw_breaker *b, uint32_t ppm, uint64_t now_ms)
{
    uint64_t cur = now_ms / bucket_ms(b), total = 0, failed = 0;
    uint32_t min = atomic_load_explicit(&b->min_requests, memory_order_relaxed);

    for (int i = 0; i < NBUCKETS; i++) {
        uint64_t e = atomic_load_explicit(&b->buckets[i].epoch, memory_order_relaxed);
        /* Within NBUCKETS either way: a bucket slightly in the future was
         * made by a worker whose clock is ahead, and is recent. */
        if (e == EPOCH_NONE || (e > cur ? e - cur : cur - e) >= NBUCKETS)
            continue;
        total += atomic_load_explicit(&b->buckets[i].total, memory_order_relaxed);
        failed += atomic_load_explicit(&b->buckets[i].failed, memory_order_relaxed);
    }
    if (total == 0 || total < min)
        return false;
    /* failed / total >= ppm / 1e6, in integers (both sides < 2^53). */
    return failed * PPM >= (uint64_t)ppm * total;
}

static void store_params(struct gw_breaker *b, const struct gw_breaker_params *p)
{
    assert(p->window_ms >= 10);
    assert(p->open_ms >= 1);
    assert(p->half_open_requests >= 1);
    assert(p->error_rate >= 0 && p->error_rate <= 1);
    atomic_store_explicit(&b->failures, p->failures, memory_order_relaxed);
    atomic_store_explicit(&b->rate_ppm, rate_to_ppm(p->error_rate), memory_order_relaxed);
    atomic_store_explicit(&b->window_ms, p->window_ms, memory_order_relaxed);
    atomic_store_explicit(&b->min_requests, p->min_requests, memory_order_relaxed);
    atomic_store_explicit(&b->open_ms, p->open_ms, memory_order_relaxed);
    atomic_store_explicit(&b->half_open_requests, p->half_open_requests, memory_order_relaxed);
}

struct gw_breaker *gw_breaker_new(const struct gw_breaker_params *p)
{
    struct gw_breaker *b = gw_xcalloc(1, sizeof(*b));

    atomic_init(&b->word, word_of(GW_BREAKER_CLOSED, 0));
    atomic_init(&b->refs, 1);
    store_params(b, p);
    reset_window(b);
    return b;
}

struct gw_breaker *gw_breaker_ref(struct gw_breaker *b)
{
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
    return b;
}

void gw_breaker_unref(struct gw_breaker *b)
{
    if (b == NULL)
        return;
    /* Release our writes; the last one acquires everyone's before free. */
    if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
        free(b);
}

void gw_breaker_set_params(struct gw_breaker *b, const struct gw_breaker_params *p)
{
    bool new_window = atomic_load_explicit(&b->window_ms, memory_order_relaxed) != p->window_ms;

    store_params(b, p);
    /* Bucket epochs were computed with the old bucket size and would be
     * read as other times. */
    if (new_window)
        reset_window(b);
}

enum gw_breaker_verdict gw_breaker_allow(struct gw_breaker *b, uint64_t now_ms,
                                         uint64_t *retry_after_ms)
{
    uint64_t w = atomic_load_explicit(&b->word, memory_order_relaxed);
    uint64_t retry;

    for (;;) {
        switch (state_of(w)) {
        case GW_BREAKER_CLOSED:
            return GW_BREAKER_PASS;
        case GW_BREAKER_OPEN: {
            uint64_t end = since_of(w) + atomic_load_explicit(&b->open_ms, memory_order_relaxed);
            if (now_ms < end) {
                retry = end - now_ms;
                goto deny;
            }
            /* The open period is over: one thread moves to half-open, the
             * others' CAS fails, and all of them go round again with the
             * word as it is now to compete for the probe permits. */
            transition(b, w, GW_BREAKER_HALF_OPEN, now_ms);
            w = atomic_load_explicit(&b->word, memory_order_relaxed);
            continue;
        }
        case GW_BREAKER_HALF_OPEN:
            if (gw_breaker_limit_take(
                    &b->probes, atomic_load_explicit(&b->half_open_requests, memory_order_relaxed)))
                return GW_BREAKER_PROBE;
            /* We cannot know when a probe will answer. */
            retry = atomic_load_explicit(&b->open_ms, memory_order_relaxed);
            goto deny;
        }
    }
deny:
    if (retry_after_ms != NULL)
        *retry_after_ms = retry;
    return GW_BREAKER_DENY;
}

/* Outcome of a probe. Only in HALF_OPEN does it decide: in CLOSED or OPEN
 * another probe has already decided this period. The permit goes back after
 * the transition, so no extra probe slips in while the circuit re-opens. */
static void report_probe(struct gw_breaker *b, bool success, uint64_t now_ms)
{
    uint64_t w = atomic_load_explicit(&b->word, memory_order_relaxed);

    if (state_of(w) == GW_BREAKER_HALF_OPEN) {
        if (success) {
            /* Reset first: after the CAS, reports of the new closed period
             * may already be counting. */
            reset_counts(b);
            transition(b, w, GW_BREAKER_CLOSED, now_ms);
        } else {
            open_circuit(b, w, now_ms);
        }
    }
    gw_breaker_limit_put(&b->probes);
}

void gw_breaker_report(struct gw_breaker *b, bool probe, bool success, uint64_t now_ms)
{
    uint64_t w;
    uint32_t failures, ppm, n;

    if (probe) {
        report_probe(b, success, now_ms);
        return;
    }
    /* A request admitted while closed whose answer arrives after the circuit
     * opened: the open period is already running on fresher evidence, and in
     * HALF_OPEN only the probes speak for the server as it is now. */
    w = atomic_load_explicit(&b->word, memory_order_relaxed);
    if (state_of(w) != GW_BREAKER_CLOSED)
        return;
    ppm = atomic_load_explicit(&b->rate_ppm, memory_order_relaxed);
    if (ppm != 0)
        window_add(b, !success, now_ms);
    if (success) {
        /* Read before writing: most successes find 0 and leave the line
         * shared. */
        if (atomic_load_explicit(&b->consecutive, memory_order_relaxed) != 0)
            atomic_store_explicit(&b->consecutive, 0, memory_order_relaxed);
        return;
    }
    n = atomic_fetch_add_explicit(&b->consecutive, 1, memory_order_relaxed) + 1;
    failures = atomic_load_explicit(&b->failures, memory_order_relaxed);
    /* The rate can only rise on a failure, so it is checked then: a success
     * that merely brings the window up to min_requests waits for the next
     * failure. ">=": racing threads may overshoot, and a reload may lower
     * the threshold below the current count. */
    if ((failures != 0 && n >= failures) || (ppm != 0 && rate_tripped(b, ppm, now_ms)))
        open_circuit(b, w, now_ms);
}

void gw_breaker_cancel_probe(struct gw_breaker *b)
{
    gw_breaker_limit_put(&b->probes);
}

enum gw_breaker_state gw_breaker_state(const struct gw_breaker *b)
{
    return state_of(atomic_load_explicit(&b->word, memory_order_relaxed));
}

uint64_t gw_breaker_transitions(const struct gw_breaker *b, enum gw_breaker_state to)
{
    assert((unsigned)to < 3);
    return atomic_load_explicit(&b->transitions[to], memory_order_relaxed);
}

bool gw_breaker_limit_take(_Atomic uint32_t *n, uint32_t max)
{
    uint32_t v;

    if (max == 0) {
        atomic_fetch_add_explicit(n, 1, memory_order_relaxed);
        return true;
    }
    v = atomic_load_explicit(n, memory_order_relaxed);
    do {
        if (v >= max)
            return false;
    } while (!atomic_compare_exchange_weak_explicit(n, &v, v + 1, memory_order_relaxed,
                                                    memory_order_relaxed));
    return true;
}

void gw_breaker_limit_put(_Atomic uint32_t *n)
{
    uint32_t v = atomic_load_explicit(n, memory_order_relaxed);

    do {
        assert(v > 0);
        if (v == 0)
            return;
    } while (!atomic_compare_exchange_weak_explicit(n, &v, v - 1, memory_order_relaxed,
                                                    memory_order_relaxed));
}
