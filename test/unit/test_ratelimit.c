/* Unit test of policy/ratelimit.c with fake time: the burst at one instant,
 * continuous refill, B + R * t over a 10 s hammer at several rates, the
 * result fields on hand-computed cases, reloads, per-key isolation, the
 * bounded table and its eviction order, the hash, and four threads on one
 * bucket, both at a frozen instant and on a moving shared clock. */
#include "policy/ratelimit.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tap.h"

#define S_US 1000000ull
#define MS_US 1000ull

static struct gw_ratelimit *new_rl(double rate, uint32_t burst, uint32_t max_keys)
{
    struct gw_ratelimit_params p = {rate, burst};

    return gw_ratelimit_new(&p, max_keys);
}

static struct gw_ratelimit_result take(struct gw_ratelimit *rl, uint64_t key, uint64_t now_us)
{
    struct gw_ratelimit_result r;

    memset(&r, 0xa5, sizeof(r)); /* every field must be written */
    gw_ratelimit_take(rl, key, now_us, &r);
    return r;
}

/* Takes until denied at one instant; returns how many were allowed. The
 * cap only keeps a broken limiter from hanging the test. */
static uint64_t drain(struct gw_ratelimit *rl, uint64_t key, uint64_t now_us)
{
    uint64_t n = 0;

    while (n < 10000000 && take(rl, key, now_us).allowed)
        n++;
    return n;
}

#define is_result(r, allowed_, remaining_, reset_ms_, retry_ms_, what)                             \
    do {                                                                                           \
        struct gw_ratelimit_result r_ = (r);                                                       \
        is(r_.allowed, allowed_, "%s: allowed", what);                                             \
        is(r_.remaining, remaining_, "%s: remaining", what);                                       \
        is(r_.reset_ms, reset_ms_, "%s: reset_ms", what);                                          \
        is(r_.retry_after_ms, retry_ms_, "%s: retry_after_ms", what);                              \
    } while (0)

static void test_burst(void)
{
    struct gw_ratelimit *rl = new_rl(100, 10, 0); /* T = 10 ms */
    uint64_t t0 = 1000 * S_US;
    struct gw_ratelimit_result r;
    int all_ok = 1;

    for (uint32_t i = 0; i < 10; i++) {
        r = take(rl, 0, t0);
        if (!r.allowed || r.remaining != 9 - i || r.limit != 10 || r.retry_after_ms != 0)
            all_ok = 0;
    }
    ok(all_ok, "a full bucket admits 10 at one instant, remaining 9..0");
    r = take(rl, 0, t0);
    ok(!r.allowed, "the 11th at the same instant is denied");
    is(r.retry_after_ms, 10, "retry_after_ms = T");
    is(r.reset_ms, 100, "reset_ms = B * T");
    is(r.remaining, 0, "no token left");
    is(r.limit, 10, "limit = burst");
    is(drain(rl, 0, t0), 0, "denied again at the same instant");
    gw_ratelimit_unref(rl);

    /* now = 0 is a valid instant: an unused bucket is full at any time. */
    rl = new_rl(1, 3, 0);
    is(drain(rl, 0, 0), 3, "a full bucket at now = 0 admits burst");
    gw_ratelimit_unref(rl);
}

static void test_refill(void)
{
    struct gw_ratelimit *rl = new_rl(100, 10, 0); /* T = 10 ms */
    uint64_t t0 = 7 * S_US;

    is(drain(rl, 0, t0), 10, "burst drained");
    is_result(take(rl, 0, t0 + 5 * MS_US), false, 0, 95, 5, "after T/2");
    is_result(take(rl, 0, t0 + 10 * MS_US - 1), false, 0, 91, 1, "1 us before T");
    is_result(take(rl, 0, t0 + 10 * MS_US), true, 0, 100, 0, "after T");
    is_result(take(rl, 0, t0 + 10 * MS_US), false, 0, 100, 10, "one token only");
    is(drain(rl, 0, t0 + 35 * MS_US), 2, "after 3.5 T: two more (half a token waits)");
    is(drain(rl, 0, t0 + 40 * MS_US), 1, "and at 4 T the third");
    /* Idle for longer than B * T: the bucket is full but holds no more. */
    is(drain(rl, 0, t0 + 10 * S_US), 10, "an idle bucket refills to burst, not beyond");
    gw_ratelimit_unref(rl);
}

