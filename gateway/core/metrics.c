/* Owns the metric registry (slot names) and the per-worker storage. */
#include "core/metrics.h"

#include "core/jobs.h"
#include "core/mem.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const uint64_t gw_duration_bounds_us[GW_DURATION_BUCKETS - 1] = {
    1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000,
    10000000,
};

static const char *const outcome_names[GW_OUTCOME_COUNT] = {
    "success", "connect_error", "connect_timeout", "reset", "timeout", "bad_response", "tls_error",
};

struct server_name {
    char *upstream;
    char *server;
};

static unsigned nworkers;
static struct gw_worker_stats *workers[GW_METRICS_MAX_WORKERS];
static char *route_names[GW_METRICS_MAX_SLOTS];
static unsigned nroutes;
static struct server_name server_names[GW_METRICS_MAX_SLOTS];
static unsigned nservers;

void gw_metrics_init(unsigned n)
{
    nworkers = n;
    for (unsigned i = 0; i < n; i++)
        workers[i] = gw_xcalloc(1, sizeof(struct gw_worker_stats));
    route_names[0] = gw_xstrdup("none");
    for (unsigned i = 0; i < n; i++)
        workers[i]->routes[0] = gw_xcalloc(1, sizeof(struct gw_route_stats));
    nroutes = 1;
}

struct gw_worker_stats *gw_metrics_worker(unsigned worker)
{
    return workers[worker];
}

unsigned gw_metrics_route_slot(const char *route)
{
    for (unsigned i = 0; i < nroutes; i++)
        if (strcmp(route_names[i], route) == 0)
            return i;
    if (nroutes == GW_METRICS_MAX_SLOTS)
        return GW_METRICS_ROUTE_NONE;
    route_names[nroutes] = gw_xstrdup(route);
    for (unsigned i = 0; i < nworkers; i++)
        workers[i]->routes[nroutes] = gw_xcalloc(1, sizeof(struct gw_route_stats));
    return nroutes++;
}

unsigned gw_metrics_server_slot(const char *upstream, const char *server)
{
    for (unsigned i = 0; i < nservers; i++)
        if (strcmp(server_names[i].upstream, upstream) == 0 &&
            strcmp(server_names[i].server, server) == 0)
            return i;
    if (nservers == GW_METRICS_MAX_SLOTS)
        return GW_METRICS_MAX_SLOTS - 1;
    server_names[nservers].upstream = gw_xstrdup(upstream);
    server_names[nservers].server = gw_xstrdup(server);
    for (unsigned i = 0; i < nworkers; i++)
        workers[i]->servers[nservers] = gw_xcalloc(1, sizeof(struct gw_server_stats));
    return nservers++;
}

void gw_metrics_request(struct gw_worker_stats *ws, unsigned route_slot, int status,
                        uint64_t duration_us)
{
    struct gw_route_stats *rs = ws->routes[route_slot];

    if (status >= 100 && status < 600)
        gw_stat_add(&rs->status[status], 1);
    gw_hist_add(&rs->dur, duration_us);
}

static char *listen_names[GW_METRICS_MAX_LISTENS];
static bool listen_live[GW_METRICS_MAX_LISTENS];
static unsigned nlistens;

unsigned gw_metrics_listen_find(const char *addr)
{
    for (unsigned i = 0; i < nlistens; i++)
        if (strcmp(listen_names[i], addr) == 0)
            return i;
    return GW_METRICS_MAX_LISTENS;
}

unsigned gw_metrics_listen_slot(const char *addr)
{
    unsigned i = gw_metrics_listen_find(addr);

    if (i < GW_METRICS_MAX_LISTENS)
        return i;
    if (nlistens == GW_METRICS_MAX_LISTENS)
        return GW_METRICS_MAX_LISTENS;
    listen_names[nlistens] = gw_xstrdup(addr);
    return nlistens++;
}

void gw_metrics_listeners_live(const unsigned *slots, unsigned n)
{
    memset(listen_live, 0, sizeof(listen_live));
    for (unsigned i = 0; i < n; i++)
        if (slots[i] < GW_METRICS_MAX_LISTENS)
            listen_live[slots[i]] = true;
}

void gw_metrics_server_conns(unsigned slot, int64_t *idle, int64_t *active)
{
    *idle = *active = 0;
    if (slot >= nservers)
        return;
    for (unsigned w = 0; w < nworkers; w++) {
        *idle += atomic_load_explicit(&workers[w]->servers[slot]->conns_idle,
                                      memory_order_relaxed);
        *active += atomic_load_explicit(&workers[w]->servers[slot]->conns_active,
                                        memory_order_relaxed);
    }
}

