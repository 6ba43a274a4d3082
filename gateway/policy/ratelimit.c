/* Owns the token buckets and the bounded per-key table that holds them.
 *
 * Why GCRA on atomics. Every worker thread takes from the same buckets, so
 * that a route limited to R/s gets R/s for the whole process and not R/s
 * per worker. A mutex would put every worker's request path behind one
 * lock. GCRA (the generic cell rate algorithm) is the exact dual of a token
 * bucket refilled continuously at R/s and holding B tokens, but its whole
 * state is one number: the "theoretical arrival time" tat, the moment the
 * bucket will be full again. With T = 1/R (the emission interval) and
 * tau = T * B (the time a full bucket is worth), a take at now computes
 * new_tat = max(tat, now) + T and is allowed iff new_tat - now <= tau. A
 * bucket is then one 64-bit word updated by one compare-and-swap per
 * request; a CAS fails only when another worker took from the same bucket
 * in between, and the retry sees its result, so no take is lost or counted
 * twice. Times are kept in nanoseconds, so T is an integer, exact for any
 * rate whose interval is a whole number of ns (10000/s: 100000 ns, 0.5/s:
 * 2e9 ns) and otherwise rounded down by less than 1 ns: a limit is never
 * served below its rate, and B + floor(R * t) over t seconds is off by one
 * (one more) only when R * t falls short of a whole number by less than
 * R * t / T. The take path has no floating point.
 *
 * The take path's orders are all relaxed: each bucket is a single atomic
 * word and no other memory is published through it, so a CAS on the word
 * itself is all the synchronisation a take needs.
 *
 * The per-key table is set-associative: a key's low bits pick a set of 8
 * entries and the key is looked up in those 8 only, so a lookup touches
 * three or four cache lines and the table never grows. An unknown key
 * claims an entry with a CAS on its key word: first an empty one, then one
 * whose bucket is full again (tat <= now: forgetting it loses nothing,
 * since an unknown key starts full), then the least recently used one.
 *
 * The benign races, all of which cost accuracy for one key at one moment
 * and none of which touches memory outside the table:
 *  - Two workers claiming an entry for the same new key at once may both
 *    succeed (in two ways of the set). Lookups use the first way holding
 *    the key, so the other copy is stale and is reclaimed later as full or
 *    least recently used; meanwhile that key may get up to 2 * B.
 *  - The claimer resets tat after its key CAS. A take for that key in
 *    between works on the evicted key's tat and is then overwritten (one
 *    token the new key does not pay for), and a take still in flight for
 *    the evicted key may land on the new key's fresh bucket (one token the
 *    new key pays for).
 *  - last_us is a plain relaxed store, so the least recently used choice
 *    may be a microsecond stale.
 *  - A reload's new parameters are separate relaxed words, so one take may
 *    use the new interval with the old burst or the reverse. */
#include "policy/ratelimit.h"

#include <assert.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/mem.h"

#define WAYS 8
#define NS_PER_US 1000u
#define NS_PER_MS 1000000u
/* Bounds that keep every sum in 64 bits: now_ns < 2^63, T <= 2^50 ns (13
 * days per token), tau <= 2^60 ns (36 years), so max(tat, now) + T fits. */
#define EMISSION_MAX_NS (1ull << 50)
#define TAU_MAX_NS (1ull << 60)
#define MAX_KEYS (1u << 31)

struct entry {
    _Atomic uint64_t key;     /* key hash; 0 = empty */
    _Atomic uint64_t tat_ns;  /* theoretical arrival time; <= now means a full bucket */
    _Atomic uint64_t last_us; /* last take, for least-recently-used eviction */
};

/* Owned by its references: gw_policy_bind's route states, one each. */
struct gw_ratelimit {
    _Atomic uint32_t refs;
    _Atomic uint32_t burst;
    _Atomic uint64_t emission_ns; /* T */
    _Atomic uint64_t tau_ns;      /* T * burst, saturated */
    _Atomic uint64_t evictions;
    uint64_t set_mask; /* sets - 1 */
    uint32_t capacity; /* sets * WAYS, 0 for a single bucket */
    struct entry *table;
    /* The single bucket's tat is written by every take of every worker;
     * keep it off the line of the read-mostly fields above (calloc only
     * promises 16-byte alignment, so pad rather than align). */
    char pad[64];
    struct entry single;
};

