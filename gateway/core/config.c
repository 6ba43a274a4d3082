/* Owns loading a libconfig file into a struct gw_config snapshot: every key
 * is checked (unknown keys, types, ranges, addresses, cross references)
 * before the snapshot exists, and every failure is one "FILE:LINE: why"
 * line. Owns the snapshot's memory and its reference count. */
#include "core/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/mem.h"

#define MAX_LISTENS 64
#define MAX_SERVERS 256
#define MAX_NAME 64
#define MAX_HOST 253

struct ctx {
    const char *path; /* as given by the caller: the FILE of "FILE:LINE" */
    char *err;
    size_t errlen;
    const struct gw_config *cfg; /* what is parsed so far (cross references) */
};

/* Allowed keys per group: the unknown-key check and the schema in one place. */
static const char *const top_keys[] = {"workers",   "access_log",   "drain_timeout_ms",
                                       "listen",    "admin",        "limits",
                                       "upstreams", "routes",       "trusted_proxies",
                                       "cache",     "busy_poll_us", "redis",
                                       "tls_helpers", NULL};
static const char *const listen_keys[] = {"address", "deadline_header", "defer_accept", "tls",
                                          NULL};
static const char *const tls_keys[] = {"cert", "key", "certs", "min_version", "ciphers", "alpn",
                                       NULL};
static const char *const tls_cert_keys[] = {"cert", "key", NULL};
static const char *const admin_keys[] = {"address", NULL};
static const char *const limits_keys[] = {"max_header_bytes",  "max_body_bytes",
                                          "header_timeout_ms", "idle_timeout_ms",
                                          "max_connections",   NULL};
static const char *const upstream_keys[] = {
    "name",    "servers",      "balance",     "keepalive", "connect_timeout_ms",
    "breaker", "max_requests", "max_pending", "tls", NULL};
static const char *const upstream_tls_keys[] = {"verify", "ca",      "sni", "cert",
                                                "key",    "ciphers", NULL};
static const char *const breaker_keys[] = {"failures",     "error_rate", "window_ms",
                                           "min_requests", "open_ms",    "half_open_requests",
                                           "failure_status", NULL};
static const char *const route_keys[] = {
    "name",       "host",           "path_prefix",   "path",           "methods",
    "upstream",   "timeout_ms",     "rate_limit",    "deadline_header", "retries",
    "retry_on",   "retry_budget",   "try_timeout_ms", "retry_methods",  "cache", NULL};
static const char *const rate_limit_keys[] = {"rate",     "burst", "key", "headers",
                                              "max_keys", "scope", NULL};
static const char *const cache_keys[] = {"l1_bytes", "l1_ttl_s", "purge_from", NULL};
static const char *const redis_keys[] = {"address", "password", "db", "timeout_ms", NULL};
static const char *const route_cache_keys[] = {"ttl_s",           "max_object_bytes",
                                               "key",             "cache_authorized",
                                               "store_set_cookie", "stale_if_error_s",
                                               NULL};

/* A member of group, or NULL when either is absent. */
static const config_setting_t *member(const config_setting_t *group, const char *key)
{
    return group != NULL ? config_setting_get_member(group, key) : NULL;
}

static void errf(struct ctx *c, const char *file, int line, const char *fmt, va_list ap)
{
    int n;

    if (c->err == NULL || c->errlen == 0)
        return;
    n = snprintf(c->err, c->errlen, "%s:%d: ", file, line);
    if (n < 0 || (size_t)n >= c->errlen)
        return;
    vsnprintf(c->err + n, c->errlen - n, fmt, ap);
}

/* Reports at the line of s, or of the nearest enclosing setting that has
 * one. The root group has no line: errors about it point at line 1. */
__attribute__((format(printf, 3, 4))) static int fail(struct ctx *c, const config_setting_t *s,
                                                      const char *fmt, ...)
{
    const char *file = NULL;
    int line = 0;
    va_list ap;

    for (; s != NULL; s = config_setting_parent(s)) {
        if (config_setting_source_line(s) != 0) {
            line = config_setting_source_line(s);
            file = config_setting_source_file(s);
            break;
        }
    }
    va_start(ap, fmt);
    errf(c, file ? file : c->path, line ? line : 1, fmt, ap);
    va_end(ap);
    return -1;
}

__attribute__((format(printf, 4, 5))) static int fail_at(struct ctx *c, const char *file, int line,
                                                         const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    errf(c, file, line, fmt, ap);
    va_end(ap);
    return -1;
}

static int check_keys(struct ctx *c, const config_setting_t *group, const char *const *keys,
                      const char *what)
{
    int n = config_setting_length(group);

    for (int i = 0; i < n; i++) {
        const config_setting_t *s = config_setting_get_elem(group, i);
        const char *name = config_setting_name(s);
        const char *const *k;

        for (k = keys; *k != NULL; k++)
            if (strcmp(*k, name) == 0)
                break;
        if (*k == NULL) {
            if (what == NULL)
                return fail(c, s, "unknown top-level key '%s'", name);
            return fail(c, s, "unknown key '%s' in %s", name, what);
        }
    }
    return 0;
}

/* An integer setting in [lo, hi], or def when it (or its group) is absent. Both 32-bit and 64-bit
 * ("L" suffix) settings are accepted. */
static int get_int(struct ctx *c, const config_setting_t *group, const char *key, long long lo,
                   long long hi, long long def, long long *out)
{
    const config_setting_t *s = member(group, key);
    long long v = 0;

    if (s == NULL) {
        *out = def;
        return 0;
    }
    if (config_setting_type(s) != CONFIG_TYPE_INT && config_setting_type(s) != CONFIG_TYPE_INT64)
        return fail(c, s, "'%s' must be an integer", key);
    v = config_setting_get_int64(s);
    if (v < lo || v > hi)
        return fail(c, s, "'%s' must be between %lld and %lld, not %lld", key, lo, hi, v);
    *out = v;
    return 0;
}

static int get_u32(struct ctx *c, const config_setting_t *group, const char *key, long long lo,
                   long long hi, long long def, unsigned *out)
{
    long long v = 0;

    if (get_int(c, group, key, lo, hi, def, &v) == -1)
        return -1;
    *out = (unsigned)v;
    return 0;
}

static int get_bool(struct ctx *c, const config_setting_t *group, const char *key, bool def,
                    bool *out)
{
    const config_setting_t *s = member(group, key);

    if (s == NULL) {
        *out = def;
        return 0;
    }
    if (config_setting_type(s) != CONFIG_TYPE_BOOL)
        return fail(c, s, "'%s' must be true or false", key);
    *out = config_setting_get_bool(s) != 0;
    return 0;
}

/* A number (integer or float) in [lo, hi], or def when absent. */
static int get_double(struct ctx *c, const config_setting_t *group, const char *key, double lo,
                      double hi, double def, double *out)
{
    const config_setting_t *s = member(group, key);
    double v;

    if (s == NULL) {
        *out = def;
        return 0;
    }
    if (config_setting_type(s) == CONFIG_TYPE_FLOAT)
        v = config_setting_get_float(s);
    else if (config_setting_type(s) == CONFIG_TYPE_INT || config_setting_type(s) == CONFIG_TYPE_INT64)
        v = (double)config_setting_get_int64(s);
    else
        return fail(c, s, "'%s' must be a number", key);
    if (!(v >= lo && v <= hi))
        return fail(c, s, "'%s' must be between %g and %g, not %g", key, lo, hi, v);
    *out = v;
    return 0;
}

