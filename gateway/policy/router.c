/* Owns route selection: a linear scan of the snapshot's routes in file
 * order. Runs on every request, so it allocates nothing and touches only
 * the request's bytes and the route strings; route hosts are stored
 * lower-case and with their lengths, so comparisons are length-first. */
#include "policy/router.h"

#include <string.h>

static inline char lower(char ch)
{
    return ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
}

/* s (any case) equals the lower-case l, both n bytes long. */
static bool eq_lower(const char *s, const char *l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower(s[i]) != l[i])
            return false;
    return true;
}

/* The host without ":port", and without a trailing root dot
 * ("example.com." names the same host, as nginx treats it). */
static struct gw_slice host_only(struct gw_slice h)
{
    const char *end;

    if (h.len == 0)
        return h;
    if (h.ptr[0] == '[') {
        end = memchr(h.ptr, ']', h.len);
        if (end != NULL)
            h.len = (size_t)(end - h.ptr) + 1;
        return h;
    }
    end = memchr(h.ptr, ':', h.len);
    if (end != NULL)
        h.len = (size_t)(end - h.ptr);
    if (h.len > 0 && h.ptr[h.len - 1] == '.')
        h.len--;
    return h;
}

static bool host_matches(const struct gw_route *r, struct gw_slice h)
{
    switch (r->host_match) {
    case GW_HOST_ANY:
        return true;
    case GW_HOST_EXACT:
        return h.len == r->host_len && eq_lower(h.ptr, r->host, h.len);
    case GW_HOST_SUFFIX:
        /* ".example.com" needs at least one label in front of it. */
        return h.len > r->host_len && eq_lower(h.ptr + h.len - r->host_len, r->host, r->host_len);
    }
    return false;
}

static bool path_matches(const struct gw_route *r, struct gw_slice p)
{
    if (r->path_exact)
        return p.len == r->path_len && memcmp(p.ptr, r->path, p.len) == 0;
    return p.len >= r->path_len && memcmp(p.ptr, r->path, r->path_len) == 0;
}

/* NUL-terminated m equals the slice, without reading past either. */
static bool str_eq(const char *m, struct gw_slice s)
{
    size_t i;

    for (i = 0; i < s.len; i++)
        if (m[i] == '\0' || m[i] != s.ptr[i])
            return false;
    return m[i] == '\0';
}

static bool method_matches(const struct gw_route *r, struct gw_slice m)
{
    if (r->methods == NULL)
        return true;
    for (size_t i = 0; i < r->nmethods; i++)
        if (str_eq(r->methods[i], m))
            return true;
    return false;
}

const struct gw_route *gw_router_match(const struct gw_config *cfg, struct gw_slice host,
                                       struct gw_slice path, struct gw_slice method)
{
    const char *q;

    host = host_only(host);
    if (path.len > 0 && (q = memchr(path.ptr, '?', path.len)) != NULL)
        path.len = (size_t)(q - path.ptr);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct gw_route *r = &cfg->routes[i];

        if (host_matches(r, host) && path_matches(r, path) && method_matches(r, method))
            return r;
    }
    return NULL;
}
