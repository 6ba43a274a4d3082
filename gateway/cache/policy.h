/* The decisions of a shared HTTP cache (RFC 9111), free of I/O so that
 * they can be tested alone: Cache-Control of requests and responses, the
 * freshness lifetime, whether a response may be stored, conditional
 * requests, the cache key, and the stored form of an entry. An entry is one
 * self-checking blob: the same bytes live in a worker's L1 and, with a
 * Redis block, in Redis, so a value that comes back corrupt or cut short is
 * recognised and treated as a miss. */
#ifndef GW_CACHE_POLICY_H
#define GW_CACHE_POLICY_H

#include "core/config.h"
#include "http/msg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Cache-Control directives we act on; seconds are -1 when absent. */
struct gw_cc {
    bool no_store, no_cache, private_, public_, must_revalidate, proxy_revalidate;
    int64_t max_age, s_maxage, stale_if_error;
};

/* Every Cache-Control field of the head, combined. */
void gw_cc_parse(const struct gw_header *h, size_t n, struct gw_cc *cc);

/* An HTTP-date (IMF-fixdate, RFC 850 or asctime form) as seconds since the
 * epoch, or -1 when it is not one. */
int64_t gw_http_date_parse(struct gw_slice s);

/* What a request may do with the cache. */
enum gw_cache_use {
    GW_CACHE_LOOKUP = 0, /* look up; on a miss fetch and store */
    GW_CACHE_REFRESH,    /* no-cache / max-age=0: fetch and store, never serve stored */
    GW_CACHE_BYPASS,     /* not for the cache at all (method, no-store, Authorization) */
};

enum gw_cache_use gw_cache_request_use(const struct gw_cache_conf *cc, enum gw_method m,
                                       const struct gw_header *h, size_t n);

/* The key of a request: the configured parts of host (lower-case, port
 * dropped), path and query, separated so that no two requests collide.
 * Returns its length, or 0 when it does not fit in cap. */
size_t gw_cache_key(const struct gw_cache_conf *cc, struct gw_slice host, struct gw_slice target,
                    char *out, size_t cap);

/* A 64-bit hash (not cryptographic; a checksum and a table index). */
uint64_t gw_hash64(const void *p, size_t n, uint64_t seed);

/* How long a response may be served, decided when it arrives. */
struct gw_cache_life {
    int64_t fresh_s; /* freshness lifetime minus the age it came with */
    int64_t stale_s; /* how long after that it may still serve on upstream errors */
    int64_t age_s;   /* the Age it came with */
};

/* Whether a response may be stored, and for how long. now_s: the wall
 * clock; authorized: the request carried Authorization. Returns NULL when
 * it may be stored, else a short reason (for tests and logs). */
const char *gw_cache_storable(const struct gw_cache_conf *cc, const struct gw_response *resp,
                              bool authorized, int64_t now_s, struct gw_cache_life *life);

/* The Vary field names of a response, lower-case and comma-separated, into
 * out; returns the length, or -1 when they do not fit or Vary is "*". */
int gw_cache_vary_names(const struct gw_header *h, size_t n, char *out, size_t cap);

/* A hash of the request's values of the comma-separated header names. */
uint64_t gw_cache_vary_hash(struct gw_slice names, const struct gw_header *h, size_t n);

/* ---- stored entries ---- */

/* The fields of an entry; the slices point into its blob. */
struct gw_cache_entry {
    uint64_t key_hash;
    int64_t stored_ms;        /* wall clock when stored */
    int64_t fresh_until_ms;   /* served as fresh until then */
    int64_t stale_until_ms;   /* served on upstream errors until then */
    int64_t age_s;            /* Age when stored */
    unsigned status;
    uint64_t vary_hash;
    struct gw_slice key, vary, etag, last_modified;
    struct gw_slice head; /* status line and fields, each with CRLF, no blank line */
    struct gw_slice body;
};

/* Bytes a blob of these parts takes. */
size_t gw_cache_blob_size(size_t key, size_t vary, size_t etag, size_t lm, size_t head,
                          size_t body);

/* Writes the blob for e (its slices give the parts) into out, which has
 * gw_cache_blob_size bytes; then e's slices point into out. */
void gw_cache_blob_write(struct gw_cache_entry *e, char *out, size_t size);

/* Reads a blob back into e, checking its framing and checksum. Returns
 * false for anything corrupt or truncated. */
bool gw_cache_blob_read(const char *p, size_t n, struct gw_cache_entry *e);

/* The head of a 304 for the entry: status line and the fields RFC 9110
 * 15.4.5 keeps (Cache-Control, Content-Location, Date, ETag, Expires,
 * Last-Modified, Vary), each with CRLF, no blank line. Returns the length,
 * or 0 when it does not fit. */
size_t gw_cache_head_304(const struct gw_cache_entry *e, char *out, size_t cap);

/* Whether the request's If-None-Match (or, without it, If-Modified-Since)
 * is met by the entry, so that the answer is 304. */
bool gw_cache_not_modified(const struct gw_cache_entry *e, const struct gw_header *h, size_t n);

#endif