/* A string setting; *out is NULL when absent. *where is the setting (for
 * later errors about its value), or NULL. */
static int get_string(struct ctx *c, const config_setting_t *group, const char *key,
                      const char **out, const config_setting_t **where)
{
    const config_setting_t *s = member(group, key);

    *out = NULL;
    if (where != NULL)
        *where = s;
    if (s == NULL)
        return 0;
    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return fail(c, s, "'%s' must be a string", key);
    *out = config_setting_get_string(s);
    return 0;
}

static int require_string(struct ctx *c, const config_setting_t *group, const char *key,
                          const char *what, const char **out, const config_setting_t **where)
{
    if (get_string(c, group, key, out, where) == -1)
        return -1;
    if (*out == NULL)
        return fail(c, group, "missing required key '%s' in %s", key, what);
    return 0;
}

static bool is_list(const config_setting_t *s)
{
    return config_setting_type(s) == CONFIG_TYPE_LIST ||
           config_setting_type(s) == CONFIG_TYPE_ARRAY;
}

static int get_group(struct ctx *c, const config_setting_t *parent, const char *key,
                     const config_setting_t **out)
{
    const config_setting_t *s = config_setting_get_member(parent, key);

    *out = s;
    if (s != NULL && config_setting_type(s) != CONFIG_TYPE_GROUP)
        return fail(c, s, "'%s' must be a group { ... }", key);
    return 0;
}

/* A list of groups "( { ... }, { ... } )"; *out is NULL when absent. */
static int get_group_list(struct ctx *c, const config_setting_t *parent, const char *key,
                          const char *what, const config_setting_t **out)
{
    const config_setting_t *s = config_setting_get_member(parent, key);

    *out = s;
    if (s == NULL)
        return 0;
    if (!is_list(s))
        return fail(c, s, "'%s' must be a list of groups: %s = ( { ... } )", key, key);
    for (int i = 0; i < config_setting_length(s); i++) {
        const config_setting_t *e = config_setting_get_elem(s, i);
        if (config_setting_type(e) != CONFIG_TYPE_GROUP)
            return fail(c, e, "each %s in '%s' must be a group { ... }", what, key);
    }
    return 0;
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > MAX_NAME)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == '-'))
            return false;
    }
    return true;
}

static int check_name(struct ctx *c, const config_setting_t *s, const char *what, const char *name)
{
    if (!valid_name(name))
        return fail(c, s, "%s name '%s' is invalid: use 1 to %d characters from A-Z a-z 0-9 _ . -",
                    what, name, MAX_NAME);
    return 0;
}

static bool valid_token(const char *s);
static int get_header_name(struct ctx *c, const config_setting_t *g, const char *key,
                           bool allow_empty, char **out);
static int parse_breaker(struct ctx *c, const config_setting_t *ug, struct gw_upstream *u);

/* Returns NULL on success or why the text is not an address. */
static const char *parse_addr(const char *text, struct gw_sockaddr *out)
{
    char host[INET6_ADDRSTRLEN];
    const char *colon, *hs, *he, *p;
    unsigned long port = 0;
    bool v6 = false;

    if (text[0] == '[') {
        he = strchr(text, ']');
        if (he == NULL)
            return "missing ']' after the IPv6 address";
        if (he[1] != ':')
            return "missing ':port' after the IPv6 address";
        hs = text + 1;
        colon = he + 1;
        v6 = true;
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL)
            return "missing ':port'";
        hs = text;
        he = colon;
        if (memchr(hs, ':', he - hs) != NULL)
            return "put an IPv6 address in brackets, as in [::1]:8080";
    }
    p = colon + 1;
    if (*p == '\0' || strlen(p) > 5)
        return "the port must be a number from 1 to 65535";
    for (; *p != '\0'; p++) {
        if (*p < '0' || *p > '9')
            return "the port must be a number from 1 to 65535";
        port = port * 10 + (unsigned long)(*p - '0');
    }
    if (port < 1 || port > 65535)
        return "the port must be a number from 1 to 65535";
    if (he == hs)
        return "missing the IP address before ':port'";
    if ((size_t)(he - hs) >= sizeof(host))
        return "not an IP address (host names are not resolved: use an IP address)";
    memcpy(host, hs, he - hs);
    host[he - hs] = '\0';

    memset(out, 0, sizeof(*out));
    if (v6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->sa;
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
            return "not an IPv6 address";
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        out->len = sizeof(*sin6);
        inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
        snprintf(out->text, sizeof(out->text), "[%s]:%lu", host, port);
    } else {
        struct sockaddr_in *sin = (struct sockaddr_in *)&out->sa;
        if (strcmp(host, "*") == 0)
            sin->sin_addr.s_addr = htonl(INADDR_ANY);
        else if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
            return "not an IP address (host names are not resolved: use an IP address)";
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        out->len = sizeof(*sin);
        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
        snprintf(out->text, sizeof(out->text), "%s:%lu", host, port);
    }
    return NULL;
}

int gw_sockaddr_parse(const char *text, struct gw_sockaddr *out)
{
    return parse_addr(text, out) == NULL ? 0 : -1;
}

/* s is a string setting holding an address. */
static int addr_setting(struct ctx *c, const config_setting_t *s, const char *text,
                        struct gw_sockaddr *out)
{
    const char *why = parse_addr(text, out);

    if (why != NULL)
        return fail(c, s, "invalid address '%s': %s", text, why);
    return 0;
}

/* A list of strings (any text) into a new array; absent leaves it NULL. */
static int string_list(struct ctx *c, const config_setting_t *g, const char *key, char ***out,
                       size_t *nout)
{
    const config_setting_t *list = member(g, key);
    int n;

    if (list == NULL)
        return 0;
    if (!is_list(list) || (n = config_setting_length(list)) == 0)
        return fail(c, list, "'%s' must be a non-empty list of strings", key);
    *out = gw_xcalloc((size_t)n + 1, sizeof(**out)); /* NULL-terminated, as mbedtls wants */
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(list, i);
        if (config_setting_type(e) != CONFIG_TYPE_STRING || config_setting_get_string(e)[0] == 0)
            return fail(c, e, "each entry of '%s' must be a non-empty string", key);
        (*out)[(*nout)++] = gw_xstrdup(config_setting_get_string(e));
    }
    return 0;
}

static int tls_pair(struct ctx *c, const config_setting_t *g, struct gw_tls_conf *t)
{
    const char *cert, *key;

    if (require_string(c, g, "cert", "tls", &cert, NULL) == -1 ||
        require_string(c, g, "key", "tls", &key, NULL) == -1)
        return -1;
    t->certs = gw_xrealloc(t->certs, (t->ncerts + 1) * sizeof(*t->certs));
    t->keys = gw_xrealloc(t->keys, (t->ncerts + 1) * sizeof(*t->keys));
    t->certs[t->ncerts] = gw_xstrdup(cert);
    t->keys[t->ncerts] = gw_xstrdup(key);
    t->ncerts++;
    return 0;
}

