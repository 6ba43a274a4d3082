/* Owns the admin HTTP endpoint: a small non-blocking server driven by
 * main's poll loop. Requests are tiny GETs; each connection answers one
 * request and closes. */
#include "admin.h"

#include "core/clock.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/metrics.h"
#include "policy/breaker.h"
#include "policy/ratelimit.h"
#include "policy/shared.h"
#include "tls/tls.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CLIENTS 64
#define REQ_MAX 4096
#define CLIENT_TIMEOUT_MS 5000

struct gw_admin_state gw_admin;

struct client {
    int fd;
    uint64_t started_ms;
    char req[REQ_MAX];
    size_t req_len;
    struct gw_text resp;
    size_t resp_off;
};

static int listen_fd = -1;
static struct client clients[MAX_CLIENTS];
static unsigned nclients;

static int admin_bind(const struct gw_sockaddr *addr)
{
    int one = 1, e;
    int fd = socket(addr->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd == -1)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (addr->sa.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&addr->sa, addr->len) == -1 || listen(fd, 64) == -1) {
        e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static struct gw_sockaddr bound; /* the address listen_fd is bound to */

int gw_admin_open(const struct gw_sockaddr *addr, char *err, size_t errlen)
{
    int fd = admin_bind(addr);

    /* A reload moving the admin listener to an address that overlaps the
     * old one (127.0.0.1:9901 -> 0.0.0.0:9901): let go of the old socket
     * first, and take it back if the new one still cannot be bound. */
    if (fd == -1 && errno == EADDRINUSE && listen_fd >= 0) {
        close(listen_fd);
        listen_fd = -1;
        fd = admin_bind(addr);
        if (fd == -1) {
            int e = errno;
            listen_fd = admin_bind(&bound);
            errno = e;
        }
    }
    if (fd == -1) {
        snprintf(err, errlen, "cannot listen on admin address %s: %s%s", addr->text,
                 strerror(errno), errno == EADDRINUSE ? " (another process holds the port)" : "");
        return -1;
    }
    if (listen_fd >= 0)
        close(listen_fd);
    listen_fd = fd;
    bound = *addr;
    return 0;
}

unsigned gw_admin_pollfds(struct pollfd *fds, unsigned max)
{
    unsigned n = 0;
    if (listen_fd >= 0 && n < max && nclients < MAX_CLIENTS)
        fds[n++] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
    for (unsigned i = 0; i < nclients && n < max; i++)
        fds[n++] = (struct pollfd){.fd = clients[i].fd,
                                   .events = clients[i].resp.len ? POLLOUT : POLLIN};
    return n;
}

static void process_metrics(struct gw_text *t)
{
    struct rusage ru;
    long pages = 0, rss = 0;
    unsigned fds = 0;
    DIR *d;
    FILE *f;

    getrusage(RUSAGE_SELF, &ru);
    f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
            if (e->d_name[0] != '.')
                fds++;
        closedir(d);
    }
    gw_text_printf(t,
                   "# HELP gateway_build_info Build version.\n# TYPE gateway_build_info gauge\n"
                   "gateway_build_info{version=\"%s\"} 1\n"
                   "# HELP gateway_config_generation Generation of the running config.\n"
                   "# TYPE gateway_config_generation gauge\ngateway_config_generation %llu\n"
                   "# HELP gateway_config_reloads_total Config reloads by result.\n"
                   "# TYPE gateway_config_reloads_total counter\n"
                   "gateway_config_reloads_total{result=\"success\"} %llu\n"
                   "gateway_config_reloads_total{result=\"failure\"} %llu\n"
                   "# HELP gateway_config_last_reload_success 1 if the last reload worked.\n"
                   "# TYPE gateway_config_last_reload_success gauge\n"
                   "gateway_config_last_reload_success %d\n",
                   GW_VERSION, (unsigned long long)gw_admin.generation,
                   (unsigned long long)gw_admin.reloads_ok,
                   (unsigned long long)gw_admin.reloads_failed, gw_admin.last_reload_ok ? 1 : 0);
    gw_text_printf(t,
                   "# HELP process_cpu_seconds_total User and system CPU time spent.\n"
                   "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.3f\n"
                   "# HELP process_resident_memory_bytes Resident memory size.\n"
                   "# TYPE process_resident_memory_bytes gauge\n"
                   "process_resident_memory_bytes %ld\n"
                   "# HELP process_open_fds Open file descriptors.\n"
                   "# TYPE process_open_fds gauge\nprocess_open_fds %u\n"
                   "# HELP process_start_time_seconds Start time since the epoch.\n"
                   "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.3f\n",
                   (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6,
                   rss * sysconf(_SC_PAGESIZE), fds, gw_admin.start_time);
}

static void server_label(struct gw_text *t, const struct gw_server *s)
{
    /* names are [A-Za-z0-9_.-] and addresses are IP literals: nothing to escape */
    gw_text_printf(t, "upstream=\"%s\",server=\"%s\"", s->upstream->name, s->addr.text);
}

static void expiry_line(void *arg, const char *listener, const char *name, int64_t not_after)
{
    struct gw_text *t = arg;

    gw_text_printf(t, "gateway_tls_certificate_expiry_timestamp_seconds{listener=\"");
    gw_text_label(t, listener);
    gw_text_printf(t, "\",name=\"");
    gw_text_label(t, name);
    gw_text_printf(t, "\"} %lld\n", (long long)not_after);
}

/* When each certificate of the running snapshot expires. */
static void tls_metrics(struct gw_text *t)
{
    if (gw_admin.cfg == NULL)
        return;
    gw_text_printf(t, "# HELP gateway_tls_certificate_expiry_timestamp_seconds When each "
                      "certificate of a TLS listener expires (notAfter), seconds since the "
                      "epoch.\n# TYPE gateway_tls_certificate_expiry_timestamp_seconds gauge\n");
    gw_tls_each_cert(gw_admin.cfg, expiry_line, t);
}

/* Shared policy state of the running snapshot: breakers, rate-limit tables. */
static void policy_metrics(struct gw_text *t)
{
    static const char *const state_names[] = {"closed", "half_open", "open"};
    const struct gw_config *cfg = gw_admin.cfg;

    if (cfg == NULL)
        return;
    gw_text_printf(t, "# HELP gateway_upstream_breaker_state Circuit state of each server: 0 "
                      "closed, 1 half-open, 2 open.\n"
                      "# TYPE gateway_upstream_breaker_state gauge\n");
    for (size_t i = 0; i < cfg->nservers; i++) {
        const struct gw_server *s = &cfg->servers[i];
        gw_text_printf(t, "gateway_upstream_breaker_state{");
        server_label(t, s);
        /* an upstream without a breaker block never opens, whatever an
         * earlier config's breaker had left */
        gw_text_printf(t, "} %d\n",
                       s->upstream->breaker.enabled ? (int)gw_breaker_state(s->shared->breaker)
                                                    : 0);
    }
    gw_text_printf(t, "# HELP gateway_upstream_breaker_transitions_total Circuit state changes "
                      "of each server, by the state entered.\n"
                      "# TYPE gateway_upstream_breaker_transitions_total counter\n");
    for (size_t i = 0; i < cfg->nservers; i++) {
        const struct gw_server *s = &cfg->servers[i];
        for (int k = 0; k < 3; k++) {
            gw_text_printf(t, "gateway_upstream_breaker_transitions_total{");
            server_label(t, s);
            gw_text_printf(t, ",to=\"%s\"} %llu\n", state_names[k],
                           (unsigned long long)gw_breaker_transitions(
                               s->shared->breaker, (enum gw_breaker_state)k));
        }
    }
    gw_text_printf(t, "# HELP gateway_upstream_requests_active Requests in flight to each "
                      "server (what max_requests caps).\n"
                      "# TYPE gateway_upstream_requests_active gauge\n");
    for (size_t i = 0; i < cfg->nservers; i++) {
        const struct gw_server *s = &cfg->servers[i];
        gw_text_printf(t, "gateway_upstream_requests_active{");
        server_label(t, s);
        gw_text_printf(t, "} %u\n",
                       (unsigned)atomic_load_explicit(&s->shared->active, memory_order_relaxed));
    }
    gw_text_printf(t, "# HELP gateway_ratelimit_evictions_total Rate-limit keys evicted before "
                      "their bucket had refilled (the key table is too small).\n"
                      "# TYPE gateway_ratelimit_evictions_total counter\n");
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct gw_route *r = &cfg->routes[i];
        if (r->rl != NULL)
            gw_text_printf(t, "gateway_ratelimit_evictions_total{route=\"%s\"} %llu\n", r->name,
                           (unsigned long long)gw_ratelimit_evictions(r->rl));
    }
}

