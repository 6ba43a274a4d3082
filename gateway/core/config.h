/* The configuration snapshot: parsed from one libconfig file, validated
 * completely, then immutable and shared by every worker through a reference
 * count. A reload builds a new snapshot; the old one lives until its last
 * user lets go. */
#ifndef GW_CORE_CONFIG_H
#define GW_CORE_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

struct gw_ratelimit;
struct gw_server_shared;

enum gw_balance {
    GW_BALANCE_ROUND_ROBIN = 0,
    GW_BALANCE_LEAST_CONN,
};

enum gw_host_match {
    GW_HOST_ANY = 0, /* "*" */
    GW_HOST_EXACT,   /* "api.example.com" (stored lower-case) */
    GW_HOST_SUFFIX,  /* "*.example.com": stored as ".example.com" */
};

/* An IP literal and port. `text` is the normalised form, "1.2.3.4:80" or
 * "[::1]:80", used in logs and metric labels. */
struct gw_sockaddr {
    struct sockaddr_storage sa;
    socklen_t len;
    char text[64];
};

struct gw_tls_ctx;

/* TLS termination of a listener (tls/tls.h loads what it names). */
struct gw_tls_conf {
    bool enabled;
    char **certs, **keys; /* file paths, pairwise; the first is the default */
    size_t ncerts;
    char **ciphers; /* mbedtls suite names; NULL: AEAD with forward secrecy */
    size_t nciphers;
    char **alpn; /* NULL: [ "http/1.1" ] */
    size_t nalpn;
    char *file; /* where the tls group is, for errors about its files */
    int line;
};

/* TLS from the gateway to an upstream's servers (tls/tls.h loads it). */
struct gw_upstream_tls_conf {
    bool enabled;
    bool verify;      /* the server's chain is checked (and its name, with sni) */
    char *ca;         /* CA bundle; NULL: GW_DEFAULT_CA */
    char *sni;        /* name sent in SNI and checked against the certificate; NULL: none */
    char *cert, *key; /* client certificate for servers that ask for one; NULL: none */
    char **ciphers;   /* NULL: AEAD with forward secrecy */
    size_t nciphers;
    char *file;
    int line;
};

/* Debian's ca-certificates bundle. */
#define GW_DEFAULT_CA "/etc/ssl/certs/ca-certificates.crt"
/* busy_poll_us when the file sets none (see README, busy_poll_us) */
#define GW_BUSY_POLL_US_DEFAULT 10

struct gw_listen {
    struct gw_sockaddr addr;
    char *deadline_header; /* NULL: the route's (or the default) applies */
    bool defer_accept;     /* TCP_DEFER_ACCEPT: accepted once the first bytes came */
    unsigned slot;         /* set by main: the same for the same address across reloads */
    struct gw_tls_conf tls;
    struct gw_tls_ctx *tls_ctx; /* loaded by gw_tls_load after the config; NULL: plain */
};

/* A CIDR block of trusted proxies: "10.0.0.0/8", "::1/128", "127.0.0.1". */
struct gw_cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    unsigned prefix;
};

/* Circuit breaker of each server of an upstream (policy/breaker.h). */
struct gw_breaker_conf {
    bool enabled;                /* a breaker block is present */
    unsigned failures;           /* consecutive failures that open; 0 = off */
    double error_rate;           /* failure share in the window that opens; 0 = off */
    unsigned window_ms;
    unsigned min_requests;
    unsigned open_ms;
    unsigned half_open_requests;
    uint64_t fail_status[10];    /* bit per status 0..639: which statuses count as failures */
};

enum gw_rl_key {
    GW_RL_KEY_CLIENT_IP = 0,
    GW_RL_KEY_ROUTE,
    GW_RL_KEY_HEADER,
};

struct gw_rate_limit_conf {
    bool enabled;
    double rate;       /* tokens per second */
    unsigned burst;
    enum gw_rl_key key;
    char *header;      /* lower-case header name for GW_RL_KEY_HEADER */
    size_t header_len;
    unsigned max_keys; /* bounded table of per-key buckets */
    bool headers;      /* RateLimit-* headers on admitted responses too */
    bool global;       /* scope "global": the bucket lives in Redis, shared by instances */
};

/* The response cache of a route (cache/policy.h). */
struct gw_cache_conf {
    bool enabled;
    unsigned ttl_s;            /* lifetime of a storable response that states none; 0 = only
                                  responses with explicit freshness are stored */
    uint64_t max_object_bytes; /* larger responses are passed on and not stored */
    bool key_host, key_path, key_query;
    bool cache_authorized;     /* requests with Authorization may use the cache (RFC 9111 3.5) */
    bool store_set_cookie;     /* responses with Set-Cookie may be stored */
    unsigned stale_if_error_s; /* stale-if-error window when the response states none */
};

/* Retry conditions (gw_route.retry_on bits). */
enum {
    GW_RETRY_CONNECT_FAILURE = 1 << 0,
    GW_RETRY_RESET = 1 << 1,
    GW_RETRY_5XX = 1 << 2,
    GW_RETRY_TIMEOUT = 1 << 3,
};

/* Their names in the config, in bit order. */
#define GW_RETRY_CONDS 4
extern const struct gw_retry_cond {
    const char *name;
    unsigned bit;
} gw_retry_conds[GW_RETRY_CONDS];

struct gw_server {
    struct gw_sockaddr addr;
    unsigned index;        /* position in gw_config.servers (all upstreams) */
    unsigned metrics_slot; /* filled by main after load (core/metrics.h) */
    struct gw_upstream *upstream;
    /* Shared by every worker and carried over reloads by (upstream, address);
     * set by main after load (policy/shared.h), NULL before. */
    struct gw_server_shared *shared;
};

