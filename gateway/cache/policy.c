/* Owns the cache's HTTP rules (RFC 9111 as a shared cache) and the entry
 * blob format. See policy.h. */
#include "cache/policy.h"

#include "core/clock.h"
#include "http/parse.h"

#include <string.h>

static inline char lower(char c)
{
    return (unsigned char)(c - 'A') < 26 ? (char)(c + ('a' - 'A')) : c;
}

static bool ieq_n(const char *a, size_t n, const char *lit)
{
    size_t i;
    for (i = 0; i < n && lit[i]; i++)
        if (lower(a[i]) != lit[i])
            return false;
    return i == n && lit[i] == '\0';
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* Calls fn(name, value) for each element "name[=value]" of a comma list;
 * value has its quotes removed. */
static void each_directive(struct gw_slice list,
                           void (*fn)(struct gw_slice name, struct gw_slice value, void *arg),
                           void *arg)
{
    const char *p = list.ptr, *e = p + list.len;

    while (p < e) {
        const char *n0, *n1, *v0 = NULL, *v1 = NULL;

        while (p < e && (is_blank(*p) || *p == ','))
            p++;
        n0 = p;
        while (p < e && *p != ',' && *p != '=' && !is_blank(*p))
            p++;
        n1 = p;
        while (p < e && is_blank(*p))
            p++;
        if (p < e && *p == '=') {
            p++;
            while (p < e && is_blank(*p))
                p++;
            if (p < e && *p == '"') {
                v0 = ++p;
                while (p < e && *p != '"')
                    p++;
                v1 = p;
                if (p < e)
                    p++;
            } else {
                v0 = p;
                while (p < e && *p != ',' && !is_blank(*p))
                    p++;
                v1 = p;
            }
        }
        while (p < e && *p != ',')
            p++;
        if (n1 > n0)
            fn(gw_slice(n0, (size_t)(n1 - n0)),
               v0 ? gw_slice(v0, (size_t)(v1 - v0)) : gw_slice(NULL, 0), arg);
    }
}

/* delta-seconds; a value that is not one counts as 0 (stale), as RFC 9111
 * 1.2.2 asks of a cache that cannot parse it. */
static int64_t delta_seconds(struct gw_slice v)
{
    int64_t n = 0;

    if (v.len == 0)
        return 0;
    for (size_t i = 0; i < v.len; i++) {
        if (v.ptr[i] < '0' || v.ptr[i] > '9')
            return 0;
        if (n < 2147483648LL)
            n = n * 10 + (v.ptr[i] - '0');
    }
    return n > 2147483648LL ? 2147483648LL : n;
}

static void cc_one(struct gw_slice name, struct gw_slice value, void *arg)
{
    struct gw_cc *cc = arg;
    const char *p = name.ptr;
    size_t n = name.len;

    if (ieq_n(p, n, "no-store"))
        cc->no_store = true;
    else if (ieq_n(p, n, "no-cache"))
        cc->no_cache = true;
    else if (ieq_n(p, n, "private"))
        cc->private_ = true;
    else if (ieq_n(p, n, "public"))
        cc->public_ = true;
    else if (ieq_n(p, n, "must-revalidate"))
        cc->must_revalidate = true;
    else if (ieq_n(p, n, "proxy-revalidate"))
        cc->proxy_revalidate = true;
    else if (ieq_n(p, n, "max-age"))
        cc->max_age = delta_seconds(value);
    else if (ieq_n(p, n, "s-maxage"))
        cc->s_maxage = delta_seconds(value);
    else if (ieq_n(p, n, "stale-if-error"))
        cc->stale_if_error = delta_seconds(value);
}

void gw_cc_parse(const struct gw_header *h, size_t n, struct gw_cc *cc)
{
    memset(cc, 0, sizeof(*cc));
    cc->max_age = cc->s_maxage = cc->stale_if_error = -1;
    for (size_t i = 0; i < n; i++)
        if (gw_slice_ieq(h[i].name, "cache-control"))
            each_directive(h[i].value, cc_one, cc);
}

/* ---- dates ---- */

static int month_of(const char *p)
{
    static const char names[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    for (int i = 0; i < 12; i++)
        if (memcmp(p, names + 3 * i, 3) == 0)
            return i + 1;
    return 0;
}

/* n digits at *pp into *out; advances. */
static bool digits(const char **pp, const char *e, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (*pp >= e || **pp < '0' || **pp > '9')
            return false;
        v = v * 10 + (*(*pp)++ - '0');
    }
    *out = v;
    return true;
}

static bool lit(const char **pp, const char *e, const char *s)
{
    size_t n = strlen(s);
    if ((size_t)(e - *pp) < n || memcmp(*pp, s, n) != 0)
        return false;
    *pp += n;
    return true;
}

static bool hms(const char **pp, const char *e, int *h, int *mi, int *s)
{
    return digits(pp, e, 2, h) && lit(pp, e, ":") && digits(pp, e, 2, mi) && lit(pp, e, ":") &&
           digits(pp, e, 2, s);
}

int64_t gw_http_date_parse(struct gw_slice v)
{
    const char *p = v.ptr, *e = v.ptr + v.len, *comma;
    int d, mo, y, h, mi, s;

    while (p < e && is_blank(*p))
        p++;
    while (e > p && is_blank(e[-1]))
        e--;
    comma = memchr(p, ',', (size_t)(e - p));
    if (comma != NULL && comma - p == 3) {
        /* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
        p = comma + 1;
        if (!lit(&p, e, " ") || !digits(&p, e, 2, &d) || !lit(&p, e, " ") || e - p < 3 ||
            (mo = month_of(p)) == 0)
            return -1;
        p += 3;
        if (!lit(&p, e, " ") || !digits(&p, e, 4, &y) || !lit(&p, e, " ") ||
            !hms(&p, e, &h, &mi, &s) || !lit(&p, e, " GMT") || p != e)
            return -1;
    } else if (comma != NULL) {
        /* RFC 850: Sunday, 06-Nov-94 08:49:37 GMT */
        p = comma + 1;
        if (!lit(&p, e, " ") || !digits(&p, e, 2, &d) || !lit(&p, e, "-") || e - p < 3 ||
            (mo = month_of(p)) == 0)
            return -1;
        p += 3;
        if (!lit(&p, e, "-") || !digits(&p, e, 2, &y) || !lit(&p, e, " ") ||
            !hms(&p, e, &h, &mi, &s) || !lit(&p, e, " GMT") || p != e)
            return -1;
        y += y < 70 ? 2000 : 1900;
    } else {
        /* asctime: Sun Nov  6 08:49:37 1994 */
        if (e - p < 24)
            return -1;
        p += 4;
        if ((mo = month_of(p)) == 0)
            return -1;
        p += 4;
        if (*p == ' ')
            p++;
        if (!digits(&p, e, p + 1 < e && p[1] == ' ' ? 1 : 2, &d) || !lit(&p, e, " ") ||
            !hms(&p, e, &h, &mi, &s) || !lit(&p, e, " ") || !digits(&p, e, 4, &y) || p != e)
            return -1;
    }
    if (d < 1 || d > 31 || h > 23 || mi > 59 || s > 60)
        return -1;
    return gw_days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + s;
}

/* ---- requests ---- */

enum gw_cache_use gw_cache_request_use(const struct gw_cache_conf *cc, enum gw_method m,
                                       const struct gw_header *h, size_t n)
{
    struct gw_cc rc;
    bool has_cc = false;

    if (m != GW_METHOD_GET && m != GW_METHOD_HEAD)
        return GW_CACHE_BYPASS;
    if (gw_http_find_header(h, n, "range") != NULL)
        return GW_CACHE_BYPASS; /* partial content is neither served nor stored */
    if (!cc->cache_authorized && gw_http_find_header(h, n, "authorization") != NULL)
        return GW_CACHE_BYPASS;
    gw_cc_parse(h, n, &rc);
    for (size_t i = 0; i < n && !has_cc; i++)
        has_cc = gw_slice_ieq(h[i].name, "cache-control");
    if (rc.no_store)
        return GW_CACHE_BYPASS;
    if (rc.no_cache || rc.max_age == 0)
        return GW_CACHE_REFRESH;
    if (!has_cc) {
        const struct gw_header *p = gw_http_find_header(h, n, "pragma");
        if (p != NULL && gw_slice_ieq(p->value, "no-cache"))
            return GW_CACHE_REFRESH; /* HTTP/1.0 clients */
    }
    return GW_CACHE_LOOKUP;
}

size_t gw_cache_key(const struct gw_cache_conf *cc, struct gw_slice host, struct gw_slice target,
                    char *out, size_t cap)
{
    const char *q = memchr(target.ptr, '?', target.len);
    size_t plen = q ? (size_t)(q - target.ptr) : target.len;
    size_t hlen = host.len, n = 0;

    /* the port is not part of the name: "Example.com:80" is "example.com" */
    if (hlen > 0 && host.ptr[0] == '[') {
        const char *rb = memchr(host.ptr, ']', hlen);
        if (rb != NULL)
            hlen = (size_t)(rb - host.ptr) + 1;
    } else {
        const char *colon = memchr(host.ptr, ':', hlen);
        if (colon != NULL)
            hlen = (size_t)(colon - host.ptr);
    }
    if (3 + hlen + 3 + plen + 3 + target.len > cap)
        return 0;
    if (cc->key_host) {
        memcpy(out + n, "h:", 2);
        n += 2;
        for (size_t i = 0; i < hlen; i++)
            out[n++] = lower(host.ptr[i]);
        out[n++] = '\n';
    }
    memcpy(out + n, "p:", 2);
    n += 2;
    memcpy(out + n, target.ptr, plen);
    n += plen;
    if (cc->key_query && q != NULL) {
        size_t ql = target.len - plen - 1;
        memcpy(out + n, "\nq:", 3);
        n += 3;
        memcpy(out + n, q + 1, ql);
        n += ql;
    }
    return n;
}

uint64_t gw_hash64(const void *data, size_t n, uint64_t seed)
{
    const unsigned char *p = data;
    uint64_t h = seed ^ (n * 0x9e3779b97f4a7c15ull);

    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    if (n > 0) {
        uint64_t w = 0;
        memcpy(&w, p, n);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
    }
    h ^= h >> 29;
    h *= 0x94d049bb133111ebull;
    return h ^ (h >> 32);
}

/* ---- responses ---- */

static bool status_storable(int s)
{
    /* "heuristically cacheable" status codes, RFC 9110 15.1 */
    switch (s) {
    case 200: case 203: case 204: case 300: case 301: case 308:
    case 404: case 405: case 410: case 414: case 501:
        return true;
    }
    return false;
}

const char *gw_cache_storable(const struct gw_cache_conf *cc, const struct gw_response *resp,
                              bool authorized, int64_t now_s, struct gw_cache_life *life)
{
    const struct gw_header *h = resp->headers;
    size_t n = resp->nheaders;
    const struct gw_header *x;
    struct gw_cc rc;
    int64_t lifetime;

    if (!status_storable(resp->status))
        return "status";
    gw_cc_parse(h, n, &rc);
    if (rc.no_store)
        return "no-store";
    if (rc.private_)
        return "private";
    if (rc.no_cache)
        return "no-cache"; /* would need revalidation on every use */
    if (gw_cache_vary_names(h, n, NULL, 0) == -2)
        return "vary *";
    if (!cc->store_set_cookie && gw_http_find_header(h, n, "set-cookie") != NULL)
        return "set-cookie";
    if (authorized && !rc.public_ && rc.s_maxage < 0 && !rc.must_revalidate)
        return "authorization";

    if (rc.s_maxage >= 0) {
        lifetime = rc.s_maxage;
    } else if (rc.max_age >= 0) {
        lifetime = rc.max_age;
    } else if ((x = gw_http_find_header(h, n, "expires")) != NULL) {
        const struct gw_header *d = gw_http_find_header(h, n, "date");
        int64_t exp = gw_http_date_parse(x->value);
        int64_t date = d != NULL ? gw_http_date_parse(d->value) : -1;
        lifetime = exp < 0 ? 0 : exp - (date >= 0 ? date : now_s);
    } else if (cc->ttl_s > 0) {
        lifetime = cc->ttl_s;
    } else {
        return "no freshness";
    }
    life->age_s = 0;
    if ((x = gw_http_find_header(h, n, "age")) != NULL)
        life->age_s = delta_seconds(x->value);
    life->fresh_s = lifetime - life->age_s;
    if (life->fresh_s <= 0)
        return "stale";
    if (rc.must_revalidate || rc.proxy_revalidate || rc.s_maxage >= 0)
        life->stale_s = 0; /* s-maxage implies proxy-revalidate (RFC 9111 5.2.2.10) */
    else
        life->stale_s = rc.stale_if_error >= 0 ? rc.stale_if_error : cc->stale_if_error_s;
    return NULL;
}

/* Returns the length, -1 when out is too small, -2 for "Vary: *". With
 * out NULL only the "*" check is made. */
int gw_cache_vary_names(const struct gw_header *h, size_t n, char *out, size_t cap)
{
    size_t len = 0;
    bool small = false;

    for (size_t i = 0; i < n; i++) {
        const char *p, *e;

        if (!gw_slice_ieq(h[i].name, "vary"))
            continue;
        p = h[i].value.ptr;
        e = p + h[i].value.len;
        while (p < e) {
            const char *t;
            while (p < e && (is_blank(*p) || *p == ','))
                p++;
            t = p;
            while (p < e && *p != ',' && !is_blank(*p))
                p++;
            if (p == t)
                continue;
            if (p - t == 1 && *t == '*')
                return -2;
            if (out == NULL)
                continue;
            if (len + (size_t)(p - t) + 1 > cap) {
                small = true;
                continue;
            }
            if (len > 0)
                out[len++] = ',';
            for (; t < p; t++)
                out[len++] = lower(*t);
        }
    }
    return small ? -1 : (int)len;
}

uint64_t gw_cache_vary_hash(struct gw_slice names, const struct gw_header *h, size_t n)
{
    uint64_t acc = 0x5157;
    const char *p = names.ptr, *e = p + names.len;

    while (p < e) {
        const char *t = p;
        while (p < e && *p != ',')
            p++;
        struct gw_slice name = gw_slice(t, (size_t)(p - t));
        if (p < e)
            p++;
        acc = gw_hash64(name.ptr, name.len, acc);
        for (size_t i = 0; i < n; i++) {
            bool same = h[i].name.len == name.len;
            for (size_t k = 0; k < name.len && same; k++)
                same = lower(h[i].name.ptr[k]) == name.ptr[k];
            if (same)
                acc = gw_hash64(h[i].value.ptr, h[i].value.len, acc ^ 0x2c);
        }
        acc ^= 0x0a; /* absent and empty differ from the next name's values */
    }
    return acc;
}

/* ---- blobs ---- */

enum {
    B_MAGIC = 0x31435747, /* "GWC1" little-endian */
    B_HEAD = 96,          /* fixed part */
};

static void put32(char *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static void put64(char *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

static uint32_t get32(const char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t get64(const char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

size_t gw_cache_blob_size(size_t key, size_t vary, size_t etag, size_t lm, size_t head,
                          size_t body)
{
    return B_HEAD + key + vary + etag + lm + head + body + 8;
}

void gw_cache_blob_write(struct gw_cache_entry *e, char *out, size_t size)
{
    struct gw_slice *parts[6] = {&e->key, &e->vary, &e->etag, &e->last_modified, &e->head,
                                 &e->body};
    char *p = out + B_HEAD;

    put32(out, B_MAGIC);
    put32(out + 4, 1);
    put64(out + 8, size);
    put64(out + 16, e->key_hash);
    put64(out + 24, (uint64_t)e->stored_ms);
    put64(out + 32, (uint64_t)e->fresh_until_ms);
    put64(out + 40, (uint64_t)e->stale_until_ms);
    put64(out + 48, (uint64_t)e->age_s);
    put32(out + 56, e->status);
    put32(out + 60, (uint32_t)e->key.len);
    put32(out + 64, (uint32_t)e->vary.len);
    put32(out + 68, (uint32_t)e->etag.len);
    put32(out + 72, (uint32_t)e->last_modified.len);
    put32(out + 76, (uint32_t)e->head.len);
    put64(out + 80, e->vary_hash);
    put64(out + 88, e->body.len);
    for (int i = 0; i < 6; i++) {
        /* a part may already sit where it belongs (the body is captured
         * into place); memmove copes with either */
        if (parts[i]->len > 0 && parts[i]->ptr != p)
            memmove(p, parts[i]->ptr, parts[i]->len);
        parts[i]->ptr = p;
        p += parts[i]->len;
    }
    put64(p, gw_hash64(out, (size_t)(p - out), 0x67776331));
}

bool gw_cache_blob_read(const char *p, size_t n, struct gw_cache_entry *e)
{
    struct gw_slice *parts[6] = {&e->key, &e->vary, &e->etag, &e->last_modified, &e->head,
                                 &e->body};
    uint64_t lens[6], sum = 0;
    const char *q;

    if (n < B_HEAD + 8 || get32(p) != B_MAGIC || get32(p + 4) != 1 || get64(p + 8) != n)
        return false;
    lens[0] = get32(p + 60);
    lens[1] = get32(p + 64);
    lens[2] = get32(p + 68);
    lens[3] = get32(p + 72);
    lens[4] = get32(p + 76);
    lens[5] = get64(p + 88);
    for (int i = 0; i < 6; i++) {
        if (lens[i] > n)
            return false;
        sum += lens[i];
    }
    if (sum != n - B_HEAD - 8)
        return false;
    if (get64(p + n - 8) != gw_hash64(p, n - 8, 0x67776331))
        return false;
    e->key_hash = get64(p + 16);
    e->stored_ms = (int64_t)get64(p + 24);
    e->fresh_until_ms = (int64_t)get64(p + 32);
    e->stale_until_ms = (int64_t)get64(p + 40);
    e->age_s = (int64_t)get64(p + 48);
    e->status = get32(p + 56);
    e->vary_hash = get64(p + 80);
    q = p + B_HEAD;
    for (int i = 0; i < 6; i++) {
        *parts[i] = gw_slice(q, (size_t)lens[i]);
        q += lens[i];
    }
    return true;
}

/* ---- conditional requests ---- */

size_t gw_cache_head_304(const struct gw_cache_entry *e, char *out, size_t cap)
{
    static const char status[] = "HTTP/1.1 304 Not Modified\r\n";
    static const char *const keep[] = {"cache-control", "content-location", "date", "etag",
                                       "expires",       "last-modified",    "vary"};
    const char *p = e->head.ptr, *end = p + e->head.len;
    size_t n = sizeof(status) - 1;

    if (cap < n)
        return 0;
    memcpy(out, status, n);
    p = memchr(p, '\n', e->head.len); /* past the stored status line */
    p = p != NULL ? p + 1 : end;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *colon = memchr(p, ':', (size_t)(end - p));
        size_t len = eol != NULL ? (size_t)(eol - p) + 1 : (size_t)(end - p);
        bool wanted = false;

        for (size_t k = 0; colon != NULL && k < sizeof(keep) / sizeof(keep[0]) && !wanted; k++)
            wanted = ieq_n(p, (size_t)(colon - p), keep[k]);
        if (wanted) {
            if (n + len > cap)
                return 0;
            memcpy(out + n, p, len);
            n += len;
        }
        p += len;
    }
    return n;
}

static struct gw_slice opaque_tag(struct gw_slice t)
{
    if (t.len >= 2 && t.ptr[0] == 'W' && t.ptr[1] == '/')
        return gw_slice(t.ptr + 2, t.len - 2);
    return t;
}

/* Whether the list of entity tags (or "*") holds want, compared weakly. */
static bool tag_listed(struct gw_slice list, struct gw_slice want)
{
    const char *p = list.ptr, *e = p + list.len;

    while (p < e) {
        const char *t;
        while (p < e && (is_blank(*p) || *p == ','))
            p++;
        t = p;
        if (p + 2 <= e && p[0] == 'W' && p[1] == '/')
            p += 2;
        if (p < e && *p == '"') {
            const char *close = memchr(p + 1, '"', (size_t)(e - p - 1));
            p = close != NULL ? close + 1 : e;
        } else {
            while (p < e && *p != ',' && !is_blank(*p))
                p++;
        }
        struct gw_slice tag = opaque_tag(gw_slice(t, (size_t)(p - t)));
        if ((tag.len == 1 && tag.ptr[0] == '*') ||
            (tag.len == want.len && tag.len > 0 && memcmp(tag.ptr, want.ptr, tag.len) == 0))
            return true;
        while (p < e && *p != ',')
            p++;
    }
    return false;
}

bool gw_cache_not_modified(const struct gw_cache_entry *e, const struct gw_header *h, size_t n)
{
    const struct gw_header *inm = gw_http_find_header(h, n, "if-none-match");
    const struct gw_header *ims;
    int64_t since, lm;

    if (inm != NULL) {
        struct gw_slice want = opaque_tag(e->etag);
        for (size_t i = 0; i < n; i++)
            if (gw_slice_ieq(h[i].name, "if-none-match") && tag_listed(h[i].value, want))
                return true;
        return false;
    }
    ims = gw_http_find_header(h, n, "if-modified-since");
    if (ims == NULL || e->last_modified.len == 0 || (e->status != 200 && e->status != 203))
        return false;
    since = gw_http_date_parse(ims->value);
    lm = gw_http_date_parse(e->last_modified);
    return since >= 0 && lm >= 0 && lm <= since;
}
