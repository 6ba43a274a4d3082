/* Owns upstream connections: server choice, connect with a deadline,
 * keep-alive pools (idle connections expire by timer; on reuse one the
 * server closed is found by a peek or by the retry of the request), TLS to
 * servers that want it, and the single send / recv ops of a connection in
 * use. */
#include "proxy/ctx.h"

#include "core/clock.h"
#include "core/list.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/metrics.h"
#include "policy/breaker.h"
#include "policy/shared.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
    UP_CONNECTING = 1 << 0,
    UP_IDLE = 1 << 1,
    UP_CLOSING = 1 << 2,
    UP_FREED = 1 << 3, /* on the free list; see upconn_free_if_done */
    UP_HANDSHAKE = 1 << 4, /* connected, TLS handshake under way */
    UP_TLS_WAIT = 1 << 5,  /* connected, waiting for the pool's first handshake */
};

static void upconn_close(struct gw_upconn *u);
static void put_pending(struct gw_upconn *u);
static void tls_begin(struct gw_upconn *u);
static void tls_start(struct gw_upconn *u);
static void tls_fail(struct gw_upconn *u, int err);
static void tls_unpark(struct gw_upconn *u);
static void tls_bye(struct gw_upconn *u);
static void tls_flush(struct gw_upconn *u);

/* gateway_upstream_connections: this worker's view of one pool. */
static void pool_gauges(struct gw_wctx *w, const struct gw_pool *p)
{
    struct gw_server_stats *ss = w->stats->servers[p->stats_slot];

    atomic_store_explicit(&ss->conns_idle, (int64_t)p->nidle, memory_order_relaxed);
    atomic_store_explicit(&ss->conns_active, (int64_t)p->active, memory_order_relaxed);
}

static void upconn_free_if_done(struct gw_upconn *u)
{
    struct gw_wctx *w = u->w;
    if (!(u->flags & UP_CLOSING) || (u->flags & UP_FREED) || u->refs > 0)
        return;
    u->flags |= UP_FREED;
    gw_timer_cancel(&w->timers, &u->idle_timer);
    close(u->fd);
    gw_bufpool_put(&w->out_pool, &u->in);
    if (u->tls != NULL) {
        gw_tls_conn_free(u->tls);
        u->tls = NULL;
        gw_config_unref(u->tls_cfg);
        u->tls_cfg = NULL;
    }
    u->next = w->free_upconns;
    w->free_upconns = u;
}

static void idle_remove(struct gw_upconn *u)
{
    struct gw_pool *p = u->pool;
    struct gw_upconn **pp;
    for (pp = &p->idle; *pp; pp = &(*pp)->next) {
        if (*pp == u) {
            *pp = u->next;
            p->nidle--;
            break;
        }
    }
    pool_gauges(u->w, p);
    u->next = NULL;
    u->flags &= ~UP_IDLE;
}

/* Closing: cancel whatever is in flight on the socket, then close and
 * recycle when the last CQE is in. */
static void upconn_close(struct gw_upconn *u)
{
    struct io_uring_sqe *sqe;

    if (u->flags & UP_CLOSING)
        return;
    if (u->flags & UP_IDLE)
        idle_remove(u);
    else if (u->req != NULL || (u->flags & UP_CONNECTING))
        u->pool->active--;
    put_pending(u);
    pool_gauges(u->w, u->pool);
    u->flags |= UP_CLOSING;
    u->req = NULL;
    if (u->tls != NULL)
        tls_unpark(u);
    if (u->refs > 0) {
        sqe = gw_ring_sqe(&u->w->ring);
        io_uring_prep_cancel_fd(sqe, u->fd, IORING_ASYNC_CANCEL_ALL);
        gw_sqe_op(sqe, NULL);
    } else {
        tls_bye(u);
    }
    upconn_free_if_done(u);
}