static void json_str(struct gw_text *t, const char *s)
{
    gw_text_printf(t, "\"");
    for (; s != NULL && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            gw_text_printf(t, "\\%c", ch);
        else if (ch < 0x20)
            gw_text_printf(t, "\\u%04x", ch);
        else
            gw_text_printf(t, "%c", ch);
    }
    gw_text_printf(t, "\"");
}

/* GET /config: what an operator checks after a reload. The running
 * generation, its file and load time, routes and upstream servers as
 * parsed, and each server's breaker state, requests in flight and pool. */
static void config_json(struct gw_text *t)
{
    static const char *const states[] = {"closed", "half_open", "open"};
    static const char *const keys[] = {"client_ip", "route", "header"};
    const struct gw_config *cfg = gw_admin.cfg;

    gw_text_printf(t, "{\"generation\":%llu,\"file\":", (unsigned long long)gw_admin.generation);
    json_str(t, cfg->path);
    gw_text_printf(t, ",\"loaded_at\":%.3f,\"last_reload_success\":%s,\"workers\":%u,",
                   gw_admin.loaded_at, gw_admin.last_reload_ok ? "true" : "false", cfg->workers);
    gw_text_printf(t, "\"listen\":[");
    for (size_t i = 0; i < cfg->nlistens; i++) {
        gw_text_printf(t, "%s", i ? "," : "");
        json_str(t, cfg->listens[i].addr.text);
    }
    gw_text_printf(t, "],\"redis\":");
    if (cfg->redis.enabled) {
        gw_text_printf(t, "{\"address\":");
        json_str(t, cfg->redis.unix_path ? cfg->redis.unix_path : cfg->redis.addr.text);
        gw_text_printf(t, ",\"up\":%s}", gw_metrics_redis_up() == 1 ? "true" : "false");
    } else {
        gw_text_printf(t, "null");
    }
    gw_text_printf(t, ",\"routes\":[");
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct gw_route *r = &cfg->routes[i];
        gw_text_printf(t, "%s{\"name\":", i ? "," : "");
        json_str(t, r->name);
        gw_text_printf(t, ",\"host\":");
        if (r->host_match == GW_HOST_ANY)
            json_str(t, "*");
        else if (r->host_match == GW_HOST_SUFFIX)
            gw_text_printf(t, "\"*%s\"", r->host); /* validated: nothing to escape */
        else
            json_str(t, r->host);
        gw_text_printf(t, ",\"%s\":", r->path_exact ? "path" : "path_prefix");
        json_str(t, r->path);
        gw_text_printf(t, ",\"methods\":");
        if (r->methods == NULL) {
            gw_text_printf(t, "null");
        } else {
            gw_text_printf(t, "[");
            for (size_t k = 0; k < r->nmethods; k++) {
                gw_text_printf(t, "%s", k ? "," : "");
                json_str(t, r->methods[k]);
            }
            gw_text_printf(t, "]");
        }
        gw_text_printf(t, ",\"upstream\":");
        json_str(t, r->upstream->name);
        gw_text_printf(t, ",\"timeout_ms\":%u,\"retries\":%u,\"rate_limit\":", r->timeout_ms,
                       r->retries);
        if (r->rate_limit.enabled)
            gw_text_printf(t, "{\"rate\":%g,\"burst\":%u,\"key\":\"%s\",\"scope\":\"%s\"}",
                           r->rate_limit.rate, r->rate_limit.burst, keys[r->rate_limit.key],
                           r->rate_limit.global ? "global" : "local");
        else
            gw_text_printf(t, "null");
        gw_text_printf(t, ",\"cache\":");
        if (r->cache.enabled)
            gw_text_printf(t, "{\"ttl_s\":%u,\"max_object_bytes\":%llu,\"stale_if_error_s\":%u}",
                           r->cache.ttl_s, (unsigned long long)r->cache.max_object_bytes,
                           r->cache.stale_if_error_s);
        else
            gw_text_printf(t, "null");
        gw_text_printf(t, "}");
    }
    gw_text_printf(t, "],\"upstreams\":[");
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const struct gw_upstream *u = &cfg->upstreams[i];
        gw_text_printf(t, "%s{\"name\":", i ? "," : "");
        json_str(t, u->name);
        gw_text_printf(t, ",\"balance\":\"%s\",\"keepalive\":%u,\"breaker\":%s,\"servers\":[",
                       u->balance == GW_BALANCE_LEAST_CONN ? "least_conn" : "round_robin",
                       u->keepalive, u->breaker.enabled ? "true" : "false");
        for (size_t k = 0; k < u->nservers; k++) {
            const struct gw_server *s = u->servers[k];
            int64_t idle, active;
            enum gw_breaker_state st =
                u->breaker.enabled ? gw_breaker_state(s->shared->breaker) : GW_BREAKER_CLOSED;
            gw_metrics_server_conns(s->metrics_slot, &idle, &active);
            gw_text_printf(t, "%s{\"address\":", k ? "," : "");
            json_str(t, s->addr.text);
            gw_text_printf(t,
                           ",\"breaker_state\":\"%s\",\"requests_active\":%u,"
                           "\"connections_idle\":%lld,\"connections_active\":%lld}",
                           states[st],
                           (unsigned)atomic_load_explicit(&s->shared->active,
                                                          memory_order_relaxed),
                           (long long)idle, (long long)active);
        }
        gw_text_printf(t, "]}");
    }
    gw_text_printf(t, "]}\n");
}

