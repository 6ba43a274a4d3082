/* Owns the splice pump: socket -> pipe -> socket without copying through
 * user space.
 *
 * io_uring runs every splice in an io-wq kernel thread, so a splice from a
 * socket with no data would park that thread. We therefore splice
 * optimistically with SPLICE_F_NONBLOCK on O_NONBLOCK sockets, and on
 * -EAGAIN arm a poll for that side and try again when it fires.
 *
 * The two sides run at once: while the out side writes what the pipe holds,
 * the in side reads the next chunk into the room that is left. The first
 * version ran them as a hard-linked pair, one chunk at a time; overlapping
 * them is what lets a 1 MiB body move at the speed of the slower side
 * rather than the sum of both (perf/ get1m). in_pipe only ever
 * undercounts the room (an out splice may have drained more than we know),
 * so an in splice never finds the pipe full, and its -EAGAIN always means
 * "no data on the socket".
 *
 * That -EAGAIN also switches the in socket to quick ACKs (once per pump,
 * see gw_sock_ack_quickly): the sender is behind us, and delayed ACKs would
 * keep it stopping at every window. get1m's p99 went from 35 to 15 ms with
 * it, post1m's from 11.7 to 9.8. */
#include "proxy/ctx.h"

#include "core/list.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Do not read into a pipe with less room than this: a trickle of small
 * splices costs more than waiting for the out side. */
#define PUMP_MIN_ROOM (16 * 1024)

static void kick(struct gw_pump *p);

static void fail(struct gw_pump *p, int err)
{
    if (p->err == 0)
        p->err = err;
    p->stop = true;
}

static void submit_poll(struct gw_pump *p, struct gw_op *op, int fd, unsigned events)
{
    struct io_uring_sqe *sqe = gw_ring_sqe(&p->w->ring);
    io_uring_prep_poll_add(sqe, fd, events);
    gw_sqe_op(sqe, op);
    p->refs++;
}

static void submit_splice(struct gw_pump *p, struct gw_op *op, int in, int out, size_t n)
{
    struct io_uring_sqe *sqe = gw_ring_sqe(&p->w->ring);
    io_uring_prep_splice(sqe, in, -1, out, -1, (unsigned)n, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    gw_sqe_op(sqe, op);
    p->refs++;
}

static void on_in(struct gw_op *op, int res, unsigned flags)
{
    struct gw_pump *p = container_of(op, struct gw_pump, in_op);
    (void)flags;
    p->refs--;
    p->in_busy = false;
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
        if (!p->quick_acks) {
            p->quick_acks = true;
            gw_sock_ack_quickly(p->from);
        }
    } else {
        fail(p, res);
    }
    kick(p);
}

static void on_out(struct gw_op *op, int res, unsigned flags)
{
    struct gw_pump *p = container_of(op, struct gw_pump, out_op);
    (void)flags;
    p->refs--;
    p->out_busy = false;
    if (res > 0) {
        p->in_pipe -= (size_t)res;
        p->moved += (uint64_t)res;
    } else if (res == -EAGAIN || res == 0) {
        p->out_again = true;
    } else {
        fail(p, res);
    }
    kick(p);
}

static void on_poll(struct gw_pump *p, int res)
{
    p->refs--;
    if (res < 0)
        fail(p, res); /* -ECANCELED: gw_pump_stop */
    kick(p);
}

static void on_in_poll(struct gw_op *op, int res, unsigned flags)
{
    struct gw_pump *p = container_of(op, struct gw_pump, in_poll_op);
    (void)flags;
    p->in_wait = false;
    on_poll(p, res);
}

static void on_out_poll(struct gw_op *op, int res, unsigned flags)
{
    struct gw_pump *p = container_of(op, struct gw_pump, out_poll_op);
    (void)flags;
    p->out_wait = false;
    on_poll(p, res);
}

/* Starts whatever each side can do now; finishes when nothing is left. */
static void kick(struct gw_pump *p)
{
    if (p->finished)
        return;
    if (!p->stop) {
        if (!p->out_busy && !p->out_wait && p->in_pipe > 0) {
            if (p->out_again) {
                p->out_again = false;
                p->out_wait = true;
                submit_poll(p, &p->out_poll_op, p->to, POLLOUT);
            } else {
                p->out_busy = true;
                submit_splice(p, &p->out_op, p->pipe[0], p->to, p->in_pipe);
            }
        }
        if (!p->in_busy && !p->in_wait && !p->eof && p->left > 0 &&
            p->pipe_cap - p->in_pipe >= PUMP_MIN_ROOM) {
            if (p->in_again) {
                p->in_again = false;
                p->in_wait = true;
                submit_poll(p, &p->in_poll_op, p->from, POLLIN);
            } else {
                size_t room = p->pipe_cap - p->in_pipe;
                p->in_busy = true;
                submit_splice(p, &p->in_op, p->from, p->pipe[1],
                              p->left < room ? (size_t)p->left : room);
            }
        }
    }
    if (p->refs > 0)
        return;
    if (p->stop || (p->in_pipe == 0 && (p->eof || p->left == 0))) {
        p->finished = true;
        gw_pipe_put(p->w, p->pipe, p->pipe_cap, p->in_pipe == 0 && p->err == 0);
        p->done(p, p->err);
    }
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
    p->in_busy = p->out_busy = p->in_wait = p->out_wait = false;
    p->in_again = p->out_again = false;
    p->stop = p->eof = p->finished = false;
    p->quick_acks = false;
    p->err = 0;
    p->done = done;
    p->in_poll_op.cb = on_in_poll;
    p->out_poll_op.cb = on_out_poll;
    p->in_op.cb = on_in;
    p->out_op.cb = on_out;
    ret = gw_pipe_get(w, p->pipe, &p->pipe_cap);
    if (ret < 0)
        return ret;
    kick(p);
    return 0;
}

void gw_pump_stop(struct gw_pump *p)
{
    struct io_uring_sqe *sqe;

    if (p->finished)
        return;
    p->stop = true;
    /* Only a poll can wait for long; splices are non-blocking. */
    if (p->in_wait) {
        sqe = gw_ring_sqe(&p->w->ring);
        io_uring_prep_poll_remove(sqe, (__u64)(uintptr_t)&p->in_poll_op);
        gw_sqe_op(sqe, NULL);
    }
    if (p->out_wait) {
        sqe = gw_ring_sqe(&p->w->ring);
        io_uring_prep_poll_remove(sqe, (__u64)(uintptr_t)&p->out_poll_op);
        gw_sqe_op(sqe, NULL);
    }
}