static int parse_tls(struct ctx *c, const config_setting_t *lg, struct gw_tls_conf *t)
{
    const config_setting_t *g, *list, *vs;
    const char *v;

    if (get_group(c, lg, "tls", &g) == -1)
        return -1;
    if (g == NULL)
        return 0;
    if (check_keys(c, g, tls_keys, "tls") == -1)
        return -1;
    t->enabled = true;
    t->file = gw_xstrdup(config_setting_source_file(g) ? config_setting_source_file(g) : c->path);
    t->line = config_setting_source_line(g);
    list = member(g, "certs");
    if (list != NULL && (member(g, "cert") != NULL || member(g, "key") != NULL))
        return fail(c, list, "tls: give either cert and key, or certs, not both");
    if (list != NULL) {
        if (!is_list(list) || config_setting_length(list) == 0)
            return fail(c, list, "'certs' must be a list of { cert = ...; key = ...; } groups");
        for (int i = 0; i < config_setting_length(list); i++) {
            const config_setting_t *e = config_setting_get_elem(list, i);
            if (config_setting_type(e) != CONFIG_TYPE_GROUP)
                return fail(c, e, "each entry of 'certs' must be a group { cert; key; }");
            if (check_keys(c, e, tls_cert_keys, "tls certs") == -1 || tls_pair(c, e, t) == -1)
                return -1;
        }
    } else if (tls_pair(c, g, t) == -1) {
        return -1;
    }
    if (get_string(c, g, "min_version", &v, &vs) == -1)
        return -1;
    if (v != NULL && strcmp(v, "1.2") != 0)
        return fail(c, vs, "min_version must be \"1.2\" (this mbedtls serves TLS 1.2), not "
                           "\"%s\"", v);
    if (string_list(c, g, "ciphers", &t->ciphers, &t->nciphers) == -1 ||
        string_list(c, g, "alpn", &t->alpn, &t->nalpn) == -1)
        return -1;
    return 0;
}

static bool valid_hostname(const char *s);

static int parse_upstream_tls(struct ctx *c, const config_setting_t *ug,
                              struct gw_upstream_tls_conf *t)
{
    const config_setting_t *g, *s;
    const char *v;

    if (get_group(c, ug, "tls", &g) == -1)
        return -1;
    if (g == NULL)
        return 0;
    if (check_keys(c, g, upstream_tls_keys, "upstream tls") == -1)
        return -1;
    t->enabled = true;
    t->file = gw_xstrdup(config_setting_source_file(g) ? config_setting_source_file(g) : c->path);
    t->line = config_setting_source_line(g);
    if (get_bool(c, g, "verify", true, &t->verify) == -1)
        return -1;
    if (get_string(c, g, "ca", &v, &s) == -1)
        return -1;
    if (v != NULL) {
        if (v[0] == '\0')
            return fail(c, s, "'ca' must name a file of CA certificates");
        t->ca = gw_xstrdup(v);
    }
    if (get_string(c, g, "sni", &v, &s) == -1)
        return -1;
    if (v != NULL) {
        char *h = gw_xstrdup(v);
        for (char *p = h; *p != '\0'; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
        t->sni = h;
        if (!valid_hostname(h))
            return fail(c, s, "'sni' must be a DNS name such as \"api.example.com\", not \"%s\"",
                        v);
    }
    if (get_string(c, g, "cert", &v, &s) == -1)
        return -1;
    if (v != NULL)
        t->cert = gw_xstrdup(v);
    if (get_string(c, g, "key", &v, &s) == -1)
        return -1;
    if (v != NULL)
        t->key = gw_xstrdup(v);
    if ((t->cert == NULL) != (t->key == NULL))
        return fail(c, g, "upstream tls: a client certificate needs both 'cert' and 'key'");
    if (string_list(c, g, "ciphers", &t->ciphers, &t->nciphers) == -1)
        return -1;
    return 0;
}

static int parse_listens(struct ctx *c, const config_setting_t *root, struct gw_config *cfg)
{
    const config_setting_t *list;
    int n;

    if (get_group_list(c, root, "listen", "entry", &list) == -1)
        return -1;
    if (list == NULL)
        return fail(c, root, "missing required key 'listen'");
    n = config_setting_length(list);
    if (n < 1 || n > MAX_LISTENS)
        return fail(c, list, "'listen' must have 1 to %d entries, not %d", MAX_LISTENS, n);
    cfg->listens = gw_xcalloc(n, sizeof(*cfg->listens));
    for (int i = 0; i < n; i++) {
        const config_setting_t *g = config_setting_get_elem(list, i), *as;
        struct gw_listen *l = &cfg->listens[i];
        const char *text;

        if (check_keys(c, g, listen_keys, "listen") == -1)
            return -1;
        if (require_string(c, g, "address", "listen", &text, &as) == -1)
            return -1;
        if (addr_setting(c, as, text, &l->addr) == -1)
            return -1;
        for (int j = 0; j < i; j++) {
            if (strcmp(cfg->listens[j].addr.text, l->addr.text) == 0) {
                const config_setting_t *prev = config_setting_get_elem(list, j);
                return fail(c, as, "duplicate listen address %s (also on line %d)", l->addr.text,
                            config_setting_source_line(prev));
            }
        }
        cfg->nlistens++;
        if (get_header_name(c, g, "deadline_header", true, &l->deadline_header) == -1)
            return -1;
        if (get_bool(c, g, "defer_accept", true, &l->defer_accept) == -1)
            return -1;
        if (parse_tls(c, g, &l->tls) == -1)
            return -1;
    }
    return 0;
}

static int parse_admin(struct ctx *c, const config_setting_t *root, struct gw_config *cfg)
{
    const config_setting_t *g, *as = NULL;
    const char *text = NULL;

    if (get_group(c, root, "admin", &g) == -1)
        return -1;
    if (g != NULL) {
        if (check_keys(c, g, admin_keys, "admin") == -1)
            return -1;
        if (get_string(c, g, "address", &text, &as) == -1)
            return -1;
    }
    if (text == NULL) {
        parse_addr("127.0.0.1:9901", &cfg->admin);
    } else if (addr_setting(c, as, text, &cfg->admin) == -1) {
        return -1;
    }
    for (size_t i = 0; i < cfg->nlistens; i++) {
        if (strcmp(cfg->listens[i].addr.text, cfg->admin.text) == 0) {
            const config_setting_t *l =
                config_setting_get_elem(config_setting_get_member(root, "listen"), (unsigned)i);
            return fail(c, as ? as : l, "the admin address %s is also a listen address",
                        cfg->admin.text);
        }
    }
    return 0;
}

static int parse_limits(struct ctx *c, const config_setting_t *root, struct gw_limits *lim)
{
    const config_setting_t *g;
    long long v = 0;

    if (get_group(c, root, "limits", &g) == -1)
        return -1;
    if (g != NULL && check_keys(c, g, limits_keys, "limits") == -1)
        return -1;
    if (get_int(c, g, "max_header_bytes", 1024, 1048576, 16384, &v) == -1)
        return -1;
    lim->max_header_bytes = (uint32_t)v;
    if (get_int(c, g, "max_body_bytes", 0, 1LL << 40, 10485760, &v) == -1)
        return -1;
    lim->max_body_bytes = (uint64_t)v;
    if (get_int(c, g, "header_timeout_ms", 1, 3600000, 10000, &v) == -1)
        return -1;
    lim->header_timeout_ms = (uint32_t)v;
    if (get_int(c, g, "idle_timeout_ms", 1, 86400000, 60000, &v) == -1)
        return -1;
    lim->idle_timeout_ms = (uint32_t)v;
    if (get_int(c, g, "max_connections", 1, 10000000, 10000, &v) == -1)
        return -1;
    lim->max_connections = (uint32_t)v;
    return 0;
}

static int parse_servers(struct ctx *c, const config_setting_t *g, struct gw_config *cfg,
                         struct gw_upstream *u)
{
    const config_setting_t *list = config_setting_get_member(g, "servers");
    int n;

