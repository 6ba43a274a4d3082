/* Per-worker counters and histograms, summed at scrape time into
 * Prometheus text (format 0.0.4).
 *
 * Each counter has exactly one writer (its worker thread) and is _Atomic so
 * that the scrape on the main thread reads it without a data race; writes
 * are a relaxed load and store, which is a plain mov on x86. Labelled
 * series (by route, by upstream server) live in "slots": main assigns a
 * slot per name when a config is loaded, before workers see that config,
 * and never reuses it, so counters survive reloads and names map to the
 * same series for the life of the process. */
#ifndef GW_CORE_METRICS_H
#define GW_CORE_METRICS_H

#include "core/buf.h"

#include <stdatomic.h>
#include <stdint.h>

#define GW_METRICS_MAX_WORKERS 256
#define GW_METRICS_MAX_SLOTS 1024
#define GW_METRICS_ROUTE_NONE 0 /* slot of requests that matched no route */
#define GW_METRICS_MAX_LISTENS 256

/* Upper bounds of the request duration histogram, in microseconds. */
#define GW_DURATION_BUCKETS 14
extern const uint64_t gw_duration_bounds_us[GW_DURATION_BUCKETS - 1];

enum gw_outcome {
    GW_OUTCOME_SUCCESS = 0,
    GW_OUTCOME_CONNECT_ERROR,
    GW_OUTCOME_CONNECT_TIMEOUT,
    GW_OUTCOME_RESET,
    GW_OUTCOME_TIMEOUT,
    GW_OUTCOME_BAD_RESPONSE,
    GW_OUTCOME_TLS_ERROR, /* the TLS handshake with the server failed */
    GW_OUTCOME_COUNT,
};

/* Why a request was answered 503 without reaching an upstream server. */
enum gw_reject {
    GW_REJECT_BREAKER_OPEN = 0,
    GW_REJECT_MAX_REQUESTS,
    GW_REJECT_MAX_PENDING,
    GW_REJECT_COUNT,
};

/* A duration histogram: gw_duration_bounds_us buckets, not cumulative. */
struct gw_hist {
    _Atomic uint64_t bucket[GW_DURATION_BUCKETS];
    _Atomic uint64_t sum_us;
};

void gw_hist_add(struct gw_hist *h, uint64_t us);

/* Main thread: 1 when every worker is connected to Redis, 0 when one is
 * not, -1 when none has a Redis to keep. */
int gw_metrics_redis_up(void);

struct gw_worker_stats;
/* Records one Redis write of n commands (gateway_redis_pipeline_depth). */
void gw_metrics_redis_depth(struct gw_worker_stats *ws, unsigned n);

#define GW_DEPTH_BUCKETS 10

/* gateway_cache_requests_total{result} */
enum gw_cache_result {
    GW_CACHE_HIT = 0,
    GW_CACHE_MISS,
    GW_CACHE_BYPASSED,
    GW_CACHE_STALE,
    GW_CACHE_ERROR,
    GW_CACHE_RESULT_COUNT,
};

struct gw_route_stats {
    _Atomic uint64_t status[600];
    _Atomic uint64_t cache[GW_CACHE_RESULT_COUNT];
    _Atomic uint64_t ratelimited;       /* answered 429 */
    _Atomic uint64_t ratelimit_fallback; /* global limit checked locally: Redis unavailable */
    _Atomic uint64_t deadline_exceeded; /* answered 504 (or cut) for the budget */
    struct gw_hist dur;
};

struct gw_server_stats {
    _Atomic uint64_t outcome[GW_OUTCOME_COUNT];
    _Atomic uint64_t connects;    /* new upstream connections opened */
    _Atomic uint64_t reused;      /* requests sent on a pooled connection */
    _Atomic uint64_t stale_retry; /* pooled connection found closed, retried */
    _Atomic uint64_t retries;     /* retries after a failed attempt on this server */
    _Atomic uint64_t tls_handshakes[2]; /* TLS to the server: ok, failed */
    _Atomic uint64_t tls_resumed;       /* of the ok ones, those that resumed a session */
    /* 503s without upstream contact, by reason; rendered per upstream */
    _Atomic uint64_t rejected[GW_REJECT_COUNT];
    struct gw_hist dur;           /* attempt start to response head */
    _Atomic int64_t conns_idle;   /* this worker's pooled connections to the server */
    _Atomic int64_t conns_active; /* and those serving a request (or connecting) */
};

