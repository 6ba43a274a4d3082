/* Owns client connections and the requests on them: the keep-alive loop
 * (read head, parse, route, forward, relay the response, repeat), the
 * head/idle/request timers, and every decision about closing.
 *
 * The order of the request path lives here and nowhere else:
 *   parse -> route -> limits -> upstream connection -> request head + body
 *   -> response head -> response body -> log/metrics -> next request.
 *
 * A client connection keeps one recv armed, a one-shot recv that picks a
 * provided buffer (so an idle connection holds no memory of its own); every
 * CQE's bytes are copied out into c->in and the buffer goes straight back to
 * the ring, so a slow upstream never pins ring buffers. It is not multishot:
 * see arm_recv. The recv is stopped (cancelled) only while a large body or
 * a tunnel is spliced. */
#include "proxy/ctx.h"

#include "core/clock.h"
#include "core/list.h"
#include "core/log.h"
#include "core/mem.h"
#include "http/parse.h"
#include "http/write.h"
#include "policy/breaker.h"
#include "policy/deadline.h"
#include "policy/ratelimit.h"
#include "policy/router.h"
#include "policy/shared.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char continue_100[] = "HTTP/1.1 100 Continue\r\n\r\n";

static void conn_process(struct gw_conn *c);
static void conn_closing_progress(struct gw_conn *c);
static void conn_close(struct gw_conn *c);
static void conn_abort(struct gw_conn *c);
static void req_advance_up(struct gw_req *r);
static void req_try_finish(struct gw_req *r);
static void req_fail(struct gw_req *r, int status, enum gw_outcome outcome);
static void resp_send(struct gw_conn *c);
static void tunnel_continue(struct gw_req *r);
static void start_attempt(struct gw_req *r);
static void req_respond_extra(struct gw_req *r, int status, bool close, const char *extra);
static void req_respond(struct gw_req *r, int status, bool close);
static bool body_complete(const struct gw_req *r);
static void cache_unpark(struct gw_req *r);
static void cache_end(struct gw_req *r);
static bool cache_stale_ok(const struct gw_req *r, int status);
static void cache_serve_stale(struct gw_req *r);
static void cache_capture_start(struct gw_req *r, const struct gw_response *q);
static void cache_capture(struct gw_req *r, const char *p, size_t n);
static void cache_capture_chunk(void *arg, const char *p, size_t n);
static void resp_chunk_data(void *arg, const char *p, size_t n);
static void cache_capture_end(struct gw_req *r, bool complete);
static void req_continue(struct gw_req *r, const struct gw_request *q, size_t head_len);
static void on_tunnel_idle(struct gw_timer *t);

/* ---- client socket ops -------------------------------------------------- */

static bool conn_wants_recv(const struct gw_conn *c)
{
    return !(c->flags & (GW_C_CLOSING | GW_C_PEER_EOF | GW_C_HOLD_RECV | GW_C_RECV_ARMED)) &&
           (c->in.data == NULL || c->in.len < c->in.cap);
}

/* A request body that is copied rather than spliced (chunked, shorter than
 * a splice pays off for, or splice unavailable) is read straight into
 * r->uout once c->in has nothing left, and goes from there to the
 * upstream: no ring buffer and no copy through c->in, and reads of up to
 * GW_BODY_BUF instead of one ring buffer. The recv's fixed cost was the
 * limit: in perf/, 1 MiB chunked uploads went from 662 to 1436 req/s, and
 * post1m with splice off from 743 to 1467, with 128 KiB reads (64 KiB ring
 * buffers alone gave 1.55x, bigger sends alone 1.11x). Not for TLS, where
 * mbedtls reads the socket's bytes, nor for a request kept whole in uout
 * for a retry. */
static bool body_recv_ok(const struct gw_req *r)
{
    const struct gw_conn *c = r->c;

    return c->tls == NULL && c->in.len == 0 && r->req_phase == GW_REQ_SEND && !r->aborting &&
           !r->uout_keep && r->up != NULL && r->up_ready && r->uout.data != NULL &&
           r->resp_phase != GW_RESP_DONE && !body_complete(r);
}

static void arm_body_recv(struct gw_req *r)
{
    struct gw_conn *c = r->c;
    struct gw_wctx *w = c->w;
    struct gw_buf *u = &r->uout;
    struct io_uring_sqe *sqe;
    size_t room;

    /* uout can't move while a send from it is in flight; the send's
     * completion comes back here */
    if (!r->uout_sending) {
        if (u->cap < w->body_pool.size) {
            struct gw_buf big = {0};
            gw_bufpool_get(&w->body_pool, &big);
            memcpy(big.data, gw_buf_head(u), u->len);
            big.len = u->len;
            gw_bufpool_put(&w->in_pool, u);
            *u = big;
        }
        gw_buf_compact(u);
    }
    r->body_recv_at = u->off + u->len;
    room = u->cap - r->body_recv_at;
    if (room < u->cap / 4)
        return;
    /* A Content-Length body is read no further than its end: what follows
     * is the next request, which belongs in c->in. */
    if (!r->body_chunked && room > r->body_left)
        room = (size_t)r->body_left;
    sqe = gw_ring_sqe(&w->ring);
    io_uring_prep_recv(sqe, c->fd, u->data + r->body_recv_at, room, 0);
    gw_sqe_op(sqe, &c->recv_op);
    c->refs++;
    c->flags |= GW_C_RECV_ARMED | GW_C_RECV_BODY;
}

