/* Unit test of cache/policy.c and cache/l1.c: Cache-Control, HTTP dates,
 * which requests use the cache, keys, storability and lifetimes, Vary,
 * conditional requests, the blob format (and that corruption is caught),
 * and the L1's LRU, byte cap, references and purges. */
#include "cache/l1.h"
#include "cache/policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tap.h"

#define H(n, v) {GW_SLICE_LIT(n), GW_SLICE_LIT(v)}

static struct gw_slice S(const char *s)
{
    return gw_slice(s, strlen(s));
}

static struct gw_cache_conf conf(void)
{
    struct gw_cache_conf c = {0};
    c.enabled = true;
    c.ttl_s = 60;
    c.max_object_bytes = 1 << 20;
    c.key_host = c.key_path = c.key_query = true;
    return c;
}

static void test_cc(void)
{
    struct gw_header h[] = {H("Cache-Control", "public, max-age=300"),
                            H("cache-control", "s-maxage=\"60\", stale-if-error=30, no-transform")};
    struct gw_cc cc;

    gw_cc_parse(h, 2, &cc);
    ok(cc.public_ && !cc.private_ && !cc.no_store, "flags");
    is(cc.max_age, 300, "max-age");
    is(cc.s_maxage, 60, "quoted s-maxage, second field");
    is(cc.stale_if_error, 30, "stale-if-error");
    struct gw_header bad[] = {H("Cache-Control", "max-age=abc, NO-STORE")};
    gw_cc_parse(bad, 1, &cc);
    is(cc.max_age, 0, "an unparsable max-age counts as 0 (stale)");
    ok(cc.no_store, "directive names are case-insensitive");
    gw_cc_parse(bad, 0, &cc);
    is(cc.max_age, -1, "absent is -1");
}

static void test_dates(void)
{
    is(gw_http_date_parse(S("Sun, 06 Nov 1994 08:49:37 GMT")), 784111777, "IMF-fixdate");
    is(gw_http_date_parse(S("Sunday, 06-Nov-94 08:49:37 GMT")), 784111777, "RFC 850");
    is(gw_http_date_parse(S("Sun Nov  6 08:49:37 1994")), 784111777, "asctime");
    is(gw_http_date_parse(S("Thu, 01 Jan 1970 00:00:00 GMT")), 0, "the epoch");
    is(gw_http_date_parse(S("0")), -1, "Expires: 0 is not a date");
    is(gw_http_date_parse(S("Sun, 06 Nov 1994 08:49:37 UTC")), -1, "only GMT");
    is(gw_http_date_parse(S("Sun, 06 Foo 1994 08:49:37 GMT")), -1, "bad month");
}

static void test_request_use(void)
{
    struct gw_cache_conf c = conf();
    struct gw_header none[1];
    struct gw_header nc[] = {H("Cache-Control", "no-cache")};
    struct gw_header ma0[] = {H("Cache-Control", "max-age=0")};
    struct gw_header ns[] = {H("Cache-Control", "no-store")};
    struct gw_header pragma[] = {H("Pragma", "no-cache")};
    struct gw_header auth[] = {H("Authorization", "Bearer x")};
    struct gw_header range[] = {H("Range", "bytes=0-10")};

    is(gw_cache_request_use(&c, GW_METHOD_GET, none, 0), GW_CACHE_LOOKUP, "GET looks up");
    is(gw_cache_request_use(&c, GW_METHOD_HEAD, none, 0), GW_CACHE_LOOKUP, "HEAD looks up");
    is(gw_cache_request_use(&c, GW_METHOD_POST, none, 0), GW_CACHE_BYPASS, "POST bypasses");
    is(gw_cache_request_use(&c, GW_METHOD_GET, nc, 1), GW_CACHE_REFRESH, "no-cache refreshes");
    is(gw_cache_request_use(&c, GW_METHOD_GET, ma0, 1), GW_CACHE_REFRESH, "max-age=0 too");
    is(gw_cache_request_use(&c, GW_METHOD_GET, ns, 1), GW_CACHE_BYPASS, "no-store bypasses");
    is(gw_cache_request_use(&c, GW_METHOD_GET, pragma, 1), GW_CACHE_REFRESH, "Pragma: no-cache");
    is(gw_cache_request_use(&c, GW_METHOD_GET, auth, 1), GW_CACHE_BYPASS, "Authorization");
    c.cache_authorized = true;
    is(gw_cache_request_use(&c, GW_METHOD_GET, auth, 1), GW_CACHE_LOOKUP,
       "Authorization when allowed");
    is(gw_cache_request_use(&c, GW_METHOD_GET, range, 1), GW_CACHE_BYPASS, "Range bypasses");
}