static void respond(struct client *cl, int status, const char *reason, const char *ctype,
                    const char *body, size_t body_len, bool head)
{
    gw_text_printf(&cl->resp,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n",
                   status, reason, ctype, body_len);
    if (!head && body_len)
        gw_text_printf(&cl->resp, "%.*s", (int)body_len, body);
}

static void route(struct client *cl)
{
    char method[8] = "", path[256] = "";
    bool head;

    if (sscanf(cl->req, "%7s %255s", method, path) != 2) {
        respond(cl, 400, "Bad Request", "text/plain", "bad request\n", 12, false);
        return;
    }
    head = strcmp(method, "HEAD") == 0;
    if (!head && strcmp(method, "GET") != 0) {
        respond(cl, 405, "Method Not Allowed", "text/plain", "GET only\n", 9, false);
        return;
    }
    char *q = strchr(path, '?');
    if (q)
        *q = '\0';
    if (strcmp(path, "/healthz") == 0) {
        respond(cl, 200, "OK", "text/plain", "ok\n", 3, head);
    } else if (strcmp(path, "/readyz") == 0) {
        if (gw_admin.ready && !gw_admin.draining)
            respond(cl, 200, "OK", "text/plain", "ready\n", 6, head);
        else
            respond(cl, 503, "Service Unavailable", "text/plain",
                    gw_admin.draining ? "draining\n" : "starting\n",
                    gw_admin.draining ? 9 : 9, head);
    } else if (strcmp(path, "/metrics") == 0) {
        struct gw_text body = {0};
        gw_metrics_render(&body);
        policy_metrics(&body);
        tls_metrics(&body);
        process_metrics(&body);
        respond(cl, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body.p, body.len,
                head);
        gw_text_free(&body);
    } else if (strcmp(path, "/config") == 0 && gw_admin.cfg != NULL) {
        struct gw_text body = {0};
        config_json(&body);
        respond(cl, 200, "OK", "application/json", body.p, body.len, head);
        gw_text_free(&body);
    } else {
        respond(cl, 404, "Not Found", "text/plain", "not found\n", 10, head);
    }
}