static void on_idle_timeout(struct gw_timer *t)
{
    struct gw_upconn *u = container_of(t, struct gw_upconn, idle_timer);
    if ((u->flags & (UP_HANDSHAKE | UP_CLOSING)) == UP_HANDSHAKE) {
        tls_fail(u, -ETIMEDOUT);
        return;
    }
    upconn_close(u);
}

static void on_connect(struct gw_op *op, int res, unsigned flags)
{
    struct gw_upconn *u = container_of(op, struct gw_upconn, connect_op);
    struct gw_req *r = u->req;
    (void)flags;
    u->refs--;
    u->flags &= ~UP_CONNECTING;
    put_pending(u);
    if (u->flags & UP_CLOSING) {
        upconn_free_if_done(u);
        return;
    }
    if (res < 0) {
        /* -ECANCELED here is the linked timeout firing. */
        int err = res == -ECANCELED ? -ETIMEDOUT : res;
        upconn_close(u);
        gw_req_up_ready(r, err);
        return;
    }
    if (u->tls != NULL) {
        tls_begin(u);
        return;
    }
    gw_req_up_ready(r, 0);
}

static void on_send(struct gw_op *op, int res, unsigned flags)
{
    struct gw_upconn *u = container_of(op, struct gw_upconn, send_op);
    (void)flags;
    u->refs--;
    if ((u->flags & UP_CLOSING) || u->req == NULL) {
        upconn_free_if_done(u);
        return;
    }
    gw_req_up_sent(u->req, res);
}

static void on_recv(struct gw_op *op, int res, unsigned flags)
{
    struct gw_upconn *u = container_of(op, struct gw_upconn, recv_op);
    (void)flags;
    u->refs--;
    if ((u->flags & UP_CLOSING) || u->req == NULL) {
        upconn_free_if_done(u);
        return;
    }
    u->recv_short = res > 0 && (size_t)res < u->recv_room;
    if (res > 0)
        u->in.len += (size_t)res;
    gw_req_up_data(u->req, res);
}

/* ---- tls -----------------------------------------------------------------
 *
 * A server of an upstream with a tls group is spoken to through mbedtls.
 * After the connect comes the handshake, bounded by connect_timeout_ms, and
 * only then gw_req_up_ready. gw_upconn_send encrypts and reports the
 * plaintext length once all of the ciphertext is out; gw_upconn_recv
 * receives ciphertext straight into mbedtls's input and reports what it
 * decrypted into u->in. The session makes the same calls as for plain TCP
 * and only has to know that such a connection cannot be spliced. */

#define TLS_RECV_ROOM 16384

static void tls_send_slice(struct gw_upconn *u, struct gw_slice s)
{
    struct io_uring_sqe *sqe = gw_ring_sqe(&u->w->ring);
    io_uring_prep_send(sqe, u->fd, s.ptr, s.len, MSG_NOSIGNAL);
    gw_sqe_op(sqe, &u->send_op);
    u->refs++;
    u->tls_sending = true;
}

/* Sends what mbedtls wrote, unless a send is already on its way (its
 * completion sends the rest). */
static void tls_flush(struct gw_upconn *u)
{
    struct gw_slice s;

    if (u->tls_sending)
        return;
    s = gw_tls_out_take(u->tls);
    if (s.len > 0)
        tls_send_slice(u, s);
}

static void tls_nop(struct gw_upconn *u, struct gw_op *op)
{
    struct io_uring_sqe *sqe = gw_ring_sqe(&u->w->ring);
    io_uring_prep_nop(sqe);
    gw_sqe_op(sqe, op);
    u->refs++;
}

static void tls_arm_recv(struct gw_upconn *u)
{
    struct io_uring_sqe *sqe;
    size_t room;
    char *p;

    /* Records already received (u->in was full), or the end of the stream,
     * do not come through the socket again: a NOP brings them. */
    if (u->tls_open && (u->tls_end != 0 || gw_tls_pending(u->tls))) {
        u->tls_nop = true;
        tls_nop(u, &u->recv_op);
        return;
    }
    p = gw_tls_in_room(u->tls, TLS_RECV_ROOM, &room);
    u->recv_room = room;
    sqe = gw_ring_sqe(&u->w->ring);
    io_uring_prep_recv(sqe, u->fd, p, room, 0);
    gw_sqe_op(sqe, &u->recv_op);
    u->refs++;
}

