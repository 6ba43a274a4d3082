/* `gateway -T`: the snapshot written back as libconfig text, every setting
 * with the value the parser gave it, defaults included. What an operator
 * reads to learn what the gateway will really do, and what the README's
 * tables of defaults are checked against (test_03_config_reference.py).
 * The output is itself a valid config that dumps to the same text. */
#include "core/config.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void put_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void put_strs(FILE *f, char *const *v, size_t n)
{
    fputs("[ ", f);
    for (size_t i = 0; i < n; i++) {
        if (i)
            fputs(", ", f);
        put_str(f, v[i]);
    }
    fputs(n ? " ]" : "]", f);
}

static void put_u(FILE *f, const char *ind, const char *key, unsigned long long v)
{
    /* libconfig reads numbers above 2^31-1 only with the L suffix */
    fprintf(f, "%s%s = %llu%s;\n", ind, key, v, v > 2147483647ULL ? "L" : "");
}

static void put_d(FILE *f, const char *ind, const char *key, double v)
{
    char b[64];

    /* the shortest form that reads back as the same double */
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(b, sizeof(b), "%.*g", prec, v);
        if (strtod(b, NULL) == v)
            break;
    }
    /* a double must look like one, or libconfig reads an integer */
    if (strpbrk(b, ".eEn") == NULL)
        strcat(b, ".0");
    fprintf(f, "%s%s = %s;\n", ind, key, b);
}

static void put_b(FILE *f, const char *ind, const char *key, bool v)
{
    fprintf(f, "%s%s = %s;\n", ind, key, v ? "true" : "false");
}

static void put_kstr(FILE *f, const char *ind, const char *key, const char *v)
{
    fprintf(f, "%s%s = ", ind, key);
    put_str(f, v);
    fputs(";\n", f);
}

static void put_cidrs(FILE *f, const char *ind, const char *key, const struct gw_cidr *v,
                      size_t n)
{
    fprintf(f, "%s%s = [ ", ind, key);
    for (size_t i = 0; i < n; i++) {
        const struct gw_cidr *c = &v[i];
        char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN + 8];

        inet_ntop(c->family, c->addr, a, sizeof(a));
        snprintf(b, sizeof(b), "%s/%u", a, c->prefix);
        if (i)
            fputs(", ", f);
        put_str(f, b);
    }
    fputs(n ? " ];\n" : "];\n", f);
}

static bool every_5xx_only(const struct gw_breaker_conf *b)
{
    for (unsigned s = 0; s < 640; s++) {
        bool set = (b->fail_status[s / 64] >> (s % 64)) & 1;
        if (set != (s >= 500 && s <= 599))
            return false;
    }
    return true;
}

static void put_breaker(FILE *f, const struct gw_breaker_conf *b)
{
    const char *ind = "        ";

    fputs("      breaker = {\n", f);
    put_u(f, ind, "failures", b->failures);
    put_d(f, ind, "error_rate", b->error_rate);
    put_u(f, ind, "window_ms", b->window_ms);
    put_u(f, ind, "min_requests", b->min_requests);
    put_u(f, ind, "open_ms", b->open_ms);
    put_u(f, ind, "half_open_requests", b->half_open_requests);
    if (every_5xx_only(b)) {
        fprintf(f, "%s# failure_status: every 5xx\n", ind);
    } else {
        bool first = true;
        fprintf(f, "%sfailure_status = [ ", ind);
        for (unsigned s = 0; s < 640; s++) {
            if (!((b->fail_status[s / 64] >> (s % 64)) & 1))
                continue;
            fprintf(f, "%s%u", first ? "" : ", ", s);
            first = false;
        }
        fputs(first ? "];\n" : " ];\n", f);
    }
    fputs("      };\n", f);
}