void gw_hist_add(struct gw_hist *h, uint64_t us)
{
    unsigned b = 0;

    while (b < GW_DURATION_BUCKETS - 1 && us > gw_duration_bounds_us[b])
        b++;
    gw_stat_add(&h->bucket[b], 1);
    gw_stat_add(&h->sum_us, us);
}

void gw_text_printf(struct gw_text *t, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        size_t room = t->cap - t->len;
        va_start(ap, fmt);
        int n = vsnprintf(t->p ? t->p + t->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t)n < room) {
            t->len += (size_t)n;
            return;
        }
        t->cap = (t->cap + (size_t)n + 1) * 2;
        t->p = gw_xrealloc(t->p, t->cap);
    }
}

void gw_text_free(struct gw_text *t)
{
    free(t->p);
    t->p = NULL;
    t->len = t->cap = 0;
}

static uint64_t load(_Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* Label values come from config names (restricted charset) and normalised
 * addresses, so they need no escaping; still, never emit a quote or a
 * backslash unescaped. */
void gw_text_label(struct gw_text *t, const char *v)
{
    for (; *v; v++) {
        if (*v == '"' || *v == '\\')
            gw_text_printf(t, "\\%c", *v);
        else if (*v == '\n')
            gw_text_printf(t, "\\n");
        else
            gw_text_printf(t, "%c", *v);
    }
}

#define SUM_WORKERS(expr)                                                                         \
    ({                                                                                            \
        uint64_t s_ = 0;                                                                          \
        for (unsigned w_ = 0; w_ < nworkers; w_++) {                                              \
            struct gw_worker_stats *ws = workers[w_];                                             \
            s_ += (expr);                                                                         \
        }                                                                                         \
        s_;                                                                                       \
    })

/* Copies v into dst, escaped for a label value, then tail; truncates. */
static void label_into(char *dst, size_t cap, const char *v, const char *tail)
{
    size_t n = 0;

    for (; *v && n + 3 < cap; v++) {
        if (*v == '"' || *v == '\\')
            dst[n++] = '\\';
        dst[n++] = *v == '\n' ? 'n' : *v;
    }
    for (; *tail && n + 1 < cap; tail++)
        dst[n++] = *tail;
    dst[n] = '\0';
}

/* One histogram series summed over workers: the struct gw_hist at offset
 * hist_off inside the stats object that ws->(array at arr_off)[slot] points
 * to. Series without a sample are left out. */
/* A histogram's lines from bucket counts summed over workers; labels may
 * be empty. Nothing when it counted nothing. */
static void render_hist_sums(struct gw_text *out, const char *name, const char *labels,
                             const uint64_t *sums, uint64_t sum_us)
{
    uint64_t total = 0;
    const char *sep = labels[0] ? "," : "";

    for (unsigned b = 0; b < GW_DURATION_BUCKETS; b++)
        total += sums[b];
    if (total == 0)
        return;
    total = 0;
    for (unsigned b = 0; b < GW_DURATION_BUCKETS; b++) {
        total += sums[b];
        if (b < GW_DURATION_BUCKETS - 1)
            gw_text_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep,
                           (double)gw_duration_bounds_us[b] / 1e6, (unsigned long long)total);
        else
            gw_text_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                           (unsigned long long)total);
    }
    if (labels[0]) {
        gw_text_printf(out, "%s_sum{%s} %.6f\n", name, labels, (double)sum_us / 1e6);
        gw_text_printf(out, "%s_count{%s} %llu\n", name, labels, (unsigned long long)total);
    } else {
        gw_text_printf(out, "%s_sum %.6f\n", name, (double)sum_us / 1e6);
        gw_text_printf(out, "%s_count %llu\n", name, (unsigned long long)total);
    }
}

static void render_hist(struct gw_text *out, const char *name, const char *labels, size_t arr_off,
                        unsigned slot, size_t hist_off)
{
    uint64_t sums[GW_DURATION_BUCKETS] = {0}, sum_us = 0;

    for (unsigned w = 0; w < nworkers; w++) {
        void *obj = ((void **)((char *)workers[w] + arr_off))[slot];
        struct gw_hist *h = (struct gw_hist *)((char *)obj + hist_off);
        for (unsigned b = 0; b < GW_DURATION_BUCKETS; b++)
            sums[b] += load(&h->bucket[b]);
        sum_us += load(&h->sum_us);
    }
    render_hist_sums(out, name, labels, sums, sum_us);
}