/* A TLS connection closed in good order (idle too long, the pool full, a
 * drain, a response that ended the connection) ends with close_notify, as
 * nginx's do: without it a server cannot tell our close from a cut, and
 * OpenSSL 3 servers log "unexpected eof". Nothing is in flight then, so
 * the socket's buffer has room; the send does not wait (MSG_DONTWAIT),
 * and a server that stopped reading simply gets the FIN without it. Not
 * after an error or a cut (the close cancels what is in flight then). */
static void tls_bye(struct gw_upconn *u)
{
    struct io_uring_sqe *sqe;
    struct gw_slice s;

    if (u->tls == NULL || !u->tls_open || u->tls_end != 0 || u->refs > 0 ||
        (u->flags & UP_HANDSHAKE) || gw_tls_close_notify(u->tls) != 0)
        return;
    s = gw_tls_out_take(u->tls);
    if (s.len == 0)
        return;
    sqe = gw_ring_sqe(&u->w->ring);
    io_uring_prep_send(sqe, u->fd, s.ptr, s.len, MSG_NOSIGNAL | MSG_DONTWAIT);
    gw_sqe_op(sqe, &u->send_op);
    u->refs++;
    u->tls_sending = true;
}

void gw_upconn_end_output(struct gw_upconn *u)
{
    if (u->tls == NULL) {
        shutdown(u->fd, SHUT_WR);
        return;
    }
    if (u->tls_open && gw_tls_close_notify(u->tls) == 0)
        tls_flush(u);
}

static void tls_count(struct gw_upconn *u, bool ok)
{
    struct gw_server_stats *ss = u->w->stats->servers[u->pool->stats_slot];

    gw_stat_add(&ss->tls_handshakes[ok ? 0 : 1], 1);
    if (ok && gw_tls_resumed(u->tls))
        gw_stat_add(&ss->tls_resumed, 1);
}

/* Session resumption. Each pool keeps the session of its last handshake
 * and offers it in the next ones: an abbreviated handshake, without the
 * key exchange and certificate check that cost mbedtls ~2 ms of the
 * worker's CPU each (perf uptls128: 64 connections opened at once held
 * the first requests ~150 ms). While a pool has no session, one
 * connection (the leader) does the full handshake and those connected
 * meanwhile wait for its session; the wait is bounded by
 * connect_timeout_ms like the handshake.
 *
 * The same holds for a session no handshake has used for
 * TLS_SESSION_FRESH_MS: the server may have let it expire (nginx keeps
 * sessions 5 minutes by default). The leader offers it, and either
 * resumes it or brings a new one. Without this, 64 connections opened
 * after an idle spell all offered a dead session and all fell back to a
 * full handshake at once (perf uptls128 rounds 2 and 3: p99 93-119 ms).
 *
 * A session is only offered under the config generation it was made in:
 * a reload may have changed the CA file behind the same path, and a
 * resumed handshake checks no certificate. */

static bool tls_session_usable(const struct gw_upconn *u)
{
    const struct gw_pool *p = u->pool;
    return p->tls_session != NULL && p->tls_session_gen == u->tls_cfg->generation;
}

#define TLS_SESSION_FRESH_MS 10000

static void tls_begin(struct gw_upconn *u)
{
    struct gw_pool *p = u->pool;
    bool usable = tls_session_usable(u);

    if (usable && gw_now_ms - p->tls_session_ms < TLS_SESSION_FRESH_MS) {
        gw_tls_session_offer(u->tls, p->tls_session);
    } else if (p->tls_leader != NULL && p->tls_leader != u) {
        u->flags |= UP_TLS_WAIT | UP_HANDSHAKE;
        u->next = p->tls_waiters;
        p->tls_waiters = u;
        gw_timer_set(&u->w->timers, &u->idle_timer,
                     gw_now_ms + u->req->route->upstream->connect_timeout_ms);
        return;
    } else {
        p->tls_leader = u;
        if (usable) /* an old session: it may still resume */
            gw_tls_session_offer(u->tls, p->tls_session);
    }
    tls_start(u);
}