    if (list == NULL)
        return fail(c, g, "missing required key 'servers' in upstream '%s'", u->name);
    if (!is_list(list))
        return fail(c, list, "'servers' must be a list of \"IP:port\" strings");
    n = config_setting_length(list);
    if (n < 1 || n > MAX_SERVERS)
        return fail(c, list, "'servers' must have 1 to %d entries, not %d", MAX_SERVERS, n);
    u->servers = gw_xcalloc(n, sizeof(*u->servers));
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(list, i);
        struct gw_server *s = &cfg->servers[cfg->nservers];

        if (config_setting_type(e) != CONFIG_TYPE_STRING)
            return fail(c, e, "each server must be a string \"IP:port\"");
        if (addr_setting(c, e, config_setting_get_string(e), &s->addr) == -1)
            return -1;
        for (size_t j = 0; j < u->nservers; j++)
            if (strcmp(u->servers[j]->addr.text, s->addr.text) == 0)
                return fail(c, e, "duplicate server %s in upstream '%s'", s->addr.text, u->name);
        s->index = (unsigned)cfg->nservers++;
        s->upstream = u;
        u->servers[u->nservers++] = s;
    }
    return 0;
}

static int parse_upstreams(struct ctx *c, const config_setting_t *root, struct gw_config *cfg)
{
    const config_setting_t *list;
    size_t total = 0;
    int n;

    if (get_group_list(c, root, "upstreams", "upstream", &list) == -1)
        return -1;
    if (list == NULL)
        return 0;
    n = config_setting_length(list);
    /* Every server lives in one array so that pointers to them are stable:
     * size it first. */
    for (int i = 0; i < n; i++) {
        const config_setting_t *s =
            config_setting_get_member(config_setting_get_elem(list, i), "servers");
        if (s != NULL && is_list(s))
            total += (size_t)config_setting_length(s);
    }
    cfg->servers = gw_xcalloc(total, sizeof(*cfg->servers));
    cfg->upstreams = gw_xcalloc(n, sizeof(*cfg->upstreams));
    for (int i = 0; i < n; i++) {
        const config_setting_t *g = config_setting_get_elem(list, i), *ns;
        struct gw_upstream *u = &cfg->upstreams[i];
        const char *name, *balance;

        if (check_keys(c, g, upstream_keys, "upstream") == -1)
            return -1;
        if (require_string(c, g, "name", "upstream", &name, &ns) == -1)
            return -1;
        if (check_name(c, ns, "upstream", name) == -1)
            return -1;
        for (int j = 0; j < i; j++) {
            if (strcmp(cfg->upstreams[j].name, name) == 0) {
                const config_setting_t *prev = config_setting_get_elem(list, j);
                return fail(c, ns, "duplicate upstream name '%s' (also on line %d)", name,
                            config_setting_source_line(prev));
            }
        }
        u->name = gw_xstrdup(name);
        u->index = (unsigned)i;
        cfg->nupstreams++;

        if (parse_servers(c, g, cfg, u) == -1)
            return -1;
        if (get_string(c, g, "balance", &balance, &ns) == -1)
            return -1;
        if (balance == NULL || strcmp(balance, "round_robin") == 0)
            u->balance = GW_BALANCE_ROUND_ROBIN;
        else if (strcmp(balance, "least_conn") == 0)
            u->balance = GW_BALANCE_LEAST_CONN;
        else
            return fail(c, ns, "'balance' must be \"round_robin\" or \"least_conn\", not \"%s\"",
                        balance);
        if (get_u32(c, g, "keepalive", 0, 100000, 32, &u->keepalive) == -1)
            return -1;
        if (get_u32(c, g, "connect_timeout_ms", 1, 600000, 1000, &u->connect_timeout_ms) == -1)
            return -1;
        if (parse_breaker(c, g, u) == -1)
            return -1;
        if (get_u32(c, g, "max_requests", 0, 10000000, 1024, &u->max_requests) == -1)
            return -1;
        if (get_u32(c, g, "max_pending", 0, 10000000, 256, &u->max_pending) == -1)
            return -1;
        if (parse_upstream_tls(c, g, &u->tls) == -1)
            return -1;
    }
    return 0;
}

static bool host_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
}

/* Dot-separated non-empty labels of [a-z0-9_-]; s is already lower-case. */
static bool valid_hostname(const char *s)
{
    size_t label = 0, n = strlen(s);

    if (n == 0 || n > MAX_HOST)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if (host_char(s[i])) {
            label++;
        } else {
            return false;
        }
    }
    return label != 0;
}

static int parse_host(struct ctx *c, const config_setting_t *s, const char *text,
                      struct gw_route *r)
{
    char *h;

    if (text == NULL || strcmp(text, "*") == 0) {
        r->host_match = GW_HOST_ANY;
        return 0;
    }
    h = gw_xstrdup(text);
    for (char *p = h; *p != '\0'; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    r->host = h;
    r->host_len = strlen(h);
    if (h[0] == '[') {
        struct in6_addr a;
        char inner[INET6_ADDRSTRLEN];
        size_t n = r->host_len;

        if (n < 3 || h[n - 1] != ']' || n - 2 >= sizeof(inner))
            return fail(
                c, s, "invalid host '%s': an IPv6 host is written \"[::1]\", without a port", text);
        memcpy(inner, h + 1, n - 2);
        inner[n - 2] = '\0';
        if (inet_pton(AF_INET6, inner, &a) != 1)
            return fail(c, s, "invalid host '%s': not an IPv6 address", text);
        r->host_match = GW_HOST_EXACT;
        return 0;
    }
    if (strchr(h, ':') != NULL)
        return fail(c, s, "invalid host '%s': leave out the port", text);
    if (h[0] == '*' && h[1] == '.') {
        if (!valid_hostname(h + 2))
            return fail(c, s, "invalid host '%s'", text);
        /* "*.example.com" is stored as ".example.com". */
        memmove(h, h + 1, r->host_len);
        r->host_len--;
        r->host_match = GW_HOST_SUFFIX;
        return 0;
    }
    if (strchr(h, '*') != NULL)
        return fail(c, s, "invalid host '%s': '*' is allowed only as \"*\" or a leading \"*.\"",
                    text);
    if (!valid_hostname(h))
        return fail(c, s, "invalid host '%s'", text);
    r->host_match = GW_HOST_EXACT;
    return 0;
}

static int parse_path(struct ctx *c, const config_setting_t *g, struct gw_route *r)
{
    const config_setting_t *ps, *es, *s;
    const char *prefix, *exact, *p;

    if (get_string(c, g, "path_prefix", &prefix, &ps) == -1)
        return -1;
    if (get_string(c, g, "path", &exact, &es) == -1)
        return -1;
    if (prefix != NULL && exact != NULL)
        return fail(c, config_setting_source_line(es) > config_setting_source_line(ps) ? es : ps,
                    "route '%s': use 'path' or 'path_prefix', not both", r->name);
    p = exact ? exact : prefix ? prefix : "/";
    s = exact ? es : ps;
    if (p[0] != '/')
        return fail(c, s, "'%s' must start with '/', not \"%s\"", config_setting_name(s), p);
    for (const char *q = p; *q != '\0'; q++) {
        unsigned char ch = (unsigned char)*q;
        if (ch == '?' || ch == '#')
            return fail(c, s, "'%s' must not contain '%c': the query is not matched",
                        config_setting_name(s), ch);
        if (ch <= 0x20 || ch == 0x7f)
            return fail(c, s, "'%s' must not contain spaces or control characters",
                        config_setting_name(s));
    }
    r->path = gw_xstrdup(p);
    r->path_len = strlen(p);
    r->path_exact = exact != NULL;
    return 0;
}

static bool valid_token(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s != '\0'; s++) {
        char ch = *s;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              strchr("!#$%&'*+-.^_`|~", ch) != NULL))
            return false;
    }
    return true;
}