static void put_upstream(FILE *f, const struct gw_upstream *u)
{
    const char *ind = "      ";

    fputs("    {\n", f);
    put_kstr(f, ind, "name", u->name);
    fprintf(f, "%sservers = [ ", ind);
    for (size_t i = 0; i < u->nservers; i++) {
        if (i)
            fputs(", ", f);
        put_str(f, u->servers[i]->addr.text);
    }
    fputs(" ];\n", f);
    put_kstr(f, ind, "balance", u->balance == GW_BALANCE_LEAST_CONN ? "least_conn" : "round_robin");
    put_u(f, ind, "keepalive", u->keepalive);
    put_u(f, ind, "connect_timeout_ms", u->connect_timeout_ms);
    put_u(f, ind, "max_requests", u->max_requests);
    put_u(f, ind, "max_pending", u->max_pending);
    if (u->breaker.enabled)
        put_breaker(f, &u->breaker);
    if (u->tls.enabled) {
        const char *tind = "        ";
        fputs("      tls = {\n", f);
        put_b(f, tind, "verify", u->tls.verify);
        /* the default bundle is loaded only to verify */
        if (u->tls.ca != NULL || u->tls.verify)
            put_kstr(f, tind, "ca", u->tls.ca != NULL ? u->tls.ca : GW_DEFAULT_CA);
        if (u->tls.sni != NULL)
            put_kstr(f, tind, "sni", u->tls.sni);
        if (u->tls.cert != NULL) {
            put_kstr(f, tind, "cert", u->tls.cert);
            put_kstr(f, tind, "key", u->tls.key);
        }
        if (u->tls.ciphers != NULL) {
            fprintf(f, "%sciphers = ", tind);
            put_strs(f, u->tls.ciphers, u->tls.nciphers);
            fputs(";\n", f);
        }
        fputs("      };\n", f);
    }
    fputs("    }", f);
}

static void put_rate_limit(FILE *f, const struct gw_rate_limit_conf *rl)
{
    const char *ind = "        ";
    char key[300];

    if (rl->key == GW_RL_KEY_HEADER)
        snprintf(key, sizeof(key), "header:%s", rl->header);
    else
        snprintf(key, sizeof(key), "%s", rl->key == GW_RL_KEY_ROUTE ? "route" : "client_ip");
    fputs("      rate_limit = {\n", f);
    put_d(f, ind, "rate", rl->rate);
    put_u(f, ind, "burst", rl->burst);
    put_kstr(f, ind, "key", key);
    put_u(f, ind, "max_keys", rl->max_keys);
    put_b(f, ind, "headers", rl->headers);
    put_kstr(f, ind, "scope", rl->global ? "global" : "local");
    fputs("      };\n", f);
}

static void put_cache(FILE *f, const struct gw_cache_conf *cc)
{
    const char *ind = "        ";
    const char *parts[3];
    size_t n = 0;

    if (cc->key_host)
        parts[n++] = "host";
    if (cc->key_path)
        parts[n++] = "path";
    if (cc->key_query)
        parts[n++] = "query";
    fputs("      cache = {\n", f);
    put_u(f, ind, "ttl_s", cc->ttl_s);
    put_u(f, ind, "max_object_bytes", cc->max_object_bytes);
    fprintf(f, "%skey = ", ind);
    put_strs(f, (char *const *)parts, n);
    fputs(";\n", f);
    put_b(f, ind, "cache_authorized", cc->cache_authorized);
    put_b(f, ind, "store_set_cookie", cc->store_set_cookie);
    put_u(f, ind, "stale_if_error_s", cc->stale_if_error_s);
    fputs("      };\n", f);
}

static void put_route(FILE *f, const struct gw_route *r)
{
    const char *ind = "      ";
    bool first = true;

    fputs("    {\n", f);
    put_kstr(f, ind, "name", r->name);
    if (r->host_match == GW_HOST_ANY) {
        put_kstr(f, ind, "host", "*");
    } else {
        /* a suffix match is stored as ".example.com" */
        fprintf(f, "%shost = \"%s%s\";\n", ind, r->host_match == GW_HOST_SUFFIX ? "*" : "",
                r->host);
    }
    put_kstr(f, ind, r->path_exact ? "path" : "path_prefix", r->path);
    if (r->methods != NULL) {
        fprintf(f, "%smethods = ", ind);
        put_strs(f, r->methods, r->nmethods);
        fputs(";\n", f);
    }
    put_kstr(f, ind, "upstream", r->upstream->name);
    put_u(f, ind, "timeout_ms", r->timeout_ms);
    if (r->deadline_header != NULL)
        put_kstr(f, ind, "deadline_header", r->deadline_header);
    put_u(f, ind, "retries", r->retries);
    fprintf(f, "%sretry_on = [ ", ind);
    for (size_t i = 0; i < GW_RETRY_CONDS; i++) {
        if (!(r->retry_on & gw_retry_conds[i].bit))
            continue;
        fprintf(f, "%s\"%s\"", first ? "" : ", ", gw_retry_conds[i].name);
        first = false;
    }
    fputs(first ? "];\n" : " ];\n", f);
    if (r->nretry_methods > 0) {
        fprintf(f, "%sretry_methods = ", ind);
        put_strs(f, r->retry_methods, r->nretry_methods);
        fputs(";\n", f);
    }
    put_d(f, ind, "retry_budget", r->retry_budget);
    put_u(f, ind, "try_timeout_ms", r->try_timeout_ms);
    if (r->rate_limit.enabled)
        put_rate_limit(f, &r->rate_limit);
    if (r->cache.enabled)
        put_cache(f, &r->cache);
    fputs("    }", f);
}

