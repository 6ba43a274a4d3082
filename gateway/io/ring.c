/* Owns ring setup (with fallbacks) and the completion dispatch loop. */
#include "io/ring.h"

#include "core/clock.h"

#include <errno.h>
#include <stdint.h>
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
    /* TASKRUN_FLAG with DEFER_TASKRUN: the kernel raises IORING_SQ_TASKRUN
     * in shared memory when completions wait for us, which is what
     * gw_ring_run's busy poll watches. */
    static const unsigned tries[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
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
            r->busy_poll_us = 0;
            r->last_wait_us = UINT32_MAX;
            r->busy_polls[0] = r->busy_polls[1] = 0;
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

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define cpu_relax() __asm__ __volatile__("" ::: "memory")
#endif

bool gw_ring_can_busy_poll(const struct gw_ring *r)
{
    return (r->setup_flags & IORING_SETUP_TASKRUN_FLAG) != 0;
}

/* Spins until completions wait for us or busy_poll_us pass; true if they
 * do. While the thread spins it is running, so whoever completes an op
 * for us (the kernel on another CPU: a segment for one of our sockets)
 * queues the work without waking a sleeper: no IPI from that CPU, and no
 * wake-up latency here. The flag is raised by the kernel when its list
 * of work for us goes from empty to not empty, and cleared when it runs
 * the list (our next io_uring_enter). */
static bool busy_poll(struct gw_ring *r, uint64_t now)
{
    uint64_t end = now + r->busy_poll_us;

    do {
        for (int k = 0; k < 16; k++) {
            if (IO_URING_READ_ONCE(*r->ring.sq.kflags) & IORING_SQ_TASKRUN)
                return true;
            cpu_relax();
        }
    } while (gw_clock_us() < end);
    return false;
}

/* Waits up to ts for a CQE; with busy polling on, notes how long the
 * wait (spin included) lasted, from t0. */
static int wait_cqe(struct gw_ring *r, struct __kernel_timespec *ts, uint64_t t0)
{
    struct io_uring_cqe *cqe;
    int ret = io_uring_submit_and_wait_timeout(&r->ring, &cqe, 1, ts, NULL);

    if (r->busy_poll_us > 0) {
        /* A wait that ended on its timeout was the worker's own timer,
         * not work arriving: it does not count as busy. */
        uint64_t waited = ret == -ETIME ? UINT32_MAX : gw_clock_us() - t0;
        r->last_wait_us = waited > UINT32_MAX ? UINT32_MAX : (uint32_t)waited;
    }
    return ret;
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
    else if (r->busy_poll_us > 0 &&
             r->last_wait_us < (uint64_t)r->busy_poll_us * GW_BUSY_POLL_GATE) {
        /* Busy (the last wait was short): submit and collect without
         * sleeping, then spin a little before a sleep. After a long wait
         * (idle, or light load) the worker sleeps at once: a spin that
         * finds nothing costs at most 1/GW_BUSY_POLL_GATE of the wait
         * that follows it. */
        ret = io_uring_submit_and_get_events(&r->ring);
        if (ret >= 0 && io_uring_cq_ready(&r->ring) == 0) {
            uint64_t t0 = gw_clock_us();
            if (busy_poll(r, t0)) {
                r->busy_polls[0]++;
                ret = io_uring_submit_and_get_events(&r->ring);
                r->last_wait_us = (uint32_t)(gw_clock_us() - t0);
            } else {
                r->busy_polls[1]++;
                ret = wait_cqe(r, &ts, t0);
            }
        }
    } else
        ret = wait_cqe(r, &ts, r->busy_poll_us > 0 ? gw_clock_us() : 0);
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