/* A list of HTTP tokens under key (methods); *out NULL when absent. */
static int parse_token_list(struct ctx *c, const config_setting_t *g, const char *key,
                            const char *what, char ***out, size_t *nout)
{
    const config_setting_t *list = config_setting_get_member(g, key);
    int n;

    if (list == NULL)
        return 0;
    if (!is_list(list))
        return fail(c, list, "'%s' must be a list of strings, as in [ \"GET\", \"HEAD\" ]", key);
    n = config_setting_length(list);
    if (n == 0)
        return fail(c, list, "'%s' must not be empty (leave it out instead)", key);
    *out = gw_xcalloc(n, sizeof(**out));
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(list, i);
        const char *m;

        if (config_setting_type(e) != CONFIG_TYPE_STRING)
            return fail(c, e, "each %s must be a string", what);
        m = config_setting_get_string(e);
        if (!valid_token(m))
            return fail(c, e, "invalid %s \"%s\"", what, m);
        (*out)[(*nout)++] = gw_xstrdup(m);
    }
    return 0;
}

/* A header name setting: an HTTP token, or "" (off) when allow_empty. */
static int get_header_name(struct ctx *c, const config_setting_t *g, const char *key,
                           bool allow_empty, char **out)
{
    const config_setting_t *s;
    const char *text;

    if (get_string(c, g, key, &text, &s) == -1)
        return -1;
    if (text == NULL)
        return 0;
    if (!(allow_empty && text[0] == '\0') && !valid_token(text))
        return fail(c, s, "'%s' must be a header name, not \"%s\"", key, text);
    *out = gw_xstrdup(text);
    return 0;
}

static int parse_breaker(struct ctx *c, const config_setting_t *ug, struct gw_upstream *u)
{
    struct gw_breaker_conf *b = &u->breaker;
    const config_setting_t *g, *list;
    long long v;

    if (get_group(c, ug, "breaker", &g) == -1)
        return -1;
    /* Without a block: no breaker; 5xx still count as failures for metrics. */
    for (unsigned st = 500; st < 600; st++)
        b->fail_status[st / 64] |= 1ull << (st % 64);
    if (g == NULL)
        return 0;
    if (check_keys(c, g, breaker_keys, "breaker") == -1)
        return -1;
    b->enabled = true;
    if (get_u32(c, g, "failures", 0, 1000000, 5, &b->failures) == -1)
        return -1;
    if (get_double(c, g, "error_rate", 0.0, 1.0, 0.0, &b->error_rate) == -1)
        return -1;
    if (get_u32(c, g, "window_ms", 10, 3600000, 10000, &b->window_ms) == -1)
        return -1;
    if (get_u32(c, g, "min_requests", 1, 1000000, 20, &b->min_requests) == -1)
        return -1;
    if (get_u32(c, g, "open_ms", 1, 3600000, 5000, &b->open_ms) == -1)
        return -1;
    if (get_u32(c, g, "half_open_requests", 1, 10000, 1, &b->half_open_requests) == -1)
        return -1;
    if (b->failures == 0 && b->error_rate == 0.0)
        return fail(c, g, "breaker of upstream '%s': set 'failures' or 'error_rate' above 0",
                    u->name);
    list = config_setting_get_member(g, "failure_status");
    if (list == NULL)
        return 0;
    if (!is_list(list) || config_setting_length(list) == 0)
        return fail(c, list, "'failure_status' must be a non-empty list of statuses, as in "
                             "[ 502, 503, 504 ]");
    memset(b->fail_status, 0, sizeof(b->fail_status));
    for (int i = 0; i < config_setting_length(list); i++) {
        const config_setting_t *e = config_setting_get_elem(list, i);
        if (config_setting_type(e) != CONFIG_TYPE_INT)
            return fail(c, e, "each failure status must be an integer");
        v = config_setting_get_int(e);
        if (v < 400 || v > 599)
            return fail(c, e, "failure status must be 400..599, not %lld", v);
        b->fail_status[v / 64] |= 1ull << (v % 64);
    }
    return 0;
}