static void test_key(void)
{
    struct gw_cache_conf c = conf();
    char a[256], b[256];
    size_t na, nb;

    na = gw_cache_key(&c, S("Example.COM:8080"), S("/a/b?x=1"), a, sizeof(a));
    ok(na > 0 && memcmp(a, "h:example.com\np:/a/b\nq:x=1", na) == 0, "host lower-case, no port");
    nb = gw_cache_key(&c, S("example.com"), S("/a/b?x=2"), b, sizeof(b));
    ok(na != nb || memcmp(a, b, na) != 0, "the query is part of the key");
    c.key_query = false;
    na = gw_cache_key(&c, S("example.com"), S("/a/b?x=1"), a, sizeof(a));
    nb = gw_cache_key(&c, S("example.com"), S("/a/b?x=2"), b, sizeof(b));
    ok(na == nb && memcmp(a, b, na) == 0, "without query in the key");
    c.key_host = false;
    nb = gw_cache_key(&c, S("other.org"), S("/a/b"), b, sizeof(b));
    ok(na != nb, "without host in the key (differs from one with it)");
    is(gw_cache_key(&c, S("h"), S("/a"), a, 4), 0, "too long for the buffer");
    na = gw_cache_key(&c, S("[::1]:80"), S("/"), a, sizeof(a));
    ok(na > 0, "IPv6 host");
}

static struct gw_response resp(int status, struct gw_header *h, size_t n)
{
    struct gw_response r;
    memset(&r, 0, sizeof(r));
    r.status = status;
    memcpy(r.headers, h, n * sizeof(*h));
    r.nheaders = n;
    return r;
}

static void test_storable(void)
{
    struct gw_cache_conf c = conf();
    struct gw_cache_life life;
    int64_t now = 784111777;
    struct gw_header plain[] = {H("Content-Type", "text/plain")};
    struct gw_header ma[] = {H("Cache-Control", "max-age=100"), H("Age", "30")};
    struct gw_header sm[] = {H("Cache-Control", "max-age=100, s-maxage=10")};
    struct gw_header exp[] = {H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                              H("Expires", "Sun, 06 Nov 1994 08:50:37 GMT")};
    struct gw_header exp0[] = {H("Expires", "0")};
    struct gw_header priv[] = {H("Cache-Control", "private, max-age=100")};
    struct gw_header nost[] = {H("Cache-Control", "no-store")};
    struct gw_header nocache[] = {H("Cache-Control", "no-cache")};
    struct gw_header vstar[] = {H("Vary", "Accept, *")};
    struct gw_header cookie[] = {H("Set-Cookie", "a=b")};
    struct gw_header sie[] = {H("Cache-Control", "max-age=5, stale-if-error=50")};
    struct gw_header mr[] = {H("Cache-Control", "max-age=5, must-revalidate")};
    struct gw_header pub[] = {H("Cache-Control", "public")};
    struct gw_response r;

    r = resp(200, plain, 1);
    ok(gw_cache_storable(&c, &r, false, now, &life) == NULL && life.fresh_s == 60,
       "no freshness given: ttl_s");
    c.ttl_s = 0;
    ok(gw_cache_storable(&c, &r, false, now, &life) != NULL, "ttl_s 0: explicit freshness only");
    c.ttl_s = 60;
    r = resp(200, ma, 2);
    ok(gw_cache_storable(&c, &r, false, now, &life) == NULL && life.fresh_s == 70 &&
           life.age_s == 30,
       "max-age minus Age");
    r = resp(200, sm, 1);
    ok(gw_cache_storable(&c, &r, false, now, &life) == NULL && life.fresh_s == 10,
       "s-maxage wins for a shared cache");
    r = resp(200, exp, 2);
    ok(gw_cache_storable(&c, &r, false, now, &life) == NULL && life.fresh_s == 60,
       "Expires minus Date");
    r = resp(200, exp0, 1);
    ok(gw_cache_storable(&c, &r, false, now, &life) != NULL, "Expires: 0 is already stale");
    r = resp(200, priv, 1);
    ok(gw_cache_storable(&c, &r, false, now, &life) != NULL, "private");
    r = resp(200, nost, 1);
    ok(gw_cache_storable(&c, &r, false, now, &life) != NULL, "no-store");
    r = resp(200, nocache, 1);
    ok(gw_cache_storable(&c, &r, false, now, &life) != NULL, "no-cache");
    r = resp(200, vstar, 1);
    ok(gw_cache_storable(&c, &r, false, now, &life) != NULL, "Vary: *");
    r = resp(200, cookie, 1);
    ok(gw_cache_storable(&c, &r, false, now, &life) != NULL, "Set-Cookie");
    c.store_set_cookie = true;
    ok(gw_cache_storable(&c, &r, false, now, &life) == NULL, "Set-Cookie when allowed");
    r = resp(500, plain, 1);
    ok(gw_cache_storable(&c, &r, false, now, &life) != NULL, "500 is not stored");
    r = resp(404, plain, 1);
    ok(gw_cache_storable(&c, &r, false, now, &life) == NULL, "404 is");
    r = resp(200, sie, 1);
    ok(gw_cache_storable(&c, &r, false, now, &life) == NULL && life.stale_s == 50,
       "stale-if-error from the response");
    c.stale_if_error_s = 7;
    r = resp(200, plain, 1);
    ok(gw_cache_storable(&c, &r, false, now, &life) == NULL && life.stale_s == 7,
       "stale-if-error from the config");
    r = resp(200, mr, 1);
    ok(gw_cache_storable(&c, &r, false, now, &life) == NULL && life.stale_s == 0,
       "must-revalidate: never stale");
    r = resp(200, plain, 1);
    ok(gw_cache_storable(&c, &r, true, now, &life) != NULL, "Authorization needs public");
    r = resp(200, pub, 1);
    ok(gw_cache_storable(&c, &r, true, now, &life) == NULL, "... and public will do");
}