static uint64_t ceil_ms(uint64_t ns)
{
    return ns / NS_PER_MS + (ns % NS_PER_MS != 0);
}

static uint32_t next_pow2(uint32_t x)
{
    uint32_t p = 1;

    while (p < x)
        p <<= 1;
    return p;
}

void gw_ratelimit_set_params(struct gw_ratelimit *rl, const struct gw_ratelimit_params *p)
{
    uint32_t burst = p->burst;
    double t;
    uint64_t emission;

    assert(p->rate > 0 && burst >= 1);
    if (burst == 0)
        burst = 1;
    /* The only floating point: once per reload, never per take. !(t >= 1)
     * also catches a NaN from a rate that slipped past the loader. */
    t = 1e9 / p->rate;
    if (!(t >= 1.0))
        t = 1.0;
    if (t > (double)EMISSION_MAX_NS)
        t = (double)EMISSION_MAX_NS;
    /* Rounded down: at 7/s, 142857142 ns admits the 70th token of a 10 s
     * hammer at 10 s, 142857143 ns would admit it 10 ns later. */
    emission = (uint64_t)t;
    atomic_store_explicit(&rl->emission_ns, emission, memory_order_relaxed);
    atomic_store_explicit(&rl->tau_ns,
                          emission > TAU_MAX_NS / burst ? TAU_MAX_NS : emission * burst,
                          memory_order_relaxed);
    atomic_store_explicit(&rl->burst, burst, memory_order_relaxed);
}

struct gw_ratelimit *gw_ratelimit_new(const struct gw_ratelimit_params *p, uint32_t max_keys)
{
    struct gw_ratelimit *rl = gw_xcalloc(1, sizeof(*rl));
    uint32_t sets;

    atomic_init(&rl->refs, 1);
    gw_ratelimit_set_params(rl, p);
    if (max_keys > 0) {
        if (max_keys > MAX_KEYS)
            max_keys = MAX_KEYS;
        sets = next_pow2((max_keys + WAYS - 1) / WAYS);
        rl->set_mask = sets - 1;
        rl->capacity = sets * WAYS;
        /* Zeroed memory is a table of empty entries (key 0), which is
         * what the atomics would be initialised to anyway. */
        rl->table = gw_xcalloc(rl->capacity, sizeof(struct entry));
    }
    return rl;
}

struct gw_ratelimit *gw_ratelimit_ref(struct gw_ratelimit *rl)
{
    atomic_fetch_add_explicit(&rl->refs, 1, memory_order_relaxed);
    return rl;
}

void gw_ratelimit_unref(struct gw_ratelimit *rl)
{
    /* acq_rel: the last owner must see every other owner's writes before
     * it frees, as for any refcount. */
    if (rl == NULL || atomic_fetch_sub_explicit(&rl->refs, 1, memory_order_acq_rel) != 1)
        return;
    free(rl->table);
    free(rl);
}

uint32_t gw_ratelimit_capacity(const struct gw_ratelimit *rl)
{
    return rl->capacity;
}

uint64_t gw_ratelimit_evictions(const struct gw_ratelimit *rl)
{
    return atomic_load_explicit(&rl->evictions, memory_order_relaxed);
}

/* The entry holding key in its set, claiming one if the key is not there.
 * Lock-free: a failed claim CAS means another worker changed the set, and
 * the rescan sees what it did. */
static struct entry *lookup(struct gw_ratelimit *rl, uint64_t key, uint64_t now_us, uint64_t now_ns)
{
    struct entry *set = rl->table + (key & rl->set_mask) * WAYS;

    for (;;) {
        uint64_t keys[WAYS], tats[WAYS], lru_last = UINT64_MAX;
        int empty = -1, full = -1, lru = 0, v;

        for (int i = 0; i < WAYS; i++) {
            uint64_t last;

            keys[i] = atomic_load_explicit(&set[i].key, memory_order_relaxed);
            if (keys[i] == key) {
                atomic_store_explicit(&set[i].last_us, now_us, memory_order_relaxed);
                return &set[i];
            }
            if (keys[i] == 0) {
                tats[i] = 0;
                if (empty < 0)
                    empty = i;
                continue;
            }
            tats[i] = atomic_load_explicit(&set[i].tat_ns, memory_order_relaxed);
            if (tats[i] <= now_ns && full < 0)
                full = i;
            last = atomic_load_explicit(&set[i].last_us, memory_order_relaxed);
            if (last < lru_last) {
                lru_last = last;
                lru = i;
            }
        }
        v = empty >= 0 ? empty : full >= 0 ? full : lru;
        if (!atomic_compare_exchange_strong_explicit(&set[v].key, &keys[v], key,
                                                     memory_order_relaxed, memory_order_relaxed))
            continue;
        /* Only the LRU choice can lose state: a full bucket equals a new one. */
        if (keys[v] != 0 && tats[v] > now_ns)
            atomic_fetch_add_explicit(&rl->evictions, 1, memory_order_relaxed);
        atomic_store_explicit(&set[v].tat_ns, 0, memory_order_relaxed);
        atomic_store_explicit(&set[v].last_us, now_us, memory_order_relaxed);
        return &set[v];
    }
}