static int parse_rate_limit(struct ctx *c, const config_setting_t *rg, struct gw_route *r)
{
    struct gw_rate_limit_conf *rl = &r->rate_limit;
    const config_setting_t *g, *ks;
    const char *key;

    if (get_group(c, rg, "rate_limit", &g) == -1)
        return -1;
    if (g == NULL)
        return 0;
    if (check_keys(c, g, rate_limit_keys, "rate_limit") == -1)
        return -1;
    rl->enabled = true;
    if (member(g, "rate") == NULL)
        return fail(c, g, "missing required key 'rate' in rate_limit of route '%s'", r->name);
    if (get_double(c, g, "rate", 0.001, 1e9, 0, &rl->rate) == -1)
        return -1;
    if (get_u32(c, g, "burst", 1, 100000000, (long long)(rl->rate < 1 ? 1 : rl->rate),
                &rl->burst) == -1)
        return -1;
    if (get_bool(c, g, "headers", false, &rl->headers) == -1)
        return -1;
    if (get_u32(c, g, "max_keys", 16, 100000000, 65536, &rl->max_keys) == -1)
        return -1;
    if (get_string(c, g, "scope", &key, &ks) == -1)
        return -1;
    if (key != NULL && strcmp(key, "global") == 0) {
        if (!c->cfg->redis.enabled)
            return fail(c, ks, "rate_limit scope \"global\" keeps its buckets in Redis: it "
                               "needs a top-level redis block");
        rl->global = true;
    } else if (key != NULL && strcmp(key, "local") != 0) {
        return fail(c, ks, "'scope' must be \"local\" or \"global\", not \"%s\"", key);
    }
    if (get_string(c, g, "key", &key, &ks) == -1)
        return -1;
    if (key == NULL || strcmp(key, "client_ip") == 0) {
        rl->key = GW_RL_KEY_CLIENT_IP;
    } else if (strcmp(key, "route") == 0) {
        rl->key = GW_RL_KEY_ROUTE;
    } else if (strncmp(key, "header:", 7) == 0 && valid_token(key + 7)) {
        rl->key = GW_RL_KEY_HEADER;
        rl->header = gw_xstrdup(key + 7);
        rl->header_len = strlen(rl->header);
        for (char *p = rl->header; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
    } else {
        return fail(c, ks,
                    "'key' must be \"client_ip\", \"route\" or \"header:NAME\", not \"%s\"",
                    key);
    }
    return 0;
}

const struct gw_retry_cond gw_retry_conds[GW_RETRY_CONDS] = {
    {"connect-failure", GW_RETRY_CONNECT_FAILURE},
    {"reset", GW_RETRY_RESET},
    {"5xx", GW_RETRY_5XX},
    {"timeout", GW_RETRY_TIMEOUT}};

static int parse_retry(struct ctx *c, const config_setting_t *g, struct gw_route *r)
{
    const config_setting_t *list;

    if (get_u32(c, g, "retries", 0, 10, 1, &r->retries) == -1)
        return -1;
    if (get_double(c, g, "retry_budget", 0.0, 1.0, 0.2, &r->retry_budget) == -1)
        return -1;
    if (get_u32(c, g, "try_timeout_ms", 0, 86400000, 0, &r->try_timeout_ms) == -1)
        return -1;
    if (parse_token_list(c, g, "retry_methods", "method", &r->retry_methods,
                         &r->nretry_methods) == -1)
        return -1;
    list = config_setting_get_member(g, "retry_on");
    if (list == NULL) {
        r->retry_on = GW_RETRY_CONNECT_FAILURE | GW_RETRY_RESET;
        return 0;
    }
    if (!is_list(list))
        return fail(c, list, "'retry_on' must be a list, as in [ \"connect-failure\", \"5xx\" ]");
    for (int i = 0; i < config_setting_length(list); i++) {
        const config_setting_t *e = config_setting_get_elem(list, i);
        const char *v = config_setting_type(e) == CONFIG_TYPE_STRING
                            ? config_setting_get_string(e)
                            : NULL;
        size_t k;

        for (k = 0; v != NULL && k < GW_RETRY_CONDS; k++)
            if (strcmp(v, gw_retry_conds[k].name) == 0)
                break;
        if (v == NULL || k == GW_RETRY_CONDS)
            return fail(c, e,
                        "retry_on entries are \"connect-failure\", \"reset\", \"5xx\" or "
                        "\"timeout\"");
        r->retry_on |= gw_retry_conds[k].bit;
    }
    return 0;
}

static int parse_cidr(const char *text, struct gw_cidr *out)
{
    char buf[INET6_ADDRSTRLEN + 8];
    char *slash, *end;
    unsigned long prefix;
    unsigned max;

    if (strlen(text) >= sizeof(buf))
        return -1;
    strcpy(buf, text);
    slash = strchr(buf, '/');
    if (slash != NULL)
        *slash = '\0';
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        return -1;
    }
    prefix = max;
    if (slash != NULL) {
        errno = 0;
        prefix = strtoul(slash + 1, &end, 10);
        if (slash[1] == '\0' || *end != '\0' || errno != 0 || prefix > max)
            return -1;
    }
    out->prefix = (unsigned)prefix;
    return 0;
}

bool gw_cidr_match(const struct gw_cidr *c, int family, const void *addr)
{
    const uint8_t *a = addr;
    unsigned bits = c->prefix;

    if (family == AF_INET6 && c->family == AF_INET) {
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, mapped, 12) != 0)
            return false;
        a += 12;
        family = AF_INET;
    }
    if (family != c->family)
        return false;
    for (unsigned i = 0; bits > 0; i++, bits = bits > 8 ? bits - 8 : 0) {
        uint8_t mask = bits >= 8 ? 0xff : (uint8_t)(0xff << (8 - bits));
        if ((a[i] & mask) != (c->addr[i] & mask))
            return false;
    }
    return true;
}

/* A list of addresses or CIDR blocks; *out stays NULL when absent. */
static int parse_cidr_list(struct ctx *c, const config_setting_t *g, const char *key,
                           const char *what, struct gw_cidr **out, size_t *nout)
{
    const config_setting_t *list = member(g, key);
    int n;

    if (list == NULL)
        return 0;
    if (!is_list(list))
        return fail(c, list, "'%s' must be a list, as in [ \"10.0.0.0/8\" ]", key);
    n = config_setting_length(list);
    *out = gw_xcalloc(n ? n : 1, sizeof(**out));
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(list, i);
        if (config_setting_type(e) != CONFIG_TYPE_STRING ||
            parse_cidr(config_setting_get_string(e), &(*out)[i]) == -1)
            return fail(c, e, "each %s must be an IP address or CIDR block, as in "
                              "\"10.0.0.0/8\" or \"::1\"", what);
        (*nout)++;
    }
    return 0;
}

static int parse_trusted(struct ctx *c, const config_setting_t *root, struct gw_config *cfg)
{
    return parse_cidr_list(c, root, "trusted_proxies", "trusted proxy", &cfg->trusted_proxies,
                           &cfg->ntrusted_proxies);
}

static int parse_cache_store(struct ctx *c, const config_setting_t *root, struct gw_config *cfg)
{
    const config_setting_t *g;
    long long v = 0;

    if (get_group(c, root, "cache", &g) == -1)
        return -1;
    if (g != NULL && check_keys(c, g, cache_keys, "cache") == -1)
        return -1;
    if (get_int(c, g, "l1_bytes", 0, 1LL << 40, 64LL << 20, &v) == -1)
        return -1;
    cfg->cache_l1_bytes = (uint64_t)v;
    if (get_u32(c, g, "l1_ttl_s", 1, 86400, 5, &cfg->cache_l1_ttl_s) == -1)
        return -1;
    if (parse_cidr_list(c, g, "purge_from", "purge_from entry", &cfg->purge_from,
                        &cfg->npurge_from) == -1)
        return -1;
    if (cfg->purge_from == NULL) {
        /* default: the machine itself */
        cfg->purge_from = gw_xcalloc(2, sizeof(*cfg->purge_from));
        parse_cidr("127.0.0.1", &cfg->purge_from[0]);
        parse_cidr("::1", &cfg->purge_from[1]);
        cfg->npurge_from = 2;
    }
    return 0;
}

static int parse_redis(struct ctx *c, const config_setting_t *root, struct gw_config *cfg)
{
    struct gw_redis_conf *rc = &cfg->redis;
    const config_setting_t *g, *as, *ps;
    const char *addr, *pw;

    if (get_group(c, root, "redis", &g) == -1)
        return -1;
    if (g == NULL)
        return 0;
    if (check_keys(c, g, redis_keys, "redis") == -1)
        return -1;
    rc->enabled = true;
    if (require_string(c, g, "address", "redis", &addr, &as) == -1)
        return -1;
    if (addr[0] == '/' || strncmp(addr, "unix:", 5) == 0) {
        const char *path = addr[0] == '/' ? addr : addr + 5;
        if (path[0] != '/' || strlen(path) >= 108)
            return fail(c, as, "redis unix socket path must be absolute and shorter than 108 "
                               "bytes: \"%s\"", addr);
        rc->unix_path = gw_xstrdup(path);
    } else if (addr_setting(c, as, addr, &rc->addr) == -1) {
        return -1;
    }
    if (get_string(c, g, "password", &pw, &ps) == -1)
        return -1;
    if (pw != NULL)
        rc->password = gw_xstrdup(pw);
    if (get_u32(c, g, "db", 0, 1000000, 0, &rc->db) == -1 ||
        get_u32(c, g, "timeout_ms", 1, 60000, 20, &rc->timeout_ms) == -1)
        return -1;
    return 0;
}

