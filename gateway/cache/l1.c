/* Owns the per-worker L1 store and the process-wide purge table. */
#include "cache/l1.h"

#include "core/mem.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define PURGE_SLOTS 65536
#define PURGE_TIME_BITS 40
#define PURGE_TIME_MASK ((1ull << PURGE_TIME_BITS) - 1)

/* tag (high bits of the key hash) | purge time (low bits); 0 = none */
static _Atomic uint64_t purges[PURGE_SLOTS];

void gw_cache_purge_note(uint64_t hash, uint64_t mono_ms)
{
    uint64_t v = (hash & ~PURGE_TIME_MASK) | ((mono_ms + 1) & PURGE_TIME_MASK);
    atomic_store_explicit(&purges[hash % PURGE_SLOTS], v, memory_order_release);
}

bool gw_cache_purged_since(uint64_t hash, uint64_t since_mono_ms)
{
    uint64_t v = atomic_load_explicit(&purges[hash % PURGE_SLOTS], memory_order_acquire);

    return v != 0 && (v & ~PURGE_TIME_MASK) == (hash & ~PURGE_TIME_MASK) &&
           (v & PURGE_TIME_MASK) >= ((since_mono_ms + 1) & PURGE_TIME_MASK);
}

void gw_l1_init(struct gw_l1 *l, size_t cap_bytes)
{
    size_t buckets = 1024;

    memset(l, 0, sizeof(*l));
    /* about one bucket per 4 KiB of cap, so chains stay short */
    while (buckets < cap_bytes / 4096 && buckets < (1u << 24))
        buckets <<= 1;
    l->tab = gw_xcalloc(buckets, sizeof(*l->tab));
    l->mask = buckets - 1;
    l->cap = cap_bytes;
}

static void lru_unlink(struct gw_l1 *l, struct gw_l1_ent *e)
{
    if (e->lprev != NULL)
        e->lprev->lnext = e->lnext;
    else
        l->lru_head = e->lnext;
    if (e->lnext != NULL)
        e->lnext->lprev = e->lprev;
    else
        l->lru_tail = e->lprev;
    e->lprev = e->lnext = NULL;
}

static void lru_push(struct gw_l1 *l, struct gw_l1_ent *e)
{
    e->lprev = NULL;
    e->lnext = l->lru_head;
    if (l->lru_head != NULL)
        l->lru_head->lprev = e;
    else
        l->lru_tail = e;
    l->lru_head = e;
}

/* Takes e out of the table and the list and drops the table's reference. */
static void unlink_ent(struct gw_l1 *l, struct gw_l1_ent *e)
{
    struct gw_l1_ent **pp = &l->tab[e->e.key_hash & l->mask];

    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    e->hnext = NULL;
    lru_unlink(l, e);
    e->linked = false;
    l->bytes -= e->size;
    l->count--;
    gw_l1_release(l, e);
}

void gw_l1_free(struct gw_l1 *l)
{
    while (l->lru_head != NULL)
        unlink_ent(l, l->lru_head);
    free(l->tab);
    l->tab = NULL;
}

static struct gw_l1_ent *find(struct gw_l1 *l, uint64_t hash, struct gw_slice key)
{
    for (struct gw_l1_ent *e = l->tab[hash & l->mask]; e != NULL; e = e->hnext)
        if (e->e.key_hash == hash && e->e.key.len == key.len &&
            memcmp(e->e.key.ptr, key.ptr, key.len) == 0)
            return e;
    return NULL;
}

struct gw_l1_ent *gw_l1_get(struct gw_l1 *l, uint64_t hash, struct gw_slice key, int64_t now_ms,
                            uint64_t mono_ms)
{
    struct gw_l1_ent *e = find(l, hash, key);

    (void)mono_ms;
    if (e == NULL)
        return NULL;
    if (now_ms >= e->e.stale_until_ms || (e->local_until_ms != 0 && now_ms >= e->local_until_ms) ||
        gw_cache_purged_since(hash, e->stored_mono_ms)) {
        unlink_ent(l, e);
        return NULL;
    }
    lru_unlink(l, e);
    lru_push(l, e);
    e->refs++;
    return e;
}

struct gw_l1_ent *gw_l1_alloc(size_t blob_size)
{
    struct gw_l1_ent *e = gw_xmalloc(sizeof(*e) + blob_size);

    memset(e, 0, sizeof(*e));
    e->refs = 1;
    e->size = sizeof(*e) + blob_size;
    return e;
}

void gw_l1_insert(struct gw_l1 *l, struct gw_l1_ent *ent, uint64_t mono_ms)
{
    struct gw_l1_ent *old;

    if (ent->size > l->cap || ent->linked)
        return;
    old = find(l, ent->e.key_hash, ent->e.key);
    if (old != NULL)
        unlink_ent(l, old);
    while (l->bytes + ent->size > l->cap && l->lru_tail != NULL) {
        unlink_ent(l, l->lru_tail);
        l->evictions++;
    }
    ent->stored_mono_ms = mono_ms;
    ent->hnext = l->tab[ent->e.key_hash & l->mask];
    l->tab[ent->e.key_hash & l->mask] = ent;
    lru_push(l, ent);
    ent->linked = true;
    ent->refs++;
    l->bytes += ent->size;
    l->count++;
}

void gw_l1_release(struct gw_l1 *l, struct gw_l1_ent *ent)
{
    (void)l;
    if (--ent->refs == 0)
        free(ent);
}

bool gw_l1_remove(struct gw_l1 *l, uint64_t hash, struct gw_slice key)
{
    struct gw_l1_ent *e = find(l, hash, key);

    if (e == NULL)
        return false;
    unlink_ent(l, e);
    return true;
}