struct gw_worker_stats {
    _Atomic uint64_t accepted;
    _Atomic int64_t active;
    _Atomic int64_t active_by_listen[GW_METRICS_MAX_LISTENS]; /* by gw_listen.slot */
    _Atomic uint64_t cq_overflow;
    _Atomic uint64_t busy_polls[2]; /* found work, ended in a sleep */
    _Atomic uint64_t log_dropped;
    _Atomic uint64_t rejected_conns; /* over max_connections */
    _Atomic uint64_t bytes_in;
    _Atomic uint64_t bytes_out;
    _Atomic uint64_t cache_stored_bytes; /* bytes of entries put in the L1 */
    _Atomic int64_t cache_l1_bytes;      /* gauges of this worker's L1 */
    _Atomic int64_t cache_l1_entries;
    _Atomic uint64_t cache_l1_evictions;
    _Atomic int64_t redis_configured; /* this worker has a Redis connection to keep */
    _Atomic int64_t redis_up;
    _Atomic uint64_t redis_depth[GW_DEPTH_BUCKETS]; /* commands per write: 1, 2, 4 .. 256, more */
    _Atomic uint64_t redis_depth_sum;
    _Atomic uint64_t redis_writes;
    _Atomic uint64_t cache_l2_errors; /* values in Redis that were corrupt or cut short */
    _Atomic uint64_t tls_handshakes[GW_METRICS_MAX_LISTENS][2]; /* by listen slot: ok, failed */
    _Atomic uint64_t tls_resumed[GW_METRICS_MAX_LISTENS];       /* of the ok ones, resumed */
    struct gw_hist tls_hs_dur;
    struct gw_route_stats *routes[GW_METRICS_MAX_SLOTS];
    struct gw_server_stats *servers[GW_METRICS_MAX_SLOTS];
};

static inline void gw_stat_add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline void gw_stat_gauge_add(_Atomic int64_t *g, int64_t n)
{
    atomic_store_explicit(g, atomic_load_explicit(g, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

/* Main thread, once, before workers start. */
void gw_metrics_init(unsigned nworkers);
struct gw_worker_stats *gw_metrics_worker(unsigned worker);

/* Main thread: the slot for a route name / an upstream server, allocating
 * its per-worker storage the first time. Returns the slot, or 0 / the
 * overflow slot when GW_METRICS_MAX_SLOTS names have been seen. */
unsigned gw_metrics_route_slot(const char *route);
unsigned gw_metrics_server_slot(const char *upstream, const char *server);

/* Pooled connections to a server slot, summed over workers (main thread). */
void gw_metrics_server_conns(unsigned slot, int64_t *idle, int64_t *active);

/* Main thread: the slot of a listener address (the listener label of
 * gateway_connections_active), the same for the same address across
 * reloads; GW_METRICS_MAX_LISTENS when the table is full (not counted). */
unsigned gw_metrics_listen_slot(const char *addr);
/* Main thread: the slot an address already has, else GW_METRICS_MAX_LISTENS. */
unsigned gw_metrics_listen_find(const char *addr);
/* Main thread: the slots of the running config's listeners. Others are
 * rendered only while they still have connections. */
void gw_metrics_listeners_live(const unsigned *slots, unsigned n);

/* Records one finished request in a worker's stats. */
void gw_metrics_request(struct gw_worker_stats *ws, unsigned route_slot, int status,
                        uint64_t duration_us);

/* A growable text buffer for the scrape (main thread only). */
struct gw_text {
    char *p;
    size_t len, cap;
};
__attribute__((format(printf, 2, 3))) void gw_text_printf(struct gw_text *t, const char *fmt, ...);
/* v escaped as a Prometheus label value (\\, \" and newlines). */
void gw_text_label(struct gw_text *t, const char *v);
void gw_text_free(struct gw_text *t);

/* Appends every gateway_* family summed over workers. */
void gw_metrics_render(struct gw_text *out);

#endif
