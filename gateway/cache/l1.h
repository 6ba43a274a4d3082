/* A worker's in-process cache (L1): entries by key in a hash table, an LRU
 * list, and a byte cap. One worker uses it, so nothing is locked. An entry
 * is one blob (cache/policy.h) with a reference count: a response being
 * sent from it keeps it alive after it is evicted or replaced.
 *
 * PURGE reaches every worker's L1 through a process-wide table of recent
 * purges (key hash -> when), which a lookup consults. */
#ifndef GW_CACHE_L1_H
#define GW_CACHE_L1_H

#include "cache/policy.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gw_l1_ent {
    struct gw_l1_ent *hnext;         /* hash chain */
    struct gw_l1_ent *lprev, *lnext; /* LRU list, most recent first */
    unsigned refs;                   /* the table's (while linked) and users' */
    bool linked;
    uint64_t stored_mono_ms; /* monotonic ms when inserted (purge check) */
    int64_t local_until_ms;  /* wall clock: dropped from this L1 then (0: at stale_until) */
    size_t size;             /* bytes charged against the cap */
    struct gw_cache_entry e; /* slices into blob */
    char blob[];
};

struct gw_l1 {
    struct gw_l1_ent **tab;
    size_t mask;
    struct gw_l1_ent *lru_head, *lru_tail; /* most and least recently used */
    size_t bytes, cap, count;
    uint64_t evictions;
};

void gw_l1_init(struct gw_l1 *l, size_t cap_bytes);
void gw_l1_free(struct gw_l1 *l);

/* The entry for key (fresh or stale, but not past its stale_until), with a
 * reference the caller gives back with gw_l1_release; NULL when absent,
 * expired or purged since it was stored. */
struct gw_l1_ent *gw_l1_get(struct gw_l1 *l, uint64_t hash, struct gw_slice key, int64_t now_ms,
                            uint64_t mono_ms);

/* A new entry with room for a blob of blob_size bytes and one reference
 * (the caller's). */
struct gw_l1_ent *gw_l1_alloc(size_t blob_size);

/* Adds ent (its e filled in, pointing into its blob), replacing an entry of
 * the same key and evicting the least recently used past the cap. An entry
 * larger than the whole cap is not added. The caller keeps its reference. */
void gw_l1_insert(struct gw_l1 *l, struct gw_l1_ent *ent, uint64_t mono_ms);

void gw_l1_release(struct gw_l1 *l, struct gw_l1_ent *ent);

/* Removes the entry for key; true when there was one. */
bool gw_l1_remove(struct gw_l1 *l, uint64_t hash, struct gw_slice key);

/* Process-wide: records a purge of hash at mono_ms, and asks whether hash
 * was purged at or after since_mono_ms. */
void gw_cache_purge_note(uint64_t hash, uint64_t mono_ms);
bool gw_cache_purged_since(uint64_t hash, uint64_t since_mono_ms);

#endif