struct gw_upstream {
    char *name;
    struct gw_server **servers; /* pointers into gw_config.servers */
    size_t nservers;
    enum gw_balance balance;
    unsigned keepalive;          /* idle connections kept per server per worker */
    unsigned connect_timeout_ms;
    unsigned index;
    struct gw_breaker_conf breaker;
    unsigned max_requests; /* concurrent requests per server, process-wide; 0 = no cap */
    unsigned max_pending;  /* requests waiting for a new connection per server; 0 = no cap */
    struct gw_upstream_tls_conf tls;
    struct gw_tls_ctx *tls_ctx; /* loaded by gw_tls_load; NULL: plain TCP */
};

struct gw_route {
    char *name;
    enum gw_host_match host_match;
    char *host;      /* lower-case, see gw_host_match; NULL for ANY */
    size_t host_len; /* strlen(host), 0 for ANY: the router compares lengths first */
    char *path;      /* path_prefix or exact path */
    size_t path_len; /* strlen(path) */
    bool path_exact; /* `path = ...` rather than `path_prefix = ...` */
    char **methods;  /* NULL when the route takes every method */
    size_t nmethods;
    struct gw_upstream *upstream;
    unsigned timeout_ms; /* whole budget of one request */
    unsigned index;
    unsigned metrics_slot; /* filled by main after load */

    struct gw_rate_limit_conf rate_limit;
    /* Shared bucket state, carried over reloads by route name; set by main
     * after load (policy/shared.h), NULL when rate_limit is off. */
    struct gw_ratelimit *rl;
    char *deadline_header;     /* NULL: the listener's or the default; "" = off */
    unsigned retries;          /* extra attempts after the first */
    unsigned retry_on;         /* GW_RETRY_* */
    double retry_budget;       /* share of active requests that may be retries */
    unsigned try_timeout_ms;   /* per attempt, for retry_on "timeout"; 0 = none */
    char **retry_methods;      /* non-idempotent methods that may be retried */
    size_t nretry_methods;
    struct gw_cache_conf cache;
};

struct gw_limits {
    uint32_t max_header_bytes;
    uint64_t max_body_bytes;
    uint32_t header_timeout_ms;
    uint32_t idle_timeout_ms;
    uint32_t max_connections; /* per process; each worker takes an equal share */
};

struct gw_config {
    atomic_uint refs;
    uint64_t generation; /* set by the publisher (main), 0 after load */
    char *path;

    unsigned workers; /* 0 = one per CPU in the affinity mask */
    bool access_log;
    unsigned drain_timeout_ms;
    unsigned busy_poll_us; /* spin before a sleep while busy; 0 = never */
    int tls_helpers;       /* threads for full TLS handshakes; -1 = one per worker, 0 = none */

    struct gw_listen *listens;
    size_t nlistens;
    struct gw_sockaddr admin;

    struct gw_limits limits;

    struct gw_cidr *trusted_proxies;
    size_t ntrusted_proxies;

    /* top-level `cache`: the in-process store every worker keeps */
    uint64_t cache_l1_bytes; /* for the whole process, split evenly between workers */
    unsigned cache_l1_ttl_s; /* with Redis: an entry stays in an L1 at most this long */

    /* top-level `redis`: the shared cache level (L2); enabled false without the block */
    struct gw_redis_conf {
        bool enabled;
        struct gw_sockaddr addr; /* when unix_path is NULL */
        char *unix_path;
        char *password; /* NULL: no AUTH */
        unsigned db;
        unsigned timeout_ms;
    } redis;
    struct gw_cidr *purge_from; /* peers allowed to send PURGE */
    size_t npurge_from;

    struct gw_upstream *upstreams;
    size_t nupstreams;
    struct gw_server *servers; /* every server of every upstream */
    size_t nservers;
    struct gw_route *routes; /* in file order: first match wins */
    size_t nroutes;
};

/* Parses and validates the file. On success stores a snapshot with one
 * reference in *out and returns 0. On failure returns -1 and writes
 * "FILE:LINE: reason" into err. */
int gw_config_load(const char *path, struct gw_config **out, char *err, size_t errlen);

/* Writes cfg as libconfig text, every setting with its effective value
 * (defaults filled in): `gateway -T`. */
void gw_config_dump(const struct gw_config *cfg, FILE *f);

/* The default name of the deadline header, read and propagated. */
#define GW_DEADLINE_HEADER "X-Request-Timeout-Ms"

/* Called once when the snapshot is freed, before its memory goes: the owner of
 * shared state bound to it (policy/shared.c) drops its references there. */
extern void (*gw_config_on_free_tls)(struct gw_config *cfg); /* tls/tls.c */
extern void (*gw_config_on_free)(struct gw_config *cfg);

/* Is the address (AF_INET / AF_INET6 bytes) inside the block? An IPv4-mapped
 * IPv6 address matches IPv4 blocks. */
bool gw_cidr_match(const struct gw_cidr *c, int family, const void *addr);

struct gw_config *gw_config_ref(struct gw_config *cfg);
/* Drops one reference; frees the snapshot with the last one. NULL is fine. */
void gw_config_unref(struct gw_config *cfg);

/* Parses "1.2.3.4:80", "[::1]:80" or "*:80" (= "0.0.0.0:80"): IP literals
 * only, host names are not resolved; port 1..65535. Fills sa, len and the
 * normalised text. Returns 0 or -1. */
int gw_sockaddr_parse(const char *text, struct gw_sockaddr *out);

#endif