static void render_tls(struct gw_text *out)
{
    uint64_t sums[GW_DURATION_BUCKETS] = {0}, sum_us = 0;
    static const char *const results[2] = {"success", "failure"};

    gw_text_printf(out, "# HELP gateway_tls_handshakes_total TLS handshakes, by listener and "
                        "result.\n# TYPE gateway_tls_handshakes_total counter\n");
    for (unsigned l = 0; l < nlistens; l++) {
        for (unsigned k = 0; k < 2; k++) {
            uint64_t v = SUM_WORKERS(load(&ws->tls_handshakes[l][k]));
            if (v == 0)
                continue;
            gw_text_printf(out, "gateway_tls_handshakes_total{listener=\"");
            gw_text_label(out, listen_names[l]);
            gw_text_printf(out, "\",result=\"%s\"} %llu\n", results[k], (unsigned long long)v);
        }
    }
    gw_text_printf(out, "# HELP gateway_tls_resumed_total Successful TLS handshakes that "
                        "resumed a session (a ticket), by listener.\n"
                        "# TYPE gateway_tls_resumed_total counter\n");
    for (unsigned l = 0; l < nlistens; l++) {
        uint64_t v = SUM_WORKERS(load(&ws->tls_resumed[l]));
        if (v == 0 && SUM_WORKERS(load(&ws->tls_handshakes[l][0])) == 0)
            continue;
        gw_text_printf(out, "gateway_tls_resumed_total{listener=\"");
        gw_text_label(out, listen_names[l]);
        gw_text_printf(out, "\"} %llu\n", (unsigned long long)v);
    }
    gw_text_printf(out, "# HELP gateway_tls_handshake_duration_seconds From the first byte of a "
                        "TLS connection to its finished handshake.\n"
                        "# TYPE gateway_tls_handshake_duration_seconds histogram\n");
    for (unsigned w = 0; w < nworkers; w++) {
        for (unsigned b = 0; b < GW_DURATION_BUCKETS; b++)
            sums[b] += load(&workers[w]->tls_hs_dur.bucket[b]);
        sum_us += load(&workers[w]->tls_hs_dur.sum_us);
    }
    render_hist_sums(out, "gateway_tls_handshake_duration_seconds", "", sums, sum_us);
}

static void render_requests(struct gw_text *out)
{
    gw_text_printf(out, "# HELP gateway_requests_total Requests answered, by route and status "
                        "code.\n# TYPE gateway_requests_total counter\n");
    for (unsigned r = 0; r < nroutes; r++) {
        for (int code = 100; code < 600; code++) {
            uint64_t v = SUM_WORKERS(load(&ws->routes[r]->status[code]));
            if (v == 0)
                continue;
            gw_text_printf(out, "gateway_requests_total{route=\"");
            gw_text_label(out, route_names[r]);
            gw_text_printf(out, "\",code=\"%d\"} %llu\n", code, (unsigned long long)v);
        }
    }

    gw_text_printf(out, "# HELP gateway_request_duration_seconds Time from the request head to "
                        "the last response byte, by route.\n"
                        "# TYPE gateway_request_duration_seconds histogram\n");
    for (unsigned r = 0; r < nroutes; r++) {
        char labels[160];
        int n = snprintf(labels, sizeof(labels), "route=\"");
        label_into(labels + n, sizeof(labels) - (size_t)n, route_names[r], "\"");
        render_hist(out, "gateway_request_duration_seconds", labels,
                    offsetof(struct gw_worker_stats, routes), r,
                    offsetof(struct gw_route_stats, dur));
    }
}

