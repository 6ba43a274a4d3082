/* The error log (stderr, one line per event, prefixed with a timestamp) and
 * the formatting of JSON access-log lines. Workers write access lines
 * through their ring (worker.c); this module only formats them. */
#ifndef GW_CORE_LOG_H
#define GW_CORE_LOG_H

#include "core/buf.h"

#include <stddef.h>
#include <stdint.h>

__attribute__((format(printf, 1, 2))) void gw_log_error(const char *fmt, ...);

struct gw_access_rec {
    uint64_t wall_us;
    struct gw_slice client;
    struct gw_slice method;
    struct gw_slice path;
    int status;
    uint64_t bytes; /* response bytes sent to the client, head included */
    uint64_t duration_us;
    struct gw_slice upstream; /* server address, empty if none */
    struct gw_slice route;    /* empty if none */
    struct gw_slice request_id;
    const char *cache; /* hit, miss, bypass, stale, error; NULL: the route has no cache */
};

/* Formats one JSON line ending in '\n' into out. Strings are escaped and
 * long ones truncated. Returns the length, or 0 if cap is too small. */
size_t gw_log_access_format(char *out, size_t cap, const struct gw_access_rec *r);

#endif