static int parse_route_cache(struct ctx *c, const config_setting_t *rg, struct gw_route *r)
{
    struct gw_cache_conf *cc = &r->cache;
    const config_setting_t *g, *list;
    long long v = 0;

    if (get_group(c, rg, "cache", &g) == -1)
        return -1;
    if (g == NULL)
        return 0;
    if (check_keys(c, g, route_cache_keys, "cache") == -1)
        return -1;
    cc->enabled = true;
    if (get_u32(c, g, "ttl_s", 0, 31536000, 60, &cc->ttl_s) == -1)
        return -1;
    if (get_int(c, g, "max_object_bytes", 0, 1LL << 30, 1 << 20, &v) == -1)
        return -1;
    cc->max_object_bytes = (uint64_t)v;
    if (get_bool(c, g, "cache_authorized", false, &cc->cache_authorized) == -1 ||
        get_bool(c, g, "store_set_cookie", false, &cc->store_set_cookie) == -1)
        return -1;
    if (get_u32(c, g, "stale_if_error_s", 0, 86400, 0, &cc->stale_if_error_s) == -1)
        return -1;
    list = member(g, "key");
    if (list == NULL) {
        cc->key_host = cc->key_path = cc->key_query = true;
        return 0;
    }
    if (!is_list(list) || config_setting_length(list) == 0)
        return fail(c, list, "'key' must be a list, as in [ \"host\", \"path\", \"query\" ]");
    for (int i = 0; i < config_setting_length(list); i++) {
        const config_setting_t *e = config_setting_get_elem(list, i);
        const char *k = config_setting_type(e) == CONFIG_TYPE_STRING
                            ? config_setting_get_string(e)
                            : "";
        bool *bit = strcmp(k, "host") == 0    ? &cc->key_host
                    : strcmp(k, "path") == 0  ? &cc->key_path
                    : strcmp(k, "query") == 0 ? &cc->key_query
                                              : NULL;
        if (bit == NULL)
            return fail(c, e, "cache key parts are \"host\", \"path\" and \"query\"");
        if (*bit)
            return fail(c, e, "cache key part \"%s\" is listed twice", k);
        *bit = true;
    }
    if (!cc->key_path)
        return fail(c, list, "the cache key must include \"path\"");
    return 0;
}

static int parse_routes(struct ctx *c, const config_setting_t *root, struct gw_config *cfg)
{
    const config_setting_t *list;
    int n;

    if (get_group_list(c, root, "routes", "route", &list) == -1)
        return -1;
    if (list == NULL)
        return 0;
    n = config_setting_length(list);
    cfg->routes = gw_xcalloc(n, sizeof(*cfg->routes));
    for (int i = 0; i < n; i++) {
        const config_setting_t *g = config_setting_get_elem(list, i), *ns, *hs, *us;
        struct gw_route *r = &cfg->routes[i];
        const char *name, *host, *up;

        if (check_keys(c, g, route_keys, "route") == -1)
            return -1;
        if (require_string(c, g, "name", "route", &name, &ns) == -1)
            return -1;
        if (check_name(c, ns, "route", name) == -1)
            return -1;
        for (int j = 0; j < i; j++) {
            if (strcmp(cfg->routes[j].name, name) == 0) {
                const config_setting_t *prev = config_setting_get_elem(list, j);
                return fail(c, ns, "duplicate route name '%s' (also on line %d)", name,
                            config_setting_source_line(prev));
            }
        }
        r->name = gw_xstrdup(name);
        r->index = (unsigned)i;
        cfg->nroutes++;

        if (get_string(c, g, "host", &host, &hs) == -1 || parse_host(c, hs, host, r) == -1)
            return -1;
        if (parse_path(c, g, r) == -1 ||
            parse_token_list(c, g, "methods", "method", &r->methods, &r->nmethods) == -1)
            return -1;
        if (require_string(c, g, "upstream", "route", &up, &us) == -1)
            return -1;
        for (size_t j = 0; j < cfg->nupstreams; j++)
            if (strcmp(cfg->upstreams[j].name, up) == 0)
                r->upstream = &cfg->upstreams[j];
        if (r->upstream == NULL)
            return fail(c, us, "route '%s': upstream '%s' is not defined", name, up);
        if (get_u32(c, g, "timeout_ms", 1, 86400000, 30000, &r->timeout_ms) == -1)
            return -1;
        if (parse_rate_limit(c, g, r) == -1 || parse_retry(c, g, r) == -1 ||
            parse_route_cache(c, g, r) == -1)
            return -1;
        if (get_header_name(c, g, "deadline_header", true, &r->deadline_header) == -1)
            return -1;
    }
    return 0;
}

/* libconfig 1.5 silently truncates an integer literal without the "L"
 * suffix to 32 bits (10000000000 reads as 1410065408). Its own lexer is not
 * reachable, so scan the text for such literals: a copy of its token rules
 * that only needs to tell comments, strings, names and numbers apart. */
static int scan_ints(struct ctx *c, const char *file, const char *text)
{
    const char *p = text;
    int line = 1;

    while (*p != '\0') {
        if (*p == '\n') {
            line++;
            p++;
        } else if (*p == '#' || (p[0] == '/' && p[1] == '/')) {
            while (*p != '\0' && *p != '\n')
                p++;
        } else if (p[0] == '/' && p[1] == '*') {
            for (p += 2; *p != '\0' && !(p[0] == '*' && p[1] == '/'); p++)
                if (*p == '\n')
                    line++;
            if (*p != '\0')
                p += 2;
        } else if (*p == '"') {
            for (p++; *p != '\0' && *p != '"'; p++) {
                if (*p == '\\' && p[1] != '\0')
                    p++;
                if (*p == '\n')
                    line++;
            }
            if (*p != '\0')
                p++;
        } else if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || *p == '*' || *p == '@' ||
                   *p == '_') {
            while ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                   (*p >= '0' && *p <= '9') || *p == '*' || *p == '@' || *p == '_' || *p == '-')
                p++;
        } else if ((*p >= '0' && *p <= '9') ||
                   ((*p == '-' || *p == '+') && p[1] >= '0' && p[1] <= '9')) {
            const char *start = p;
            bool hex;
            long long v;
            char *end;

            if (*p == '-' || *p == '+')
                p++;
            hex = p[0] == '0' && (p[1] == 'x' || p[1] == 'X');
            if (hex) {
                p += 2;
                while ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') ||
                       (*p >= 'A' && *p <= 'F'))
                    p++;
            } else {
                while (*p >= '0' && *p <= '9')
                    p++;
                if (*p == '.' || *p == 'e' || *p == 'E') {
                    /* a float: libconfig keeps it as a double */
                    while ((*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' || *p == 'E' ||
                           ((*p == '-' || *p == '+') && (p[-1] == 'e' || p[-1] == 'E')))
                        p++;
                    continue;
                }
            }
            if (*p == 'L') {
                while (*p == 'L')
                    p++;
                continue;
            }
            errno = 0;
            v = strtoll(start, &end, 0);
            if (errno == ERANGE || v > INT32_MAX || v < INT32_MIN)
                return fail_at(c, file, line,
                               "integer %.*s is too large for a plain integer: write %.*sL "
                               "for a 64-bit value",
                               (int)(p - start), start, (int)(p - start), start);
        } else {
            p++;
        }
    }
    return 0;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *s = NULL;
    size_t len = 0, cap = 0, n;

    if (f == NULL)
        return NULL;
    do {
        if (cap - len < 4096) {
            cap = cap ? cap * 2 : 8192;
            s = gw_xrealloc(s, cap + 1);
        }
        n = fread(s + len, 1, cap - len, f);
        len += n;
    } while (n > 0);
    fclose(f);
    s[len] = '\0';
    return s;
}