/* A client that asks every step_us for 10 s, as often as it is let in. */
static uint64_t hammer(double rate, uint32_t burst, uint64_t step_us)
{
    struct gw_ratelimit *rl = new_rl(rate, burst, 0);
    uint64_t t0 = 3 * S_US, end = t0 + 10 * S_US, n = 0;

    for (uint64_t t = t0;; t += step_us) {
        if (t > end)
            t = end;
        n += drain(rl, 0, t);
        if (t == end)
            break;
    }
    gw_ratelimit_unref(rl);
    return n;
}

static void test_accuracy(void)
{
    /* Steps are odd where the burst covers them; at burst 1 a client
     * that is late for a token loses the time it is late by (a token
     * bucket holds no more than B), so there the step divides T. */
    is(hammer(100, 200, 997), 200 + 1000, "100/s burst 200: B + R * 10 s");
    is(hammer(0.5, 1, 20), 1 + 5, "0.5/s burst 1: B + R * 10 s");
    is(hammer(10000, 50, 13), 50 + 100000, "10000/s burst 50: B + R * 10 s");
    is(hammer(7, 4, 997), 4 + 70, "7/s (T not a whole ns) burst 4: B + R * 10 s");
    is(hammer(3, 2, 1000), 2 + 30, "3/s burst 2: B + R * 10 s");
}

static void test_fields(void)
{
    struct gw_ratelimit *rl = new_rl(10, 5, 0); /* T = 100 ms, tau = 500 ms */
    uint64_t t0 = 2 * S_US;

    is_result(take(rl, 0, t0), true, 4, 100, 0, "first");
    is_result(take(rl, 0, t0), true, 3, 200, 0, "second");
    /* tat = t0 + 200 ms, now = t0 + 50 ms: new_tat - now = 250 ms. */
    is_result(take(rl, 0, t0 + 50 * MS_US), true, 2, 250, 0, "third, 50 ms later");
    is_result(take(rl, 0, t0 + 50 * MS_US), true, 1, 350, 0, "fourth");
    is_result(take(rl, 0, t0 + 50 * MS_US), true, 0, 450, 0, "fifth");
    is_result(take(rl, 0, t0 + 50 * MS_US), false, 0, 450, 50, "sixth denied");
    is_result(take(rl, 0, t0 + 100 * MS_US), true, 0, 500, 0, "refilled one at 100 ms");
    is(take(rl, 0, t0).limit, 5, "limit");
    gw_ratelimit_unref(rl);

    /* Rounding up: 3/s is T = 333333333 ns. */
    rl = new_rl(3, 1, 0);
    is_result(take(rl, 0, t0), true, 0, 334, 0, "3/s: reset 333.3 ms -> 334");
    is_result(take(rl, 0, t0 + 1), false, 0, 334, 334, "3/s: retry 333.332 ms -> 334");
    gw_ratelimit_unref(rl);

    /* retry_after_ms is never 0 while denied, even 1 us before the token. */
    rl = new_rl(10, 1, 0);
    is_result(take(rl, 0, t0), true, 0, 100, 0, "10/s burst 1");
    is_result(take(rl, 0, t0 + 100 * MS_US - 1), false, 0, 1, 1, "1 us before: 1 ms");
    is_result(take(rl, 0, t0 + 100 * MS_US), true, 0, 100, 0, "on time");
    gw_ratelimit_unref(rl);
}

