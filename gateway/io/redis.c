/* Owns the hiredis adapter on the worker's ring: readiness polls, the
 * per-turn flush, command timeouts and reconnects. See redis.h. */
#include "io/redis.h"

#include "core/clock.h"
#include "core/list.h"
#include "core/log.h"
#include "core/mem.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

struct cmd {
    struct gw_redis *r;
    gw_redis_cb *cb;
    void *arg;
    struct cmd *next; /* free list */
};

static struct cmd *free_cmds(struct gw_redis *r)
{
    return (struct cmd *)r->free_cmds;
}

static void start_connect(struct gw_redis *r);

/* Commands queued since the last write leave with this one. */
static void count_write(struct gw_redis *r)
{
    if (r->unflushed > 0 && r->stats.depth != NULL)
        r->stats.depth(r->stats.depth_ctx, r->unflushed);
    r->unflushed = 0;
}

static void arm_poll(struct gw_redis *r, bool write)
{
    struct io_uring_sqe *sqe;

    if (r->ac == NULL || (write ? r->write_armed : r->read_armed))
        return;
    sqe = gw_ring_sqe(r->ring);
    io_uring_prep_poll_add(sqe, r->ac->c.fd, write ? POLLOUT : POLLIN);
    gw_sqe_op(sqe, write ? &r->write_op : &r->read_op);
    if (write)
        r->write_armed = true;
    else
        r->read_armed = true;
}

static void cancel_poll(struct gw_redis *r, struct gw_op *op, bool armed)
{
    struct io_uring_sqe *sqe;

    if (!armed)
        return;
    sqe = gw_ring_sqe(r->ring);
    io_uring_prep_cancel(sqe, op, 0);
    gw_sqe_op(sqe, NULL);
}

static void ev_add_read(void *p)
{
    struct gw_redis *r = p;
    r->want_read = true;
    arm_poll(r, false);
}

static void ev_del_read(void *p)
{
    ((struct gw_redis *)p)->want_read = false;
}

static void ev_add_write(void *p)
{
    struct gw_redis *r = p;
    r->want_write = true;
    /* While connecting, writability says the connect finished. Otherwise
     * the write waits for gw_redis_flush at the end of the loop turn. */
    if (r->connecting)
        arm_poll(r, true);
}

static void ev_del_write(void *p)
{
    ((struct gw_redis *)p)->want_write = false;
}

static void schedule_retry(struct gw_redis *r)
{
    if (gw_timer_armed(&r->retry_timer))
        return;
    gw_timer_set(r->timers, &r->retry_timer, gw_now_ms + r->backoff_ms);
    r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
}

/* hiredis is freeing the context (error, timeout, reconfigure). */
static void ev_cleanup(void *p)
{
    struct gw_redis *r = p;

    cancel_poll(r, &r->read_op, r->read_armed);
    cancel_poll(r, &r->write_op, r->write_armed);
    r->ac = NULL;
    r->up = r->connecting = false;
    r->want_read = r->want_write = false;
    if (r->stats.up != NULL)
        atomic_store_explicit(r->stats.up, 0, memory_order_relaxed);
    gw_timer_cancel(r->timers, &r->timeout_timer);
    schedule_retry(r);
}

static void arm_timeout(struct gw_redis *r)
{
    if (r->count == 0) {
        gw_timer_cancel(r->timers, &r->timeout_timer);
        return;
    }
    gw_timer_set(r->timers, &r->timeout_timer, r->sent_ms[r->head] + r->conf.timeout_ms);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct cmd *c = priv;
    struct gw_redis *r = c->r;

    (void)ac;
    if (r->count > 0) {
        r->head = (r->head + 1) % GW_REDIS_MAX_INFLIGHT;
        r->count--;
    }
    arm_timeout(r);
    c->cb(c->arg, reply);
    c->next = free_cmds(r);
    r->free_cmds = c;
}

