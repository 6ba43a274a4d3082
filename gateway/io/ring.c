/* Owns ring setup (with fallbacks) and the completion dispatch loop. */
#include "io/ring.h"

#include "core/clock.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

void gw_ring_explain(int err, char *out, size_t outlen)
{
    FILE *f;
    int disabled = 0;

    switch (err) {
    case -EPERM:
        f = fopen("/proc/sys/kernel/io_uring_disabled", "r");
        if (f) {
            if (fscanf(f, "%d", &disabled) != 1)
                disabled = 0;
            fclose(f);
        }
        if (disabled)
            snprintf(out, outlen,
                     "io_uring is disabled by the kernel (sysctl kernel.io_uring_disabled=%d); "
                     "set it to 0, or to 1 and run as a member of kernel.io_uring_group",
                     disabled);
        else
            snprintf(out, outlen,
                     "io_uring_setup was refused (EPERM): a seccomp profile blocks io_uring. "
                     "In Docker run with --security-opt seccomp=conf/seccomp.json; in "
                     "Kubernetes use a Localhost seccompProfile with that file (see README)");
        break;
    case -ENOSYS:
        snprintf(out, outlen, "io_uring is not available (ENOSYS): the kernel is too old or was "
                              "built without io_uring, or a sandbox such as gVisor hides it; "
                              "Linux 6.1 or newer is required");
        break;
    case -ENOMEM:
        snprintf(out, outlen, "io_uring_setup failed with ENOMEM: raise the locked-memory limit "
                              "(ulimit -l) or use a kernel 5.12+ that accounts ring memory "
                              "to the cgroup");
        break;
    default:
        snprintf(out, outlen, "io_uring_setup failed: %s", strerror(-err));
    }
}

int gw_ring_init(struct gw_ring *r, unsigned entries, char *err, size_t errlen)
{
    static const unsigned tries[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
        0,
    };
    struct io_uring_params p;
    int ret = -EINVAL;

    for (unsigned i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
        memset(&p, 0, sizeof(p));
        /* A CQ several times the SQ: multishot accept and recv post many
         * CQEs for one SQE. */
        p.flags = tries[i] | IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
        p.cq_entries = entries * 8;
        ret = io_uring_queue_init_params(entries, &r->ring, &p);
        if (ret == 0) {
            r->setup_flags = tries[i];
            return 0;
        }
        if (ret != -EINVAL)
            break;
    }
    gw_ring_explain(ret, err, errlen);
    return ret;
}

void gw_ring_exit(struct gw_ring *r)
{
    io_uring_queue_exit(&r->ring);
}

struct io_uring_sqe *gw_ring_sqe(struct gw_ring *r)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    while (sqe == NULL) {
        io_uring_submit(&r->ring);
        sqe = io_uring_get_sqe(&r->ring);
    }
    return sqe;
}

int gw_ring_run(struct gw_ring *r, unsigned timeout_ms)
{
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts = {.tv_sec = timeout_ms / 1000,
                                   .tv_nsec = (long long)(timeout_ms % 1000) * 1000000};
    unsigned head, n = 0;
    int ret;

    if (timeout_ms == 0)
        ret = io_uring_submit_and_get_events(&r->ring);
    else
        ret = io_uring_submit_and_wait_timeout(&r->ring, &cqe, 1, &ts, NULL);
    if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EBUSY && ret != -EAGAIN)
        return ret;
    /* The wait may have lasted up to timeout_ms: callbacks that set timers
     * (a header timeout at accept) must count from now, not from before it.
     * (A TLS handshake was cut after 31 us for this: its timer counted from
     * a clock read 500 ms earlier.) */
    if (timeout_ms > 0)
        gw_clock_update();

    /* Callbacks may queue new SQEs but never wait, so walking the CQ and
     * advancing once at the end is safe; callbacks that need the ring to
     * make progress do so on the next turn. */
    io_uring_for_each_cqe(&r->ring, head, cqe)
    {
        struct gw_op *op = io_uring_cqe_get_data(cqe);
        n++;
        if (op != NULL)
            op->cb(op, cqe->res, cqe->flags);
    }
    io_uring_cq_advance(&r->ring, n);
    return (int)n;
}