static void test_set_params(void)
{
    struct gw_ratelimit *rl = new_rl(10, 5, 0);
    struct gw_ratelimit_params p = {10, 8};
    uint64_t t0 = 4 * S_US;

    is(drain(rl, 0, t0), 5, "burst 5 drained");
    gw_ratelimit_set_params(rl, &p);
    /* The bucket owes 500 ms; with tau = 800 ms three more fit. */
    is(drain(rl, 0, t0), 3, "burst raised to 8: exactly the difference, state kept");
    is(take(rl, 0, t0).limit, 8, "limit follows burst");
    /* tat = t0 + 800 ms. At 20/s (T = 50 ms, tau = 400 ms) the next one
     * needs tat + T - tau = t0 + 450 ms. */
    p = (struct gw_ratelimit_params){20, 8};
    gw_ratelimit_set_params(rl, &p);
    is_result(take(rl, 0, t0 + 450 * MS_US - 1), false, 0, 351, 1, "rate 20/s: not yet");
    is_result(take(rl, 0, t0 + 450 * MS_US), true, 0, 400, 0, "rate 20/s: at 450 ms");
    /* Burst lowered to 1 (tau = 50 ms) with tat = t0 + 850 ms: wait until
     * t0 + 850 ms, when the bucket is full at its new size. */
    p = (struct gw_ratelimit_params){20, 1};
    gw_ratelimit_set_params(rl, &p);
    is_result(take(rl, 0, t0 + 800 * MS_US), false, 0, 50, 50, "burst 1: drains first");
    is(drain(rl, 0, t0 + 850 * MS_US), 1, "burst 1: one at 850 ms");
    gw_ratelimit_unref(rl);

    /* A reload of a keyed table keeps every key's state too. */
    rl = new_rl(1, 2, 16);
    p = (struct gw_ratelimit_params){1, 3};
    is(drain(rl, 42, t0), 2, "key drained");
    gw_ratelimit_set_params(rl, &p);
    is(drain(rl, 42, t0), 1, "key keeps its state over a reload");
    is(drain(rl, 43, t0), 3, "a new key gets the new burst");
    is(gw_ratelimit_capacity(rl), 16, "a reload keeps the table");
    gw_ratelimit_unref(rl);
}

static void test_keys(void)
{
    struct gw_ratelimit *rl = new_rl(1, 4, 64);
    struct gw_ratelimit *one = new_rl(1, 4, 0);
    uint64_t a = gw_ratelimit_hash("10.0.0.1", 8, 99), b = gw_ratelimit_hash("10.0.0.2", 8, 99);
    uint64_t t0 = 9 * S_US;

    is(drain(rl, a, t0), 4, "key a drained");
    is(drain(rl, b, t0), 4, "key b still full");
    is(drain(rl, a, t0 + S_US), 1, "key a refills on its own clock");
    is(gw_ratelimit_evictions(rl), 0, "no evictions in a table with room");

    is(drain(one, a, t0), 4, "single bucket drained through key a");
    is(drain(one, b, t0), 0, "single bucket: key b shares it");
    is(gw_ratelimit_capacity(one), 0, "single bucket: capacity 0");

    /* Key 0 would look like an empty entry; it is taken as key 1. */
    is(drain(rl, 0, t0), 4, "key 0 is usable");
    is(drain(rl, 1, t0), 0, "key 0 and key 1 share a bucket");
    gw_ratelimit_unref(one);
    gw_ratelimit_unref(rl);
}

static void test_capacity(void)
{
    static const uint32_t in[][2] = {{1, 8},       {8, 8},       {9, 16},     {100, 128},
                                     {1000, 1024}, {1024, 1024}, {1025, 2048}};

    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        struct gw_ratelimit *rl = new_rl(1, 1, in[i][0]);

        is(gw_ratelimit_capacity(rl), in[i][1], "max_keys %u -> capacity %u", in[i][0], in[i][1]);
        gw_ratelimit_unref(rl);
    }
}

static void test_bounded(void)
{
    enum { CAP = 128, N = 10 * CAP, BURST = 5 };
    struct gw_ratelimit *rl = new_rl(1, BURST, 100);
    uint64_t *keys = calloc(N, sizeof(*keys)), t0 = 20 * S_US, mask = CAP / 8 - 1;
    unsigned per_set[CAP / 8] = {0}, resident = 0, fresh = 1, kept = 1;
    unsigned char *is_resident = calloc(N, 1);
    struct gw_ratelimit_result r;
    char buf[32];

    is(gw_ratelimit_capacity(rl), CAP, "100 keys -> 16 sets of 8");
    /* One take per key, 1 us apart, so that least recently used is well
     * defined; no bucket refills within the 1.3 ms this takes. */
    for (unsigned i = 0; i < N; i++) {
        snprintf(buf, sizeof(buf), "client-%u", i);
        keys[i] = gw_ratelimit_hash(buf, strlen(buf), 7);
        r = take(rl, keys[i], t0 + i);
        if (!r.allowed || r.remaining != BURST - 1)
            fresh = 0;
    }
    ok(fresh, "every new key starts with a full bucket");
    is(gw_ratelimit_capacity(rl), CAP, "capacity unchanged after 10x as many keys");
    is(gw_ratelimit_evictions(rl), N - CAP, "each key beyond capacity evicted a busy one");

    /* The resident keys are the 8 most recent of each set. The table was
     * filled completely: every set got its 8 (checked by the count). */
    for (unsigned i = N; i-- > 0;) {
        uint64_t s = keys[i] & mask;

        if (per_set[s] < 8) {
            per_set[s]++;
            is_resident[i] = 1;
            resident++;
        }
    }
    is(resident, CAP, "every set saw at least 8 keys");
    for (unsigned i = 0; i < N; i++) {
        if (!is_resident[i])
            continue;
        /* A kept bucket has BURST - 1 tokens; this take leaves BURST - 2. */
        if (take(rl, keys[i], t0 + N).remaining != BURST - 2)
            kept = 0;
    }
    ok(kept, "the 8 most recent keys of each set kept their state");
    is(gw_ratelimit_evictions(rl), N - CAP, "looking up resident keys evicts nothing");
    for (unsigned i = 0; i < N; i++) {
        if (is_resident[i])
            continue;
        is(take(rl, keys[i], t0 + N + 1).remaining, BURST - 1, "an evicted key starts afresh");
        break;
    }
    is(gw_ratelimit_evictions(rl), N - CAP + 1, "and evicted a busy key");
    free(is_resident);
    free(keys);
    gw_ratelimit_unref(rl);
}