static void arm_recv(struct gw_conn *c)
{
    struct io_uring_sqe *sqe;

    if (!conn_wants_recv(c) || c->tls_nop)
        return;
    if (c->req != NULL && body_recv_ok(c->req)) {
        arm_body_recv(c->req);
        return;
    }
    /* mbedtls may hold records already received (the input buffer was
     * full): they will not come through the socket again */
    if (c->tls != NULL && c->tls_open && gw_tls_pending(c->tls)) {
        sqe = gw_ring_sqe(&c->w->ring);
        io_uring_prep_nop(sqe);
        gw_sqe_op(sqe, &c->tls_op);
        c->refs++;
        c->tls_nop = true;
        return;
    }
    /* One-shot, not multishot: a multishot recv keeps filling ring buffers
     * for as long as the socket has data, so a fast client's whole upload
     * (perf: most of a 1 MiB POST) was read and copied before its head was
     * even parsed, and the splice path never got it. One recv reads at
     * most one 16 KiB buffer, and the next is armed only when wanted. */
    sqe = gw_ring_sqe(&c->w->ring);
    io_uring_prep_recv(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = c->w->br.bgid;
    gw_sqe_op(sqe, &c->recv_op);
    c->refs++;
    c->flags |= GW_C_RECV_ARMED;
}

static void stop_recv(struct gw_conn *c)
{
    struct io_uring_sqe *sqe;

    if (!(c->flags & GW_C_RECV_ARMED) || (c->flags & GW_C_RECV_CANCEL))
        return;
    sqe = gw_ring_sqe(&c->w->ring);
    io_uring_prep_cancel(sqe, &c->recv_op, 0);
    gw_sqe_op(sqe, NULL);
    c->flags |= GW_C_RECV_CANCEL;
}

static void conn_free_if_done(struct gw_conn *c)
{
    struct gw_wctx *w = c->w;

    /* Several paths end in here within one call chain (an abort that also
     * finishes the request); the first one frees. */
    if (!(c->flags & GW_C_CLOSING) || (c->flags & GW_C_FREED) || c->refs > 0 || c->req != NULL)
        return;
    c->flags |= GW_C_FREED;
    gw_timer_cancel(&w->timers, &c->timer);
    close(c->fd);
    if (c->tls != NULL) {
        gw_tls_conn_free(c->tls);
        c->tls = NULL;
        gw_config_unref(c->tls_cfg);
        c->tls_cfg = NULL;
    }
    gw_bufpool_put(&w->in_pool, &c->in);
    gw_bufpool_put(&w->out_pool, &c->out);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->nconns--;
    gw_stat_gauge_add(&w->stats->active, -1);
    if (c->listen_slot < GW_METRICS_MAX_LISTENS)
        gw_stat_gauge_add(&w->stats->active_by_listen[c->listen_slot], -1);
    c->next = w->free_conns;
    w->free_conns = c;
}

/* Appends bytes from the ring to c->in. The buffer is taken from the pool
 * on demand and grows past its size only when CQEs that were already in
 * flight arrive after we decided to stop reading. */
static void in_append(struct gw_conn *c, const char *p, size_t n)
{
    struct gw_buf *b = &c->in;

    gw_bufpool_get(&c->w->in_pool, b);
    if (gw_buf_append(b, p, n) == 0)
        return;
    gw_buf_compact(b);
    b->cap = b->len + n > 2 * b->cap ? b->len + n : 2 * b->cap;
    b->data = gw_xrealloc(b->data, b->cap);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void on_client_eof(struct gw_conn *c);

/* The body recv's bytes are at uout.data + body_recv_at, right after what
 * uout still holds (a send may have emptied it meanwhile, and emptying
 * resets off). A chunked body may end inside them: the rest is the next
 * request and moves to c->in. */
static int body_count(struct gw_req *r, const char *p, size_t n, size_t *take);

static void on_body_recv(struct gw_conn *c, int res)
{
    struct gw_req *r = c->req;
    struct gw_buf *u = &r->uout;
    const char *p;
    size_t n;
    int ret;

    if (c->flags & GW_C_CLOSING) {
        conn_closing_progress(c);
        return;
    }
    if (res > 0)
        gw_stat_add(&c->w->stats->bytes_in, (uint64_t)res);
    if (r->resp_phase == GW_RESP_DONE || r->aborting) {
        req_try_finish(r); /* the request ended while the recv was out */
        return;
    }
    if (res == 0) {
        c->flags |= GW_C_PEER_EOF;
        on_client_eof(c);
        return;
    }
    if (res < 0) {
        if (res == -ECANCELED)
            req_advance_up(r); /* stopped on purpose, e.g. for a splice */
        else
            conn_abort(c);
        return;
    }
    if (u->len == 0)
        u->off = r->body_recv_at;
    p = u->data + r->body_recv_at;
    ret = body_count(r, p, (size_t)res, &n);
    if (ret != 0) {
        req_fail(r, ret == -1 ? 400 : 413, GW_OUTCOME_COUNT);
        return;
    }
    if (n < (size_t)res)
        in_append(c, p + n, (size_t)res - n);
    u->len += n;
    req_advance_up(r);
}

static void tcopy_down(struct gw_req *r);
static void tcopy_up_data(struct gw_req *r, int res);

static void on_client_input(struct gw_conn *c)
{
    if (c->req == NULL)
        conn_process(c);
    else if (c->req->tunnel_copy)
        tcopy_down(c->req);
    else
        req_advance_up(c->req);
}

static void on_client_eof(struct gw_conn *c)
{
    struct gw_req *r = c->req;

    if (r == NULL) {
        conn_close(c);
        return;
    }
    /* A client may half-close after sending its request; it still gets the
     * response, and the connection closes after it. A client that leaves
     * in the middle of its request body abandons the request. */
    r->client_close = true;
    if (r->tunnel_copy) {
        tcopy_down(r); /* passes the half-close on once the bytes before it went */
        return;
    }
    if (r->req_phase != GW_REQ_DONE && r->req_phase != GW_REQ_BODY_SPLICE &&
        (r->body_left > 0 || (r->body_chunked && !r->chunk.done)) && c->in.len == 0)
        conn_abort(c);
}

/* ---- tls -----------------------------------------------------------------
 *
 * A connection accepted by a TLS listener feeds what it receives to mbedtls
 * (gw_tls_feed) instead of c->in; the handshake runs on those bytes, and
 * afterwards the decrypted bytes go into c->in, where the session reads
 * them as it reads plaintext. c_send encrypts and the ciphertext goes out
 * with one send at a time (tls_flush). Splices are never used on such a
 * connection: the kernel would see ciphertext. */

enum {
    TLS_IN_OK,   /* whatever could be decrypted is in c->in */
    TLS_IN_EOF,  /* the peer closed the TLS stream */
    TLS_IN_DEAD, /* handshake failed: the connection is closing */
};

static void tls_send_slice(struct gw_conn *c, struct gw_slice s)
{
    struct io_uring_sqe *sqe;

    c->iov[0].iov_base = (void *)s.ptr;
    c->iov[0].iov_len = s.len;
    c->msg.msg_iov = c->iov;
    c->msg.msg_iovlen = 1;
    sqe = gw_ring_sqe(&c->w->ring);
    io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
    gw_sqe_op(sqe, &c->send_op);
    c->refs++;
    c->flags |= GW_C_SEND_BUSY;
}

/* Sends what mbedtls wrote, unless a send is already on its way. */
static void tls_flush(struct gw_conn *c)
{
    struct gw_slice s;

    if (c->flags & GW_C_SEND_BUSY)
        return;
    s = gw_tls_out_take(c->tls);
    if (s.len > 0)
        tls_send_slice(c, s);
}

static void on_tls_slow_run(struct gw_job *j)
{
    gw_tls_slow_step(container_of(j, struct gw_conn, tls_slow)->tls);
}

static void on_tls_slow_done(struct gw_job *j);

static int tls_input(struct gw_conn *c)
{
    struct gw_wctx *w = c->w;
    unsigned slot = c->listen_slot < GW_METRICS_MAX_LISTENS ? c->listen_slot : 0;

    if (!c->tls_open) {
        enum gw_tls_state st;

        if (c->tls_job)
            return TLS_IN_OK; /* what came meanwhile is held (gw_tls_feed) */
        st = gw_tls_handshake(c->tls);
        while (st == GW_TLS_SLOW) {
            /* The ServerKeyExchange (an ECDHE key and a signature) and the
             * ClientKeyExchange (the shared secret) go to a helper thread,
             * so that this worker's other connections do not wait the
             * milliseconds they take. Not while a send of ours is out: its
             * completion would take from the output, which the step writes
             * to when it fails with an alert. */
            c->tls_slow.run = on_tls_slow_run;
            c->tls_slow.done = on_tls_slow_done;
            if (!(c->flags & GW_C_SEND_BUSY) && gw_jobs_submit(&w->jobs, &c->tls_slow) == 0) {
                c->tls_job = true;
                c->refs++;
                return TLS_IN_OK;
            }
            gw_tls_slow_step(c->tls);
            st = gw_tls_handshake(c->tls);
        }
        tls_flush(c);
        if (st == GW_TLS_FAILED) {
            /* plain HTTP to a TLS port, a client that gave up, a bad
             * record: nothing to answer in TLS */
            gw_stat_add(&w->stats->tls_handshakes[slot][1], 1);
            conn_close(c);
            return TLS_IN_DEAD;
        }
        if (st == GW_TLS_HANDSHAKE)
            return TLS_IN_OK;
        c->tls_open = true;
        gw_stat_add(&w->stats->tls_handshakes[slot][0], 1);
        if (gw_tls_resumed(c->tls))
            gw_stat_add(&w->stats->tls_resumed[slot], 1);
        gw_hist_add(&w->stats->tls_hs_dur, gw_clock_us() - c->tls_start_us);
    }
    for (;;) {
        size_t room;
        ssize_t n;

        gw_bufpool_get(&w->in_pool, &c->in);
        if (c->in.off + c->in.len == c->in.cap)
            gw_buf_compact(&c->in);
        room = c->in.cap - c->in.off - c->in.len;
        if (room == 0)
            break; /* the rest waits in mbedtls; arm_recv comes back for it */
        n = gw_tls_read(c->tls, c->in.data + c->in.off + c->in.len, room);
        if (n > 0) {
            c->in.len += (size_t)n;
            continue;
        }
        if (n < 0) {
            tls_flush(c);
            return TLS_IN_EOF;
        }
        break;
    }
    tls_flush(c);
    return TLS_IN_OK;
}

/* Goes on with what mbedtls holds, after a step that was not driven by a
 * receive (a NOP, or the slow handshake step coming back). */
static void tls_input_again(struct gw_conn *c)
{
    int st;

    if (c->flags & GW_C_CLOSING) {
        conn_closing_progress(c);
        return;
    }
    st = tls_input(c);
    if (st == TLS_IN_DEAD)
        return;
    on_client_input(c);
    if (st == TLS_IN_EOF && !(c->flags & GW_C_CLOSING)) {
        c->flags |= GW_C_PEER_EOF;
        on_client_eof(c);
    }
    if (!(c->flags & GW_C_CLOSING))
        arm_recv(c);
}

static void on_tls_nop(struct gw_op *op, int res, unsigned flags)
{
    struct gw_conn *c = container_of(op, struct gw_conn, tls_op);

    (void)res;
    (void)flags;
    c->refs--;
    c->tls_nop = false;
    tls_input_again(c);
}

static void on_tls_slow_done(struct gw_job *j)
{
    struct gw_conn *c = container_of(j, struct gw_conn, tls_slow);

    c->refs--;
    c->tls_job = false;
    tls_input_again(c);
}

static void on_recv(struct gw_op *op, int res, unsigned flags)
{
    struct gw_conn *c = container_of(op, struct gw_conn, recv_op);
    struct gw_wctx *w = c->w;

    if (c->flags & GW_C_RECV_BODY) {
        c->refs--;
        c->flags &= ~(GW_C_RECV_ARMED | GW_C_RECV_CANCEL | GW_C_RECV_BODY);
        on_body_recv(c, res);
        return;
    }
    if (!(flags & IORING_CQE_F_MORE)) {
        c->refs--;
        c->flags &= ~(GW_C_RECV_ARMED | GW_C_RECV_CANCEL);
    }
    if (flags & IORING_CQE_F_BUFFER) {
        unsigned bid = gw_bufring_bid(flags);
        if (res > 0 && !(c->flags & GW_C_CLOSING)) {
            if (c->tls != NULL)
                gw_tls_feed(c->tls, gw_bufring_buf(&w->br, bid), (size_t)res);
            else
                in_append(c, gw_bufring_buf(&w->br, bid), (size_t)res);
            gw_stat_add(&w->stats->bytes_in, (uint64_t)res);
        }
        gw_bufring_recycle(&w->br, bid);
    }
    if (c->flags & GW_C_CLOSING) {
        conn_closing_progress(c);
        return;
    }
    /* Stop reading while the input buffer is full; whoever consumes from
     * it re-arms. CQEs already on their way still land (in_append grows). */
    if (c->in.len >= c->w->in_pool.size && (c->flags & GW_C_RECV_ARMED))
        stop_recv(c);
    if (res > 0) {
        int st = c->tls != NULL ? tls_input(c) : TLS_IN_OK;
        if (st == TLS_IN_DEAD)
            return;
        on_client_input(c);
        if (st == TLS_IN_EOF && !(c->flags & GW_C_CLOSING)) {
            c->flags |= GW_C_PEER_EOF;
            on_client_eof(c);
        }
    } else if (res == 0) {
        c->flags |= GW_C_PEER_EOF;
        on_client_eof(c);
    } else if (res != -ENOBUFS && res != -ECANCELED) {
        conn_abort(c);
        return;
    }
    if (c->flags & GW_C_CLOSING)
        return;
    /* A recv stopped on purpose (splice, tunnel) lets its owner go on. */
    if (!(c->flags & GW_C_RECV_ARMED) && (c->flags & GW_C_HOLD_RECV) && c->req) {
        if (c->req->resp_phase == GW_RESP_TUNNEL)
            tunnel_continue(c->req);
        else
            req_advance_up(c->req);
        return;
    }
    arm_recv(c);
}

static void on_send(struct gw_op *op, int res, unsigned flags)
{
    struct gw_conn *c = container_of(op, struct gw_conn, send_op);
    void (*fn)(struct gw_conn *);
    size_t n;
    (void)flags;

    c->refs--;
    c->flags &= ~GW_C_SEND_BUSY;
    if (c->flags & GW_C_CLOSING) {
        if ((c->flags & GW_C_TLS_BYE) && res > 0) {
            /* the last of the ciphertext, close_notify included */
            struct gw_slice next = gw_tls_sent(c->tls, (size_t)res);
            if (next.len > 0) {
                tls_send_slice(c, next);
                return;
            }
        }
        conn_closing_progress(c);
        return;
    }
    if (res <= 0) {
        conn_abort(c);
        return;
    }
    gw_stat_add(&c->w->stats->bytes_out, (uint64_t)res);
    if (c->req)
        c->req->bytes_out += (uint64_t)res;
    if (c->tls != NULL) {
        /* ciphertext: the rest of the frozen buffer, then whatever was
         * encrypted meanwhile, and only then is the send done */
        struct gw_slice next = gw_tls_sent(c->tls, (size_t)res);
        if (next.len > 0) {
            tls_send_slice(c, next);
            return;
        }
        goto sent;
    }
    /* Advance past what was sent; send the rest if it was short. */
    n = (size_t)res;
    while (c->msg.msg_iovlen > 0 && n >= c->msg.msg_iov[0].iov_len) {
        n -= c->msg.msg_iov[0].iov_len;
        c->msg.msg_iov++;
        c->msg.msg_iovlen--;
    }
    if (c->msg.msg_iovlen > 0) {
        struct io_uring_sqe *sqe;
        c->msg.msg_iov[0].iov_base = (char *)c->msg.msg_iov[0].iov_base + n;
        c->msg.msg_iov[0].iov_len -= n;
        sqe = gw_ring_sqe(&c->w->ring);
        io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
        gw_sqe_op(sqe, &c->send_op);
        c->refs++;
        c->flags |= GW_C_SEND_BUSY;
        return;
    }
sent:
    fn = c->on_sent;
    c->on_sent = NULL;
    if (fn)
        fn(c);
    if (!(c->flags & (GW_C_SEND_BUSY | GW_C_CLOSING)) && c->deferred) {
        fn = c->deferred;
        c->deferred = NULL;
        fn(c);
    }
}

#define TLS_GATHER 4096 /* up to this much of a send is encrypted as one record */

/* Sends c->iov[0..n) with one sendmsg; on_sent runs when all of it went. */
static void c_send(struct gw_conn *c, int n, void (*on_sent)(struct gw_conn *c))
{
    struct io_uring_sqe *sqe;

    if (c->tls != NULL) {
        /* encrypted at once (mbedtls copies); the ciphertext goes out in
         * order behind whatever is already on its way. A small response's
         * head and body are gathered into one record first: a record per
         * piece costs the client a decryption and 29 bytes each (perf
         * tls128: 0.89x nginx's req/s with wrk's CPU the limit). */
        char gather[TLS_GATHER];
        size_t total = 0;
        for (int i = 0; i < n; i++)
            total += c->iov[i].iov_len;
        if (n > 1 && total <= sizeof(gather)) {
            size_t off = 0;
            for (int i = 0; i < n; i++) {
                memcpy(gather + off, c->iov[i].iov_base, c->iov[i].iov_len);
                off += c->iov[i].iov_len;
            }
            if (gw_tls_write(c->tls, gather, total) != 0) {
                conn_abort(c);
                return;
            }
            n = 0;
        }
        for (int i = 0; i < n; i++)
            if (gw_tls_write(c->tls, c->iov[i].iov_base, c->iov[i].iov_len) != 0) {
                conn_abort(c);
                return;
            }
        c->on_sent = on_sent;
        if (!(c->flags & GW_C_SEND_BUSY))
            tls_flush(c);
        return;
    }

    c->msg.msg_iov = c->iov;
    c->msg.msg_iovlen = (size_t)n;
    c->on_sent = on_sent;
    sqe = gw_ring_sqe(&c->w->ring);
    io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
    gw_sqe_op(sqe, &c->send_op);
    c->refs++;
    c->flags |= GW_C_SEND_BUSY;
}

/* ---- timers ------------------------------------------------------------- */

static void respond_noreq(struct gw_conn *c, int status);

static void on_conn_timer(struct gw_timer *t)
{
    struct gw_conn *c = container_of(t, struct gw_conn, timer);

    if (c->flags & GW_C_TLS_BYE) {
        /* a client that does not read keeps its close_notify no longer */
        c->flags &= ~GW_C_TLS_BYE;
        if (c->refs > 0) {
            struct io_uring_sqe *sqe = gw_ring_sqe(&c->w->ring);
            io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
            gw_sqe_op(sqe, NULL);
        }
        return;
    }
    if (c->req != NULL || (c->flags & GW_C_CLOSING))
        return;
    if ((c->flags & GW_C_IN_HEAD) && c->in.len > 0 && !(c->flags & GW_C_SEND_BUSY))
        respond_noreq(c, 408);
    else
        conn_close(c); /* idle keep-alive connection, or a silent new one */
}

static void on_deadline(struct gw_timer *t)
{
    struct gw_req *r = container_of(t, struct gw_req, deadline);

    cache_unpark(r);
    gw_stat_add(&r->c->w->stats->routes[r->route_slot]->deadline_exceeded, 1);
    if (r->resp_phase == GW_RESP_WAIT)
        req_fail(r, 504, GW_OUTCOME_TIMEOUT);
    else
        conn_abort(r->c); /* the response had begun: cut it */
}

static void set_conn_timer(struct gw_conn *c, uint32_t ms)
{
    gw_timer_set(&c->w->timers, &c->timer, gw_now_ms + ms);
}

/* ---- requests ----------------------------------------------------------- */

/* Lets go of the upstream connection. Its ops are cancelled with it and
 * their callbacks no longer reach the request, so a send to it is no
 * longer "in flight" for us. */
/* The counters of the server the request went to (r->server set). */
static struct gw_server_stats *server_stats(const struct gw_req *r)
{
    return r->c->w->stats->servers[r->cfgref->pools[r->server->index]->stats_slot];
}

static void req_drop_up(struct gw_req *r, bool reusable)
{
    gw_upstream_release(r, reusable);
    gw_upstream_put_active(r);
    gw_timer_cancel(&r->c->w->timers, &r->try_timer);
    r->uout_sending = false;
    r->up_ready = false;
}

/* ---- attempts and retries -----------------------------------------------
 *
 * One request may make several attempts, each to one server. An attempt
 * to a server with a breaker reports its outcome exactly once: a failure
 * (connect error, reset, timeout, a status the breaker counts) or a
 * success when the response head arrives. A retry starts after a jittered
 * backoff, on another server when there is one, only while the whole
 * request is still held (uout_keep), nothing of a response reached the
 * client, the budget has time left and the worker's retry budget allows. */

static void attempt_end(struct gw_req *r, bool success)
{
    if (!r->attempt_open)
        return;
    r->attempt_open = false;
    gw_breaker_report(r->server->shared->breaker, r->probe, success, gw_now_ms);
    r->probe = false;
}

/* The attempt ends without an outcome (the client left): a probe's permit
 * goes back so the breaker can send another. */
static void attempt_cancel(struct gw_req *r)
{
    if (!r->attempt_open)
        return;
    r->attempt_open = false;
    if (r->probe)
        gw_breaker_cancel_probe(r->server->shared->breaker);
    r->probe = false;
}

static unsigned retry_cond(enum gw_outcome o)
{
    switch (o) {
    case GW_OUTCOME_CONNECT_ERROR:
    case GW_OUTCOME_TLS_ERROR:
        return GW_RETRY_CONNECT_FAILURE;
    case GW_OUTCOME_CONNECT_TIMEOUT:
    case GW_OUTCOME_TIMEOUT:
        return GW_RETRY_TIMEOUT;
    case GW_OUTCOME_RESET:
        return GW_RETRY_RESET;
    default:
        return 0;
    }
}

static uint64_t next_rand(struct gw_wctx *w)
{
    uint64_t z = (w->rid_seed += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t budget_left_ms(const struct gw_req *r)
{
    return r->deadline_at_ms > gw_now_ms ? r->deadline_at_ms - gw_now_ms : 0;
}

/* The propagated deadline says what is left now, for this attempt. */
static void refresh_deadline_header(struct gw_req *r)
{
    uint64_t left = budget_left_ms(r);

    if (r->dl_on)
        gw_http_put_deadline(r->uout.data + r->uout.off + r->dl_off, left ? left : 1);
}

/* After a failed attempt (already reported): schedules another one if the
 * rules allow. Returns false when the caller should answer the failure. */
static bool try_retry(struct gw_req *r, unsigned cond, int fail_status)
{
    const struct gw_route *rt = r->route;
    struct gw_wctx *w = r->c->w;
    unsigned backoff;

    if (cond == 0 || !(rt->retry_on & cond) || r->retries_done >= rt->retries)
        return false;
    if (!r->uout_keep || r->resp_head_sent || r->pump_down_on || r->pump_up_on || r->aborting ||
        (r->c->flags & GW_C_CLOSING))
        return false;
    /* A connection that was never made carried nothing: any method may go
     * again. Otherwise the server may have acted on the request. */
    if (cond != GW_RETRY_CONNECT_FAILURE &&
        !gw_retry_method_allowed(rt, r->method, gw_slice(r->method_str, r->method_len)))
        return false;
    backoff = gw_retry_backoff_ms(r->retries_done + 1, next_rand(w));
    if (gw_now_ms + backoff >= r->deadline_at_ms)
        return false; /* no time left for another try */
    if (!r->retrying && !gw_retry_budget_allows(w->reqs_active, w->retries_active, rt->retry_budget))
        return false;
    gw_stat_add(&server_stats(r)->retries, 1);
    r->avoid = r->server;
    req_drop_up(r, false);
    r->retries_done++;
    r->retry_fail_status = fail_status;
    if (!r->retrying) {
        r->retrying = true;
        w->retries_active++;
    }
    r->req_phase = GW_REQ_SEND;
    r->resp_phase = GW_RESP_WAIT;
    r->up_recv_started = false;
    r->uout_sent = 0;
    r->status = 0;
    gw_timer_set(&w->timers, &r->retry_timer, gw_now_ms + backoff);
    return true;
}

static void on_retry_timer(struct gw_timer *t)
{
    struct gw_req *r = container_of(t, struct gw_req, retry_timer);

    if (r->aborting || r->resp_phase != GW_RESP_WAIT)
        return;
    refresh_deadline_header(r);
    start_attempt(r);
}

static void on_try_timeout(struct gw_timer *t);

/* Gets a server and a connection for the next attempt, or answers 503
 * when no server may take it. */
static void start_attempt(struct gw_req *r)
{
    enum gw_reject why = GW_REJECT_BREAKER_OPEN;
    uint64_t after = 0;
    char extra[64];

    enum gw_acquire got;

    r->attempt_start_us = gw_clock_us();
    got = gw_upstream_acquire(r, false, &why, &after);

    if (got != GW_ACQ_REJECTED) {
        if (r->route->try_timeout_ms > 0)
            gw_timer_set(&r->c->w->timers, &r->try_timer,
                         gw_now_ms + r->route->try_timeout_ms);
        if (got == GW_ACQ_READY)
            gw_req_up_ready(r, 0);
        return;
    }
    if (r->retries_done > 0) {
        /* No server may take the retry: the client learns how the last
         * attempt failed, not that a retry could not be placed. */
        req_respond(r, r->retry_fail_status, !body_complete(r));
        return;
    }
    snprintf(extra, sizeof(extra), "Retry-After: %llu\r\n",
             (unsigned long long)(after > 0 ? (after + 999) / 1000 : 1));
    req_respond_extra(r, 503, !body_complete(r), extra);
}


static struct gw_req *req_new(struct gw_conn *c)
{
    struct gw_wctx *w = c->w;
    struct gw_req *r = w->free_reqs;

    if (r)
        w->free_reqs = r->next_free;
    else
        r = gw_xmalloc(sizeof(*r));
    memset(r, 0, sizeof(*r));
    r->c = c;
    r->cfgref = w->cur;
    w->cur->users++;
    r->start_us = gw_clock_us();
    r->route_slot = GW_METRICS_ROUTE_NONE;
    r->pump_up.pipe[0] = r->pump_up.pipe[1] = -1;
    r->pump_down.pipe[0] = r->pump_down.pipe[1] = -1;
    gw_timer_init(&r->deadline, on_deadline);
    gw_timer_init(&r->retry_timer, on_retry_timer);
    gw_timer_init(&r->try_timer, on_try_timeout);
    gw_timer_init(&r->tunnel_timer, on_tunnel_idle);
    c->req = r;
    return r;
}

static void make_request_id(struct gw_wctx *w, struct gw_req *r)
{
    uint64_t seq = ++w->rid_seq;
    /* 128 bits: a per-worker random seed and a counter mixed with the
     * worker id, so ids never repeat within a process and are unlikely to
     * repeat across processes. */
    uint64_t z = w->rid_seed + seq * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    r->rid_len = (unsigned)snprintf(r->rid, sizeof(r->rid), "%016llx%016llx",
                                    (unsigned long long)z,
                                    (unsigned long long)(seq ^ ((uint64_t)w->id << 56)));
}

static void copy_request_facts(struct gw_req *r, const struct gw_request *q)
{
    const struct gw_header *h;

    r->method = q->method;
    r->req_flags = q->flags;
    r->client_minor = q->minor_version;
    r->method_len = q->method_str.len < sizeof(r->method_str) ? (unsigned)q->method_str.len
                                                              : sizeof(r->method_str);
    memcpy(r->method_str, q->method_str.ptr, r->method_len);
    r->path_len = q->target.len < sizeof(r->path) ? (unsigned)q->target.len : sizeof(r->path);
    memcpy(r->path, q->target.ptr, r->path_len);
    h = gw_http_find_header(q->headers, q->nheaders, "x-request-id");
    if (h != NULL && h->value.len > 0 && h->value.len < sizeof(r->rid)) {
        memcpy(r->rid, h->value.ptr, h->value.len);
        r->rid_len = (unsigned)h->value.len;
    } else {
        make_request_id(r->c->w, r);
    }
}

/* Finishes the request once every part of it has stopped: the response is
 * done (or abandoned), no send or splice of it is in flight. */
static void req_finish(struct gw_req *r)
{
    struct gw_conn *c = r->c;
    struct gw_wctx *w = c->w;
    const struct gw_config *cfg = r->cfgref->cfg;
    bool close_client = r->client_close || w->draining || (c->flags & GW_C_CLOSING);

    if (!r->logged) {
        r->logged = true;
        if (r->status == 0)
            r->status = 499; /* the client went away before any answer */
        gw_metrics_request(w->stats, r->route_slot, r->status, gw_clock_us() - r->start_us);
        if (cfg->access_log)
            gw_log_access(w, r);
    }
    gw_timer_cancel(&w->timers, &r->deadline);
    gw_timer_cancel(&w->timers, &r->retry_timer);
    gw_timer_cancel(&w->timers, &r->tunnel_timer);
    cache_end(r);
    attempt_cancel(r);
    req_drop_up(r, r->up_reusable && r->req_phase == GW_REQ_DONE &&
                       r->resp_phase == GW_RESP_DONE);
    if (r->counted_active)
        w->reqs_active--;
    if (r->retrying)
        w->retries_active--;
    gw_bufpool_put(r->uout.cap == w->body_pool.size ? &w->body_pool : &w->in_pool, &r->uout);
    if (!(c->flags & GW_C_SEND_BUSY))
        gw_bufpool_put(&w->out_pool, &c->out);
    gw_cfgref_release(w, r->cfgref);
    c->req = NULL;
    r->next_free = w->free_reqs;
    w->free_reqs = r;
    c->requests++;
    c->flags &= ~(GW_C_IN_HEAD | GW_C_HOLD_RECV);

    if (c->flags & GW_C_CLOSING) {
        conn_free_if_done(c);
        return;
    }
    if (close_client) {
        conn_close(c);
        return;
    }
    /* cfg may be gone with the cfgref released above (a reload): the
     * connection goes on under the current config. */
    set_conn_timer(c, w->cur->cfg->limits.idle_timeout_ms);
    conn_process(c); /* a pipelined request may be waiting in c->in */
}

static bool req_busy(const struct gw_req *r)
{
    return r->uout_sending || r->pump_down_on || r->pump_up_on ||
           (r->c->flags & (GW_C_SEND_BUSY | GW_C_RECV_BODY)) || r->c->deferred != NULL;
}

static void req_try_finish(struct gw_req *r)
{
    if (r->resp_phase != GW_RESP_DONE)
        return;
    /* A body recv writes into uout: the request, and uout, wait for it. */
    if (r->c->flags & GW_C_RECV_BODY)
        stop_recv(r->c);
    if (!req_busy(r))
        req_finish(r);
}

/* Stops everything the request has in flight; req_try_finish completes it
 * when the last piece reports back. */
static void req_abort(struct gw_req *r)
{
    cache_unpark(r);
    r->aborting = true;
    r->resp_phase = GW_RESP_DONE;
    r->up_reusable = false;
    r->client_close = true;
    if (r->pump_up_on)
        gw_pump_stop(&r->pump_up);
    if (r->pump_down_on)
        gw_pump_stop(&r->pump_down);
    if (r->up != NULL && !r->pump_up_on && !r->pump_down_on)
        req_drop_up(r, false);
    r->c->deferred = NULL;
    req_try_finish(r);
}

static void on_error_sent(struct gw_conn *c)
{
    if (c->req)
        req_try_finish(c->req);
}

static void send_out(struct gw_conn *c)
{
    c->iov[0].iov_base = gw_buf_head(&c->out);
    c->iov[0].iov_len = c->out.len;
    c_send(c, 1, on_error_sent);
}

/* Answers the request with a response of our own and ends it. The
 * connection closes afterwards when close is set or the request's body was
 * not consumed. */
static void req_respond_extra(struct gw_req *r, int status, bool close, const char *extra)
{
    struct gw_conn *c = r->c;
    char body[64];

    r->status = status;
    r->resp_phase = GW_RESP_DONE;
    r->client_close = r->client_close || close;
    snprintf(body, sizeof(body), "%d %s\n", status, gw_http_reason(status));
    gw_respond_build(c, status, r->client_close, extra, body);
    if (c->flags & GW_C_SEND_BUSY)
        c->deferred = send_out;
    else
        send_out(c);
}

static void req_respond(struct gw_req *r, int status, bool close)
{
    req_respond_extra(r, status, close, NULL);
}

static void respond_noreq(struct gw_conn *c, int status)
{
    struct gw_req *r = req_new(c);
    r->rid_len = 0;
    make_request_id(c->w, r);
    req_respond(r, status, true);
}

/* An upstream-side failure before the response started: answer status.
 * After the response started, the client connection is cut instead, since
 * its framing can no longer be trusted. */
static void req_fail(struct gw_req *r, int status, enum gw_outcome outcome)
{
    /* GW_OUTCOME_COUNT marks a client's fault (bad or oversized body):
     * not an outcome of the upstream, and not an index into its counters. */
    if (r->server != NULL && outcome < GW_OUTCOME_COUNT) {
        gw_stat_add(&server_stats(r)->outcome[outcome], 1);
        attempt_end(r, false);
        if (try_retry(r, retry_cond(outcome), status))
            return;
    }
    if (cache_stale_ok(r, status)) {
        req_drop_up(r, false);
        cache_serve_stale(r);
        return;
    }
    if (r->resp_head_sent || r->pump_down_on) {
        if (r->status == 0)
            r->status = status;
        conn_abort(r->c);
        return;
    }
    req_drop_up(r, false);
    /* The request body may be half read: the connection cannot be reused. */
    req_respond(r, status, r->req_phase != GW_REQ_DONE);
}

static bool body_complete(const struct gw_req *r)
{
    return r->body_chunked ? r->chunk.done : r->body_left == 0;
}

/* Counts n bytes at p from the client against the request body: *take of
 * them belong to it (fewer than n where the body ends inside them).
 * Returns -1 for a bad chunked body, -2 for a body over max_body_bytes,
 * else 0. */
static int body_count(struct gw_req *r, const char *p, size_t n, size_t *take)
{
    if (r->body_chunked) {
        ssize_t k = gw_chunked_scan(&r->chunk, p, n);
        if (k < 0)
            return -1;
        n = (size_t)k;
        r->body_seen += n;
        if (r->body_seen > r->cfgref->cfg->limits.max_body_bytes + 1024)
            return -2;
    } else {
        if (n > r->body_left)
            n = (size_t)r->body_left;
        r->body_left -= n;
    }
    *take = n;
    return 0;
}

/* Moves request body bytes from c->in into r->uout. Returns what
 * body_count does. */
static int req_take_body(struct gw_req *r)
{
    struct gw_conn *c = r->c;
    struct gw_buf *u = &r->uout;
    size_t room, n;
    int ret;

    if (body_complete(r) || c->in.len == 0)
        return 0;
    if (!r->uout_sending && !r->uout_keep && !(c->flags & GW_C_RECV_BODY))
        gw_buf_compact(u);
    room = u->cap - u->off - u->len;
    n = c->in.len < room ? c->in.len : room;
    ret = body_count(r, gw_buf_head(&c->in), n, &n);
    if (ret != 0)
        return ret;
    memcpy(u->data + u->off + u->len, gw_buf_head(&c->in), n);
    u->len += n;
    gw_buf_consume(&c->in, n);
    return 0;
}

static void on_pump_down_done(struct gw_pump *p, int err)
{
    struct gw_req *r = container_of(p, struct gw_req, pump_down);

    r->pump_down_on = false;
    if (r->aborting) {
        if (r->up != NULL && !r->pump_up_on)
            req_drop_up(r, false);
        req_try_finish(r);
        return;
    }
    if (err != 0) {
        /* Either side broke mid-body: nothing sensible can be answered if
         * the client is gone; otherwise the upstream failed. */
        req_fail(r, 502, GW_OUTCOME_RESET);
        return;
    }
    r->body_left = 0;
    r->req_phase = GW_REQ_DONE;
    r->c->flags &= ~GW_C_HOLD_RECV;
    arm_recv(r->c);
    req_try_finish(r);
}

/* Splice moves bytes socket to socket in the kernel: not for a request
 * with TLS on either side, where the bytes must pass through mbedtls. */
static bool req_splice_ok(const struct gw_req *r)
{
    return r->c->tls == NULL && !r->route->upstream->tls.enabled &&
           (r->up == NULL || r->up->tls == NULL);
}

/* Drives the request side: sends what uout holds, refills it from c->in,
 * and switches a large remaining body to splice. */
static void req_advance_up(struct gw_req *r)
{
    struct gw_conn *c = r->c;
    size_t pending;
    int ret;

    /* A large Content-Length body goes by splice. Stop reading it into
     * memory as soon as that is known: a fast client would otherwise keep
     * c->in full at every check, and the whole body would be copied
     * through user space twice (perf: post1m ran in copy mode). */
    if (r->req_phase == GW_REQ_SEND && !r->body_chunked && !r->aborting && req_splice_ok(r) &&
        !(c->flags & GW_C_HOLD_RECV) && r->resp_phase == GW_RESP_WAIT &&
        r->body_left > c->in.len && r->body_left - c->in.len >= GW_SPLICE_MIN_UP_BYTES) {
        c->flags |= GW_C_HOLD_RECV;
        stop_recv(c);
    }
    if (r->up == NULL || !r->up_ready || r->uout_sending || r->aborting ||
        r->req_phase != GW_REQ_SEND)
        goto recv;
    ret = req_take_body(r);
    if (ret == -1) {
        req_fail(r, 400, GW_OUTCOME_COUNT);
        return;
    }
    if (ret == -2) {
        req_fail(r, 413, GW_OUTCOME_COUNT);
        return;
    }
    pending = r->uout_keep ? r->uout.len - r->uout_sent : r->uout.len;
    if (pending > 0) {
        const char *p = gw_buf_head(&r->uout) + (r->uout_keep ? r->uout_sent : 0);
        r->uout_sending = true;
        gw_upconn_send(r->up, p, pending);
        /* The response recv goes out with the first send rather than after
         * it completes: one loop turn less per request. */
        if (!r->up_recv_started) {
            r->up_recv_started = true;
            gw_upconn_recv(r->up);
        }
        goto recv;
    }
    if (body_complete(r)) {
        r->req_phase = GW_REQ_DONE;
        goto recv;
    }
    if (!r->body_chunked && req_splice_ok(r) &&
        ((c->flags & GW_C_HOLD_RECV) || r->body_left >= GW_SPLICE_MIN_UP_BYTES)) {
        c->flags |= GW_C_HOLD_RECV;
        stop_recv(c);
        if (c->flags & GW_C_RECV_ARMED)
            return; /* on_recv comes back here when the recv has stopped */
        if (c->in.len > 0)
            return;
        if (gw_pump_start(&r->pump_down, c->w, c->fd, r->up->fd, r->body_left,
                          on_pump_down_done) == 0) {
            r->pump_down_on = true;
            r->req_phase = GW_REQ_BODY_SPLICE;
            return;
        }
        c->flags &= ~GW_C_HOLD_RECV; /* no pipe to be had: copy instead */
    }
recv:
    if (!(c->flags & GW_C_HOLD_RECV))
        arm_recv(c);
}

static void retry_fresh(struct gw_req *r)
{
    enum gw_reject why;
    uint64_t after;

    r->req_phase = GW_REQ_SEND; /* the whole request is in uout: send it again */
    gw_stat_add(&server_stats(r)->stale_retry, 1);
    req_drop_up(r, false);
    r->attempts++;
    r->up_ready = false;
    r->up_recv_started = false;
    r->uout_sent = 0;
    refresh_deadline_header(r);
    if (gw_upstream_acquire(r, true, &why, &after) == GW_ACQ_REJECTED)
        req_respond_extra(r, 503, false, "Retry-After: 1\r\n");
}

static void on_try_timeout(struct gw_timer *t)
{
    struct gw_req *r = container_of(t, struct gw_req, try_timer);

    if (r->resp_phase == GW_RESP_WAIT && !r->aborting)
        req_fail(r, 504, GW_OUTCOME_TIMEOUT);
}

/* A pooled connection the server had closed fails on first use. The
 * request is sent again on a new connection once, if it was sent whole
 * and nothing of a response arrived. */
static bool can_retry_stale(const struct gw_req *r)
{
    return r->up != NULL && r->up->reused && r->uout_keep && r->attempts == 0 &&
           r->resp_phase == GW_RESP_WAIT && r->up->in.len == 0;
}

void gw_req_up_ready(struct gw_req *r, int err)
{
    if (err != 0) {
        r->up = NULL;
        if (err == -ETIMEDOUT)
            req_fail(r, 504, GW_OUTCOME_CONNECT_TIMEOUT);
        else if (err == -EPROTO)
            req_fail(r, 502, GW_OUTCOME_TLS_ERROR);
        else
            req_fail(r, 502, GW_OUTCOME_CONNECT_ERROR);
        return;
    }
    r->up_ready = true;
    req_advance_up(r);
}

static void on_defer(struct gw_op *op, int res, unsigned flags)
{
    struct gw_req *r = container_of(op, struct gw_req, defer_op);
    struct gw_conn *c = r->c;
    (void)res;
    (void)flags;
    c->refs--;
    if (c->flags & GW_C_CLOSING) {
        conn_closing_progress(c);
        return;
    }
    gw_req_up_ready(r, r->defer_err);
}

void gw_req_defer_error(struct gw_req *r, int err)
{
    struct io_uring_sqe *sqe = gw_ring_sqe(&r->c->w->ring);
    r->defer_err = err;
    r->defer_op.cb = on_defer;
    io_uring_prep_nop(sqe);
    gw_sqe_op(sqe, &r->defer_op);
    r->c->refs++;
}

void gw_req_up_sent(struct gw_req *r, int res)
{
    r->uout_sending = false;
    if (r->aborting) {
        req_try_finish(r);
        return;
    }
    if (res < 0) {
        if (can_retry_stale(r))
            retry_fresh(r);
        else
            req_fail(r, 502, GW_OUTCOME_RESET);
        return;
    }
    if (r->uout_keep)
        r->uout_sent += (size_t)res;
    else
        gw_buf_consume(&r->uout, (size_t)res);
    if (r->resp_phase == GW_RESP_TUNNEL) {
        tunnel_continue(r);
        return;
    }
    if (!r->up_recv_started) {
        r->up_recv_started = true;
        gw_upconn_recv(r->up);
    }
    if (r->resp_phase == GW_RESP_DONE) {
        req_try_finish(r);
        return;
    }
    req_advance_up(r);
}

/* ---- response ----------------------------------------------------------- */

/* How many bytes at the head of up->in belong to the response body and
 * can go to the client now. -1: bad chunked framing from the upstream. */
static ssize_t resp_take(struct gw_req *r)
{
    struct gw_buf *in = &r->up->in;

    if (r->resp_until_close)
        return (ssize_t)in->len;
    if (r->resp_chunked) {
        ssize_t k = gw_chunked_scan(&r->rchunk, gw_buf_head(in), in->len);
        if (k >= 0 && r->rchunk.done && (size_t)k < in->len)
            r->up_reusable = false; /* bytes after the body: don't trust it */
        return k;
    }
    if (in->len > r->resp_left) {
        r->up_reusable = false;
        return (ssize_t)r->resp_left;
    }
    return (ssize_t)in->len;
}

static bool resp_body_done(const struct gw_req *r)
{
    if (r->resp_until_close)
        return false;
    if (r->resp_chunked)
        return r->rchunk.done;
    return r->resp_left == 0;
}

static void resp_complete(struct gw_req *r)
{
    struct gw_conn *c = r->c;

    r->resp_phase = GW_RESP_DONE;
    cache_capture_end(r, true);
    if (r->req_phase != GW_REQ_DONE) {
        /* The upstream answered before it had the whole request body: the
         * rest can't be skipped reliably, so neither connection is reused. */
        r->up_reusable = false;
        r->client_close = true;
        if (r->pump_down_on)
            gw_pump_stop(&r->pump_down);
    }
    (void)c;
    req_try_finish(r);
}

/* Bytes a pump delivered to the client count as sent, as a send's would. */
static void count_pumped_out(struct gw_req *r, const struct gw_pump *p)
{
    r->bytes_out += p->moved;
    gw_stat_add(&r->c->w->stats->bytes_out, p->moved);
}

static void on_pump_up_done(struct gw_pump *p, int err)
{
    struct gw_req *r = container_of(p, struct gw_req, pump_up);

    r->pump_up_on = false;
    count_pumped_out(r, p);
    if (r->aborting) {
        if (r->up != NULL && !r->pump_down_on)
            req_drop_up(r, false);
        req_try_finish(r);
        return;
    }
    if (err != 0) {
        gw_stat_add(&server_stats(r)->outcome[GW_OUTCOME_RESET], 1);
        conn_abort(r->c);
        return;
    }
    r->resp_left = 0;
    resp_complete(r);
}

static void on_resp_sent(struct gw_conn *c)
{
    struct gw_req *r = c->req;
    struct gw_upconn *u = r->up;

    gw_buf_consume(&u->in, r->resp_pending);
    r->resp_pending = 0;
    if (r->aborting) {
        req_try_finish(r);
        return;
    }
    if (resp_body_done(r)) {
        resp_complete(r);
        return;
    }
    if (!r->resp_chunked && !r->resp_until_close && u->in.len == 0 && !r->cache_capture &&
        req_splice_ok(r) && r->resp_left >= GW_SPLICE_MIN_DOWN_BYTES) {
        if (gw_pump_start(&r->pump_up, c->w, u->fd, c->fd, r->resp_left, on_pump_up_done) ==
            0) {
            r->pump_up_on = true;
            r->resp_phase = GW_RESP_SPLICE;
            return;
        }
    }
    gw_upconn_recv(u);
}

static void resp_send(struct gw_conn *c)
{
    struct gw_req *r = c->req;
    struct gw_buf *in = &r->up->in;
    int n = 0;

    if (c->out.len > 0 && !r->resp_head_sent) {
        c->iov[n].iov_base = gw_buf_head(&c->out);
        c->iov[n++].iov_len = c->out.len;
        r->resp_head_sent = true;
        c->out.len = 0;
    }
    /* resp_pending bytes of up->in are done with once this send is; of
     * them resp_send_len go to the client (fewer when de-chunking) */
    if (r->resp_send_len > 0) {
        c->iov[n].iov_base = gw_buf_head(in);
        c->iov[n++].iov_len = r->resp_send_len;
    }
    if (n == 0) {
        on_resp_sent(c);
        return;
    }
    c_send(c, n, on_resp_sent);
}

/* Chunk data as the response scanner passes it: kept for the cache, and
 * for an HTTP/1.0 client moved down over the framing, so that what is
 * sent is the decoded body. */
static void resp_chunk_data(void *arg, const char *p, size_t n)
{
    struct gw_req *r = arg;

    if (r->cache_capture && r->cap_chunked)
        cache_capture_chunk(r, p, n);
    if (r->resp_dechunk) {
        char *to = gw_buf_head(&r->up->in) + r->resp_send_len;
        if (to != p)
            memmove(to, p, n);
        r->resp_send_len += n;
    }
}

static void tunnel_start_sent(struct gw_conn *c);

/* Relays body bytes that just arrived from the upstream. */
static void resp_body_data(struct gw_req *r)
{
    ssize_t k;

    r->resp_send_len = 0; /* resp_chunk_data counts what a de-chunked scan keeps */
    k = resp_take(r);
    if (k < 0) {
        gw_stat_add(&server_stats(r)->outcome[GW_OUTCOME_BAD_RESPONSE], 1);
        conn_abort(r->c);
        return;
    }
    if (!r->resp_chunked && !r->resp_until_close)
        r->resp_left -= (uint64_t)k;
    if (r->cache_capture && k > 0 && !r->cap_chunked)
        cache_capture(r, gw_buf_head(&r->up->in), (size_t)k);
    r->resp_pending = (size_t)k;
    if (!r->resp_dechunk)
        r->resp_send_len = (size_t)k;
    if (r->c->flags & GW_C_SEND_BUSY)
        r->c->deferred = resp_send;
    else
        resp_send(r->c);
}

static void resp_start(struct gw_req *r, size_t head_len)
{
    struct gw_conn *c = r->c;
    struct gw_wctx *w = c->w;
    const struct gw_response *q = &w->presp;
    ssize_t n;

    gw_timer_cancel(&w->timers, &r->try_timer);
    gw_stat_add(&server_stats(r)->outcome[GW_OUTCOME_SUCCESS], 1);
    gw_hist_add(&server_stats(r)->dur, gw_clock_us() - r->attempt_start_us);
    attempt_end(r, !gw_breaker_status_fails(&r->route->upstream->breaker, q->status));
    if (q->status >= 500 && try_retry(r, GW_RETRY_5XX, q->status))
        return; /* the response is dropped with its connection */
    if (cache_stale_ok(r, q->status)) {
        req_drop_up(r, false); /* its body is left unread */
        cache_serve_stale(r);
        return;
    }
    if (r->cache_fill && q->status != 101)
        cache_capture_start(r, q);
    r->status = q->status;
    r->resp_phase = GW_RESP_BODY;
    r->resp_chunked = (q->flags & GW_MSG_CHUNKED) != 0;
    r->resp_until_close = (q->flags & GW_MSG_UNTIL_CLOSE) != 0;
    r->resp_left = (q->flags & GW_MSG_HAS_BODY) && q->content_length > 0
                       ? (uint64_t)q->content_length
                       : 0;
    gw_chunked_init(&r->rchunk);
    /* An HTTP/1.0 client knows no chunked coding: it gets the decoded body,
     * ended by the close (gw_http_write_response_head drops the field). */
    r->resp_dechunk = r->resp_chunked && r->client_minor == 0;
    if ((r->cache_capture && r->cap_chunked) || r->resp_dechunk) {
        r->rchunk.on_data = resp_chunk_data;
        r->rchunk.arg = r;
    }
    r->up_reusable = (q->flags & GW_MSG_KEEPALIVE) && !r->resp_until_close;
    if (!(r->req_flags & GW_MSG_KEEPALIVE) || (c->flags & GW_C_PEER_EOF) || w->draining ||
        r->resp_until_close || r->req_phase != GW_REQ_DONE || q->status == 101 ||
        r->resp_dechunk)
        r->client_close = true;

    gw_bufpool_get(&w->out_pool, &c->out);
    n = gw_http_write_response_head(c->out.data, c->out.cap, q, gw_slice(r->rid, r->rid_len),
                                    r->client_close && q->status != 101, r->client_minor);
    gw_buf_consume(&r->up->in, head_len);
    if (n >= 2 && r->rl_headers) {
        /* RateLimit-* go in before the blank line that ends the head. */
        int k = snprintf(c->out.data + n - 2, c->out.cap - (size_t)n + 2,
                         "RateLimit-Limit: %u\r\nRateLimit-Remaining: %u\r\n"
                         "RateLimit-Reset: %llu\r\n\r\n",
                         r->rl_limit, r->rl_remaining,
                         (unsigned long long)((r->rl_reset_ms + 999) / 1000));
        n = k > 0 && (size_t)k < c->out.cap - (size_t)n + 2 ? n - 2 + k : -1;
    }
    if (n >= 2 && r->cache_use != 0) {
        int k = snprintf(c->out.data + n - 2, c->out.cap - (size_t)n + 2, "X-Cache: %s\r\n\r\n",
                         r->cache_result == GW_CACHE_BYPASSED ? "BYPASS" : "MISS");
        n = k > 0 && (size_t)k < c->out.cap - (size_t)n + 2 ? n - 2 + k : -1;
    }
    if (n < 0) {
        r->resp_phase = GW_RESP_WAIT;
        req_fail(r, 502, GW_OUTCOME_BAD_RESPONSE);
        return;
    }
    c->out.off = 0;
    c->out.len = (size_t)n;

    /* No retry once a response began: what was kept for one is done with. */
    r->uout_keep = false;
    if (r->uout_sent > 0) {
        gw_buf_consume(&r->uout, r->uout_sent);
        r->uout_sent = 0;
    }
    if (q->status == 101) {
        /* The head goes out alone; whatever the upstream sent after it is
         * tunnel data and follows. */
        r->resp_phase = GW_RESP_TUNNEL;
        r->up_reusable = false;
        gw_timer_cancel(&w->timers, &r->deadline);
        r->resp_pending = r->up->in.len;
        if (c->flags & GW_C_SEND_BUSY) {
            c->deferred = tunnel_start_sent;
            return;
        }
        c->iov[0].iov_base = gw_buf_head(&c->out);
        c->iov[0].iov_len = c->out.len;
        c->iov[1].iov_base = gw_buf_head(&r->up->in);
        c->iov[1].iov_len = r->resp_pending;
        r->resp_head_sent = true;
        c_send(c, r->resp_pending ? 2 : 1, tunnel_start_sent);
        return;
    }
    if (!(q->flags & GW_MSG_HAS_BODY)) {
        r->resp_pending = r->resp_send_len = 0;
        r->resp_left = 0;
        if (c->flags & GW_C_SEND_BUSY)
            c->deferred = resp_send;
        else
            resp_send(c);
        return;
    }
    resp_body_data(r);
}

void gw_req_up_data(struct gw_req *r, int res)
{
    struct gw_wctx *w = r->c->w;
    struct gw_upconn *u = r->up;

    if (r->aborting) {
        req_try_finish(r);
        return;
    }
    if (r->tunnel_copy) {
        tcopy_up_data(r, res);
        return;
    }
    if (res <= 0) {
        if (r->resp_phase == GW_RESP_WAIT) {
            if (can_retry_stale(r)) {
                retry_fresh(r);
                return;
            }
            req_fail(r, 502, u->in.len ? GW_OUTCOME_BAD_RESPONSE : GW_OUTCOME_RESET);
            return;
        }
        if (res == 0 && r->resp_until_close) {
            r->up_reusable = false;
            resp_complete(r);
            return;
        }
        /* Closed or reset in the middle of the body: the client sees the
         * connection close before the announced length, which is how a
         * proxy says "truncated" in HTTP/1.1. */
        gw_stat_add(&server_stats(r)->outcome[GW_OUTCOME_RESET], 1);
        conn_abort(r->c);
        return;
    }
    if (r->resp_phase != GW_RESP_WAIT) {
        /* The socket ran dry in the body: the server is behind us. */
        if (u->recv_short && !r->quick_acks && r->resp_phase == GW_RESP_BODY) {
            r->quick_acks = true;
            gw_sock_ack_quickly(u->fd);
        }
        resp_body_data(r);
        return;
    }
    for (;;) {
        int rc = gw_http_parse_response(gw_buf_head(&u->in), u->in.len,
                                        r->cfgref->cfg->limits.max_header_bytes, r->method,
                                        &w->presp);
        if (rc == -2) {
            if (u->in.len >= u->in.cap) {
                req_fail(r, 502, GW_OUTCOME_BAD_RESPONSE);
                return;
            }
            gw_upconn_recv(u);
            return;
        }
        if (rc < 0 || (w->presp.status == 101 && !(r->req_flags & GW_MSG_UPGRADE))) {
            req_fail(r, 502, GW_OUTCOME_BAD_RESPONSE);
            return;
        }
        if (w->presp.status >= 100 && w->presp.status < 200 && w->presp.status != 101) {
            /* Interim responses (100 Continue, 103) are not relayed: the
             * client got our own 100 Continue when it asked for one. */
            gw_buf_consume(&u->in, (size_t)rc);
            if (u->in.len == 0) {
                gw_upconn_recv(u);
                return;
            }
            continue;
        }
        resp_start(r, (size_t)rc);
        return;
    }
}

/* ---- upgrade tunnels ----------------------------------------------------
 *
 * After a 101 the two connections are joined until both sides close. With
 * plain TCP on both sides two pumps splice them to each other. With TLS on
 * either side the bytes must pass through mbedtls, so the tunnel is copied:
 * client -> upstream through c->in and r->uout (tcopy_down), upstream ->
 * client through up->in and c_send (tcopy_up_data), one send in flight per
 * direction, and the recv of a direction armed again only when its last
 * bytes went out, so neither side can flood the gateway's memory. */

/* Moves what the client sent (as much as uout holds) to the upstream;
 * returns how many bytes. */
static size_t tunnel_send_client_bytes(struct gw_req *r)
{
    struct gw_conn *c = r->c;
    size_t n = c->in.len < r->uout.cap ? c->in.len : r->uout.cap;

    r->uout.off = 0;
    r->uout.len = n;
    memcpy(r->uout.data, gw_buf_head(&c->in), n);
    gw_buf_consume(&c->in, n);
    r->uout_sending = true;
    gw_upconn_send(r->up, r->uout.data, n);
    return n;
}

static void tunnel_end(struct gw_req *r)
{
    if (r->up != NULL)
        req_drop_up(r, false);
    r->client_close = true;
    r->resp_phase = GW_RESP_DONE;
    r->req_phase = GW_REQ_DONE;
    req_try_finish(r);
}

static void tunnel_pump_done(struct gw_req *r, bool down, int err)
{
    if (down) {
        r->pump_down_on = false;
    } else {
        r->pump_up_on = false;
        count_pumped_out(r, &r->pump_up);
    }
    r->tunnel_open--;
    if (err != 0 || r->aborting) {
        r->aborting = true;
        if (r->pump_up_on)
            gw_pump_stop(&r->pump_up);
        if (r->pump_down_on)
            gw_pump_stop(&r->pump_down);
    } else if (r->up != NULL) {
        /* Pass the half-close on so the other side sees EOF too. */
        shutdown(down ? r->up->fd : r->c->fd, SHUT_WR);
    }
    if (r->tunnel_open == 0)
        tunnel_end(r);
}

/* One direction of a copied tunnel has seen its end and passed it on. */
static void tcopy_dir_done(struct gw_req *r, bool down)
{
    bool *done = down ? &r->tunnel_down_done : &r->tunnel_up_done;

    if (*done)
        return;
    *done = true;
    r->tunnel_open--;
    /* the other side sees the end too: a TLS side gets close_notify (a FIN
     * before it would read as a cut, and the close_notify of the close
     * could not follow it), a plain one the FIN */
    if (down)
        gw_upconn_end_output(r->up);
    else if (r->c->tls != NULL && gw_tls_close_notify(r->c->tls) == 0)
        tls_flush(r->c);
    else
        shutdown(r->c->fd, SHUT_WR);
    if (r->tunnel_open == 0)
        tunnel_end(r);
}

/* Client -> upstream: what the client sent goes out, then the recv is
 * armed again; the client's end goes on once everything before it went. */
static void tcopy_down(struct gw_req *r)
{
    struct gw_conn *c = r->c;

    if (!r->tunnel_copy || r->aborting || r->tunnel_down_done || r->uout_sending)
        return;
    if (c->in.len > 0) {
        r->tunnel_copied += tunnel_send_client_bytes(r);
        return;
    }
    if (c->flags & GW_C_PEER_EOF) {
        tcopy_dir_done(r, true);
        return;
    }
    arm_recv(c);
}

static void tcopy_up_sent(struct gw_conn *c)
{
    struct gw_req *r = c->req;

    if (r->aborting || r->up == NULL) {
        req_try_finish(r);
        return;
    }
    gw_buf_consume(&r->up->in, r->resp_pending);
    r->tunnel_copied += r->resp_pending;
    r->resp_pending = 0;
    gw_upconn_recv(r->up);
}

static void tcopy_up_send(struct gw_conn *c)
{
    struct gw_req *r = c->req;

    c->iov[0].iov_base = gw_buf_head(&r->up->in);
    c->iov[0].iov_len = r->resp_pending;
    c_send(c, 1, tcopy_up_sent);
}

/* Upstream -> client: res bytes arrived in up->in (0: the upstream's end). */
static void tcopy_up_data(struct gw_req *r, int res)
{
    struct gw_conn *c = r->c;

    if (res < 0) {
        gw_stat_add(&server_stats(r)->outcome[GW_OUTCOME_RESET], 1);
        conn_abort(c);
        return;
    }
    if (res == 0) {
        tcopy_dir_done(r, false);
        return;
    }
    r->resp_pending = r->up->in.len;
    if (c->flags & GW_C_SEND_BUSY)
        c->deferred = tcopy_up_send;
    else
        tcopy_up_send(c);
}

static void on_tunnel_up_done(struct gw_pump *p, int err)
{
    tunnel_pump_done(container_of(p, struct gw_req, pump_up), false, err);
}

static void on_tunnel_down_done(struct gw_pump *p, int err)
{
    tunnel_pump_done(container_of(p, struct gw_req, pump_down), true, err);
}

/* A tunnel that moved no byte either way for idle_timeout_ms is closed,
 * as an idle keep-alive connection is. */
static void on_tunnel_idle(struct gw_timer *t)
{
    struct gw_req *r = container_of(t, struct gw_req, tunnel_timer);
    uint64_t moved = r->pump_up.moved + r->pump_down.moved + r->tunnel_copied;

    if (r->tunnel_open == 0 || r->aborting)
        return;
    if (moved != r->tunnel_seen) {
        r->tunnel_seen = moved;
        gw_timer_set(&r->c->w->timers, &r->tunnel_timer,
                     gw_now_ms + r->c->w->cur->cfg->limits.idle_timeout_ms);
        return;
    }
    conn_abort(r->c);
}

static void tunnel_continue(struct gw_req *r)
{
    struct gw_conn *c = r->c;

    if (r->tunnel_copy) {
        tcopy_down(r);
        return;
    }
    if (r->aborting || r->tunnel_open > 0 || r->uout_sending)
        return;
    if (c->flags & GW_C_RECV_ARMED) {
        stop_recv(c);
        return; /* on_recv calls back when it has stopped */
    }
    if (r->uout.len > 0) {
        r->uout_sending = true;
        gw_upconn_send(r->up, gw_buf_head(&r->uout), r->uout.len);
        return;
    }
    if (c->in.len > 0) {
        /* Bytes the client sent after its upgrade request go first. */
        tunnel_send_client_bytes(r);
        return;
    }
    if (!req_splice_ok(r)) {
        /* copied: the client's recv runs again, and the upstream's */
        r->tunnel_copy = true;
        r->tunnel_open = 2;
        r->tunnel_seen = 0;
        c->flags &= ~GW_C_HOLD_RECV;
        gw_timer_set(&c->w->timers, &r->tunnel_timer,
                     gw_now_ms + c->w->cur->cfg->limits.idle_timeout_ms);
        arm_recv(c);
        gw_upconn_recv(r->up);
        return;
    }
    if (gw_pump_start(&r->pump_up, c->w, r->up->fd, c->fd, UINT64_MAX, on_tunnel_up_done) !=
        0) {
        conn_abort(c);
        return;
    }
    r->pump_up_on = true;
    r->tunnel_open = 1;
    if (gw_pump_start(&r->pump_down, c->w, c->fd, r->up->fd, UINT64_MAX,
                      on_tunnel_down_done) != 0) {
        conn_abort(c);
        return;
    }
    r->pump_down_on = true;
    r->tunnel_open = 2;
    r->tunnel_seen = 0;
    gw_timer_set(&c->w->timers, &r->tunnel_timer,
                 gw_now_ms + c->w->cur->cfg->limits.idle_timeout_ms);
}

static void tunnel_start_sent(struct gw_conn *c)
{
    struct gw_req *r = c->req;

    if (!r->resp_head_sent) {
        c->iov[0].iov_base = gw_buf_head(&c->out);
        c->iov[0].iov_len = c->out.len;
        c->iov[1].iov_base = gw_buf_head(&r->up->in);
        c->iov[1].iov_len = r->resp_pending;
        r->resp_head_sent = true;
        c_send(c, r->resp_pending ? 2 : 1, tunnel_start_sent);
        return;
    }
    gw_buf_consume(&r->up->in, r->resp_pending);
    r->resp_pending = 0;
    c->flags |= GW_C_HOLD_RECV;
    tunnel_continue(r);
}

/* ---- request start ------------------------------------------------------ */

static bool is_trusted(const struct gw_config *cfg, int family, const void *addr)
{
    for (size_t i = 0; i < cfg->ntrusted_proxies; i++)
        if (gw_cidr_match(&cfg->trusted_proxies[i], family, addr))
            return true;
    return false;
}

static bool trusted_text(const struct gw_config *cfg, struct gw_slice s)
{
    char buf[INET6_ADDRSTRLEN];
    uint8_t a[16];

    if (s.len == 0 || s.len >= sizeof(buf))
        return false;
    memcpy(buf, s.ptr, s.len);
    buf[s.len] = '\0';
    if (inet_pton(AF_INET, buf, a) == 1)
        return is_trusted(cfg, AF_INET, a);
    if (inet_pton(AF_INET6, buf, a) == 1)
        return is_trusted(cfg, AF_INET6, a);
    return false;
}

/* The client's address for rate limiting: the peer, or, when the peer is a
 * trusted proxy, the nearest X-Forwarded-For entry that is not one. The
 * list is walked from the right (the entry our trusted peer added) because
 * everything to the left of the first untrusted hop is the client's to
 * make up. With every entry trusted, the left-most is the client. */
static struct gw_slice client_address(const struct gw_conn *c, const struct gw_config *cfg,
                                      const struct gw_request *q)
{
    struct gw_slice last = {NULL, 0};

    if (cfg->ntrusted_proxies == 0 || c->peer_family == 0 ||
        !is_trusted(cfg, c->peer_family, c->peer_addr))
        return gw_slice(c->peer, c->peer_len);
    for (size_t i = q->nheaders; i-- > 0;) {
        const struct gw_header *h = &q->headers[i];
        const char *p, *end;

        if (!gw_slice_ieq(h->name, "x-forwarded-for"))
            continue;
        end = h->value.ptr + h->value.len;
        while (end > h->value.ptr) {
            const char *e = end, *b;
            p = end;
            while (p > h->value.ptr && p[-1] != ',')
                p--;
            end = p > h->value.ptr ? p - 1 : p;
            b = p;
            while (b < e && (*b == ' ' || *b == '\t'))
                b++;
            while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            if (e == b)
                continue;
            last = gw_slice(b, (size_t)(e - b));
            if (!trusted_text(cfg, last))
                return last;
        }
    }
    return last.len ? last : gw_slice(c->peer, c->peer_len);
}

/* Takes a token from the route's bucket for this request. Returns false
 * after answering 429. */
/* A Redis command whose reply goes on with r: r->l2_wait is the record the
 * reply finds r through (cache_unpark clears it if r ends first). False
 * when Redis cannot be asked. */
static bool redis_wait(struct gw_req *r, gw_redis_cb *cb, int argc, const char **argv,
                       const size_t *len)
{
    struct gw_wctx *w = r->c->w;
    struct gw_l2_wait *wt = w->free_l2_waits;

    if (wt != NULL)
        w->free_l2_waits = wt->next;
    else
        wt = gw_xmalloc(sizeof(*wt));
    wt->r = r;
    if (!gw_redis_command(&w->redis, cb, wt, argc, argv, len)) {
        wt->next = w->free_l2_waits;
        w->free_l2_waits = wt;
        return false;
    }
    r->l2_wait = wt;
    return true;
}

/* The reply for r came: its record goes back to the free list. */
static void redis_wait_done(struct gw_req *r, struct gw_l2_wait *wt)
{
    struct gw_wctx *w = r->c->w;

    r->l2_wait = NULL;
    wt->next = w->free_l2_waits;
    w->free_l2_waits = wt;
}

enum rl_verdict {
    RL_ADMIT,
    RL_REJECT, /* answered 429 */
    RL_PENDING, /* asked Redis (global scope) */
};

/* GCRA on Redis's clock, as the local buckets do it: ARGV[1] the emission
 * interval in microseconds, ARGV[2] the burst. Returns {allowed,
 * retry_after_ms, reset_ms, remaining}. */
static const char rl_script[] =
    "if redis.replicate_commands then redis.replicate_commands() end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local T = tonumber(ARGV[1])\n"
    "local limit = tonumber(ARGV[2]) * T\n"
    "local tat = tonumber(redis.call('GET', KEYS[1])) or now\n"
    "if tat < now then tat = now end\n"
    "local new = tat + T\n"
    "if new - now > limit then\n"
    "  return {0, math.ceil((new - now - limit) / 1000), math.ceil((tat - now) / 1000), 0}\n"
    "end\n"
    "redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX',"
    " math.ceil((new - now) / 1000) + 1)\n"
    "return {1, 0, math.ceil((new - now) / 1000), math.floor((limit - (new - now)) / T)}\n";

static void rl_reject(struct gw_req *r, bool has_body, uint64_t retry_after_ms, unsigned limit,
                      uint64_t reset_ms)
{
    char extra[192];

    gw_stat_add(&r->c->w->stats->routes[r->route_slot]->ratelimited, 1);
    snprintf(extra, sizeof(extra),
             "Retry-After: %llu\r\nRateLimit-Limit: %u\r\nRateLimit-Remaining: 0\r\n"
             "RateLimit-Reset: %llu\r\n",
             (unsigned long long)((retry_after_ms + 999) / 1000), limit,
             (unsigned long long)((reset_ms + 999) / 1000));
    req_respond_extra(r, 429, has_body, extra);
}

static void on_gl_reply(void *arg, const redisReply *reply);

static void on_sha_loaded(void *arg, const redisReply *reply)
{
    struct gw_wctx *w = arg;

    w->rl_sha_loading = false;
    if (reply != NULL && reply->type == REDIS_REPLY_STRING && reply->len == 40) {
        memcpy(w->rl_sha, reply->str, 40);
        w->rl_sha[40] = '\0';
        w->rl_sha_ok = true;
    }
}

/* Asks Redis for a global bucket's verdict; false when it cannot be asked. */
static bool rl_ask_redis(struct gw_req *r, struct gw_slice key, char kind, size_t head_len)
{
    struct gw_wctx *w = r->c->w;
    const struct gw_rate_limit_conf *rc = &r->route->rate_limit;
    char rkey[320], interval[32], burst[16];
    const char *argv[6];
    size_t len[6];
    int n;

    if (!w->redis_on || !gw_redis_up(&w->redis))
        return false;
    /* the bucket is the route's and the key's; long keys go by their hash */
    if (key.len > 200) {
        uint64_t h = gw_hash64(key.ptr, key.len, 0x726c);
        n = snprintf(rkey, sizeof(rkey), "gwrl1:%s:%c:#%016llx", r->route->name, kind,
                     (unsigned long long)h);
    } else {
        n = snprintf(rkey, sizeof(rkey), "gwrl1:%s:%c:%.*s", r->route->name, kind,
                     (int)key.len, key.ptr);
    }
    if (n <= 0 || (size_t)n >= sizeof(rkey))
        return false;
    /* EVALSHA once Redis has told us the script's SHA1; until then (and
     * after a NOSCRIPT) the script itself, and SCRIPT LOAD beside it */
    if (w->rl_sha_ok) {
        argv[0] = "EVALSHA", len[0] = 7;
        argv[1] = w->rl_sha, len[1] = 40;
    } else {
        argv[0] = "EVAL", len[0] = 4;
        argv[1] = rl_script, len[1] = sizeof(rl_script) - 1;
        if (!w->rl_sha_loading) {
            const char *lv[3] = {"SCRIPT", "LOAD", rl_script};
            size_t ll[3] = {6, 4, sizeof(rl_script) - 1};
            w->rl_sha_loading = gw_redis_command(&w->redis, on_sha_loaded, w, 3, lv, ll);
        }
    }
    argv[2] = "1", len[2] = 1;
    argv[3] = rkey, len[3] = (size_t)n;
    argv[4] = interval, len[4] = (size_t)snprintf(interval, sizeof(interval), "%.3f",
                                                 1e6 / rc->rate);
    argv[5] = burst, len[5] = (size_t)snprintf(burst, sizeof(burst), "%u", rc->burst);
    if (!redis_wait(r, on_gl_reply, 6, argv, len))
        return false;
    r->gl_head_len = head_len;
    return true;
}

static enum rl_verdict rate_limit_check(struct gw_req *r, const struct gw_request *q,
                                        size_t head_len)
{
    const struct gw_route *rt = r->route;
    const struct gw_rate_limit_conf *rc = &rt->rate_limit;
    struct gw_wctx *w = r->c->w;
    struct gw_ratelimit_result res;
    struct gw_slice key = {NULL, 0};
    uint64_t hash = 0;
    bool by_header = false;

    if (rt->rl == NULL)
        return RL_ADMIT;
    if (rc->key == GW_RL_KEY_HEADER) {
        const struct gw_header *h = gw_http_find_header(q->headers, q->nheaders, rc->header);
        if (h != NULL && h->value.len > 0) {
            key = h->value;
            by_header = true;
        }
    }
    /* A request without the keying header is limited by its address, so
     * leaving the header out is no way around the limit. */
    if (rc->key != GW_RL_KEY_ROUTE && key.len == 0)
        key = client_address(r->c, r->cfgref->cfg, q);
    if (rc->global && !r->gl_done) {
        r->gl_done = true;
        if (rl_ask_redis(r, key, rc->key == GW_RL_KEY_ROUTE ? 'r' : by_header ? 'h' : 'a',
                         head_len))
            return RL_PENDING;
        /* Redis is away: the local bucket stands in, and it is counted */
        gw_stat_add(&w->stats->routes[r->route_slot]->ratelimit_fallback, 1);
    }
    if (rc->key != GW_RL_KEY_ROUTE) {
        uint64_t seed = gw_policy_seed();
        /* Header values and addresses hash apart: a header holding an
         * address shares no bucket with that address. */
        if (by_header)
            seed ^= 0xa0761d6478bd642full;
        hash = gw_ratelimit_hash(key.ptr, key.len, seed);
    }
    gw_ratelimit_take(rt->rl, hash, gw_clock_us(), &res);
    if (res.allowed) {
        if (rc->headers) {
            r->rl_headers = true;
            r->rl_limit = res.limit;
            r->rl_remaining = res.remaining;
            r->rl_reset_ms = res.reset_ms;
        }
        return RL_ADMIT;
    }
    rl_reject(r, (q->flags & GW_MSG_HAS_BODY) != 0, res.retry_after_ms, res.limit, res.reset_ms);
    return RL_REJECT;
}

/* Applies the rate limit and goes on with the request if it is admitted;
 * a pending (Redis) verdict goes on from on_gl_reply, with the head still
 * in c->in. */
static void rl_decide(struct gw_req *r, const struct gw_request *q, size_t head_len)
{
    switch (rate_limit_check(r, q, head_len)) {
    case RL_REJECT:
        gw_buf_consume(&r->c->in, head_len);
        return;
    case RL_PENDING:
        return;
    case RL_ADMIT:
        break;
    }
    req_continue(r, q, head_len);
}

static int64_t reply_int(const redisReply *a, size_t i)
{
    return a->element[i]->type == REDIS_REPLY_INTEGER ? (int64_t)a->element[i]->integer : -1;
}

/* Redis's verdict on a global limit. The request's head is still in c->in
 * (nothing consumed it): parse it again and go on, or answer 429. Without
 * a usable answer the local bucket decides. */
static void on_gl_reply(void *arg, const redisReply *reply)
{
    struct gw_l2_wait *wt = arg;
    struct gw_req *r = wt->r;
    struct gw_conn *c;
    struct gw_wctx *w;
    const struct gw_request *q;
    const struct gw_rate_limit_conf *rc;
    size_t head_len;

    if (r == NULL) {
        free(wt); /* the request ended while Redis was asked (rare) */
        return;
    }
    c = r->c;
    w = c->w;
    rc = &r->route->rate_limit;
    redis_wait_done(r, wt);
    head_len = r->gl_head_len;
    if (gw_http_parse_request(gw_buf_head(&c->in), c->in.len,
                              r->cfgref->cfg->limits.max_header_bytes, &w->preq) !=
        (int)head_len) {
        conn_abort(c); /* the head we saw is gone: cannot happen */
        return;
    }
    q = &w->preq;
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR &&
        strncmp(reply->str, "NOSCRIPT", 8) == 0 && w->rl_sha_ok) {
        /* Redis lost the script (restart, SCRIPT FLUSH): ask again with it */
        w->rl_sha_ok = false;
        r->gl_done = false;
        rl_decide(r, q, head_len);
        return;
    }
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements != 4 ||
        reply_int(reply, 0) < 0) {
        gw_stat_add(&w->stats->routes[r->route_slot]->ratelimit_fallback, 1);
        rl_decide(r, q, head_len); /* the local bucket: gl_done is set */
        return;
    }
    if (reply_int(reply, 0) == 0) {
        gw_buf_consume(&c->in, head_len);
        rl_reject(r, (q->flags & GW_MSG_HAS_BODY) != 0, (uint64_t)reply_int(reply, 1), rc->burst,
                  (uint64_t)reply_int(reply, 2));
        return;
    }
    if (rc->headers) {
        int64_t rem = reply_int(reply, 3), reset = reply_int(reply, 2);
        r->rl_headers = true;
        r->rl_limit = rc->burst;
        r->rl_remaining = rem > 0 ? (uint32_t)rem : 0;
        r->rl_reset_ms = reset > 0 ? (uint64_t)reset : 0;
    }
    req_continue(r, q, head_len);
}

/* ---- cache ---------------------------------------------------------------
 *
 * A route with a cache block looks a GET or HEAD up in the worker's L1
 * before anything goes upstream. A fresh entry answers at once (a 304 when
 * the request's validators match). On a miss the first GET for a key
 * becomes its fill: it is listed in w->fills, and later requests for the
 * same key park behind it instead of going upstream too. When its response
 * is storable and has a Content-Length within max_object_bytes, the body is
 * copied into a new entry as it is relayed (no splice then); at the end the
 * entry goes into the L1 and the parked requests are answered from it.
 * Otherwise they are let go to the upstream themselves. A stale entry
 * within its stale-if-error window is kept by the request and served when
 * the upstream fails. Every request to such a route counts one result. */

static void cache_send(struct gw_conn *c)
{
    struct gw_req *r = c->req;
    int n = 1;

    c->iov[0].iov_base = gw_buf_head(&c->out);
    c->iov[0].iov_len = c->out.len;
    if (r->cent_body.len > 0) {
        c->iov[1].iov_base = (void *)r->cent_body.ptr;
        c->iov[1].iov_len = r->cent_body.len;
        n = 2;
    }
    c_send(c, n, on_error_sent);
}

static void l1_gauges(struct gw_wctx *w)
{
    atomic_store_explicit(&w->stats->cache_l1_bytes, (int64_t)w->l1.bytes,
                          memory_order_relaxed);
    atomic_store_explicit(&w->stats->cache_l1_entries, (int64_t)w->l1.count,
                          memory_order_relaxed);
    atomic_store_explicit(&w->stats->cache_l1_evictions, w->l1.evictions,
                          memory_order_relaxed);
}

/* The request's own head again, parsed from what uout holds for the
 * upstream (the client's head bytes are gone by now); NULL if it is not
 * there any more. The result lives in w->preq. */
static const struct gw_request *req_head_again(struct gw_req *r)
{
    struct gw_wctx *w = r->c->w;

    if (r->uout.data == NULL || r->uout.len == 0)
        return NULL;
    if (gw_http_parse_request(gw_buf_head(&r->uout), r->uout.len,
                              r->cfgref->cfg->limits.max_header_bytes + 64, &w->preq) <= 0)
        return NULL;
    return &w->preq;
}

static bool vary_matches(const struct gw_l1_ent *ent, const struct gw_request *q)
{
    if (ent->e.vary.len == 0)
        return true;
    return q != NULL && gw_cache_vary_hash(ent->e.vary, q->headers, q->nheaders) ==
                            ent->e.vary_hash;
}

/* Answers r from ent; q: the request's head (for validators), or NULL. */
static void cache_serve(struct gw_req *r, struct gw_l1_ent *ent, const struct gw_request *q,
                        const char *x_cache)
{
    struct gw_conn *c = r->c;
    struct gw_wctx *w = c->w;
    bool nm = q != NULL && gw_cache_not_modified(&ent->e, q->headers, q->nheaders);
    int64_t age = ent->e.age_s + (gw_clock_wall_ms() - ent->e.stored_ms) / 1000;
    size_t n;
    ssize_t t;

    ent->refs++;
    if (r->cent != NULL)
        gw_l1_release(&w->l1, r->cent);
    r->cent = ent;
    r->client_close = r->client_close || !(r->req_flags & GW_MSG_KEEPALIVE) ||
                      (c->flags & GW_C_PEER_EOF) || w->draining;
    gw_bufpool_get(&w->out_pool, &c->out);
    if (nm) {
        n = gw_cache_head_304(&ent->e, c->out.data, c->out.cap);
    } else {
        n = ent->e.head.len <= c->out.cap ? ent->e.head.len : 0;
        memcpy(c->out.data, ent->e.head.ptr, n);
    }
    t = n > 0 ? gw_http_write_head_tail(c->out.data + n, c->out.cap - n,
                                        (uint64_t)(age > 0 ? age : 0), x_cache,
                                        gw_slice(r->rid, r->rid_len), r->client_close,
                                        r->client_minor)
              : -1;
    if (t < 0) {
        req_respond(r, 500, true); /* a stored head larger than the buffer: not expected */
        return;
    }
    c->out.off = 0;
    c->out.len = n + (size_t)t;
    r->status = nm ? 304 : (int)ent->e.status;
    r->cent_body = nm || r->method == GW_METHOD_HEAD ? gw_slice(NULL, 0) : ent->e.body;
    r->resp_phase = GW_RESP_DONE;
    r->resp_head_sent = true;
    if (c->flags & GW_C_SEND_BUSY)
        c->deferred = cache_send;
    else
        cache_send(c);
}

static struct gw_req **fill_slot(struct gw_wctx *w, uint64_t hash)
{
    return &w->fills[hash % GW_FILL_BUCKETS];
}

static struct gw_req *fill_find(struct gw_wctx *w, const struct gw_req *r)
{
    for (struct gw_req *f = *fill_slot(w, r->ckey_hash); f != NULL; f = f->fill_next)
        if (f->ckey_hash == r->ckey_hash && f->ckey_len == r->ckey_len &&
            memcmp(f->ckey, r->ckey, r->ckey_len) == 0)
            return f;
    return NULL;
}

static void cache_unpark(struct gw_req *r)
{
    struct gw_req **pp;

    if (r->l2_wait != NULL) {
        r->l2_wait->r = NULL; /* the reply, when it comes, finds nobody */
        r->l2_wait = NULL;
    }
    if (!r->cache_parked)
        return;
    for (pp = &r->wait_on->waiters; *pp != NULL; pp = &(*pp)->wait_next)
        if (*pp == r) {
            *pp = r->wait_next;
            break;
        }
    r->cache_parked = false;
    r->wait_on = NULL;
    r->wait_next = NULL;
}

/* r stops filling its key: the parked requests are answered from ent, or
 * (ent NULL, or a variant they did not ask for) go upstream themselves. */
static void cache_fill_end(struct gw_req *r, struct gw_l1_ent *ent)
{
    struct gw_wctx *w = r->c->w;
    struct gw_req **pp, *waiter;

    if (!r->cache_fill)
        return;
    r->cache_fill = false;
    for (pp = fill_slot(w, r->ckey_hash); *pp != NULL; pp = &(*pp)->fill_next)
        if (*pp == r) {
            *pp = r->fill_next;
            break;
        }
    r->fill_next = NULL;
    while ((waiter = r->waiters) != NULL) {
        const struct gw_request *q;

        cache_unpark(waiter);
        q = req_head_again(waiter);
        if (ent != NULL && vary_matches(ent, q)) {
            waiter->cache_result = GW_CACHE_HIT;
            gw_timer_cancel(&w->timers, &waiter->deadline);
            cache_serve(waiter, ent, q, "HIT");
        } else {
            start_attempt(waiter);
        }
    }
}

/* Whether r holds a stale entry it may serve instead of status. */
static bool cache_stale_ok(const struct gw_req *r, int status)
{
    return r->cent != NULL && !r->resp_head_sent &&
           (status == 500 || status == 502 || status == 503 || status == 504) &&
           gw_clock_wall_ms() < r->cent->e.stale_until_ms;
}

static void cache_serve_stale(struct gw_req *r)
{
    struct gw_l1_ent *ent = r->cent;

    r->cache_result = GW_CACHE_STALE;
    gw_timer_cancel(&r->c->w->timers, &r->deadline);
    ent->refs++; /* cache_serve drops r->cent before taking it again */
    cache_serve(r, ent, req_head_again(r), "STALE");
    gw_l1_release(&r->c->w->l1, ent);
}

/* At the response head of a fill: sets up the capture of a storable
 * response, or lets the parked requests go. */
static void cache_capture_start(struct gw_req *r, const struct gw_response *q)
{
    const struct gw_cache_conf *cc = &r->route->cache;
    struct gw_cache_life life;
    struct gw_cache_entry e;
    struct gw_l1_ent *ent;
    const struct gw_header *h;
    char vary[512], head[8192];
    uint64_t body_len = 0;
    int64_t now_ms = gw_clock_wall_ms();
    int nv;
    ssize_t nh;
    size_t size;

    bool chunked = (q->flags & GW_MSG_HAS_BODY) && (q->flags & GW_MSG_CHUNKED);

    if ((q->flags & GW_MSG_HAS_BODY) && !chunked) {
        if ((q->flags & GW_MSG_UNTIL_CLOSE) || q->content_length < 0 ||
            (uint64_t)q->content_length > cc->max_object_bytes)
            goto no;
        body_len = (uint64_t)q->content_length;
    }
    if (gw_cache_storable(cc, q, r->cache_auth, now_ms / 1000, &life) != NULL)
        goto no;
    nv = gw_cache_vary_names(q->headers, q->nheaders, vary, sizeof(vary));
    if (nv < 0)
        goto no;
    /* a chunked body is stored decoded, with the length it turns out to have */
    nh = gw_http_write_stored_head(head, sizeof(head), q, chunked ? UINT64_MAX : body_len,
                                   cc->store_set_cookie);
    if (nh < 0)
        goto no;
    memset(&e, 0, sizeof(e));
    e.key = gw_slice(r->ckey, r->ckey_len);
    e.key_hash = r->ckey_hash;
    e.vary = gw_slice(vary, (size_t)nv);
    if (nv > 0) {
        const struct gw_request *rq = req_head_again(r);
        if (rq == NULL)
            goto no;
        e.vary_hash = gw_cache_vary_hash(e.vary, rq->headers, rq->nheaders);
    }
    if ((h = gw_http_find_header(q->headers, q->nheaders, "etag")) != NULL)
        e.etag = h->value;
    if ((h = gw_http_find_header(q->headers, q->nheaders, "last-modified")) != NULL)
        e.last_modified = h->value;
    e.head = gw_slice(head, (size_t)nh);
    e.status = (unsigned)q->status;
    e.stored_ms = now_ms;
    e.age_s = life.age_s;
    e.fresh_until_ms = now_ms + life.fresh_s * 1000;
    e.stale_until_ms = e.fresh_until_ms + life.stale_s * 1000;
    size = gw_cache_blob_size(e.key.len, e.vary.len, e.etag.len, e.last_modified.len,
                              e.head.len, body_len);
    ent = gw_l1_alloc(size);
    /* Everything but the body goes in place now (its sources do not
     * outlive this call); the body is copied in as it is relayed. */
    e.body = gw_slice(ent->blob + size - 8 - body_len, body_len);
    ent->e = e;
    gw_cache_blob_write(&ent->e, ent->blob, size);
    r->cap_ent = ent;
    r->cap_len = 0;
    r->cap_chunked = chunked;
    r->cache_capture = true;
    return;
no:
    cache_fill_end(r, NULL);
}

static void cache_capture(struct gw_req *r, const char *p, size_t n)
{
    struct gw_l1_ent *ent = r->cap_ent;

    if (r->cap_len + n > ent->e.body.len) {
        r->cache_capture = false; /* more than announced: not stored */
        return;
    }
    memcpy((char *)ent->e.body.ptr + r->cap_len, p, n);
    r->cap_len += n;
}

/* Decoded chunk data of a response being stored. */
static void cache_capture_chunk(void *arg, const char *p, size_t n)
{
    struct gw_req *r = arg;

    if (!r->cache_capture)
        return;
    if (r->cap_len + n > r->route->cache.max_object_bytes) {
        r->cache_capture = false; /* grew past max_object_bytes: passed on, not stored */
        return;
    }
    if (r->cap_len + n > r->cap_alloc) {
        size_t want = r->cap_alloc ? r->cap_alloc : 16384;
        while (want < r->cap_len + n)
            want *= 2;
        r->cap_data = gw_xrealloc(r->cap_data, want);
        r->cap_alloc = want;
    }
    memcpy(r->cap_data + r->cap_len, p, n);
    r->cap_len += n;
}

/* The entry of a decoded chunked body, now that its length is known: the
 * head gets its Content-Length. NULL when it does not fit. */
static struct gw_l1_ent *chunked_entry(struct gw_req *r, const struct gw_l1_ent *draft)
{
    struct gw_cache_entry e = draft->e;
    struct gw_l1_ent *ent;
    char head[8192 + 32];
    size_t size;
    int n;

    n = snprintf(head, sizeof(head), "%.*sContent-Length: %llu\r\n", (int)e.head.len,
                 e.head.ptr, (unsigned long long)r->cap_len);
    if (n < 0 || (size_t)n >= sizeof(head))
        return NULL;
    e.head = gw_slice(head, (size_t)n);
    e.body = gw_slice(r->cap_data, r->cap_len);
    size = gw_cache_blob_size(e.key.len, e.vary.len, e.etag.len, e.last_modified.len,
                              e.head.len, e.body.len);
    ent = gw_l1_alloc(size);
    ent->e = e;
    gw_cache_blob_write(&ent->e, ent->blob, size);
    return ent;
}

/* The Redis key of r's cache key: a prefix with the format version. */
static size_t l2_key(const struct gw_req *r, char *out, size_t cap)
{
    static const char prefix[] = "gwc1:";

    if (sizeof(prefix) - 1 + r->ckey_len > cap)
        return 0;
    memcpy(out, prefix, sizeof(prefix) - 1);
    memcpy(out + sizeof(prefix) - 1, r->ckey, r->ckey_len);
    return sizeof(prefix) - 1 + r->ckey_len;
}

static void on_l2_stored(void *arg, const redisReply *reply)
{
    (void)arg;
    (void)reply; /* a lost SET costs a later miss, nothing more */
}

/* Also in Redis, for every worker and every instance, until it is stale. */
static void l2_store(struct gw_wctx *w, const struct gw_req *r, const struct gw_l1_ent *ent)
{
    char key[GW_CACHE_KEY_MAX + 8], px[24];
    int64_t ttl = ent->e.stale_until_ms - gw_clock_wall_ms();
    const char *argv[5];
    size_t len[5];

    if (!w->redis_on || ttl <= 0)
        return;
    len[1] = l2_key(r, key, sizeof(key));
    len[4] = (size_t)snprintf(px, sizeof(px), "%lld", (long long)ttl);
    argv[0] = "SET", len[0] = 3;
    argv[1] = key;
    argv[2] = ent->blob, len[2] = ent->size - sizeof(*ent);
    argv[3] = "PX", len[3] = 2;
    argv[4] = px;
    if (len[1] > 0)
        gw_redis_command(&w->redis, on_l2_stored, NULL, 5, argv, len);
}

/* In this worker's L1; with Redis, for at most l1_ttl_s, so that purges
 * and new versions from other instances reach it soon. */
static void l1_put(struct gw_wctx *w, struct gw_l1_ent *ent, const struct gw_config *cfg)
{
    if (w->redis_on) {
        int64_t cap = gw_clock_wall_ms() + (int64_t)cfg->cache_l1_ttl_s * 1000;
        ent->local_until_ms = cap < ent->e.stale_until_ms ? cap : 0;
    }
    gw_l1_insert(&w->l1, ent, gw_now_ms);
    l1_gauges(w);
}

/* The relayed response ended (complete or not). */
static void cache_capture_end(struct gw_req *r, bool complete)
{
    struct gw_wctx *w = r->c->w;
    struct gw_l1_ent *ent = r->cap_ent;

    if (ent == NULL)
        return;
    r->cap_ent = NULL;
    if (complete && r->cache_capture && r->cap_chunked) {
        struct gw_l1_ent *full = chunked_entry(r, ent);
        gw_l1_release(&w->l1, ent);
        ent = full;
    }
    free(r->cap_data);
    r->cap_data = NULL;
    r->cap_alloc = 0;
    if (ent == NULL) {
        r->cache_capture = false;
        cache_fill_end(r, NULL);
        return;
    }
    if (complete && r->cache_capture && r->cap_len == ent->e.body.len) {
        gw_cache_blob_write(&ent->e, ent->blob, ent->size - sizeof(*ent));
        l1_put(w, ent, r->cfgref->cfg);
        l2_store(w, r, ent);
        gw_stat_add(&w->stats->cache_stored_bytes, ent->e.body.len);
        cache_fill_end(r, ent);
    } else {
        cache_fill_end(r, NULL);
    }
    r->cache_capture = false;
    gw_l1_release(&w->l1, ent);
}

/* PURGE of a cached path: removes the key from every worker's L1. */
static void cache_purge(struct gw_req *r, const struct gw_route *route, const struct gw_request *q)
{
    struct gw_conn *c = r->c;
    const struct gw_config *cfg = r->cfgref->cfg;
    bool allowed = false;

    for (size_t i = 0; i < cfg->npurge_from && !allowed; i++)
        allowed = c->peer_family != 0 &&
                  gw_cidr_match(&cfg->purge_from[i], c->peer_family, c->peer_addr);
    if (!allowed) {
        req_respond(r, 403, false);
        return;
    }
    r->ckey_len = gw_cache_key(&route->cache, q->host, q->path, r->ckey, sizeof(r->ckey));
    if (r->ckey_len > 0) {
        r->ckey_hash = gw_hash64(r->ckey, r->ckey_len, 0);
        gw_cache_purge_note(r->ckey_hash, gw_now_ms);
        gw_l1_remove(&c->w->l1, r->ckey_hash, gw_slice(r->ckey, r->ckey_len));
        l1_gauges(c->w);
        if (c->w->redis_on) {
            char key[GW_CACHE_KEY_MAX + 8];
            const char *argv[2] = {"DEL", key};
            size_t len[2] = {3, l2_key(r, key, sizeof(key))};
            if (len[1] > 0)
                gw_redis_command(&c->w->redis, on_l2_stored, NULL, 2, argv, len);
        }
    }
    req_respond(r, 200, false);
}

/* Before anything goes upstream: true when the cache answered. */
static bool cache_begin(struct gw_req *r, const struct gw_request *q)
{
    struct gw_wctx *w = r->c->w;
    const struct gw_cache_conf *cc = &r->route->cache;
    enum gw_cache_use use = gw_cache_request_use(cc, q->method, q->headers, q->nheaders);
    struct gw_l1_ent *ent;

    if (q->flags & (GW_MSG_HAS_BODY | GW_MSG_UPGRADE))
        use = GW_CACHE_BYPASS;
    if (use != GW_CACHE_BYPASS) {
        r->ckey_len = gw_cache_key(cc, q->host, q->path, r->ckey, sizeof(r->ckey));
        if (r->ckey_len == 0)
            use = GW_CACHE_BYPASS;
    }
    r->cache_use = (uint8_t)(use + 1);
    r->cache_result = use == GW_CACHE_BYPASS ? GW_CACHE_BYPASSED : GW_CACHE_MISS;
    if (use == GW_CACHE_BYPASS)
        return false;
    r->cache_auth = gw_http_find_header(q->headers, q->nheaders, "authorization") != NULL;
    r->ckey_hash = gw_hash64(r->ckey, r->ckey_len, 0);
    if (use == GW_CACHE_LOOKUP) {
        ent = gw_l1_get(&w->l1, r->ckey_hash, gw_slice(r->ckey, r->ckey_len),
                        gw_clock_wall_ms(), gw_now_ms);
        if (ent != NULL && !vary_matches(ent, q)) {
            gw_l1_release(&w->l1, ent);
            ent = NULL;
        }
        if (ent != NULL && gw_clock_wall_ms() < ent->e.fresh_until_ms) {
            r->cache_result = GW_CACHE_HIT;
            cache_serve(r, ent, q, "HIT");
            gw_l1_release(&w->l1, ent);
            l1_gauges(w);
            return true;
        }
        r->cent = ent; /* stale: kept in case the upstream fails */
    }
    /* A miss of a GET fills the key, or waits for the request already
     * filling it; a refresh fills it without waiting for anyone. */
    if (q->method == GW_METHOD_GET) {
        if (use == GW_CACHE_LOOKUP && fill_find(w, r) != NULL) {
            r->cache_park = true;
        } else if (fill_find(w, r) == NULL) {
            r->cache_fill = true;
            r->fill_next = *fill_slot(w, r->ckey_hash);
            *fill_slot(w, r->ckey_hash) = r;
        }
    }
    return false;
}

static void cache_park_or_start(struct gw_req *r);

/* The Redis answer to a lookup: a hit is served (and put in the L1, and
 * given to the requests parked behind r); anything else goes on as a miss.
 * A value that is not a whole, well-formed entry of this key is a miss. */
static void on_l2_reply(void *arg, const redisReply *reply)
{
    struct gw_l2_wait *wt = arg;
    struct gw_req *r = wt->r;
    struct gw_wctx *w;
    struct gw_l1_ent *ent;
    const struct gw_request *q;
    int64_t now;

    if (r == NULL) {
        free(wt); /* the request ended while Redis was asked (rare) */
        return;
    }
    w = r->c->w;
    redis_wait_done(r, wt);
    if (reply == NULL || reply->type != REDIS_REPLY_STRING) {
        cache_park_or_start(r);
        return;
    }
    ent = gw_l1_alloc(reply->len);
    memcpy(ent->blob, reply->str, reply->len);
    if (!gw_cache_blob_read(ent->blob, reply->len, &ent->e) || ent->e.key.len != r->ckey_len ||
        memcmp(ent->e.key.ptr, r->ckey, r->ckey_len) != 0) {
        gw_stat_add(&w->stats->cache_l2_errors, 1);
        r->cache_result = GW_CACHE_ERROR;
        gw_l1_release(&w->l1, ent);
        cache_park_or_start(r);
        return;
    }
    now = gw_clock_wall_ms();
    q = req_head_again(r);
    if (now >= ent->e.stale_until_ms || !vary_matches(ent, q)) {
        gw_l1_release(&w->l1, ent);
        cache_park_or_start(r);
        return;
    }
    l1_put(w, ent, r->cfgref->cfg);
    if (now < ent->e.fresh_until_ms) {
        r->cache_result = GW_CACHE_HIT;
        gw_timer_cancel(&w->timers, &r->deadline);
        cache_serve(r, ent, q, "HIT");
        cache_fill_end(r, ent);
        gw_l1_release(&w->l1, ent);
        return;
    }
    if (r->cent != NULL)
        gw_l1_release(&w->l1, r->cent);
    r->cent = ent; /* stale: kept for stale-if-error */
    cache_park_or_start(r);
}

/* The last step of req_start for a cached route: ask Redis first (once),
 * or wait for the fill of the key, or go to the upstream. */
static void cache_park_or_start(struct gw_req *r)
{
    struct gw_wctx *w = r->c->w;
    struct gw_req *f;

    if (r->cache_use == GW_CACHE_LOOKUP + 1 && !r->cache_park && !r->l2_done && w->redis_on) {
        char key[GW_CACHE_KEY_MAX + 8];
        const char *argv[2] = {"GET", key};
        size_t len[2] = {3, l2_key(r, key, sizeof(key))};

        r->l2_done = true;
        if (len[1] > 0 && redis_wait(r, on_l2_reply, 2, argv, len))
            return;
    }

    if (r->cache_park && (f = fill_find(w, r)) != NULL) {
        r->cache_park = false;
        r->cache_parked = true;
        r->wait_on = f;
        r->wait_next = f->waiters;
        f->waiters = r;
        return;
    }
    start_attempt(r);
}

/* When the request ends, whatever happened. */
static void cache_end(struct gw_req *r)
{
    struct gw_wctx *w = r->c->w;

    if (r->cache_use == 0)
        return;
    if (r->route_slot != GW_METRICS_ROUTE_NONE)
        gw_stat_add(&w->stats->routes[r->route_slot]->cache[r->cache_result], 1);
    cache_unpark(r);
    cache_capture_end(r, false);
    cache_fill_end(r, NULL);
    if (r->cent != NULL) {
        gw_l1_release(&w->l1, r->cent);
        r->cent = NULL;
    }
    r->cache_use = 0;
}

/* The deadline header of this request's route or listener; NULL: none. */
static const char *deadline_header(const struct gw_req *r)
{
    const struct gw_config *cfg = r->cfgref->cfg;
    const char *name = r->route->deadline_header;

    /* The listener may have been removed by a reload since it accepted
     * this connection; then the default applies. */
    for (size_t i = 0; name == NULL && i < cfg->nlistens; i++)
        if (cfg->listens[i].slot == r->c->listen_slot) {
            name = cfg->listens[i].deadline_header;
            break;
        }
    if (name == NULL)
        name = GW_DEADLINE_HEADER;
    return name[0] != '\0' ? name : NULL;
}

static void req_start(struct gw_conn *c, size_t head_len)
{
    struct gw_wctx *w = c->w;
    const struct gw_request *q = &w->preq;
    const struct gw_config *cfg = w->cur->cfg;
    struct gw_req *r;

    gw_timer_cancel(&w->timers, &c->timer);
    r = req_new(c);
    copy_request_facts(r, q);

    if (q->method == GW_METHOD_OTHER && gw_slice_eq(q->method_str, "PURGE")) {
        /* PURGE of a path whose GET a cached route serves; to any other
         * route it is just a method */
        const struct gw_route *cr = gw_router_match(cfg, q->host, q->path, GW_SLICE_LIT("GET"));
        if (cr != NULL && cr->cache.enabled) {
            r->route = cr;
            r->route_slot = cr->metrics_slot;
            gw_buf_consume(&c->in, head_len);
            if (q->flags & GW_MSG_HAS_BODY)
                r->client_close = true;
            cache_purge(r, cr, q);
            return;
        }
    }
    r->route = gw_router_match(cfg, q->host, q->path, q->method_str);
    if (r->route == NULL) {
        gw_buf_consume(&c->in, head_len);
        req_respond(r, 404, (q->flags & GW_MSG_HAS_BODY) != 0);
        return;
    }
    r->route_slot = r->route->metrics_slot;
    if (q->content_length > 0 && (uint64_t)q->content_length > cfg->limits.max_body_bytes) {
        gw_buf_consume(&c->in, head_len);
        req_respond(r, 413, true);
        return;
    }
    r->counted_active = true;
    w->reqs_active++;
    rl_decide(r, q, head_len);
}

/* The request past its limits: budget, cache, the upstream request head,
 * then an attempt. */
static void req_continue(struct gw_req *r, const struct gw_request *q, size_t head_len)
{
    struct gw_conn *c = r->c;
    struct gw_wctx *w = c->w;
    struct gw_fwd_info fi;
    const char *dl_name = NULL;
    size_t dl_off = 0;
    int64_t client_ms = -1;
    uint64_t budget;
    ssize_t n;

    dl_name = deadline_header(r);
    if (dl_name != NULL) {
        const struct gw_header *h = gw_http_find_header(q->headers, q->nheaders, dl_name);
        client_ms = h != NULL ? gw_deadline_parse(h->value) : -1;
    }
    budget = gw_deadline_budget(r->route->timeout_ms, client_ms);
    if (budget == 0) {
        /* Already out of time: the caller has given up by now. */
        gw_stat_add(&w->stats->routes[r->route_slot]->deadline_exceeded, 1);
        gw_buf_consume(&c->in, head_len);
        req_respond(r, 504, (q->flags & GW_MSG_HAS_BODY) != 0);
        return;
    }
    if (r->route->cache.enabled && cache_begin(r, q)) {
        gw_buf_consume(&c->in, head_len);
        return;
    }
    r->deadline_at_ms = gw_now_ms + budget;
    r->body_chunked = (q->flags & GW_MSG_CHUNKED) != 0;
    r->body_left = q->content_length > 0 ? (uint64_t)q->content_length : 0;
    gw_chunked_init(&r->chunk);

    gw_bufpool_get(&w->in_pool, &r->uout);
    memset(&fi, 0, sizeof(fi));
    /* An HTTP/1.0 request may come without Host; the upstream then gets
     * the upstream's name, as nginx sends $proxy_host. */
    fi.host = gw_slice(r->route->upstream->name, strlen(r->route->upstream->name));
    fi.client_addr = gw_slice(c->peer, c->peer_len);
    fi.proto = c->tls != NULL ? GW_SLICE_LIT("https") : GW_SLICE_LIT("http");
    fi.request_id = gw_slice(r->rid, r->rid_len);
    fi.request_id_present = gw_http_find_header(q->headers, q->nheaders, "x-request-id") != NULL;
    if (dl_name != NULL) {
        fi.deadline_header = gw_slice(dl_name, strlen(dl_name));
        fi.deadline_ms = budget;
        fi.deadline_value_off = &dl_off;
    }
    n = gw_http_write_request_head(r->uout.data, r->uout.cap, q, &fi);
    gw_buf_consume(&c->in, head_len);
    if (n < 0) {
        req_respond(r, 431, true);
        return;
    }
    r->uout.len = (size_t)n;
    r->dl_on = dl_name != NULL;
    r->dl_off = dl_off;
    gw_timer_set(&w->timers, &r->deadline, r->deadline_at_ms);

    /* Body bytes that came with the head travel in the same send. If the
     * whole request fits, keep it for one retry on a fresh connection. */
    if (!(q->flags & GW_MSG_UPGRADE)) {
        int ret = req_take_body(r);
        if (ret == -1) {
            req_respond(r, 400, true);
            return;
        }
        if (ret == -2) {
            req_respond(r, 413, true);
            return;
        }
    }
    /* A request that fits whole in uout (head and a Content-Length body,
     * whether or not all of it has arrived) is kept there until a response
     * begins, so that it can be sent again: a stale pooled connection, or a
     * retry. */
    r->uout_keep = body_complete(r) ||
                   (!r->body_chunked && r->body_left <= r->uout.cap - r->uout.off - r->uout.len);
    if ((q->flags & GW_MSG_EXPECT_CONTINUE) && !body_complete(r) && c->in.len == 0 &&
        r->client_minor == 1) {
        c->iov[0].iov_base = (void *)continue_100;
        c->iov[0].iov_len = sizeof(continue_100) - 1;
        c_send(c, 1, NULL);
    }
    cache_park_or_start(r);
}

/* No request in progress: parse the next head from c->in, or wait. */
static void conn_process(struct gw_conn *c)
{
    struct gw_wctx *w = c->w;
    const struct gw_config *cfg;
    int rc;

    if (c->req != NULL || (c->flags & GW_C_CLOSING))
        return;
    if (c->in.len == 0) {
        /* Idle: give the input buffer back until bytes come. */
        if (!(c->flags & GW_C_IN_HEAD))
            gw_bufpool_put(&w->in_pool, &c->in);
        if (c->flags & GW_C_PEER_EOF) {
            conn_close(c);
            return;
        }
        arm_recv(c);
        return;
    }
    cfg = w->cur->cfg;
    if (!(c->flags & GW_C_IN_HEAD)) {
        c->flags |= GW_C_IN_HEAD;
        set_conn_timer(c, cfg->limits.header_timeout_ms);
    }
    if (w->draining && c->requests > 0) {
        conn_close(c);
        return;
    }
    rc = gw_http_parse_request(gw_buf_head(&c->in), c->in.len, cfg->limits.max_header_bytes,
                               &w->preq);
    if (rc == -2) {
        if (c->flags & GW_C_PEER_EOF)
            conn_close(c);
        else
            arm_recv(c);
        return;
    }
    if (rc < 0) {
        gw_timer_cancel(&w->timers, &c->timer);
        respond_noreq(c, w->preq.error_status ? w->preq.error_status : 400);
        return;
    }
    req_start(c, (size_t)rc);
}

/* ---- connection life ---------------------------------------------------- */

#define TLS_BYE_MS 1000 /* how long a close_notify may wait for the client to read */

/* Closes gracefully: nothing new is read; what is in flight completes or
 * is cancelled; the socket closes after the last CQE. A TLS stream ends
 * with close_notify, without which a client cannot tell the end from a
 * cut (OpenSSL 3: "unexpected eof while reading"). */
static void conn_close(struct gw_conn *c)
{
    struct io_uring_sqe *sqe;

    if (c->flags & GW_C_CLOSING)
        return;
    c->flags |= GW_C_CLOSING;
    gw_timer_cancel(&c->w->timers, &c->timer);
    if (c->req != NULL)
        req_abort(c->req);
    if (c->flags & GW_C_RECV_ARMED) {
        sqe = gw_ring_sqe(&c->w->ring);
        io_uring_prep_cancel(sqe, &c->recv_op, 0);
        gw_sqe_op(sqe, NULL);
    }
    if (c->tls != NULL && c->tls_open && gw_tls_close_notify(c->tls) == 0) {
        c->flags |= GW_C_TLS_BYE;
        tls_flush(c);
        set_conn_timer(c, TLS_BYE_MS);
    }
    conn_free_if_done(c);
}

/* Closes at once, cancelling sends too (a reset-like end for a client whose
 * response can't be completed). */
static void conn_abort(struct gw_conn *c)
{
    struct io_uring_sqe *sqe;
    struct linger lg = {.l_onoff = 1, .l_linger = 0};

    if (c->flags & GW_C_CLOSING) {
        if (c->req != NULL)
            req_abort(c->req);
        return;
    }
    if (c->req != NULL && c->req->resp_head_sent)
        /* The client got part of a response: a reset tells it the rest is
         * not coming, where a FIN could pass for a complete close-delimited
         * body. */
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    c->flags |= GW_C_CLOSING;
    c->flags &= ~GW_C_TLS_BYE;
    c->deferred = NULL;
    gw_timer_cancel(&c->w->timers, &c->timer);
    if (c->req != NULL)
        req_abort(c->req);
    if (c->refs > 0) {
        sqe = gw_ring_sqe(&c->w->ring);
        io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
        gw_sqe_op(sqe, NULL);
    }
    conn_free_if_done(c);
}

/* A closing connection moves on when one of its ops completes: first its
 * request, if any, then the connection itself. */
static void conn_closing_progress(struct gw_conn *c)
{
    if (c->req != NULL)
        req_try_finish(c->req);
    else
        conn_free_if_done(c);
}

void gw_conn_accepted(struct gw_wctx *w, int fd, unsigned listen_slot)
{
    struct gw_tls_conn *tls = NULL;
    struct gw_conn *c;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);

    /* While draining, connections still come from a listener's backlog as
     * it closes: they are served (one request, Connection: close). */
    if (w->nconns >= w->max_conns) {
        gw_stat_add(&w->stats->rejected_conns, 1);
        close(fd);
        return;
    }
    /* A TLS listener's connection keeps the snapshot it was accepted on:
     * its certificates stay for it through reloads. */
    for (size_t i = 0; i < w->cur->cfg->nlistens; i++) {
        const struct gw_listen *l = &w->cur->cfg->listens[i];
        if (l->slot == listen_slot && l->tls_ctx != NULL) {
            tls = gw_tls_conn_new(l->tls_ctx);
            if (tls == NULL) {
                gw_stat_add(&w->stats->rejected_conns, 1);
                close(fd);
                return;
            }
            break;
        }
    }
    c = w->free_conns;
    if (c)
        w->free_conns = c->next;
    else
        c = gw_xmalloc(sizeof(*c));
    memset(c, 0, sizeof(*c));
    if (tls != NULL) {
        c->tls = tls;
        c->tls_cfg = gw_config_ref(w->cur->cfg);
        c->tls_start_us = gw_clock_us();
        gw_tls_defer_slow(tls);
    }
    c->w = w;
    c->fd = fd;
    c->recv_op.cb = on_recv;
    c->send_op.cb = on_send;
    c->listen_slot = listen_slot;
    c->tls_op.cb = on_tls_nop;
    gw_timer_init(&c->timer, on_conn_timer);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    gw_stat_add(&w->stats->accepted, 1);
    gw_stat_gauge_add(&w->stats->active, 1);
    if (listen_slot < GW_METRICS_MAX_LISTENS)
        gw_stat_gauge_add(&w->stats->active_by_listen[listen_slot], 1);

    /* Without TCP_NODELAY the last short segment of a response can wait
     * for the client's delayed ACK (40 ms on Linux): it showed as a p99 of
     * twice nginx's on 1 MiB responses in perf/. nginx sets it too. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int));
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
        char host[INET6_ADDRSTRLEN] = "";
        if (ss.ss_family == AF_INET) {
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof(host));
            c->peer_family = AF_INET;
            memcpy(c->peer_addr, &((struct sockaddr_in *)&ss)->sin_addr, 4);
        } else if (ss.ss_family == AF_INET6) {
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host, sizeof(host));
            c->peer_family = AF_INET6;
            memcpy(c->peer_addr, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
        }
        c->peer_len = (unsigned)strlen(host);
        memcpy(c->peer, host, c->peer_len);
    }
    /* The first request gets the header timeout from the moment of accept,
     * so a client that connects and says nothing is dropped in time (the
     * TLS handshake too). */
    set_conn_timer(c, w->cur->cfg->limits.header_timeout_ms);
    arm_recv(c);
}

void gw_conns_drain(struct gw_wctx *w)
{
    struct gw_conn *c, *next;

    /* Idle keep-alive connections go. One that has not sent its first
     * request yet stays: it was accepted to be served, and its request may
     * be on the way; the header timeout bounds it. */
    for (c = w->conns; c; c = next) {
        next = c->next;
        if (c->req == NULL && !(c->flags & GW_C_IN_HEAD) && c->requests > 0)
            conn_close(c);
    }
}
