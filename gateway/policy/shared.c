/* Owns the binding of shared policy state to config snapshots, and its
 * reference counts: each snapshot holds one reference on every state
 * object it points at, so a request in flight on an old snapshot keeps
 * using valid state, and state nobody lists any more is freed with the
 * last snapshot that did. */
#include "policy/shared.h"

#include "core/mem.h"
#include "policy/breaker.h"
#include "policy/ratelimit.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static struct gw_breaker_params breaker_params(const struct gw_breaker_conf *b)
{
    struct gw_breaker_params p = {0};

    if (!b->enabled) {
        /* Never opens: keeps the object valid while the upstream has no
         * breaker block, so enabling it by a reload needs no new object. */
        p.window_ms = 10000;
        p.min_requests = 1;
        p.open_ms = 1;
        p.half_open_requests = 1;
        return p;
    }
    p.failures = b->failures;
    p.error_rate = b->error_rate;
    p.window_ms = b->window_ms;
    p.min_requests = b->min_requests;
    p.open_ms = b->open_ms;
    p.half_open_requests = b->half_open_requests;
    return p;
}

static const struct gw_server *find_server(const struct gw_config *prev, const struct gw_server *s)
{
    if (prev == NULL)
        return NULL;
    for (size_t i = 0; i < prev->nservers; i++) {
        const struct gw_server *o = &prev->servers[i];
        if (o->shared != NULL && strcmp(o->upstream->name, s->upstream->name) == 0 &&
            strcmp(o->addr.text, s->addr.text) == 0)
            return o;
    }
    return NULL;
}

static const struct gw_route *find_route(const struct gw_config *prev, const struct gw_route *r)
{
    if (prev == NULL)
        return NULL;
    for (size_t i = 0; i < prev->nroutes; i++)
        if (strcmp(prev->routes[i].name, r->name) == 0)
            return &prev->routes[i];
    return NULL;
}

static void on_config_free(struct gw_config *cfg)
{
    for (size_t i = 0; i < cfg->nroutes; i++)
        gw_ratelimit_unref(cfg->routes[i].rl);
    for (size_t i = 0; i < cfg->nservers; i++) {
        struct gw_server_shared *sh = cfg->servers[i].shared;
        if (sh == NULL || atomic_fetch_sub_explicit(&sh->refs, 1, memory_order_acq_rel) != 1)
            continue;
        gw_breaker_unref(sh->breaker);
        free(sh);
    }
}

void gw_policy_bind(struct gw_config *cfg, const struct gw_config *prev)
{
    /* set by the first load, before any worker runs: a reload only reads
     * it, where writing it again raced with the workers' reads */
    if (gw_config_on_free == NULL)
        gw_config_on_free = on_config_free;
    for (size_t i = 0; i < cfg->nservers; i++) {
        struct gw_server *s = &cfg->servers[i];
        const struct gw_server *o = find_server(prev, s);
        struct gw_breaker_params bp = breaker_params(&s->upstream->breaker);

        if (o != NULL) {
            s->shared = o->shared;
            atomic_fetch_add_explicit(&s->shared->refs, 1, memory_order_relaxed);
            gw_breaker_set_params(s->shared->breaker, &bp);
            continue;
        }
        s->shared = gw_xcalloc(1, sizeof(*s->shared));
        atomic_init(&s->shared->refs, 1);
        s->shared->breaker = gw_breaker_new(&bp);
    }
    for (size_t i = 0; i < cfg->nroutes; i++) {
        struct gw_route *r = &cfg->routes[i];
        const struct gw_route *o = find_route(prev, r);
        struct gw_ratelimit_params rp = {r->rate_limit.rate, r->rate_limit.burst};
        uint32_t keys = r->rate_limit.key == GW_RL_KEY_ROUTE ? 0 : r->rate_limit.max_keys;

        if (!r->rate_limit.enabled)
            continue;
        /* Same kind of key and table size: keep the buckets. */
        if (o != NULL && o->rl != NULL && o->rate_limit.key == r->rate_limit.key &&
            o->rate_limit.max_keys == r->rate_limit.max_keys &&
            (o->rate_limit.key != GW_RL_KEY_HEADER ||
             strcmp(o->rate_limit.header, r->rate_limit.header) == 0)) {
            r->rl = gw_ratelimit_ref(o->rl);
            gw_ratelimit_set_params(r->rl, &rp);
            continue;
        }
        r->rl = gw_ratelimit_new(&rp, keys);
    }
}

static _Atomic uint64_t seed;

uint64_t gw_policy_seed(void)
{
    uint64_t s = atomic_load_explicit(&seed, memory_order_relaxed), fresh = 0, zero = 0;

    if (s != 0)
        return s;
    if (getrandom(&fresh, sizeof(fresh), GRND_NONBLOCK) != (ssize_t)sizeof(fresh))
        fresh = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)&seed;
    fresh |= 1;
    /* The first thread to get here decides for all. */
    if (!atomic_compare_exchange_strong(&seed, &zero, fresh))
        return zero;
    return fresh;
}