void gw_config_dump(const struct gw_config *cfg, FILE *f)
{
    const char *ind = "    ";

    fprintf(f, "# effective configuration of %s, defaults included\n", cfg->path);
    put_u(f, "", "workers", cfg->workers);
    put_b(f, "", "access_log", cfg->access_log);
    put_u(f, "", "drain_timeout_ms", cfg->drain_timeout_ms);
    put_u(f, "", "busy_poll_us", cfg->busy_poll_us);
    fprintf(f, "tls_helpers = %d;\n", cfg->tls_helpers);
    put_cidrs(f, "", "trusted_proxies", cfg->trusted_proxies, cfg->ntrusted_proxies);
    fputs("cache = {\n", f);
    put_u(f, ind, "l1_bytes", cfg->cache_l1_bytes);
    put_u(f, ind, "l1_ttl_s", cfg->cache_l1_ttl_s);
    put_cidrs(f, ind, "purge_from", cfg->purge_from, cfg->npurge_from);
    fputs("};\n", f);
    if (cfg->redis.enabled) {
        char a[128];
        snprintf(a, sizeof(a), "%s%s", cfg->redis.unix_path ? "unix:" : "",
                 cfg->redis.unix_path ? cfg->redis.unix_path : cfg->redis.addr.text);
        fputs("redis = {\n", f);
        put_kstr(f, ind, "address", a);
        if (cfg->redis.password != NULL)
            fprintf(f, "%s# password: set\n", ind); /* never printed */
        put_u(f, ind, "db", cfg->redis.db);
        put_u(f, ind, "timeout_ms", cfg->redis.timeout_ms);
        fputs("};\n", f);
    }
    fputs("listen = (\n", f);
    for (size_t i = 0; i < cfg->nlistens; i++) {
        fputs("    { address = ", f);
        put_str(f, cfg->listens[i].addr.text);
        if (cfg->listens[i].deadline_header != NULL) {
            fputs("; deadline_header = ", f);
            put_str(f, cfg->listens[i].deadline_header);
        }
        fprintf(f, "; defer_accept = %s", cfg->listens[i].defer_accept ? "true" : "false");
        if (cfg->listens[i].tls.enabled) {
            const struct gw_tls_conf *t = &cfg->listens[i].tls;
            static char *const http11[] = {"http/1.1"};
            fputs("; tls = { certs = ( ", f);
            for (size_t k = 0; k < t->ncerts; k++) {
                fputs(k ? ", { cert = " : "{ cert = ", f);
                put_str(f, t->certs[k]);
                fputs("; key = ", f);
                put_str(f, t->keys[k]);
                fputs("; }", f);
            }
            fputs(" ); min_version = \"1.2\"; alpn = ", f);
            if (t->alpn != NULL)
                put_strs(f, t->alpn, t->nalpn);
            else
                put_strs(f, http11, 1);
            if (t->ciphers != NULL) {
                fputs("; ciphers = ", f);
                put_strs(f, t->ciphers, t->nciphers);
            }
            fputs("; }", f);
        }
        fprintf(f, "; }%s\n", i + 1 < cfg->nlistens ? "," : "");
    }
    fputs(");\n", f);
    fputs("admin = { address = ", f);
    put_str(f, cfg->admin.text);
    fputs("; };\n", f);
    fputs("limits = {\n", f);
    put_u(f, ind, "max_header_bytes", cfg->limits.max_header_bytes);
    put_u(f, ind, "max_body_bytes", cfg->limits.max_body_bytes);
    put_u(f, ind, "header_timeout_ms", cfg->limits.header_timeout_ms);
    put_u(f, ind, "idle_timeout_ms", cfg->limits.idle_timeout_ms);
    put_u(f, ind, "max_connections", cfg->limits.max_connections);
    fputs("};\n", f);
    fputs("upstreams = (\n", f);
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        put_upstream(f, &cfg->upstreams[i]);
        fputs(i + 1 < cfg->nupstreams ? ",\n" : "\n", f);
    }
    fputs(");\n", f);
    fputs("routes = (\n", f);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        put_route(f, &cfg->routes[i]);
        fputs(i + 1 < cfg->nroutes ? ",\n" : "\n", f);
    }
    fputs(");\n", f);
}