/* The leader is done (its session kept, or it failed): the waiters go on,
 * all of them with the session, or else the first one as the next leader.
 * Popped one at a time: a start that fails re-enters through upconn_close. */
static void tls_wake(struct gw_pool *p)
{
    struct gw_upconn *u;

    while (p->tls_leader == NULL && (u = p->tls_waiters) != NULL) {
        p->tls_waiters = u->next;
        u->next = NULL;
        u->flags &= ~UP_TLS_WAIT;
        tls_begin(u);
    }
}

/* The leader's handshake ended: the waiters go on. */
static void tls_leader_done(struct gw_upconn *u)
{
    if (u->pool->tls_leader == u) {
        u->pool->tls_leader = NULL;
        tls_wake(u->pool);
    }
}

/* u leaves the pool's resumption bookkeeping (it is closing). */
static void tls_unpark(struct gw_upconn *u)
{
    struct gw_pool *p = u->pool;

    if (u->flags & UP_TLS_WAIT) {
        struct gw_upconn **pp;
        for (pp = &p->tls_waiters; *pp != NULL; pp = &(*pp)->next)
            if (*pp == u) {
                *pp = u->next;
                break;
            }
        u->next = NULL;
        u->flags &= ~UP_TLS_WAIT;
    }
    tls_leader_done(u);
}

/* A handshake finished: its session is the one to offer next. */
static void tls_keep_session(struct gw_upconn *u)
{
    struct gw_pool *p = u->pool;
    struct gw_tls_session *s = gw_tls_session_get(u->tls);

    if (s != NULL) {
        gw_tls_session_free(p->tls_session);
        p->tls_session = s;
        p->tls_session_gen = u->tls_cfg->generation;
        p->tls_session_ms = gw_now_ms;
    }
    tls_leader_done(u);
}

static void tls_start(struct gw_upconn *u)
{
    if (!(u->flags & UP_HANDSHAKE)) /* a waiter's bound runs from its connect */
        gw_timer_set(&u->w->timers, &u->idle_timer,
                     gw_now_ms + u->req->route->upstream->connect_timeout_ms);
    u->flags |= UP_HANDSHAKE;
    if (gw_tls_handshake(u->tls) == GW_TLS_FAILED) {
        tls_fail(u, -EPROTO);
        return;
    }
    tls_flush(u);
    tls_arm_recv(u);
}

/* The handshake failed: err is -ETIMEDOUT, -EPROTO (TLS said no) or the
 * socket's error. Logged (once a second per pool: a server with a wrong
 * certificate fails every request), and the request learns it. */
static void tls_fail(struct gw_upconn *u, int err)
{
    struct gw_req *r = u->req;
    struct gw_pool *p = u->pool;

    if (p->tls_log_ms == 0 || gw_now_ms - p->tls_log_ms >= 1000) {
        char why[256];
        p->tls_log_ms = gw_now_ms;
        if (err == -EPROTO)
            gw_tls_describe(u->tls, why, sizeof(why));
        else if (err == -ETIMEDOUT)
            snprintf(why, sizeof(why), "no answer within connect_timeout_ms");
        else
            snprintf(why, sizeof(why), "%s", strerror(-err));
        gw_log_error("upstream %s: TLS handshake with %s failed: %s",
                     r->route->upstream->name, p->addr.text, why);
    }
    tls_count(u, false);
    if (tls_session_usable(u) && !(u->flags & UP_TLS_WAIT)) {
        /* the server may have refused what we offered: start afresh */
        gw_tls_session_free(p->tls_session);
        p->tls_session = NULL;
    }
    upconn_close(u);
    gw_req_up_ready(r, err == -ETIMEDOUT ? -ETIMEDOUT : -EPROTO);
}