void gw_ratelimit_take(struct gw_ratelimit *rl, uint64_t key_hash, uint64_t now_us,
                       struct gw_ratelimit_result *out)
{
    uint64_t emission = atomic_load_explicit(&rl->emission_ns, memory_order_relaxed);
    uint64_t tau = atomic_load_explicit(&rl->tau_ns, memory_order_relaxed);
    uint32_t burst = atomic_load_explicit(&rl->burst, memory_order_relaxed);
    uint64_t now = now_us * NS_PER_US, tat, base, new_tat, left;
    _Atomic uint64_t *tatp;

    if (rl->table == NULL) {
        tatp = &rl->single.tat_ns;
    } else {
        /* 0 marks an empty entry, so it cannot be a key. */
        tatp = &lookup(rl, key_hash != 0 ? key_hash : 1, now_us, now)->tat_ns;
    }
    out->limit = burst;
    tat = atomic_load_explicit(tatp, memory_order_relaxed);
    for (;;) {
        base = tat > now ? tat : now;
        new_tat = base + emission;
        if (new_tat - now > tau) {
            /* One token is there once new_tat - now' <= tau. The wait is
             * > 0 ns here, as the test just failed, so at least 1 ms. */
            out->allowed = false;
            out->remaining = 0;
            out->reset_ms = ceil_ms(base - now);
            out->retry_after_ms = ceil_ms(new_tat - now - tau);
            return;
        }
        /* Weak: a spurious failure just goes round once more. */
        if (atomic_compare_exchange_weak_explicit(tatp, &tat, new_tat, memory_order_relaxed,
                                                  memory_order_relaxed))
            break;
    }
    /* tau - (new_tat - now) is the time worth of tokens still in the bucket;
     * the cap only matters when a reload mixed old and new parameters. */
    left = (tau - (new_tat - now)) / emission;
    out->allowed = true;
    out->remaining = left < burst ? (uint32_t)left : burst;
    out->reset_ms = ceil_ms(new_tat - now);
    out->retry_after_ms = 0;
}

/* 64x64 -> 128-bit multiply folded to 64 bits (as in wyhash/foldhash):
 * the xor of the halves brings the high input bits down to the low output
 * bits, which are the ones that pick a set. */
static uint64_t fold_mul(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;

    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static uint64_t read64(const unsigned char *s)
{
    uint64_t w;

    memcpy(&w, s, sizeof(w));
    return w;
}

#define HASH_P0 0xa0761d6478bd642full
#define HASH_P1 0xe7037ed1a0b428dbull
#define HASH_P2 0x8ebc6af09c88c6e3ull
#define HASH_P3 0x589965cc75374cc3ull

uint64_t gw_ratelimit_hash(const void *p, size_t n, uint64_t seed)
{
    const unsigned char *s = p;
    /* Both the starting state and the multiplier come from the seed, so a
     * client who does not know it can neither predict the state nor pick a
     * word that zeroes a product (x ^ h == 0 needs h). The multiplier is
     * odd, hence never 0. */
    uint64_t k = fold_mul(seed ^ HASH_P0, HASH_P1) | 1;
    uint64_t h = fold_mul(seed ^ HASH_P2, HASH_P3);
    size_t len = n;

    for (; n >= 8; s += 8, n -= 8)
        h = fold_mul(h ^ read64(s), k);
    if (n > 0) {
        uint64_t w = 0;

        memcpy(&w, s, n);
        h = fold_mul(h ^ w, k);
    }
    /* The length tells "ab" from "ab\0" (same zero-padded tail word). */
    h = fold_mul(h ^ len ^ HASH_P1, HASH_P3);
    return h != 0 ? h : HASH_P0;
}
