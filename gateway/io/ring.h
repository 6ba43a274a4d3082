/* One io_uring per worker thread. Every operation in flight carries a
 * struct gw_op pointer as user_data; the op is embedded in its owner, whose
 * memory stays valid until the op's CQE arrives (owners count their ops in
 * flight and free themselves only at zero). */
#ifndef GW_IO_RING_H
#define GW_IO_RING_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>

struct gw_op;
typedef void gw_op_cb(struct gw_op *op, int res, unsigned cqe_flags);

struct gw_op {
    gw_op_cb *cb;
};

struct gw_ring {
    struct io_uring ring;
    unsigned setup_flags; /* what the kernel accepted */
    unsigned busy_poll_us;  /* spin this long before a sleep (0: never) */
    uint32_t last_wait_us;  /* how long the last wait for a CQE lasted */
    uint64_t busy_polls[2]; /* spins that found work, spins that ended in a sleep */
};

/* gw_ring_run spins only while the worker is busy: when its last wait
 * lasted less than this many times busy_poll_us. */
#define GW_BUSY_POLL_GATE 20

/* user_data of SQEs whose completion nobody needs to see (linked timeouts,
 * cancels): the dispatcher skips it. */
#define GW_OP_IGNORE 0

/* Sets up the ring with SINGLE_ISSUER|DEFER_TASKRUN, falling back to
 * COOP_TASKRUN|TASKRUN_FLAG, then to no flags. Returns 0 or -errno with a
 * message in err naming the cause (seccomp, sysctl, old kernel). */
int gw_ring_init(struct gw_ring *r, unsigned entries, char *err, size_t errlen);
void gw_ring_exit(struct gw_ring *r);

/* An SQE, submitting what is queued if the SQ is full. Never NULL. */
struct io_uring_sqe *gw_ring_sqe(struct gw_ring *r);

static inline void gw_sqe_op(struct io_uring_sqe *sqe, struct gw_op *op)
{
    io_uring_sqe_set_data(sqe, op);
}

/* Submits what is queued, waits up to timeout_ms for at least one CQE (0:
 * don't wait), then calls every ready CQE's op callback and advances the
 * CQ once. Returns the number of CQEs handled or -errno. With busy_poll_us
 * set and the worker busy, it first spins up to busy_poll_us for
 * completions before it sleeps. */
int gw_ring_run(struct gw_ring *r, unsigned timeout_ms);

/* True if the ring was set up so that gw_ring_run can busy-poll
 * (DEFER_TASKRUN with TASKRUN_FLAG). */
bool gw_ring_can_busy_poll(const struct gw_ring *r);

/* True if the kernel had to hold CQEs back since the last call. */
static inline bool gw_ring_cq_overflowed(struct gw_ring *r)
{
    return IO_URING_READ_ONCE(*r->ring.sq.kflags) & IORING_SQ_CQ_OVERFLOW;
}

/* Describes why io_uring_queue_init failed, with the fix. */
void gw_ring_explain(int err, char *out, size_t outlen);

#endif