static void on_tls_send(struct gw_op *op, int res, unsigned flags)
{
    struct gw_upconn *u = container_of(op, struct gw_upconn, send_op);
    struct gw_slice next;
    size_t plain;
    (void)flags;
    u->refs--;
    u->tls_sending = false;
    if (u->tls_send_err) {
        u->tls_send_err = false;
        res = -EPROTO;
    }
    if ((u->flags & UP_CLOSING) || u->req == NULL) {
        upconn_free_if_done(u);
        return;
    }
    if (res <= 0) {
        if (u->flags & UP_HANDSHAKE) {
            tls_fail(u, res < 0 ? res : -EPIPE);
        } else {
            u->tls_plain = 0;
            gw_req_up_sent(u->req, res < 0 ? res : -EPIPE);
        }
        return;
    }
    next = gw_tls_sent(u->tls, (size_t)res);
    if (next.len > 0) {
        tls_send_slice(u, next);
        return;
    }
    if (u->tls_plain > 0) {
        plain = u->tls_plain;
        u->tls_plain = 0;
        gw_req_up_sent(u->req, (int)plain);
    }
}

/* After the handshake: decrypt what mbedtls holds into u->in. */
static void tls_deliver(struct gw_upconn *u)
{
    size_t total = 0;

    while (u->tls_end == 0) {
        ssize_t n;
        gw_buf_compact(&u->in);
        if (u->in.len == u->in.cap)
            break;
        n = gw_tls_read(u->tls, u->in.data + u->in.len, u->in.cap - u->in.len);
        if (n > 0) {
            u->in.len += (size_t)n;
            total += (size_t)n;
        } else if (n < 0) {
            u->tls_end = (int)n;
        } else {
            break;
        }
    }
    tls_flush(u); /* an alert mbedtls may have written */
    if (total > 0)
        gw_req_up_data(u->req, (int)total);
    else if (u->tls_end != 0)
        gw_req_up_data(u->req, u->tls_end == -1 ? 0 : -EPROTO);
    else
        tls_arm_recv(u);
}

static void on_tls_recv(struct gw_op *op, int res, unsigned flags)
{
    struct gw_upconn *u = container_of(op, struct gw_upconn, recv_op);
    bool nop = u->tls_nop;
    enum gw_tls_state st;
    (void)flags;
    u->refs--;
    u->tls_nop = false;
    if ((u->flags & UP_CLOSING) || u->req == NULL) {
        upconn_free_if_done(u);
        return;
    }
    if (!nop) {
        if (res <= 0) {
            /* the server closed or reset; without close_notify a response
             * that runs until the close may be cut short, as nginx also
             * accepts */
            if (u->flags & UP_HANDSHAKE)
                tls_fail(u, res < 0 ? res : -ECONNRESET);
            else
                gw_req_up_data(u->req, res);
            return;
        }
        gw_tls_in_commit(u->tls, (size_t)res);
    }
    u->recv_short = !nop && (size_t)res < u->recv_room;
    if (!(u->flags & UP_HANDSHAKE)) {
        tls_deliver(u);
        return;
    }
    st = gw_tls_handshake(u->tls);
    if (st == GW_TLS_FAILED) {
        tls_fail(u, -EPROTO);
        return;
    }
    tls_flush(u);
    if (st == GW_TLS_HANDSHAKE) {
        tls_arm_recv(u);
        return;
    }
    u->flags &= ~UP_HANDSHAKE;
    u->tls_open = true;
    gw_timer_cancel(&u->w->timers, &u->idle_timer);
    tls_count(u, true);
    tls_keep_session(u);
    gw_req_up_ready(u->req, 0);
}