static void test_eviction_order(void)
{
    /* One set of 8 (max_keys 8). 1/s (T = 1 s), burst 2. */
    struct gw_ratelimit *rl = new_rl(1, 2, 8);
    uint64_t t = 1 * S_US;
    int kept = 1;

    is(gw_ratelimit_capacity(rl), 8, "one set");
    /* key 1: busy until t + 2 s and least recently used. */
    is(drain(rl, 1, t), 2, "key 1 drained at t");
    /* keys 2..7 busy until t + 2.5 s, key 8 until t + 1.5 s. */
    for (uint64_t k = 2; k <= 7; k++)
        drain(rl, k, t + 500 * MS_US);
    ok(take(rl, 8, t + 500 * MS_US).allowed, "key 8 took one at t + 0.5 s");
    is(gw_ratelimit_evictions(rl), 0, "empty entries are used first");

    /* At t + 1.6 s only key 8 is full again; key 1 is busy and the LRU. */
    is_result(take(rl, 9, t + 1600 * MS_US), true, 1, 1000, 0, "key 9 is new");
    is(gw_ratelimit_evictions(rl), 0, "evicting the full key 8 lost nothing and is not counted");
    /* A surviving key 1 has tat = t + 2 s: this take leaves 0, a fresh 1. */
    is_result(take(rl, 1, t + 1600 * MS_US), true, 0, 1400, 0, "key 1 (busy, LRU) kept");
    for (uint64_t k = 2; k <= 7; k++)
        if (take(rl, k, t + 1600 * MS_US).remaining != 0)
            kept = 0;
    ok(kept, "keys 2..7 kept");
    is(gw_ratelimit_evictions(rl), 0, "still no eviction");

    /* Now none is full: key 8 evicts the least recently used. All were last
     * used at the same microsecond, so that is the first way: key 1. */
    is_result(take(rl, 8, t + 1600 * MS_US), true, 1, 1000, 0, "key 8 comes back fresh");
    is(gw_ratelimit_evictions(rl), 1, "evicting a busy key is counted");

    /* Distinct last use times, key 3 the oldest. Keys 2..7 were inserted
     * at the same time, key 2 first, so only last use singles out key 3. */
    for (uint64_t k = 3; k <= 9; k++)
        take(rl, k, t + 1700 * MS_US + k);
    take(rl, 2, t + 1700 * MS_US + 10);
    ok(take(rl, 10, t + 1800 * MS_US).allowed, "key 10 is new");
    is(gw_ratelimit_evictions(rl), 2, "it evicted a busy key");
    take(rl, 2, t + 1800 * MS_US);
    for (uint64_t k = 4; k <= 9; k++)
        take(rl, k, t + 1800 * MS_US);
    is(gw_ratelimit_evictions(rl), 2, "keys 2 and 4..9 are all still there");
    is_result(take(rl, 3, t + 1800 * MS_US), true, 1, 1000, 0, "key 3 (LRU) was the one evicted");
    is(gw_ratelimit_evictions(rl), 3, "and its return evicted another");
    gw_ratelimit_unref(rl);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static void test_hash(void)
{
    unsigned char buf[64];
    unsigned zero = 0, same_seed = 0;
    uint64_t x = 88172645463325252ull, h, flips = 0, nflips = 0;

    /* Lengths 0..63, seeds 0..31, contents from xorshift. */
    for (unsigned len = 0; len < 64; len++) {
        for (uint64_t seed = 0; seed < 32; seed++) {
            for (unsigned i = 0; i < len; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                buf[i] = (unsigned char)x;
            }
            h = gw_ratelimit_hash(buf, len, seed);
            zero += h == 0;
            same_seed += h == gw_ratelimit_hash(buf, len, seed + 1);
            /* One flipped input bit should flip about half the output. */
            if (len > 0) {
                unsigned bit = (unsigned)(x >> 40) % (len * 8);

                buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
                flips += (uint64_t)__builtin_popcountll(h ^ gw_ratelimit_hash(buf, len, seed));
                nflips++;
            }
        }
    }
    is(zero, 0, "no zero hash over 2048 inputs");
    is(same_seed, 0, "another seed gives another hash");
    ok(flips > 30 * nflips && flips < 34 * nflips, "one input bit flips ~32 output bits (%.2f)",
       (double)flips / (double)nflips);
    ok(gw_ratelimit_hash(NULL, 0, 1) != 0, "empty input is not 0");
    ok(gw_ratelimit_hash(NULL, 0, 1) != gw_ratelimit_hash(NULL, 0, 2), "empty input, two seeds");
    ok(gw_ratelimit_hash("ab", 2, 5) != gw_ratelimit_hash("ab\0", 3, 5), "length counts");
    ok(gw_ratelimit_hash("10.1.2.3", 8, 5) == gw_ratelimit_hash("10.1.2.3", 8, 5),
       "deterministic for one seed");
}

static void test_hash_spread(void)
{
    enum { N = 65536 };
    uint64_t *hs = malloc(N * sizeof(*hs)), w[2], h;
    unsigned dup = 0, same_set = 0, zero = 0, sets[64] = {0}, lo = ~0u, hi = 0;

    /* Low-entropy keys (two 8-byte words, each 0..255) must not collide:
     * a weak mix such as h * 31 + w would map them onto a few thousand. */
    for (unsigned i = 0; i < N; i++) {
        w[0] = i & 255, w[1] = i >> 8;
        hs[i] = gw_ratelimit_hash(w, sizeof(w), 3);
        /* The seed, not the key alone, decides the set. */
        same_set += (hs[i] & 63) == (gw_ratelimit_hash(w, sizeof(w), 4) & 63);
    }
    qsort(hs, N, sizeof(*hs), cmp_u64);
    for (unsigned i = 1; i < N; i++)
        dup += hs[i] == hs[i - 1];
    free(hs);
    is(dup, 0, "no collision among 65536 low-entropy 16-byte keys");
    ok(same_set > 800 && same_set < 1250,
       "another seed moves keys to other sets (%u of 65536 stay, 1024 expected)", same_set);

    /* Sequential IPv4 addresses, as 4 raw bytes, spread evenly over 64 sets
     * by the low bits (expected 1024 each, sd 32). */
    for (uint32_t ip = 0x0a000000; ip < 0x0a000000 + N; ip++) {
        h = gw_ratelimit_hash(&ip, sizeof(ip), 0x1234567890abcdefull);
        zero += h == 0;
        sets[h & 63]++;
    }
    for (int i = 0; i < 64; i++) {
        lo = sets[i] < lo ? sets[i] : lo;
        hi = sets[i] > hi ? sets[i] : hi;
    }
    ok(lo > 880 && hi < 1170, "65536 addresses over 64 sets: %u..%u", lo, hi);
    is(zero, 0, "no zero hash over 65536 addresses");
}

/* Threads: each takes from one shared limiter, clock either frozen or a
 * shared counter every take advances by 1 us. */
enum { THREADS = 4 };

struct hammer_arg {
    struct gw_ratelimit *rl;
    pthread_barrier_t *start;
    _Atomic uint64_t *clock; /* NULL: frozen at now_us */
    uint64_t now_us, iters, nkeys, admitted, bad;
    uint32_t burst;
};

static void *hammer_thread(void *p)
{
    struct hammer_arg *a = p;
    uint64_t x = (uint64_t)(uintptr_t)a | 1;

    pthread_barrier_wait(a->start);
    for (uint64_t i = 0; i < a->iters; i++) {
        uint64_t now = a->clock ? atomic_fetch_add(a->clock, 1) + 1 : a->now_us, key = 0;
        struct gw_ratelimit_result r;

        if (a->nkeys > 0) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            key = x % a->nkeys + 1;
        }
        gw_ratelimit_take(a->rl, key, now, &r);
        a->admitted += r.allowed;
        /* Whatever the interleaving, each result must be self-consistent. */
        if (r.limit != a->burst || r.remaining >= a->burst ||
            (r.allowed ? r.retry_after_ms != 0 || r.reset_ms == 0 : r.retry_after_ms == 0))
            a->bad++;
    }
    return NULL;
}

