/* Owns the splice pump: socket -> pipe -> socket without copying through
 * user space.
 *
 * io_uring runs every splice in an io-wq kernel thread, so a splice from a
 * socket with no data would park that thread. We therefore splice
 * optimistically with SPLICE_F_NONBLOCK on O_NONBLOCK sockets, and on
 * -EAGAIN arm a poll and try again when it fires. The in and out splices
 * are submitted as one hard-linked pair (a short first splice must not
 * cancel the second, which a plain link would do); the second moves
 * whatever the first put in the pipe. */
#include "proxy/ctx.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define container_of(p, type, member) ((type *)((char *)(p) - offsetof(type, member)))

#define PUMP_CHUNK (256 * 1024)

static void step(struct gw_pump *p);

static void finish(struct gw_pump *p)
{
    if (p->refs > 0 || p->finished)
        return;
    p->finished = true;
    gw_pipe_put(p->w, p->pipe, p->in_pipe == 0 && p->err == 0);
    p->done(p, p->err);
}

static void fail(struct gw_pump *p, int err)
{
    if (p->err == 0)
        p->err = err;
    p->stop = true;
}

static void on_in(struct gw_op *op, int res, unsigned flags)
{
    struct gw_pump *p = container_of(op, struct gw_pump, in_op);
    (void)flags;
    p->refs--;
    if (res > 0) {
        p->in_pipe += (size_t)res;
        if (p->left != UINT64_MAX)
            p->left -= (uint64_t)res;
    } else if (res == 0) {
        p->eof = true;
        if (p->left != UINT64_MAX && p->left > 0)
            fail(p, -EPIPE); /* the peer closed before the announced length */
    } else if (res == -EAGAIN) {
        p->in_again = true;
    } else {
        fail(p, res);
    }
    /* The hard-linked out-splice always completes after this one and
     * continues from there. */
}

static void on_out(struct gw_op *op, int res, unsigned flags)
{
    struct gw_pump *p = container_of(op, struct gw_pump, out_op);
    (void)flags;
    p->refs--;
    if (res > 0) {
        p->in_pipe -= (size_t)res;
        p->moved += (uint64_t)res;
    } else if (res < 0 && res != -EAGAIN && res != -ECANCELED)
        fail(p, res);
    if (p->refs == 0)
        step(p);
}

static void submit_poll(struct gw_pump *p, int fd, unsigned events)
{
    struct io_uring_sqe *sqe = gw_ring_sqe(&p->w->ring);
    io_uring_prep_poll_add(sqe, fd, events);
    gw_sqe_op(sqe, &p->poll_op);
    p->refs++;
}

static void submit_out(struct gw_pump *p, bool linked_after_in)
{
    struct io_uring_sqe *sqe = gw_ring_sqe(&p->w->ring);
    size_t n = linked_after_in ? PUMP_CHUNK : p->in_pipe;
    io_uring_prep_splice(sqe, p->pipe[0], -1, p->to, -1, (unsigned)n,
                         SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    gw_sqe_op(sqe, &p->out_op);
    p->refs++;
}

static void step(struct gw_pump *p)
{
    struct io_uring_sqe *sqe;
    uint64_t want;

    if (p->refs > 0)
        return;
    if (p->stop || (p->in_pipe == 0 && (p->eof || p->left == 0))) {
        finish(p);
        return;
    }
    if (p->in_pipe > 0) {
        /* The out side was short: the receiver's socket is full. */
        submit_poll(p, p->to, POLLOUT);
        return;
    }
    if (p->in_again) {
        p->in_again = false;
        submit_poll(p, p->from, POLLIN);
        return;
    }
    want = p->left < PUMP_CHUNK ? p->left : PUMP_CHUNK;
    sqe = gw_ring_sqe(&p->w->ring);
    io_uring_prep_splice(sqe, p->from, -1, p->pipe[1], -1, (unsigned)want,
                         SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    gw_sqe_op(sqe, &p->in_op);
    sqe->flags |= IOSQE_IO_HARDLINK;
    p->refs++;
    submit_out(p, true);
}

/* After a poll: continue with whichever side was waiting. */
static void on_poll_ready(struct gw_op *op, int res, unsigned flags)
{
    struct gw_pump *p = container_of(op, struct gw_pump, poll_op);
    (void)flags;
    p->refs--;
    if (res < 0) {
        fail(p, res);
        step(p);
        return;
    }
    if (p->stop) {
        step(p);
        return;
    }
    if (p->in_pipe > 0)
        submit_out(p, false);
    else
        step(p);
}

int gw_pump_start(struct gw_pump *p, struct gw_wctx *w, int from, int to, uint64_t left,
                  void (*done)(struct gw_pump *p, int err))
{
    int ret;

    p->w = w;
    p->from = from;
    p->to = to;
    p->left = left;
    p->in_pipe = 0;
    p->moved = 0;
    p->refs = 0;
    p->stop = p->eof = p->finished = p->in_again = false;
    p->err = 0;
    p->done = done;
    p->poll_op.cb = on_poll_ready;
    p->in_op.cb = on_in;
    p->out_op.cb = on_out;
    ret = gw_pipe_get(w, p->pipe);
    if (ret < 0)
        return ret;
    /* A bigger pipe means fewer splice round trips per body; the kernel may
     * refuse (pipe-user-pages limits), which only costs speed. */
    (void)fcntl(p->pipe[1], F_SETPIPE_SZ, PUMP_CHUNK);
    step(p);
    return 0;
}

void gw_pump_stop(struct gw_pump *p)
{
    struct io_uring_sqe *sqe;
    p->stop = true;
    if (p->refs > 0) {
        /* Only a poll can wait for long; splices are non-blocking. */
        sqe = gw_ring_sqe(&p->w->ring);
        io_uring_prep_poll_remove(sqe, (__u64)(uintptr_t)&p->poll_op);
        gw_sqe_op(sqe, NULL);
    }
}