char *gw_pool_tls_id(const struct gw_upstream *up)
{
    const struct gw_upstream_tls_conf *t = &up->tls;
    size_t n;
    char *id;

    if (!t->enabled)
        return NULL;
    n = (size_t)snprintf(NULL, 0, "%d|%s|%s|%s", t->verify, t->sni ? t->sni : "",
                         t->ca ? t->ca : "", t->cert ? t->cert : "");
    id = gw_xmalloc(n + 1);
    snprintf(id, n + 1, "%d|%s|%s|%s", t->verify, t->sni ? t->sni : "", t->ca ? t->ca : "",
             t->cert ? t->cert : "");
    return id;
}

void gw_upconn_send(struct gw_upconn *u, const char *p, size_t n)
{
    struct io_uring_sqe *sqe;

    if (u->tls != NULL) {
        u->tls_plain = n;
        if (gw_tls_write(u->tls, p, n) != 0) {
            /* reported by the send in flight, or by a NOP */
            u->tls_send_err = true;
            if (!u->tls_sending)
                tls_nop(u, &u->send_op);
            return;
        }
        tls_flush(u);
        return;
    }
    sqe = gw_ring_sqe(&u->w->ring);
    io_uring_prep_send(sqe, u->fd, p, n, MSG_NOSIGNAL);
    gw_sqe_op(sqe, &u->send_op);
    u->refs++;
}

void gw_upconn_recv(struct gw_upconn *u)
{
    struct io_uring_sqe *sqe;

    if (u->tls != NULL) {
        tls_arm_recv(u);
        return;
    }
    sqe = gw_ring_sqe(&u->w->ring);
    gw_buf_compact(&u->in);
    u->recv_room = u->in.cap - u->in.len;
    io_uring_prep_recv(sqe, u->fd, u->in.data + u->in.len, u->recv_room, 0);
    gw_sqe_op(sqe, &u->recv_op);
    u->refs++;
}

static struct gw_upconn *upconn_new(struct gw_wctx *w, struct gw_pool *p)
{
    struct gw_upconn *u = w->free_upconns;
    if (u)
        w->free_upconns = u->next;
    else
        u = gw_xmalloc(sizeof(*u));
    memset(u, 0, sizeof(*u));
    u->w = w;
    u->pool = p;
    u->fd = -1;
    u->connect_op.cb = on_connect;
    u->send_op.cb = on_send;
    u->recv_op.cb = on_recv;
    gw_timer_init(&u->idle_timer, on_idle_timeout);
    return u;
}

/* May s take the request? Takes one of its max_requests places and, when
 * its breaker is on, asks it; gives the place back when the breaker says
 * no. */
static bool server_admits(struct gw_req *r, const struct gw_server *s, bool *breaker_said_no,
                          uint64_t *retry_after_ms)
{
    const struct gw_upstream *up = s->upstream;
    struct gw_server_shared *sh = s->shared;
    enum gw_breaker_verdict v;
    uint64_t after = 0;

    if (!gw_breaker_limit_take(&sh->active, up->max_requests))
        return false;
    if (!up->breaker.enabled) {
        r->attempt_open = false;
        r->probe = false;
        r->holds_active = true;
        return true;
    }
    v = gw_breaker_allow(sh->breaker, gw_now_ms, &after);
    if (v == GW_BREAKER_DENY) {
        gw_breaker_limit_put(&sh->active);
        *breaker_said_no = true;
        if (*retry_after_ms == 0 || after < *retry_after_ms)
            *retry_after_ms = after;
        return false;
    }
    r->attempt_open = true;
    r->probe = v == GW_BREAKER_PROBE;
    r->holds_active = true;
    return true;
}

/* Chooses the server for a new attempt: round robin or least_conn over
 * the servers that admit it; the server of the failed attempt last. */