static uint64_t run_threads(struct gw_ratelimit *rl, uint32_t burst, _Atomic uint64_t *clock,
                            uint64_t now_us, uint64_t iters, uint64_t nkeys, uint64_t *bad)
{
    struct hammer_arg a[THREADS];
    pthread_t th[THREADS];
    pthread_barrier_t start;
    uint64_t total = 0;

    *bad = 0;
    pthread_barrier_init(&start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        a[i] = (struct hammer_arg){rl, &start, clock, now_us, iters, nkeys, 0, 0, burst};
        if (pthread_create(&th[i], NULL, hammer_thread, &a[i]) != 0) {
            perror("pthread_create");
            exit(1);
        }
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        total += a[i].admitted;
        *bad += a[i].bad;
    }
    pthread_barrier_destroy(&start);
    return total;
}

static void test_threads(void)
{
    struct gw_ratelimit *rl = new_rl(1000, 100000, 0);
    _Atomic uint64_t clock = 0;
    uint64_t bad, n, want;

    /* The burst is half the takes, so that half of them race to CAS the
     * same word: a lost update would admit more than the burst. */
    n = run_threads(rl, 100000, NULL, 5 * S_US, 50000, 0, &bad);
    is(n, 100000, "4 threads x 50000 takes at one instant: exactly burst");
    is(bad, 0, "frozen clock: every result consistent");
    gw_ratelimit_unref(rl);

    /* 100000/s (T = 10 us), burst 100, 1e6 takes on a clock that ends at
     * 1 s: demand is 10x the rate. No take ever sees a later now than the
     * clock, so B + R * t is also a hard upper bound. */
    rl = new_rl(100000, 100, 0);
    n = run_threads(rl, 100, &clock, 0, 250000, 0, &bad);
    want = 100 + 100000 * atomic_load(&clock) / S_US;
    ok(n * 100 >= want * 99 && n <= want, "moving clock: %llu admitted, B + R * t = %llu",
       (unsigned long long)n, (unsigned long long)want);
    is(bad, 0, "moving clock: every result consistent");
    gw_ratelimit_unref(rl);

    /* A small table under 4 threads inserting and evicting 1000 keys at
     * once: a little accuracy may go, memory and results must not. */
    rl = new_rl(1000, 3, 64);
    atomic_store(&clock, 0);
    n = run_threads(rl, 3, &clock, 0, 50000, 1000, &bad);
    is(bad, 0, "contended table: every result consistent");
    is(gw_ratelimit_capacity(rl), 64, "contended table: capacity unchanged");
    ok(gw_ratelimit_evictions(rl) > 0 && n > 0, "contended table: keys were evicted (%llu)",
       (unsigned long long)gw_ratelimit_evictions(rl));
    gw_ratelimit_unref(rl);
}

static void test_refs(void)
{
    struct gw_ratelimit *rl = new_rl(1, 1, 8);

    ok(gw_ratelimit_ref(rl) == rl, "ref returns its argument");
    gw_ratelimit_unref(rl);
    is(drain(rl, 5, 0), 1, "still usable after dropping one of two references");
    gw_ratelimit_unref(rl); /* the last one: LeakSanitizer checks it freed */
    gw_ratelimit_unref(NULL);
    ok(1, "unref(NULL) does nothing");
}

int main(void)
{
    subtest("burst at one instant", test_burst);
    subtest("continuous refill", test_refill);
    subtest("B + R * t", test_accuracy);
    subtest("result fields", test_fields);
    subtest("set_params keeps state", test_set_params);
    subtest("per-key isolation", test_keys);
    subtest("capacity rounding", test_capacity);
    subtest("bounded table", test_bounded);
    subtest("eviction order", test_eviction_order);
    subtest("hash", test_hash);
    subtest("hash spread", test_hash_spread);
    subtest("threads", test_threads);
    subtest("references", test_refs);
    return done_testing();
}
