/* Owns the worker's free lists (buffers, pipes), its config holds and the
 * access-log buffers. */
#include "proxy/ctx.h"

#include "core/clock.h"
#include "core/list.h"
#include "core/log.h"
#include "core/mem.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Free buffers a pool keeps, in bytes (at least 16 buffers): after a burst,
 * a worker holds on to no more than this per pool. */
#define BUFPOOL_KEEP_BYTES (32u << 20)
#define PIPES_KEEP 256
#define LOG_BUF_BYTES (256 * 1024)

void gw_bufpool_init(struct gw_bufpool *bp, size_t size)
{
    bp->size = size;
    bp->keep = BUFPOOL_KEEP_BYTES / size > 16 ? (unsigned)(BUFPOOL_KEEP_BYTES / size) : 16;
    bp->n = 0;
    bp->cap = 64;
    bp->free = gw_xmalloc(sizeof(char *) * bp->cap);
}

void gw_bufpool_free(struct gw_bufpool *bp)
{
    for (unsigned i = 0; i < bp->n; i++)
        free(bp->free[i]);
    free(bp->free);
    bp->free = NULL;
    bp->n = bp->cap = 0;
}

void gw_bufpool_get(struct gw_bufpool *bp, struct gw_buf *b)
{
    if (b->data != NULL)
        return;
    b->data = bp->n ? bp->free[--bp->n] : gw_xmalloc(bp->size);
    b->cap = bp->size;
    b->off = b->len = 0;
}

void gw_bufpool_put(struct gw_bufpool *bp, struct gw_buf *b)
{
    if (b->data == NULL)
        return;
    if (b->cap != bp->size || bp->n == bp->keep) {
        free(b->data);
    } else {
        if (bp->n == bp->cap) {
            bp->cap *= 2;
            bp->free = gw_xrealloc(bp->free, sizeof(char *) * bp->cap);
        }
        bp->free[bp->n++] = b->data;
    }
    b->data = NULL;
    b->off = b->len = b->cap = 0;
}

/* A keep-alive connection that carries request after response is in the
 * kernel's interactive mode: the ACK for data we receive waits to leave with
 * our next send, or until we read. While a large body streams in, we read
 * it only as fast as the far side of the proxy drains, so the sender's data
 * stays unacknowledged, its window fills, and it stops until we read. It
 * then needs a new wake-up for each window, which on a busy sender costs a
 * scheduling delay every time: in perf/ get1m, the slowest 1 % of 1 MiB
 * responses came in 15 pieces with 11 waits for the upstream. TCP_QUICKACK 1
 * leaves that mode, and the sender can send the rest at once; our next send
 * on the connection enters it again. Callers switch a socket when it first
 * runs dry during a body, i.e. when the sender is found to be behind us:
 * doing it at the start of every large body also fixed the tail, but cost
 * get1m 9 % of its req/s. An error only costs speed. */
void gw_sock_ack_quickly(int fd)
{
    (void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &(int){1}, sizeof(int));
}

/* Bigger pipes mean fewer splices per body; the kernel may refuse
 * (fs.pipe-user-pages-soft), which only costs speed. */
#define PIPE_BYTES (256 * 1024)

int gw_pipe_get(struct gw_wctx *w, int fds[2], size_t *cap)
{
    int n;

    if (w->nfree_pipes) {
        w->nfree_pipes--;
        fds[0] = w->free_pipes[3 * w->nfree_pipes];
        fds[1] = w->free_pipes[3 * w->nfree_pipes + 1];
        *cap = (size_t)w->free_pipes[3 * w->nfree_pipes + 2];
        return 0;
    }
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) == -1)
        return -errno;
    n = fcntl(fds[1], F_SETPIPE_SZ, PIPE_BYTES);
    if (n == -1)
        n = fcntl(fds[1], F_GETPIPE_SZ);
    *cap = n > 0 ? (size_t)n : 65536;
    return 0;
}

void gw_pipe_put(struct gw_wctx *w, int fds[2], size_t cap, bool clean)
{
    if (fds[0] < 0)
        return;
    if (!clean || w->nfree_pipes == PIPES_KEEP) {
        close(fds[0]);
        close(fds[1]);
    } else {
        if (w->free_pipes == NULL)
            w->free_pipes = gw_xmalloc(sizeof(int) * 3 * PIPES_KEEP);
        w->free_pipes[3 * w->nfree_pipes] = fds[0];
        w->free_pipes[3 * w->nfree_pipes + 1] = fds[1];
        w->free_pipes[3 * w->nfree_pipes + 2] = (int)cap;
        w->nfree_pipes++;
    }
    fds[0] = fds[1] = -1;
}

/* Pools are found by address and TLS identity: two upstreams naming the
 * same address with different SNI names must not share connections. */
static struct gw_pool *pool_for(struct gw_wctx *w, const struct gw_server *s)
{
    struct gw_pool *p;
    char *id = gw_pool_tls_id(s->upstream);

