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
#include <sys/socket.h>

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

struct gw_listen {
    struct gw_sockaddr addr;
};

struct gw_server {
    struct gw_sockaddr addr;
    unsigned index;        /* position in gw_config.servers (all upstreams) */
    unsigned metrics_slot; /* filled by main after load (core/metrics.h) */
    struct gw_upstream *upstream;
};

struct gw_upstream {
    char *name;
    struct gw_server **servers; /* pointers into gw_config.servers */
    size_t nservers;
    enum gw_balance balance;
    unsigned keepalive;          /* idle connections kept per server per worker */
    unsigned connect_timeout_ms;
    unsigned index;
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

    struct gw_listen *listens;
    size_t nlistens;
    struct gw_sockaddr admin;

    struct gw_limits limits;

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

struct gw_config *gw_config_ref(struct gw_config *cfg);
/* Drops one reference; frees the snapshot with the last one. NULL is fine. */
void gw_config_unref(struct gw_config *cfg);

/* Parses "1.2.3.4:80", "[::1]:80" or "*:80" (= "0.0.0.0:80"): IP literals
 * only, host names are not resolved; port 1..65535. Fills sa, len and the
 * normalised text. Returns 0 or -1. */
int gw_sockaddr_parse(const char *text, struct gw_sockaddr *out);

#endif