static bool queue(struct gw_redis *r, gw_redis_cb *cb, void *arg, int argc, const char **argv,
                  const size_t *argvlen)
{
    struct cmd *c = free_cmds(r);

    if (r->ac == NULL || r->count >= GW_REDIS_MAX_INFLIGHT)
        return false;
    if (c != NULL)
        r->free_cmds = c->next;
    else
        c = gw_xmalloc(sizeof(*c));
    c->r = r;
    c->cb = cb;
    c->arg = arg;
    if (redisAsyncCommandArgv(r->ac, on_reply, c, argc, argv, argvlen) != REDIS_OK) {
        c->next = free_cmds(r);
        r->free_cmds = c;
        return false;
    }
    r->sent_ms[(r->head + r->count) % GW_REDIS_MAX_INFLIGHT] = gw_now_ms;
    r->count++;
    r->unflushed++;
    if (!gw_timer_armed(&r->timeout_timer))
        arm_timeout(r);
    return true;
}

bool gw_redis_command(struct gw_redis *r, gw_redis_cb *cb, void *arg, int argc, const char **argv,
                      const size_t *argvlen)
{
    if (!gw_redis_up(r))
        return false;
    return queue(r, cb, arg, argc, argv, argvlen);
}

/* AUTH and SELECT on a new connection; up once the last one is OK. */
static void on_setup_reply(void *arg, const redisReply *reply)
{
    struct gw_redis *r = arg;
    bool last = r->setup_left-- == 1;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        if (r->failures++ % 50 == 0)
            gw_log_error("redis %s: %s", r->name,
                         reply ? reply->str : "no answer to AUTH/SELECT");
        if (r->ac != NULL)
            redisAsyncDisconnect(r->ac);
        return;
    }
    if (last) {
        r->up = true;
        r->backoff_ms = BACKOFF_MIN_MS;
        if (r->stats.up != NULL)
            atomic_store_explicit(r->stats.up, 1, memory_order_relaxed);
    }
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct gw_redis *r = ac->ev.data;
    char db[16];

    r->connecting = false;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this; cleanup schedules a retry */
        if (r->failures++ % 50 == 0)
            gw_log_error("redis %s: cannot connect: %s", r->name, ac->errstr);
        return;
    }
    r->connects++;
    r->setup_left = (r->conf.password != NULL) + (r->conf.db != 0);
    if (r->conf.password != NULL) {
        const char *argv[] = {"AUTH", r->conf.password};
        size_t len[] = {4, strlen(r->conf.password)};
        queue(r, on_setup_reply, r, 2, argv, len);
    }
    if (r->conf.db != 0) {
        const char *argv[] = {"SELECT", db};
        size_t len[] = {6, 0};
        len[1] = (size_t)snprintf(db, sizeof(db), "%u", r->conf.db);
        queue(r, on_setup_reply, r, 2, argv, len);
    }
    if (r->setup_left == 0) {
        r->up = true;
        r->backoff_ms = BACKOFF_MIN_MS;
        if (r->stats.up != NULL)
            atomic_store_explicit(r->stats.up, 1, memory_order_relaxed);
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct gw_redis *r = ac->ev.data;

    if (status != REDIS_OK && r->failures++ % 50 == 0)
        gw_log_error("redis %s: connection lost: %s", r->name,
                     ac->errstr[0] ? ac->errstr : "closed");
    r->up = false;
}

static void on_read_ready(struct gw_op *op, int res, unsigned flags)
{
    struct gw_redis *r = container_of(op, struct gw_redis, read_op);

    (void)res;
    (void)flags;
    r->read_armed = false;
    if (r->ac == NULL)
        return;
    redisAsyncHandleRead(r->ac);
    if (r->ac != NULL && r->want_read)
        arm_poll(r, false);
}

static void on_write_ready(struct gw_op *op, int res, unsigned flags)
{
    struct gw_redis *r = container_of(op, struct gw_redis, write_op);

    (void)res;
    (void)flags;
    r->write_armed = false;
    if (r->ac == NULL)
        return;
    if (!r->connecting)
        count_write(r);
    redisAsyncHandleWrite(r->ac);
    if (r->ac != NULL && r->want_write)
        arm_poll(r, true);
}

static void on_timeout(struct gw_timer *t)
{
    struct gw_redis *r = container_of(t, struct gw_redis, timeout_timer);

    if (r->count == 0 || r->ac == NULL)
        return;
    if (gw_now_ms < r->sent_ms[r->head] + r->conf.timeout_ms) {
        arm_timeout(r);
        return;
    }
    if (r->failures++ % 50 == 0)
        gw_log_error("redis %s: no reply within %u ms; reconnecting", r->name,
                     r->conf.timeout_ms);
    /* every command in flight gets a NULL reply, then ev_cleanup; the
     * callbacks must not queue more on this context */
    r->up = false;
    redisAsyncFree(r->ac);
}