/* Scans the main file and every file it included. */
static int scan_files(struct ctx *c, const config_t *lc, const char *dir)
{
    for (unsigned i = 0; i < lc->num_filenames; i++) {
        const char *name = lc->filenames[i];
        char *full = NULL, *text;
        int rc = 0;

        if (i > 0 && dir != NULL && name[0] != '/') {
            size_t n = strlen(dir) + strlen(name) + 2;
            full = gw_xmalloc(n);
            snprintf(full, n, "%s/%s", dir, name);
        }
        text = slurp(full ? full : name);
        if (text != NULL)
            rc = scan_ints(c, name, text);
        free(text);
        free(full);
        if (rc == -1)
            return -1;
    }
    return 0;
}

static int parse_root(struct ctx *c, const config_setting_t *root, struct gw_config *cfg)
{
    if (check_keys(c, root, top_keys, NULL) == -1)
        return -1;
    if (get_u32(c, root, "workers", 0, 256, 0, &cfg->workers) == -1)
        return -1;
    if (get_bool(c, root, "access_log", true, &cfg->access_log) == -1)
        return -1;
    if (get_u32(c, root, "drain_timeout_ms", 0, 3600000, 10000, &cfg->drain_timeout_ms) == -1)
        return -1;
    if (get_u32(c, root, "busy_poll_us", 0, 1000, GW_BUSY_POLL_US_DEFAULT, &cfg->busy_poll_us) ==
        -1)
        return -1;
    {
        long long v = -1;
        if (get_int(c, root, "tls_helpers", -1, 256, -1, &v) == -1)
            return -1;
        cfg->tls_helpers = (int)v;
    }
    if (parse_listens(c, root, cfg) == -1)
        return -1;
    if (parse_admin(c, root, cfg) == -1)
        return -1;
    if (parse_limits(c, root, &cfg->limits) == -1)
        return -1;
    if (parse_trusted(c, root, cfg) == -1)
        return -1;
    if (parse_cache_store(c, root, cfg) == -1 || parse_redis(c, root, cfg) == -1)
        return -1;
    if (parse_upstreams(c, root, cfg) == -1)
        return -1;
    return parse_routes(c, root, cfg);
}

void (*gw_config_on_free)(struct gw_config *cfg);
void (*gw_config_on_free_tls)(struct gw_config *cfg);

static void config_free(struct gw_config *cfg)
{
    if (gw_config_on_free != NULL)
        gw_config_on_free(cfg);
    if (gw_config_on_free_tls != NULL)
        gw_config_on_free_tls(cfg);
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        struct gw_upstream_tls_conf *t = &cfg->upstreams[i].tls;
        free(cfg->upstreams[i].name);
        free(cfg->upstreams[i].servers);
        free(t->ca);
        free(t->sni);
        free(t->cert);
        free(t->key);
        for (size_t j = 0; j < t->nciphers; j++)
            free(t->ciphers[j]);
        free(t->ciphers);
        free(t->file);
    }
    for (size_t i = 0; i < cfg->nroutes; i++) {
        struct gw_route *r = &cfg->routes[i];
        free(r->name);
        free(r->host);
        free(r->path);
        for (size_t j = 0; j < r->nmethods; j++)
            free(r->methods[j]);
        free(r->methods);
        for (size_t j = 0; j < r->nretry_methods; j++)
            free(r->retry_methods[j]);
        free(r->retry_methods);
        free(r->rate_limit.header);
        free(r->deadline_header);
    }
    for (size_t i = 0; i < cfg->nlistens; i++) {
        struct gw_tls_conf *t = &cfg->listens[i].tls;
        free(cfg->listens[i].deadline_header);
        for (size_t j = 0; j < t->ncerts; j++) {
            free(t->certs[j]);
            free(t->keys[j]);
        }
        free(t->certs);
        free(t->keys);
        for (size_t j = 0; j < t->nciphers; j++)
            free(t->ciphers[j]);
        free(t->ciphers);
        for (size_t j = 0; j < t->nalpn; j++)
            free(t->alpn[j]);
        free(t->alpn);
        free(t->file);
    }
    free(cfg->trusted_proxies);
    free(cfg->purge_from);
    free(cfg->redis.unix_path);
    free(cfg->redis.password);
    free(cfg->upstreams);
    free(cfg->servers);
    free(cfg->routes);
    free(cfg->listens);
    free(cfg->path);
    free(cfg);
}

int gw_config_load(const char *path, struct gw_config **out, char *err, size_t errlen)
{
    struct ctx c = {path, err, errlen};
    struct gw_config *cfg = NULL;
    char *dir = NULL, *slash;
    config_t lc;
    int rc = -1;

    *out = NULL;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    config_init(&lc);
    /* @include paths are relative to the including file's folder. */
    slash = strrchr(path, '/');
    if (slash != NULL) {
        dir = gw_xstrndup(path, slash == path ? 1 : (size_t)(slash - path));
        config_set_include_dir(&lc, dir);
    }
    errno = 0;
    if (config_read_file(&lc, path) != CONFIG_TRUE) {
        if (config_error_type(&lc) == CONFIG_ERR_FILE_IO)
            fail_at(&c, path, 0, "cannot read the file: %s", errno ? strerror(errno) : "I/O error");
        else
            fail_at(&c, config_error_file(&lc) ? config_error_file(&lc) : path,
                    config_error_line(&lc), "%s", config_error_text(&lc));
        goto fail;
    }
    if (scan_files(&c, &lc, dir) == -1)
        goto fail;
    cfg = gw_xcalloc(1, sizeof(*cfg));
    atomic_init(&cfg->refs, 1);
    cfg->path = gw_xstrdup(path);
    c.cfg = cfg;
    if (parse_root(&c, config_root_setting(&lc), cfg) == -1)
        goto fail;
    *out = cfg;
    cfg = NULL;
    rc = 0;
fail:
    if (cfg != NULL)
        config_free(cfg);
    config_destroy(&lc);
    free(dir);
    return rc;
}

struct gw_config *gw_config_ref(struct gw_config *cfg)
{
    atomic_fetch_add_explicit(&cfg->refs, 1, memory_order_relaxed);
    return cfg;
}

void gw_config_unref(struct gw_config *cfg)
{
    if (cfg == NULL)
        return;
    if (atomic_fetch_sub_explicit(&cfg->refs, 1, memory_order_acq_rel) != 1)
        return;
    config_free(cfg);
}