static void test_vary(void)
{
    struct gw_header v[] = {H("Vary", "Accept-Encoding"), H("vary", " Accept-Language ,X-A")};
    struct gw_header q1[] = {H("accept-encoding", "gzip"), H("Accept-Language", "en")};
    struct gw_header q2[] = {H("Accept-Encoding", "gzip"), H("Accept-Language", "fr")};
    struct gw_header q3[] = {H("Accept-Encoding", "gzip"), H("Accept-Language", "en")};
    char names[64];
    int n = gw_cache_vary_names(v, 2, names, sizeof(names));

    ok(n > 0 && memcmp(names, "accept-encoding,accept-language,x-a", (size_t)n) == 0,
       "names combined, lower-case");
    struct gw_slice ns = gw_slice(names, (size_t)n);
    ok(gw_cache_vary_hash(ns, q1, 2) != gw_cache_vary_hash(ns, q2, 2), "values differ");
    ok(gw_cache_vary_hash(ns, q1, 2) == gw_cache_vary_hash(ns, q3, 2),
       "name case does not matter");
    is(gw_cache_vary_names(v, 2, names, 8), -1, "too small");
}

static void fill_entry(struct gw_cache_entry *e, const char *key, const char *body)
{
    memset(e, 0, sizeof(*e));
    e->key = S(key);
    e->key_hash = gw_hash64(key, strlen(key), 0);
    e->stored_ms = 1000;
    e->fresh_until_ms = 61000;
    e->stale_until_ms = 91000;
    e->status = 200;
    e->etag = S("\"v1\"");
    e->last_modified = S("Sun, 06 Nov 1994 08:49:37 GMT");
    e->head = S("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n");
    e->body = S(body);
}

static void test_blob(void)
{
    struct gw_cache_entry e, r;
    size_t n;
    char *b;

    fill_entry(&e, "p:/x", "hello");
    n = gw_cache_blob_size(e.key.len, e.vary.len, e.etag.len, e.last_modified.len, e.head.len,
                           e.body.len);
    b = malloc(n);
    gw_cache_blob_write(&e, b, n);
    ok(gw_cache_blob_read(b, n, &r), "reads back");
    ok(r.status == 200 && r.fresh_until_ms == 61000 && r.body.len == 5 &&
           memcmp(r.body.ptr, "hello", 5) == 0 && r.key.len == 4,
       "fields survive");
    ok(!gw_cache_blob_read(b, n - 1, &r), "truncated");
    b[n / 2] ^= 1;
    ok(!gw_cache_blob_read(b, n, &r), "a flipped bit");
    b[n / 2] ^= 1;
    b[0] = 'X';
    ok(!gw_cache_blob_read(b, n, &r), "bad magic");
    ok(!gw_cache_blob_read("short", 5, &r), "too short");
    free(b);
}