static void render_route_counter(struct gw_text *out, const char *name, const char *help,
                                 size_t field)
{
    gw_text_printf(out, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
    for (unsigned r = 1; r < nroutes; r++) {
        uint64_t v = SUM_WORKERS(
            load((_Atomic uint64_t *)((char *)ws->routes[r] + field)));
        gw_text_printf(out, "%s{route=\"", name);
        gw_text_label(out, route_names[r]);
        gw_text_printf(out, "\"} %llu\n", (unsigned long long)v);
    }
}

static const char *const reject_names[GW_REJECT_COUNT] = {"breaker_open", "max_requests",
                                                          "max_pending"};

/* Is slot s the first server slot of its upstream? Families labelled by
 * upstream alone print one series there. */
static bool first_of_upstream(unsigned s)
{
    for (unsigned t = 0; t < s; t++)
        if (strcmp(server_names[t].upstream, server_names[s].upstream) == 0)
            return false;
    return true;
}

/* Families labelled by upstream alone: the sum over its servers' slots. */
static void render_upstreams(struct gw_text *out)
{
    gw_text_printf(out, "# HELP gateway_upstream_retries_total Requests retried after a failed "
                        "attempt, by upstream.\n# TYPE gateway_upstream_retries_total counter\n");
    for (unsigned s = 0; s < nservers; s++) {
        uint64_t v = 0;
        if (!first_of_upstream(s))
            continue;
        for (unsigned t = s; t < nservers; t++)
            if (strcmp(server_names[t].upstream, server_names[s].upstream) == 0)
                v += SUM_WORKERS(load(&ws->servers[t]->retries));
        gw_text_printf(out, "gateway_upstream_retries_total{upstream=\"");
        gw_text_label(out, server_names[s].upstream);
        gw_text_printf(out, "\"} %llu\n", (unsigned long long)v);
    }
    gw_text_printf(out, "# HELP gateway_upstream_rejected_total Requests answered 503 without "
                        "contacting the upstream, by reason.\n"
                        "# TYPE gateway_upstream_rejected_total counter\n");
    for (unsigned s = 0; s < nservers; s++) {
        if (!first_of_upstream(s))
            continue;
        for (unsigned k = 0; k < GW_REJECT_COUNT; k++) {
            uint64_t v = 0;
            for (unsigned t = s; t < nservers; t++)
                if (strcmp(server_names[t].upstream, server_names[s].upstream) == 0)
                    v += SUM_WORKERS(load(&ws->servers[t]->rejected[k]));
            gw_text_printf(out, "gateway_upstream_rejected_total{upstream=\"");
            gw_text_label(out, server_names[s].upstream);
            gw_text_printf(out, "\",reason=\"%s\"} %llu\n", reject_names[k],
                           (unsigned long long)v);
        }
    }
}

static void server_labels(struct gw_text *out, unsigned s)
{
    gw_text_printf(out, "{upstream=\"");
    gw_text_label(out, server_names[s].upstream);
    gw_text_printf(out, "\",server=\"");
    gw_text_label(out, server_names[s].server);
    gw_text_printf(out, "\"");
}

static void render_servers(struct gw_text *out)
{
    gw_text_printf(out, "# HELP gateway_upstream_requests_total Requests sent to upstream "
                        "servers, by outcome.\n# TYPE gateway_upstream_requests_total counter\n");
    for (unsigned s = 0; s < nservers; s++) {
        for (unsigned o = 0; o < GW_OUTCOME_COUNT; o++) {
            uint64_t v = SUM_WORKERS(load(&ws->servers[s]->outcome[o]));
            if (v == 0 && o != GW_OUTCOME_SUCCESS)
                continue;
            gw_text_printf(out, "gateway_upstream_requests_total");
            server_labels(out, s);
            gw_text_printf(out, ",outcome=\"%s\"} %llu\n", outcome_names[o],
                           (unsigned long long)v);
        }
    }
    gw_text_printf(out, "# HELP gateway_upstream_connects_total New connections opened to "
                        "upstream servers.\n# TYPE gateway_upstream_connects_total counter\n");
    for (unsigned s = 0; s < nservers; s++) {
        gw_text_printf(out, "gateway_upstream_connects_total");
        server_labels(out, s);
        gw_text_printf(out, "} %llu\n",
                       (unsigned long long)SUM_WORKERS(load(&ws->servers[s]->connects)));
    }
    gw_text_printf(out, "# HELP gateway_upstream_tls_handshakes_total TLS handshakes with "
                        "upstream servers, by result.\n"
                        "# TYPE gateway_upstream_tls_handshakes_total counter\n");
    for (unsigned s = 0; s < nservers; s++) {
        for (unsigned k = 0; k < 2; k++) {
            uint64_t v = SUM_WORKERS(load(&ws->servers[s]->tls_handshakes[k]));
            if (v == 0)
                continue;
            gw_text_printf(out, "gateway_upstream_tls_handshakes_total");
            server_labels(out, s);
            gw_text_printf(out, ",result=\"%s\"} %llu\n", k ? "failed" : "ok",
                           (unsigned long long)v);
        }
    }
    gw_text_printf(out, "# HELP gateway_upstream_tls_resumed_total TLS handshakes with "
                        "upstream servers that resumed the pool's session.\n"
                        "# TYPE gateway_upstream_tls_resumed_total counter\n");
    for (unsigned s = 0; s < nservers; s++) {
        uint64_t v = SUM_WORKERS(load(&ws->servers[s]->tls_resumed));
        if (v == 0 && SUM_WORKERS(load(&ws->servers[s]->tls_handshakes[0])) == 0)
            continue;
        gw_text_printf(out, "gateway_upstream_tls_resumed_total");
        server_labels(out, s);
        gw_text_printf(out, "} %llu\n", (unsigned long long)v);
    }
    gw_text_printf(out, "# HELP gateway_upstream_reused_total Requests sent on a pooled "
                        "keep-alive connection.\n# TYPE gateway_upstream_reused_total counter\n");
    for (unsigned s = 0; s < nservers; s++) {
        gw_text_printf(out, "gateway_upstream_reused_total");
        server_labels(out, s);
        gw_text_printf(out, "} %llu\n",
                       (unsigned long long)SUM_WORKERS(load(&ws->servers[s]->reused)));
    }
    gw_text_printf(out, "# HELP gateway_upstream_stale_retries_total Requests retried on a fresh "
                        "connection because a pooled one had been closed by the server.\n"
                        "# TYPE gateway_upstream_stale_retries_total counter\n");
    for (unsigned s = 0; s < nservers; s++) {
        gw_text_printf(out, "gateway_upstream_stale_retries_total");
        server_labels(out, s);
        gw_text_printf(out, "} %llu\n",
                       (unsigned long long)SUM_WORKERS(load(&ws->servers[s]->stale_retry)));
    }
    gw_text_printf(out, "# HELP gateway_upstream_request_duration_seconds Time from the start "
                        "of an attempt (connect or pooled connection) to the response head.\n"
                        "# TYPE gateway_upstream_request_duration_seconds histogram\n");
    for (unsigned s = 0; s < nservers; s++) {
        char labels[256];
        int n = snprintf(labels, sizeof(labels), "upstream=\"");
        label_into(labels + n, sizeof(labels) - (size_t)n, server_names[s].upstream, "");
        n = (int)strlen(labels);
        n += snprintf(labels + n, sizeof(labels) - (size_t)n, "\",server=\"");
        label_into(labels + n, sizeof(labels) - (size_t)n, server_names[s].server, "\"");
        render_hist(out, "gateway_upstream_request_duration_seconds", labels,
                    offsetof(struct gw_worker_stats, servers), s,
                    offsetof(struct gw_server_stats, dur));
    }
    gw_text_printf(out, "# HELP gateway_upstream_connections Connections to upstream servers, "
                        "idle in the keep-alive pools or active.\n"
                        "# TYPE gateway_upstream_connections gauge\n");
    for (unsigned s = 0; s < nservers; s++) {
        int64_t idle = 0, active = 0;
        for (unsigned w = 0; w < nworkers; w++) {
            idle += atomic_load_explicit(&workers[w]->servers[s]->conns_idle,
                                         memory_order_relaxed);
            active += atomic_load_explicit(&workers[w]->servers[s]->conns_active,
                                           memory_order_relaxed);
        }
        gw_text_printf(out, "gateway_upstream_connections");
        server_labels(out, s);
        gw_text_printf(out, ",state=\"idle\"} %lld\n", (long long)idle);
        gw_text_printf(out, "gateway_upstream_connections");
        server_labels(out, s);
        gw_text_printf(out, ",state=\"active\"} %lld\n", (long long)active);
    }
}

static void render_counter(struct gw_text *out, const char *name, const char *help,
                           uint64_t v)
{
    gw_text_printf(out, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
                   (unsigned long long)v);
}

void gw_metrics_redis_depth(struct gw_worker_stats *ws, unsigned n)
{
    unsigned b = 0;

    while (b < GW_DEPTH_BUCKETS - 1 && n > (1u << b))
        b++;
    gw_stat_add(&ws->redis_depth[b], 1);
    gw_stat_add(&ws->redis_depth_sum, n);
    gw_stat_add(&ws->redis_writes, 1);
}

int gw_metrics_redis_up(void)
{
    uint64_t configured = SUM_WORKERS((uint64_t)atomic_load_explicit(&ws->redis_configured,
                                                                     memory_order_relaxed));
    uint64_t up = SUM_WORKERS((uint64_t)atomic_load_explicit(&ws->redis_up,
                                                             memory_order_relaxed));
    return configured == 0 ? -1 : up == configured;
}

static void render_redis(struct gw_text *out)
{
    uint64_t configured = SUM_WORKERS((uint64_t)atomic_load_explicit(&ws->redis_configured,
                                                                     memory_order_relaxed));
    uint64_t up = SUM_WORKERS((uint64_t)atomic_load_explicit(&ws->redis_up,
                                                             memory_order_relaxed));
    uint64_t cum = 0;

    if (configured == 0)
        return;
    gw_text_printf(out, "# HELP gateway_redis_up 1 when every worker is connected to Redis.\n"
                        "# TYPE gateway_redis_up gauge\ngateway_redis_up %d\n",
                   up == configured ? 1 : 0);
    gw_text_printf(out, "# HELP gateway_redis_pipeline_depth Redis commands sent per write.\n"
                        "# TYPE gateway_redis_pipeline_depth histogram\n");
    for (unsigned b = 0; b < GW_DEPTH_BUCKETS; b++) {
        cum += SUM_WORKERS(load(&ws->redis_depth[b]));
        if (b < GW_DEPTH_BUCKETS - 1)
            gw_text_printf(out, "gateway_redis_pipeline_depth_bucket{le=\"%u\"} %llu\n", 1u << b,
                           (unsigned long long)cum);
        else
            gw_text_printf(out, "gateway_redis_pipeline_depth_bucket{le=\"+Inf\"} %llu\n",
                           (unsigned long long)cum);
    }
    gw_text_printf(out, "gateway_redis_pipeline_depth_sum %llu\ngateway_redis_pipeline_depth_count "
                        "%llu\n",
                   (unsigned long long)SUM_WORKERS(load(&ws->redis_depth_sum)),
                   (unsigned long long)SUM_WORKERS(load(&ws->redis_writes)));
    render_counter(out, "gateway_cache_l2_errors_total",
                   "Values read from Redis that were corrupt or cut short (served as misses).",
                   SUM_WORKERS(load(&ws->cache_l2_errors)));
}

static void render_cache(struct gw_text *out)
{
    static const char *const results[GW_CACHE_RESULT_COUNT] = {"hit", "miss", "bypass",
                                                               "stale", "error"};

    gw_text_printf(out, "# HELP gateway_cache_requests_total Requests to routes with a cache, by "
                        "what the cache did: hit, miss, bypass (not cacheable), stale (served "
                        "stale on an upstream error), error.\n"
                        "# TYPE gateway_cache_requests_total counter\n");
    for (unsigned r = 1; r < nroutes; r++) {
        for (unsigned k = 0; k < GW_CACHE_RESULT_COUNT; k++) {
            uint64_t v = SUM_WORKERS(load(&ws->routes[r]->cache[k]));
            if (v == 0)
                continue;
            gw_text_printf(out, "gateway_cache_requests_total{route=\"");
            gw_text_label(out, route_names[r]);
            gw_text_printf(out, "\",result=\"%s\"} %llu\n", results[k], (unsigned long long)v);
        }
    }
    render_counter(out, "gateway_cache_bytes_stored_total",
                   "Bytes of responses stored in the in-process cache.",
                   SUM_WORKERS(load(&ws->cache_stored_bytes)));
    render_counter(out, "gateway_cache_l1_evictions_total",
                   "Entries the in-process cache dropped to stay within l1_bytes.",
                   SUM_WORKERS(load(&ws->cache_l1_evictions)));
    gw_text_printf(out, "# HELP gateway_cache_l1_bytes Bytes held by the in-process cache, all "
                        "workers.\n# TYPE gateway_cache_l1_bytes gauge\ngateway_cache_l1_bytes "
                        "%lld\n",
                   (long long)SUM_WORKERS((uint64_t)atomic_load_explicit(
                       &ws->cache_l1_bytes, memory_order_relaxed)));
    gw_text_printf(out, "# HELP gateway_cache_l1_entries Entries in the in-process cache, all "
                        "workers.\n# TYPE gateway_cache_l1_entries gauge\n"
                        "gateway_cache_l1_entries %lld\n",
                   (long long)SUM_WORKERS((uint64_t)atomic_load_explicit(
                       &ws->cache_l1_entries, memory_order_relaxed)));
}

void gw_metrics_render(struct gw_text *out)
{
    render_requests(out);
    render_route_counter(out, "gateway_ratelimit_rejected_total",
                         "Requests answered 429 by the route's rate limit.",
                         offsetof(struct gw_route_stats, ratelimited));
    render_route_counter(out, "gateway_ratelimit_fallback_total",
                         "Requests of a global rate limit checked against the local bucket "
                         "because Redis was unavailable.",
                         offsetof(struct gw_route_stats, ratelimit_fallback));
    render_route_counter(out, "gateway_deadline_exceeded_total",
                         "Requests whose time budget ran out (504, or cut mid-response).",
                         offsetof(struct gw_route_stats, deadline_exceeded));
    render_cache(out);
    render_redis(out);
    render_tls(out);
    render_servers(out);
    render_upstreams(out);
    gw_text_printf(out, "# HELP gateway_connections_active Client connections open now, by the "
                        "listener that accepted them.\n"
                        "# TYPE gateway_connections_active gauge\n");
    for (unsigned l = 0; l < nlistens; l++) {
        int64_t active = 0;
        for (unsigned w = 0; w < nworkers; w++)
            active += atomic_load_explicit(&workers[w]->active_by_listen[l], memory_order_relaxed);
        /* A listener removed by a reload stays while its connections do. */
        if (!listen_live[l] && active == 0)
            continue;
        gw_text_printf(out, "gateway_connections_active{listener=\"");
        gw_text_label(out, listen_names[l]);
        gw_text_printf(out, "\"} %lld\n", (long long)active);
    }
    render_counter(out, "gateway_connections_accepted_total", "Client connections accepted.",
                   SUM_WORKERS(load(&ws->accepted)));
    render_counter(out, "gateway_connections_rejected_total",
                   "Client connections closed at once because max_connections was reached.",
                   SUM_WORKERS(load(&ws->rejected_conns)));
    render_counter(out, "gateway_bytes_received_total", "Bytes received from clients.",
                   SUM_WORKERS(load(&ws->bytes_in)));
    render_counter(out, "gateway_bytes_sent_total", "Bytes sent to clients.",
                   SUM_WORKERS(load(&ws->bytes_out)));
    render_counter(out, "gateway_ring_cq_overflow_total",
                   "Times a worker's completion queue overflowed into the kernel backlog.",
                   SUM_WORKERS(load(&ws->cq_overflow)));
    gw_text_printf(out, "# HELP gateway_ring_busy_polls_total Spins of a busy worker before a "
                        "sleep (busy_poll_us), by whether work arrived during the spin.\n"
                        "# TYPE gateway_ring_busy_polls_total counter\n");
    for (int k = 0; k < 2; k++)
        gw_text_printf(out, "gateway_ring_busy_polls_total{result=\"%s\"} %llu\n",
                       k == 0 ? "work" : "sleep",
                       (unsigned long long)SUM_WORKERS(load(&ws->busy_polls[k])));
    {
        struct gw_jobs_stats js;
        gw_jobs_stats(&js);
        gw_text_printf(out, "# HELP gateway_tls_helpers Helper threads for the slow steps of "
                            "full TLS handshakes (tls_helpers).\n"
                            "# TYPE gateway_tls_helpers gauge\n"
                            "gateway_tls_helpers %u\n"
                            "# HELP gateway_tls_helper_queue Slow handshake steps waiting for a "
                            "helper now.\n"
                            "# TYPE gateway_tls_helper_queue gauge\n"
                            "gateway_tls_helper_queue %u\n",
                       js.helpers, js.waiting);
        render_counter(out, "gateway_tls_helper_steps_total",
                       "Slow handshake steps that a helper has taken.", js.taken);
        gw_text_printf(out, "# HELP gateway_tls_helper_wait_seconds_total Time those steps "
                            "waited for a helper, summed.\n"
                            "# TYPE gateway_tls_helper_wait_seconds_total counter\n"
                            "gateway_tls_helper_wait_seconds_total %.6f\n",
                       (double)js.wait_us / 1e6);
    }
    render_counter(out, "gateway_access_log_dropped_total",
                   "Access-log lines dropped because stdout could not keep up.",
                   SUM_WORKERS(load(&ws->log_dropped)));
}