static const struct gw_server *pick_server(struct gw_req *r, enum gw_reject *why,
                                           uint64_t *retry_after_ms)
{
    const struct gw_upstream *up = r->route->upstream;
    struct gw_cfgref *ref = r->cfgref;
    unsigned start = ref->rr[up->index]++;
    size_t n = up->nservers;
    bool tried[256] = {false}, breaker_no = false;

    *retry_after_ms = 0;
    for (size_t round = 0; round < n; round++) {
        const struct gw_server *best = NULL;
        size_t best_i = 0;
        unsigned best_load = ~0u;

        for (size_t k = 0; k < n; k++) {
            size_t i = (start + k) % n;
            const struct gw_server *s = up->servers[i];
            unsigned load;

            if (tried[i])
                continue;
            /* The failed server only when nothing else is left. */
            load = up->balance == GW_BALANCE_LEAST_CONN ? ref->pools[s->index]->active : 0;
            if (s == r->avoid && n > 1)
                load = ~0u - 1;
            if (best == NULL || load < best_load) {
                best = s;
                best_i = i;
                best_load = load;
            }
            if (up->balance != GW_BALANCE_LEAST_CONN && s != r->avoid)
                break; /* round robin: the first in turn */
        }
        if (best == NULL)
            break;
        tried[best_i] = true;
        if (server_admits(r, best, &breaker_no, retry_after_ms))
            return best;
    }
    *why = breaker_no ? GW_REJECT_BREAKER_OPEN : GW_REJECT_MAX_REQUESTS;
    if (!breaker_no)
        *retry_after_ms = 1000;
    return NULL;
}

void gw_upstream_put_active(struct gw_req *r)
{
    if (!r->holds_active)
        return;
    r->holds_active = false;
    gw_breaker_limit_put(&r->server->shared->active);
}

static void put_pending(struct gw_upconn *u)
{
    if (u->pending_on != NULL) {
        gw_breaker_limit_put(&u->pending_on->pending);
        u->pending_on = NULL;
    }
}