static void on_retry(struct gw_timer *t)
{
    struct gw_redis *r = container_of(t, struct gw_redis, retry_timer);

    /* the polls of the last socket must be back before a new one starts */
    if (r->read_armed || r->write_armed) {
        gw_timer_set(r->timers, &r->retry_timer, gw_now_ms + 10);
        return;
    }
    start_connect(r);
}

static void start_connect(struct gw_redis *r)
{
    redisAsyncContext *ac;

    if (r->ac != NULL || !r->conf.enabled)
        return;
    if (r->conf.unix_path != NULL) {
        ac = redisAsyncConnectUnix(r->conf.unix_path);
    } else {
        char ip[INET6_ADDRSTRLEN] = "";
        int port;
        const struct sockaddr_storage *ss = &r->conf.addr.sa;
        if (ss->ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
            inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
            port = ntohs(a->sin6_port);
        } else {
            const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
            inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
            port = ntohs(a->sin_port);
        }
        /* an IP literal: hiredis's getaddrinfo does not block on it */
        ac = redisAsyncConnect(ip, port);
    }
    if (ac == NULL || ac->err) {
        if (r->failures++ % 50 == 0)
            gw_log_error("redis %s: cannot connect: %s", r->name, ac ? ac->errstr : "no memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        schedule_retry(r);
        return;
    }
    r->ac = ac;
    r->connecting = true;
    ac->ev.data = r;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* after the hooks: this asks for the first write event */
    redisAsyncSetConnectCallback(ac, on_connect);
}

static void copy_conf(struct gw_redis *r, const struct gw_redis_conf *conf)
{
    free(r->conf.unix_path);
    free(r->conf.password);
    r->conf = *conf;
    r->conf.unix_path = conf->unix_path ? gw_xstrdup(conf->unix_path) : NULL;
    r->conf.password = conf->password ? gw_xstrdup(conf->password) : NULL;
    snprintf(r->name, sizeof(r->name), "%s", conf->unix_path ? conf->unix_path : conf->addr.text);
}

void gw_redis_init(struct gw_redis *r, struct gw_ring *ring, struct gw_timers *timers,
                   const struct gw_redis_conf *conf, struct gw_redis_stats stats)
{
    memset(r, 0, sizeof(*r));
    r->ring = ring;
    r->timers = timers;
    r->stats = stats;
    r->backoff_ms = BACKOFF_MIN_MS;
    r->read_op.cb = on_read_ready;
    r->write_op.cb = on_write_ready;
    gw_timer_init(&r->retry_timer, on_retry);
    gw_timer_init(&r->timeout_timer, on_timeout);
    copy_conf(r, conf);
    start_connect(r);
}

static bool same_conf(const struct gw_redis_conf *a, const struct gw_redis_conf *b)
{
    return a->enabled == b->enabled && a->db == b->db && a->timeout_ms == b->timeout_ms &&
           ((a->unix_path == NULL && b->unix_path == NULL &&
             strcmp(a->addr.text, b->addr.text) == 0) ||
            (a->unix_path && b->unix_path && strcmp(a->unix_path, b->unix_path) == 0)) &&
           ((a->password == NULL && b->password == NULL) ||
            (a->password && b->password && strcmp(a->password, b->password) == 0));
}

void gw_redis_configure(struct gw_redis *r, const struct gw_redis_conf *conf)
{
    if (same_conf(&r->conf, conf))
        return;
    copy_conf(r, conf);
    r->backoff_ms = BACKOFF_MIN_MS;
    r->up = false;
    if (r->ac != NULL)
        redisAsyncFree(r->ac); /* cleanup schedules the new connect */
    else if (conf->enabled && !gw_timer_armed(&r->retry_timer))
        start_connect(r);
}

void gw_redis_flush(struct gw_redis *r)
{
    if (r->ac == NULL || r->connecting || !r->want_write || r->write_armed)
        return;
    count_write(r);
    redisAsyncHandleWrite(r->ac);
    /* a short write (EAGAIN) leaves hiredis wanting to write: wait for room */
    if (r->ac != NULL && r->want_write)
        arm_poll(r, true);
}