static void test_conditional(void)
{
    struct gw_cache_entry e;
    struct gw_header inm[] = {H("If-None-Match", "\"x\", W/\"v1\"")};
    struct gw_header inm_no[] = {H("If-None-Match", "\"v2\"")};
    struct gw_header star[] = {H("If-None-Match", "*")};
    struct gw_header ims[] = {H("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT")};
    struct gw_header ims_old[] = {H("If-Modified-Since", "Sat, 05 Nov 1994 08:49:37 GMT")};
    struct gw_header both[] = {H("If-None-Match", "\"v2\""),
                               H("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT")};

    fill_entry(&e, "k", "b");
    ok(gw_cache_not_modified(&e, inm, 1), "weak comparison finds the tag in a list");
    ok(!gw_cache_not_modified(&e, inm_no, 1), "another tag");
    ok(gw_cache_not_modified(&e, star, 1), "*");
    ok(gw_cache_not_modified(&e, ims, 1), "not modified since");
    ok(!gw_cache_not_modified(&e, ims_old, 1), "modified since");
    ok(!gw_cache_not_modified(&e, both, 2), "If-None-Match decides when present");
}

static struct gw_l1_ent *make_ent(const char *key, size_t body_len, int64_t stale_until)
{
    struct gw_cache_entry e;
    static char body[65536];
    size_t n;
    struct gw_l1_ent *ent;

    fill_entry(&e, key, "");
    e.body = gw_slice(body, body_len);
    e.stale_until_ms = stale_until;
    n = gw_cache_blob_size(e.key.len, e.vary.len, e.etag.len, e.last_modified.len, e.head.len,
                           e.body.len);
    ent = gw_l1_alloc(n);
    ent->e = e;
    gw_cache_blob_write(&ent->e, ent->blob, n);
    return ent;
}

static struct gw_l1_ent *get(struct gw_l1 *l, const char *key, int64_t now)
{
    return gw_l1_get(l, gw_hash64(key, strlen(key), 0), S(key), now, 100);
}

static void test_l1(void)
{
    struct gw_l1 l;
    struct gw_l1_ent *a, *b, *c, *g;

    gw_l1_init(&l, 3 * 5000);
    a = make_ent("a", 4000, 10000);
    b = make_ent("b", 4000, 10000);
    gw_l1_insert(&l, a, 10);
    gw_l1_insert(&l, b, 10);
    gw_l1_release(&l, a);
    gw_l1_release(&l, b);
    is(l.count, 2, "two entries");
    g = get(&l, "a", 5000);
    ok(g == a, "found");
    gw_l1_release(&l, g); /* a is now the most recently used */
    c = make_ent("c", 6000, 10000);
    gw_l1_insert(&l, c, 10);
    gw_l1_release(&l, c);
    ok(get(&l, "b", 5000) == NULL, "the least recently used went first");
    g = get(&l, "a", 5000);
    ok(g != NULL, "the recently used stayed");
    ok(l.bytes <= l.cap, "within the cap");
    /* a is held: evicting it keeps it readable until released */
    gw_l1_remove(&l, g->e.key_hash, g->e.key);
    ok(g->e.body.len == 4000 && g->refs == 1, "held after removal");
    gw_l1_release(&l, g);
    ok(get(&l, "c", 10000) == NULL, "expired at stale_until");
    is(l.count, 0, "empty");

    a = make_ent("a", 10, 100000);
    gw_l1_insert(&l, a, 50);
    gw_l1_release(&l, a);
    gw_cache_purge_note(gw_hash64("a", 1, 0), 60);
    ok(get(&l, "a", 1000) == NULL, "purged after it was stored");
    a = make_ent("a", 10, 100000);
    gw_l1_insert(&l, a, 70);
    gw_l1_release(&l, a);
    g = get(&l, "a", 1000);
    ok(g != NULL, "stored again after the purge");
    gw_l1_release(&l, g);
    a = make_ent("huge", 60000, 100000);
    gw_l1_insert(&l, a, 80);
    ok(!a->linked, "larger than the whole cap: not stored");
    gw_l1_release(&l, a);
    gw_l1_free(&l);
}

int main(void)
{
    subtest("cache-control", test_cc);
    subtest("dates", test_dates);
    subtest("request use", test_request_use);
    subtest("key", test_key);
    subtest("storable", test_storable);
    subtest("vary", test_vary);
    subtest("blob", test_blob);
    subtest("conditional", test_conditional);
    subtest("l1", test_l1);
    return done_testing();
}