enum gw_acquire gw_upstream_acquire(struct gw_req *r, bool fresh, enum gw_reject *why,
                                    uint64_t *retry_after_ms)
{
    struct gw_wctx *w = r->c->w;
    struct gw_pool *p;
    struct gw_upconn *u;
    struct io_uring_sqe *sqe;
    struct gw_server_stats *ss;
    struct gw_server_shared *sh;
    struct gw_tls_conn *tls = NULL;
    unsigned timeout_ms;
    int fd, one = 1;

    if (!fresh || r->server == NULL) {
        const struct gw_server *s = pick_server(r, why, retry_after_ms);
        if (s == NULL) {
            /* Counted on the upstream's first server: the family is
             * rendered per upstream. */
            const struct gw_server *s0 = r->route->upstream->servers[0];
            ss = w->stats->servers[r->cfgref->pools[s0->index]->stats_slot];
            gw_stat_add(&ss->rejected[*why], 1);
            return GW_ACQ_REJECTED;
        }
        r->server = s;
    } else {
        /* the same attempt again: its place was given back with the
         * stale connection */
        gw_breaker_limit_take(&r->server->shared->active, 0);
        r->holds_active = true;
    }
    sh = r->server->shared;
    p = r->cfgref->pools[r->server->index];
    ss = w->stats->servers[p->stats_slot];

    while (!fresh && p->idle != NULL) {
        u = p->idle;
        idle_remove(u);
        gw_timer_cancel(&w->timers, &u->idle_timer);
        /* A request we could not send again must not land on a connection
         * the server has already closed: one non-blocking peek tells. A
         * request kept whole for a retry skips it; a failure there is
         * retried on a fresh connection instead. */
        if (!r->uout_keep) {
            char b;
            ssize_t n = recv(u->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
            if (n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                upconn_close(u);
                continue;
            }
        }
        u->reused = true;
        u->req = r;
        p->active++;
        pool_gauges(w, p);
        r->up = u;
        gw_stat_add(&ss->reused, 1);
        return GW_ACQ_READY;
    }

    if (!gw_breaker_limit_take(&sh->pending, r->route->upstream->max_pending)) {
        *why = GW_REJECT_MAX_PENDING;
        *retry_after_ms = 1000;
        gw_stat_add(&ss->rejected[*why], 1);
        gw_upstream_put_active(r);
        if (r->probe)
            gw_breaker_cancel_probe(sh->breaker);
        r->attempt_open = r->probe = false;
        return GW_ACQ_REJECTED;
    }
    fd = socket(p->addr.sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        int err = -errno;
        gw_breaker_limit_put(&sh->pending);
        gw_log_error("socket for upstream %s: %s", p->addr.text, strerror(-err));
        gw_req_defer_error(r, err);
        return GW_ACQ_PENDING;
    }
    if (r->server->upstream->tls_ctx != NULL &&
        (tls = gw_tls_conn_new(r->server->upstream->tls_ctx)) == NULL) {
        close(fd);
        gw_breaker_limit_put(&sh->pending);
        gw_log_error("TLS setup for upstream %s failed", p->addr.text);
        gw_req_defer_error(r, -ENOMEM);
        return GW_ACQ_PENDING;
    }
    u = upconn_new(w, p);
    if (tls != NULL) {
        u->tls = tls;
        u->tls_cfg = gw_config_ref(r->cfgref->cfg);
        u->send_op.cb = on_tls_send;
        u->recv_op.cb = on_tls_recv;
    }
    u->req = r;
    u->pending_on = sh;
    r->up = u;
    p->active++;
    pool_gauges(w, p);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* The handshake's last ACK waits a moment and leaves with the request
     * (or the ClientHello), which follows the connect at once: one
     * segment less per new upstream connection, as HAProxy does. */
    setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &(int){0}, sizeof(int));
    u->fd = fd;
    gw_bufpool_get(&w->out_pool, &u->in);
    gw_stat_add(&ss->connects, 1);

    timeout_ms = r->route->upstream->connect_timeout_ms;
    u->connect_ts.tv_sec = timeout_ms / 1000;
    u->connect_ts.tv_nsec = (long long)(timeout_ms % 1000) * 1000000;
    sqe = gw_ring_sqe(&w->ring);
    io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&p->addr.sa, p->addr.len);
    gw_sqe_op(sqe, &u->connect_op);
    sqe->flags |= IOSQE_IO_LINK;
    u->refs++;
    u->flags |= UP_CONNECTING;
    sqe = gw_ring_sqe(&w->ring);
    io_uring_prep_link_timeout(sqe, &u->connect_ts, 0);
    gw_sqe_op(sqe, NULL);
    return GW_ACQ_PENDING;
}

void gw_upstream_release(struct gw_req *r, bool reusable)
{
    struct gw_upconn *u = r->up;
    struct gw_wctx *w;
    struct gw_pool *p;

    if (u == NULL)
        return;
    r->up = NULL;
    w = u->w;
    p = u->pool;
    if (!reusable || u->refs > 0 || u->in.len > 0 || w->draining || p->retired ||
        p->nidle >= r->route->upstream->keepalive ||
        (u->tls != NULL && (u->tls_end != 0 || gw_tls_pending(u->tls)))) {
        upconn_close(u);
        return;
    }
    u->req = NULL;
    p->active--;
    u->flags = UP_IDLE;
    u->next = p->idle;
    p->idle = u;
    p->nidle++;
    pool_gauges(w, p);
    u->in.off = u->in.len = 0;
    /* Idle connections are not watched with a poll (that would cost two
     * ring ops per request); the idle timer closes them, and a reuse
     * either peeks or may retry. */
    gw_timer_set(&w->timers, &u->idle_timer,
                 gw_now_ms + r->cfgref->cfg->limits.idle_timeout_ms);
}

void gw_pool_close_idle(struct gw_pool *p)
{
    while (p->idle)
        upconn_close(p->idle);
}

void gw_pools_close_idle(struct gw_wctx *w)
{
    for (struct gw_pool *p = w->pools; p; p = p->next)
        gw_pool_close_idle(p);
}
