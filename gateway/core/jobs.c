#include "core/jobs.h"

#include "core/clock.h"
#include "core/log.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* Helpers run at a lower priority than workers, so that a worker woken by
 * a request preempts a helper in the middle of a signature. With workers
 * = 1 on one core, 2 clients making full handshakes and a probe of 1000
 * GETs a second (perf/handshake_stall.py): the probe's p99 was 1.8 ms at
 * nice 10 against 3.9 at nice 0, for as many handshakes a second (~260). */
#define HELPER_NICE 10

/* One queue for all helpers: jobs are few (full handshakes) and each is
 * long next to the lock. */
static pthread_mutex_t q_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_cond = PTHREAD_COND_INITIALIZER;
static struct gw_job *q_head, *q_tail;
static unsigned nhelpers;
/* under q_mu: for gw_jobs_stats */
static unsigned q_len;
static uint64_t n_taken, wait_us_sum;

static void finish(struct gw_job *j)
{
    struct gw_job_home *h = j->home;
    bool was_empty;

    j->next = NULL;
    pthread_mutex_lock(&h->mu);
    was_empty = h->head == NULL;
    if (h->tail != NULL)
        h->tail->next = j;
    else
        h->head = j;
    h->tail = j;
    atomic_store_explicit(&h->ready, true, memory_order_release);
    pthread_mutex_unlock(&h->mu);
    if (was_empty) {
        uint64_t one = 1;
        /* only EAGAIN (the counter is full) can fail here, and then a
         * wake-up is pending anyway */
        if (write(h->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            gw_log_error("jobs: waking a worker: %s", strerror(errno));
    }
}

static void *helper_main(void *arg)
{
    (void)arg;
    setpriority(PRIO_PROCESS, (id_t)gettid(), HELPER_NICE);
    for (;;) {
        struct gw_job *j;

        pthread_mutex_lock(&q_mu);
        while (q_head == NULL)
            pthread_cond_wait(&q_cond, &q_mu);
        j = q_head;
        q_head = j->next;
        if (q_head == NULL)
            q_tail = NULL;
        q_len--;
        n_taken++;
        wait_us_sum += gw_clock_us() - j->queued_us;
        pthread_mutex_unlock(&q_mu);
        j->run(j);
        finish(j);
    }
    return NULL;
}

int gw_jobs_start(unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        pthread_t t;
        char name[16];
        int rc = pthread_create(&t, NULL, helper_main, NULL);

        if (rc != 0) {
            gw_log_error("jobs: helper thread: %s (%u started)", strerror(rc), nhelpers);
            break;
        }
        snprintf(name, sizeof(name), "gw-help-%u", i % 1000u);
        pthread_setname_np(t, name);
        pthread_detach(t);
        pthread_mutex_lock(&q_mu);
        nhelpers++;
        pthread_mutex_unlock(&q_mu);
    }
    return nhelpers > 0 ? 0 : -1;
}

void gw_job_home_init(struct gw_job_home *h, int wake_fd)
{
    pthread_mutex_init(&h->mu, NULL);
    h->head = h->tail = NULL;
    atomic_init(&h->ready, false);
    h->wake_fd = wake_fd;
    h->out = 0;
}

int gw_jobs_submit(struct gw_job_home *h, struct gw_job *j)
{
    if (nhelpers == 0)
        return -1;
    j->home = h;
    j->next = NULL;
    j->queued_us = gw_clock_us();
    pthread_mutex_lock(&q_mu);
    q_len++;
    if (q_tail != NULL)
        q_tail->next = j;
    else
        q_head = j;
    q_tail = j;
    pthread_cond_signal(&q_cond);
    pthread_mutex_unlock(&q_mu);
    h->out++;
    return 0;
}

void gw_jobs_collect(struct gw_job_home *h)
{
    struct gw_job *j;

    if (!atomic_load_explicit(&h->ready, memory_order_acquire))
        return;
    pthread_mutex_lock(&h->mu);
    j = h->head;
    h->head = h->tail = NULL;
    atomic_store_explicit(&h->ready, false, memory_order_relaxed);
    pthread_mutex_unlock(&h->mu);
    while (j != NULL) {
        struct gw_job *next = j->next;
        h->out--;
        j->done(j);
        j = next;
    }
}

void gw_jobs_stats(struct gw_jobs_stats *s)
{
    pthread_mutex_lock(&q_mu);
    s->helpers = nhelpers;
    s->waiting = q_len;
    s->taken = n_taken;
    s->wait_us = wait_us_sum;
    pthread_mutex_unlock(&q_mu);
}
