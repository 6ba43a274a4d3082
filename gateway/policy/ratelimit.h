/* Token-bucket rate limiting shared by every worker thread through atomics
 * (no mutex), as GCRA: one 64-bit "theoretical arrival time" per bucket.
 * Either one bucket for a whole route or a fixed-size table of buckets per
 * key (client IP, header value) that never grows: when it is full, a key
 * whose bucket has refilled (or else the least recently used one) makes
 * room. Pure: the caller passes now_us; nothing here reads a clock, logs or
 * does I/O. */
#ifndef GW_POLICY_RATELIMIT_H
#define GW_POLICY_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gw_ratelimit; /* opaque, shared by workers, reference counted */

/* Validated by the config loader; the limits below are asserted. */
struct gw_ratelimit_params {
    double rate;    /* tokens per second, > 0 */
    uint32_t burst; /* bucket size, >= 1 */
};

struct gw_ratelimit_result {
    bool allowed;
    uint32_t limit;          /* = burst */
    uint32_t remaining;      /* whole tokens left after this take (0 when denied) */
    uint64_t reset_ms;       /* ms until the bucket is full again (rounded up) */
    uint64_t retry_after_ms; /* when denied: ms until one token is there (rounded up, >= 1);
                              * 0 when allowed */
};

/* max_keys == 0: one bucket for everyone (the key is ignored). Otherwise a table of 8-way sets,
 * a power of two of them, holding at least max_keys keys (max_keys above 2^31 counts as 2^31);
 * 24 bytes per key it holds, allocated here once. The bucket of a key not seen yet is full.
 * Returns one reference. Aborts when memory runs out. */
struct gw_ratelimit *gw_ratelimit_new(const struct gw_ratelimit_params *p, uint32_t max_keys);
/* Takes another reference and returns rl. Any thread. */
struct gw_ratelimit *gw_ratelimit_ref(struct gw_ratelimit *rl);
/* Drops a reference; frees with the last one. NULL does nothing. Any thread. */
void gw_ratelimit_unref(struct gw_ratelimit *rl);
/* New rate and burst, bucket state kept (config reload): a bucket holds what it held in time
 * owed, so a larger burst admits the difference at once and a smaller one waits until the bucket
 * has drained below it. Safe while other threads take (relaxed stores): for one moment a take
 * may mix the old and the new parameters, each of them valid. */
void gw_ratelimit_set_params(struct gw_ratelimit *rl, const struct gw_ratelimit_params *p);
/* Number of keys the table holds (sets * 8), 0 for a single bucket. Never changes. */
uint32_t gw_ratelimit_capacity(const struct gw_ratelimit *rl);
/* Takes one token from key_hash's bucket at now_us (monotonic microseconds, below 2^63 / 1000)
 * and fills *out. key_hash should come from gw_ratelimit_hash with a random seed (its low bits
 * pick the set); 0 is treated as 1. Over t seconds of continuous demand from a full bucket,
 * exactly burst + floor(rate * t) are allowed. Any thread, lock-free, never allocates. Two
 * workers inserting or evicting in one set at the same moment may cost that key a little
 * accuracy (see ratelimit.c), never memory safety. */
void gw_ratelimit_take(struct gw_ratelimit *rl, uint64_t key_hash, uint64_t now_us,
                       struct gw_ratelimit_result *out);
/* Keys evicted while their bucket was not yet full: they lost state, so a limit was relaxed. A
 * growing count means the table is too small for the traffic. Any thread. */
uint64_t gw_ratelimit_evictions(const struct gw_ratelimit *rl);
/* Keyed 64-bit hash of n bytes at p (p may be NULL when n is 0), never 0. Without the seed a
 * client cannot choose keys that land in one set. */
uint64_t gw_ratelimit_hash(const void *p, size_t n, uint64_t seed);

#endif
