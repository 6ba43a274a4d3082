/* Helper threads for CPU work too long for a worker's loop: the key
 * exchange and the signature of a full TLS handshake take milliseconds
 * with mbedtls 2.28, and every other connection of the worker would wait
 * for them. A job runs on any helper, then its done callback runs back on
 * the worker that submitted it, which collects finished jobs on each turn
 * of its loop. The job's memory belongs to the submitter throughout; it
 * must stay valid until done has run. */
#ifndef GW_CORE_JOBS_H
#define GW_CORE_JOBS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct gw_job;
struct gw_job_home;

typedef void (*gw_job_fn)(struct gw_job *j);

struct gw_job {
    gw_job_fn run;  /* on a helper thread */
    gw_job_fn done; /* on the submitting worker, from gw_jobs_collect */
    struct gw_job_home *home;
    struct gw_job *next;
    uint64_t queued_us; /* when it was submitted (gw_clock_us) */
};

/* What /metrics shows of the helpers. */
struct gw_jobs_stats {
    unsigned helpers;  /* threads started */
    unsigned waiting;  /* jobs queued that no helper has taken yet */
    uint64_t taken;    /* jobs helpers have taken from the queue */
    uint64_t wait_us;  /* the time those waited in the queue, summed */
};

/* One per worker: the jobs that finished, waiting for it. */
struct gw_job_home {
    pthread_mutex_t mu;
    struct gw_job *head, *tail;
    atomic_bool ready; /* head != NULL, readable without the lock */
    int wake_fd;       /* an eventfd the worker's ring reads; written when ready turns true */
    unsigned out;      /* submitted, not yet collected (the worker's own count) */
};

/* Starts n helper threads. 0 or a failure leaves none, and submit refuses. */
int gw_jobs_start(unsigned n);
void gw_job_home_init(struct gw_job_home *h, int wake_fd);
/* Queues j for a helper. -1 when there are no helpers: run it in place. */
int gw_jobs_submit(struct gw_job_home *h, struct gw_job *j);
/* Runs the done callback of each finished job of h, in the order they finished. */
void gw_jobs_collect(struct gw_job_home *h);
/* A consistent reading of the counters (taken under the queue's lock). */
void gw_jobs_stats(struct gw_jobs_stats *s);

#endif
