/* gw_jobs: without helpers submit refuses; with them each job runs on a
 * helper thread and its done callback on the thread that collects, once,
 * after the wake-up fd was written. */
#include "core/jobs.h"
#include "tap.h"

#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define NJOBS 64

struct tjob {
    struct gw_job j;
    pthread_t ran_on;
    int runs, dones;
};

static pthread_t me;
static int dones_total, dones_on_me;

static void run(struct gw_job *j)
{
    struct tjob *t = (struct tjob *)j;
    t->ran_on = pthread_self();
    t->runs++;
}

static void done(struct gw_job *j)
{
    struct tjob *t = (struct tjob *)j;
    t->dones++;
    dones_total++;
    if (pthread_equal(pthread_self(), me))
        dones_on_me++;
}

static void test_no_helpers(void)
{
    struct gw_job_home h;
    struct tjob t = {.j = {.run = run, .done = done}};
    int fd = eventfd(0, EFD_NONBLOCK);

    gw_job_home_init(&h, fd);
    struct gw_jobs_stats st;

    is(gw_jobs_submit(&h, &t.j), -1, "submit refuses before any helper started");
    is(h.out, 0, "a refused job is not counted");
    gw_jobs_stats(&st);
    ok(st.helpers == 0 && st.waiting == 0 && st.taken == 0, "stats: no helper, nothing queued");
    close(fd);
}

static void test_helpers(void)
{
    static struct tjob jobs[NJOBS];
    struct gw_job_home h;
    int fd = eventfd(0, EFD_NONBLOCK);
    int off_me = 0, once = 0, waits = 0;
    struct gw_jobs_stats st;

    me = pthread_self();
    is(gw_jobs_start(2), 0, "two helpers start");
    gw_job_home_init(&h, fd);
    for (int i = 0; i < NJOBS; i++) {
        jobs[i].j.run = run;
        jobs[i].j.done = done;
        is(gw_jobs_submit(&h, &jobs[i].j), 0, "job %d queued", i);
    }
    is(h.out, NJOBS, "all counted as out");
    while (dones_total < NJOBS && waits < 500) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        uint64_t v;
        if (poll(&p, 1, 10) == 1 && read(fd, &v, sizeof(v)) == sizeof(v))
            gw_jobs_collect(&h);
        waits++;
    }
    is(dones_total, NJOBS, "every done ran, each after a wake-up");
    is(dones_on_me, NJOBS, "done callbacks ran on the collecting thread");
    for (int i = 0; i < NJOBS; i++) {
        if (!pthread_equal(jobs[i].ran_on, me))
            off_me++;
        if (jobs[i].runs == 1 && jobs[i].dones == 1)
            once++;
    }
    is(off_me, NJOBS, "jobs ran on helper threads");
    is(once, NJOBS, "each job ran and finished exactly once");
    is(h.out, 0, "nothing is out after collecting");
    gw_jobs_collect(&h);
    is(dones_total, NJOBS, "collecting again runs nothing twice");
    gw_jobs_stats(&st);
    is(st.helpers, 2, "stats: two helpers");
    is(st.waiting, 0, "stats: nothing left in the queue");
    is(st.taken, NJOBS, "stats: every job taken once");
    close(fd);
}

int main(void)
{
    subtest("no helpers", test_no_helpers);
    subtest("helpers", test_helpers);
    return done_testing();
}