static void drop(unsigned i)
{
    close(clients[i].fd);
    gw_text_free(&clients[i].resp);
    clients[i] = clients[--nclients];
}

void gw_admin_handle(struct pollfd *fds, unsigned n)
{
    uint64_t now = gw_clock_update();

    for (unsigned k = 0; k < n; k++) {
        if (fds[k].revents == 0)
            continue;
        if (fds[k].fd == listen_fd) {
            int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd >= 0) {
                struct client *cl = &clients[nclients++];
                memset(cl, 0, sizeof(*cl));
                cl->fd = fd;
                cl->started_ms = now;
            }
            continue;
        }
        for (unsigned i = 0; i < nclients; i++) {
            struct client *cl = &clients[i];
            if (cl->fd != fds[k].fd)
                continue;
            if (cl->resp.len == 0) {
                ssize_t r = read(cl->fd, cl->req + cl->req_len, REQ_MAX - 1 - cl->req_len);
                if (r <= 0) {
                    if (r == 0 || (errno != EAGAIN && errno != EINTR))
                        drop(i);
                    break;
                }
                cl->req_len += (size_t)r;
                cl->req[cl->req_len] = '\0';
                if (strstr(cl->req, "\r\n\r\n") || strstr(cl->req, "\n\n"))
                    route(cl);
                else if (cl->req_len >= REQ_MAX - 1)
                    respond(cl, 431, "Request Header Fields Too Large", "text/plain", "", 0,
                            false);
            }
            if (cl->resp.len > cl->resp_off) {
                ssize_t w = send(cl->fd, cl->resp.p + cl->resp_off, cl->resp.len - cl->resp_off,
                                 MSG_NOSIGNAL);
                if (w > 0)
                    cl->resp_off += (size_t)w;
                else if (w < 0 && errno != EAGAIN && errno != EINTR)
                    drop(i);
                else
                    break;
                if (i < nclients && clients[i].fd == fds[k].fd &&
                    cl->resp_off == cl->resp.len)
                    drop(i);
            }
            break;
        }
    }
    /* Clients that stall are dropped, so 64 slow ones can't lock us out. */
    for (unsigned i = 0; i < nclients;)
        if (now - clients[i].started_ms > CLIENT_TIMEOUT_MS)
            drop(i);
        else
            i++;
}
