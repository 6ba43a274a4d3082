/* libFuzzer target for what the cache reads from outside: entry blobs (they
 * come back from Redis, possibly corrupt), and the request and response
 * fields it interprets (Cache-Control, HTTP dates, Vary, validators). A
 * blob that reads must have every part inside the buffer and write back to
 * the same bytes. Build: see test/meson.build (-Dfuzz=true). */
#include "cache/policy.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

static bool inside(struct gw_slice s, const char *buf, size_t n)
{
    return s.len == 0 || (s.ptr >= buf && s.ptr + s.len <= buf + n);
}

static void fuzz_blob(const char *buf, size_t n)
{
    struct gw_cache_entry e;
    char *copy;

    if (!gw_cache_blob_read(buf, n, &e))
        return;
    CHECK(inside(e.key, buf, n) && inside(e.vary, buf, n) && inside(e.etag, buf, n) &&
          inside(e.last_modified, buf, n) && inside(e.head, buf, n) && inside(e.body, buf, n));
    CHECK(gw_cache_blob_size(e.key.len, e.vary.len, e.etag.len, e.last_modified.len, e.head.len,
                             e.body.len) == n);
    copy = malloc(n);
    gw_cache_blob_write(&e, copy, n);
    CHECK(memcmp(copy, buf, n) == 0);
    free(copy);
}

/* The input as header lines "Name: value\n" (at most GW_HTTP_MAX_HEADERS). */
static size_t headers_of(const char *buf, size_t n, struct gw_header *h)
{
    size_t k = 0;
    const char *p = buf, *end = buf + n;

    while (p < end && k < GW_HTTP_MAX_HEADERS) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *colon;
        if (eol == NULL)
            eol = end;
        colon = memchr(p, ':', (size_t)(eol - p));
        if (colon != NULL) {
            const char *v = colon + 1;
            while (v < eol && *v == ' ')
                v++;
            h[k].name = gw_slice(p, (size_t)(colon - p));
            h[k].value = gw_slice(v, (size_t)(eol - v));
            k++;
        }
        p = eol + 1;
    }
    return k;
}

static void fuzz_fields(const char *buf, size_t n)
{
    static struct gw_response resp;
    struct gw_cache_conf cc = {0};
    struct gw_cache_life life;
    struct gw_cache_entry e;
    struct gw_cc c;
    char vary[256], key[512], head304[1024];
    int nv;

    memset(&resp, 0, sizeof(resp));
    resp.status = 200;
    resp.nheaders = headers_of(buf, n, resp.headers);
    gw_cc_parse(resp.headers, resp.nheaders, &c);
    CHECK(c.max_age >= -1 && c.s_maxage >= -1 && c.stale_if_error >= -1);
    for (size_t i = 0; i < resp.nheaders; i++)
        (void)gw_http_date_parse(resp.headers[i].value);
    cc.enabled = cc.key_host = cc.key_path = cc.key_query = true;
    cc.ttl_s = 60;
    if (gw_cache_storable(&cc, &resp, n & 1, 1700000000, &life) == NULL)
        CHECK(life.fresh_s > 0 && life.stale_s >= 0);
    (void)gw_cache_request_use(&cc, GW_METHOD_GET, resp.headers, resp.nheaders);
    nv = gw_cache_vary_names(resp.headers, resp.nheaders, vary, sizeof(vary));
    if (nv >= 0) {
        CHECK((size_t)nv <= sizeof(vary));
        (void)gw_cache_vary_hash(gw_slice(vary, (size_t)nv), resp.headers, resp.nheaders);
    }
    if (resp.nheaders >= 2)
        (void)gw_cache_key(&cc, resp.headers[0].value, resp.headers[1].value, key, sizeof(key));
    memset(&e, 0, sizeof(e));
    e.status = 200;
    e.etag = resp.nheaders ? resp.headers[0].value : gw_slice("", 0);
    e.last_modified = resp.nheaders > 1 ? resp.headers[1].value : gw_slice("", 0);
    e.head = gw_slice(buf, n);
    (void)gw_cache_not_modified(&e, resp.headers, resp.nheaders);
    CHECK(gw_cache_head_304(&e, head304, sizeof(head304)) <= sizeof(head304));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;

    fuzz_blob(buf, size);
    fuzz_fields(buf, size);
    return 0;
}