    for (p = w->pools; p; p = p->next)
        if (strcmp(p->addr.text, s->addr.text) == 0 &&
            (p->tls_id == NULL ? id == NULL : id != NULL && strcmp(p->tls_id, id) == 0)) {
            free(id);
            return p;
        }
    p = gw_xcalloc(1, sizeof(*p));
    p->addr = s->addr;
    p->tls_id = id;
    p->stats_slot = s->metrics_slot;
    p->next = w->pools;
    w->pools = p;
    return p;
}

struct gw_cfgref *gw_cfgref_new(struct gw_wctx *w, struct gw_config *cfg)
{
    struct gw_cfgref *ref = gw_xcalloc(1, sizeof(*ref));

    /* cfg becomes current: the pools of servers it no longer lists close
     * their idle connections, and the requests still using them (on an
     * older snapshot) close theirs when done. The pool itself stays, in
     * case a later config lists the address again. */
    for (struct gw_pool *p = w->pools; p; p = p->next)
        p->retired = true;
    ref->cfg = gw_config_ref(cfg);
    ref->users = 1;
    ref->pools = gw_xcalloc(cfg->nservers ? cfg->nservers : 1, sizeof(*ref->pools));
    ref->rr = gw_xcalloc(cfg->nupstreams ? cfg->nupstreams : 1, sizeof(*ref->rr));
    for (size_t i = 0; i < cfg->nservers; i++) {
        ref->pools[i] = pool_for(w, &cfg->servers[i]);
        /* The slot of a name never changes, but a pool may have been made
         * for an address before its upstream was renamed. */
        ref->pools[i]->stats_slot = cfg->servers[i].metrics_slot;
        ref->pools[i]->retired = false;
    }
    for (struct gw_pool *p = w->pools; p; p = p->next)
        if (p->retired)
            gw_pool_close_idle(p);
    return ref;
}

void gw_cfgref_release(struct gw_wctx *w, struct gw_cfgref *ref)
{
    (void)w;
    if (--ref->users > 0)
        return;
    gw_config_unref(ref->cfg);
    free(ref->pools);
    free(ref->rr);
    free(ref);
}

static void on_log_written(struct gw_op *op, int res, unsigned flags)
{
    struct gw_wctx *w = container_of(op, struct gw_wctx, log_op);
    unsigned done = w->log_cur ^ 1;
    (void)flags;
    /* A short write of a pipe or terminal: drop the rest rather than block
     * the worker; count it. */
    if (res < 0 || (size_t)res < w->log_len[done])
        gw_stat_add(&w->stats->log_dropped, 1);
    w->log_len[done] = 0;
    w->log_busy = false;
}

void gw_log_access(struct gw_wctx *w, const struct gw_req *r)
{
    const struct gw_conn *c = r->c;
    struct gw_access_rec rec;
    unsigned b = w->log_cur;
    size_t n;

    if (w->log_buf[b] == NULL) {
        w->log_buf[0] = gw_xmalloc(LOG_BUF_BYTES);
        w->log_buf[1] = gw_xmalloc(LOG_BUF_BYTES);
    }
    rec.wall_us = gw_clock_wall_us();
    rec.client = gw_slice(c->peer, c->peer_len);
    rec.method = gw_slice(r->method_str, r->method_len);
    rec.path = gw_slice(r->path, r->path_len);
    rec.status = r->status;
    rec.bytes = r->bytes_out;
    rec.duration_us = gw_clock_us() - r->start_us;
    rec.upstream = r->server ? gw_slice(r->server->addr.text, strlen(r->server->addr.text))
                             : gw_slice("", 0);
    rec.route = r->route ? gw_slice(r->route->name, strlen(r->route->name)) : gw_slice("", 0);
    rec.request_id = gw_slice(r->rid, r->rid_len);
    rec.cache = NULL;
    if (r->cache_use != 0) {
        static const char *const names[GW_CACHE_RESULT_COUNT] = {"hit", "miss", "bypass",
                                                                 "stale", "error"};
        rec.cache = names[r->cache_result];
    }
    n = gw_log_access_format(w->log_buf[b] + w->log_len[b], LOG_BUF_BYTES - w->log_len[b], &rec);
    if (n == 0)
        gw_stat_add(&w->stats->log_dropped, 1);
    w->log_len[b] += n;
}

void gw_log_flush(struct gw_wctx *w)
{
    unsigned b = w->log_cur;
    struct io_uring_sqe *sqe;

    if (w->log_busy || w->log_len[b] == 0)
        return;
    sqe = gw_ring_sqe(&w->ring);
    io_uring_prep_write(sqe, STDOUT_FILENO, w->log_buf[b], (unsigned)w->log_len[b], (__u64)-1);
    w->log_op.cb = on_log_written;
    gw_sqe_op(sqe, &w->log_op);
    w->log_busy = true;
    w->log_cur = b ^ 1;
}
