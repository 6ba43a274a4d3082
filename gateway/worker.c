/* Owns the worker threads: ring and buffer setup, listeners with multishot
 * accept, the event loop, config switches and drain. */
#include "worker.h"

#include "core/clock.h"
#include "core/jobs.h"
#include "core/list.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/metrics.h"
#include "io/bufring.h"
#include "io/ring.h"
#include "io/timer.h"
#include "proxy/ctx.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#define RING_ENTRIES 1024
#define BUFRING_COUNT 1024
#define BUFRING_SIZE (16 * 1024)
#define LOOP_MAX_WAIT_MS 1000

enum {
    WS_STARTING = 0,
    WS_RUNNING,
    WS_FAILED,
    WS_DONE,
};

/* One worker's socket for one listen address. A reload that keeps the
 * address keeps the socket; one that drops it retires the listener: its
 * accept is cancelled, what is already in its backlog is accepted, and then
 * it is closed and freed. */
struct listener {
    struct gw_worker *wk;
    struct listener *next;
    struct gw_sockaddr addr;
    unsigned slot; /* gw_listen.slot */
    int fd;
    bool defer_accept; /* as last set on fd */
    bool armed;
    bool closing; /* retired by a reload */
    bool in_grace; /* retired, but still taking in deferred connections */
    struct gw_op accept_op;
    struct gw_timer retry;  /* re-arm after a resource error (EMFILE...) */
    struct gw_timer grace;  /* end of in_grace */
    uint64_t last_log_ms;
};

struct gw_worker {
    struct gw_wctx ctx;
    pthread_t thread;
    int evfd;
    uint64_t ev_val;
    struct gw_op ev_op;
    bool ev_armed;
    struct listener *ls;
    unsigned listeners_armed;
    unsigned listeners_grace; /* retired listeners still in their grace */
    struct gw_config *start_cfg;
    unsigned nworkers;
    _Atomic int state;
    _Atomic uint64_t seen_gen;
    char err[512];
};

static struct gw_worker *workers;
static unsigned nworkers;
static _Atomic(struct gw_config *) published;
static _Atomic uint64_t published_gen;
static atomic_bool drain_flag, stop_flag;

/* Snapshots replaced by a publish, freed when every worker has seen a
 * newer generation (so none can still be taking a reference to them). */
struct retired {
    struct gw_config *cfg;
    uint64_t until_gen;
    struct retired *next;
};
static struct retired *retired;

static void wake(struct gw_worker *wk)
{
    uint64_t one = 1;
    ssize_t n = write(wk->evfd, &one, sizeof(one));
    (void)n;
}

static void arm_accept(struct listener *l)
{
    struct io_uring_sqe *sqe;

    if (l->armed || l->fd < 0 || l->closing || atomic_load(&drain_flag))
        return;
    sqe = gw_ring_sqe(&l->wk->ctx.ring);
    io_uring_prep_multishot_accept(sqe, l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    gw_sqe_op(sqe, &l->accept_op);
    l->armed = true;
    l->wk->listeners_armed++;
}

static void on_accept_retry(struct gw_timer *t)
{
    arm_accept(container_of(t, struct listener, retry));
}

static void listener_finish(struct listener *l);
static void on_grace_end(struct gw_timer *t);

static void on_accept(struct gw_op *op, int res, unsigned flags)
{
    struct listener *l = container_of(op, struct listener, accept_op);
    struct gw_worker *wk = l->wk;

    if (!(flags & IORING_CQE_F_MORE)) {
        l->armed = false;
        wk->listeners_armed--;
    }
    if (res >= 0)
        gw_conn_accepted(&wk->ctx, res, l->slot);
    if (l->closing) {
        if (!l->armed && !l->in_grace)
            listener_finish(l);
        return;
    }
    if (res < 0 && res != -ECANCELED && res != -EAGAIN && res != -ECONNABORTED &&
        res != -EINTR) {
        /* EMFILE, ENFILE, ENOBUFS, ENOMEM: out of a resource that frees up
         * as connections close. Accepting again at once would spin on the
         * same error, so pause this listener briefly (as nginx does) and
         * say so at most every ten seconds. */
        if (gw_now_ms - l->last_log_ms >= 10000 || l->last_log_ms == 0) {
            gw_log_error("worker %u: accept: %s; pausing accepts for 100 ms", wk->ctx.id,
                         strerror(-res));
            l->last_log_ms = gw_now_ms;
        }
        if (l->armed) {
            struct io_uring_sqe *sqe = gw_ring_sqe(&wk->ctx.ring);
            io_uring_prep_cancel(sqe, &l->accept_op, 0);
            gw_sqe_op(sqe, NULL);
        }
        gw_timer_set(&wk->ctx.timers, &l->retry, gw_now_ms + 100);
        return;
    }
    if (!gw_timer_armed(&l->retry))
        arm_accept(l);
}

static void on_event(struct gw_op *op, int res, unsigned flags)
{
    struct gw_worker *wk = container_of(op, struct gw_worker, ev_op);
    (void)res;
    (void)flags;
    wk->ev_armed = false;
}

static void arm_event(struct gw_worker *wk)
{
    struct io_uring_sqe *sqe;
    if (wk->ev_armed || atomic_load(&stop_flag))
        return;
    sqe = gw_ring_sqe(&wk->ctx.ring);
    io_uring_prep_read(sqe, wk->evfd, &wk->ev_val, sizeof(wk->ev_val), 0);
    gw_sqe_op(sqe, &wk->ev_op);
    wk->ev_armed = true;
}

static int open_listener(const struct gw_sockaddr *a, bool reuseport, char *err, size_t errlen)
{
    int fd, one = 1;

    fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        snprintf(err, errlen, "cannot listen on %s: socket: %s", a->text, strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    /* "[::]:80" listens on IPv6 only, so that "0.0.0.0:80" can be listed
     * beside it, as nginx does. */
    if (a->sa.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&a->sa, a->len) == -1 || listen(fd, 4096) == -1) {
        int e = errno;
        snprintf(err, errlen, "cannot listen on %s: %s%s", a->text, strerror(e),
                 e == EADDRINUSE ? " (another process holds the port)" : "");
        close(fd);
        errno = e; /* for the caller's EADDRINUSE check */
        return -1;
    }
    return fd;
}

/* The TCP options of a listening socket, which accepted sockets inherit.
 * Both only change what the kernel does before the first request arrives:
 *
 * - TCP_DEFER_ACCEPT: a connection is put in the accept queue when its
 *   first bytes arrive (or, from a silent client, after a second), so that
 *   the accept and the first read wake the worker once, not twice. perf
 *   newconn: 28.1k -> 38.9k req/s (sleeps of the worker 22k/s -> 1.2k/s).
 * - TCP_QUICKACK off: a new connection's first request is not ACKed on its
 *   own at once; the response carries the ACK a moment later. One segment
 *   less per new connection, as HAProxy does on its HTTP listeners.
 *
 * Both go after listen(), which clears the ACK state. */
static void listener_options(struct listener *l, bool defer_accept)
{
    setsockopt(l->fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &(int){defer_accept ? 1 : 0}, sizeof(int));
    setsockopt(l->fd, IPPROTO_TCP, TCP_QUICKACK, &(int){0}, sizeof(int));
    l->defer_accept = defer_accept;
}

static int add_listener(struct gw_worker *wk, const struct gw_listen *ln, char *err,
                        size_t errlen)
{
    struct listener *l;
    int fd = open_listener(&ln->addr, true, err, errlen);

    if (fd < 0)
        return -1;
    l = gw_xcalloc(1, sizeof(*l));
    l->wk = wk;
    l->addr = ln->addr;
    l->slot = ln->slot;
    l->fd = fd;
    listener_options(l, ln->defer_accept);
    l->accept_op.cb = on_accept;
    gw_timer_init(&l->retry, on_accept_retry);
    gw_timer_init(&l->grace, on_grace_end);
    l->next = wk->ls;
    wk->ls = l;
    arm_accept(l);
    return 0;
}

/* A retired listener whose accept is no longer armed: take in what already
 * sits in its backlog (closing would reset those connections; the other
 * workers' sockets of the address are gone too), then close it. */
static void listener_finish(struct listener *l)
{
    struct gw_worker *wk = l->wk;
    struct listener **pp;
    int fd;

    while ((fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0)
        gw_conn_accepted(&wk->ctx, fd, l->slot);
    close(l->fd);
    gw_timer_cancel(&wk->ctx.timers, &l->retry);
    gw_timer_cancel(&wk->ctx.timers, &l->grace);
    for (pp = &wk->ls; *pp != NULL; pp = &(*pp)->next)
        if (*pp == l) {
            *pp = l->next;
            break;
        }
    free(l);
}

#define DEFER_GRACE_MS 200

/* Retired listeners in their grace, by listen slot: their port is still
 * ours, and gw_workers_check_listen (main thread) must not take it for
 * another process's when a reload brings the address back. */
static _Atomic unsigned grace_by_slot[GW_METRICS_MAX_LISTENS];

static void grace_count(const struct listener *l, int d)
{
    if (l->slot < GW_METRICS_MAX_LISTENS)
        atomic_fetch_add(&grace_by_slot[l->slot], (unsigned)d);
}

static void retire_now(struct listener *l);

static void on_grace_end(struct gw_timer *t)
{
    struct listener *l = container_of(t, struct listener, grace);

    l->in_grace = false;
    l->wk->listeners_grace--;
    grace_count(l, -1);
    retire_now(l); /* may free l */
}

/* Stops taking connections on l, then closes it. With TCP_DEFER_ACCEPT, a
 * client whose handshake is done but whose first bytes are still on their
 * way is in no backlog yet: closing the socket would reset it. So the
 * option goes off and l stays open DEFER_GRACE_MS longer, for those bytes
 * to arrive (test_75: 1 in 1384 connections racing a drain was reset
 * without the grace). */
static void retire_listener(struct listener *l)
{
    l->closing = true;
    gw_timer_cancel(&l->wk->ctx.timers, &l->retry);
    if (l->defer_accept) {
        listener_options(l, false);
        l->in_grace = true;
        l->wk->listeners_grace++;
        grace_count(l, 1);
        gw_timer_set(&l->wk->ctx.timers, &l->grace, gw_now_ms + DEFER_GRACE_MS);
        return;
    }
    retire_now(l);
}

static void retire_now(struct listener *l)
{
    struct io_uring_sqe *sqe;

    if (!l->armed) {
        listener_finish(l);
        return;
    }
    sqe = gw_ring_sqe(&l->wk->ctx.ring);
    io_uring_prep_cancel(sqe, &l->accept_op, 0);
    gw_sqe_op(sqe, NULL);
}

/* Makes the worker's sockets match cfg's listen addresses: unchanged ones
 * are kept (no accept gap), dropped ones retired, new ones opened. Main
 * checked that the new ones could be bound before publishing cfg. */
static void sync_listeners(struct gw_worker *wk, const struct gw_config *cfg)
{
    struct listener *l, *next;
    char err[256];

    for (l = wk->ls; l != NULL; l = next) {
        bool keep = false;
        next = l->next;
        for (size_t i = 0; i < cfg->nlistens && !keep; i++) {
            keep = cfg->listens[i].slot == l->slot;
            if (keep && !l->closing && cfg->listens[i].defer_accept != l->defer_accept)
                listener_options(l, cfg->listens[i].defer_accept);
        }
        if (!keep && !l->closing) {
            gw_log_error("worker %u: no longer listening on %s", wk->ctx.id, l->addr.text);
            retire_listener(l);
        }
    }
    for (size_t i = 0; i < cfg->nlistens; i++) {
        bool have = false;
        for (l = wk->ls; l != NULL && !have; l = l->next)
            have = l->slot == cfg->listens[i].slot && !l->closing;
        if (!have && add_listener(wk, &cfg->listens[i], err, sizeof(err)) != 0)
            gw_log_error("worker %u: %s", wk->ctx.id, err);
    }
}

static void redis_depth(void *ctx, unsigned n)
{
    gw_metrics_redis_depth(ctx, n);
}

/* Starts, moves, keeps or (a config without a redis block) closes the
 * worker's Redis connection for cfg. */
static void redis_configure(struct gw_wctx *w, const struct gw_config *cfg)
{
    if (!cfg->redis.enabled) {
        if (w->redis.ring != NULL)
            gw_redis_configure(&w->redis, &cfg->redis);
        w->redis_on = false;
        atomic_store(&w->stats->redis_configured, 0);
        return;
    }
    if (w->redis.ring == NULL)
        gw_redis_init(&w->redis, &w->ring, &w->timers, &cfg->redis,
                      (struct gw_redis_stats){&w->stats->redis_up, redis_depth, w->stats});
    else
        gw_redis_configure(&w->redis, &cfg->redis);
    w->redis_on = true;
    atomic_store(&w->stats->redis_configured, 1);
}

static void set_busy_poll(struct gw_wctx *w, const struct gw_config *cfg)
{
    w->ring.busy_poll_us = gw_ring_can_busy_poll(&w->ring) ? cfg->busy_poll_us : 0;
}

static void switch_config(struct gw_worker *wk)
{
    uint64_t gen = atomic_load_explicit(&published_gen, memory_order_acquire);
    struct gw_config *cfg;

    if (gen == atomic_load_explicit(&wk->seen_gen, memory_order_relaxed))
        return;
    cfg = atomic_load_explicit(&published, memory_order_acquire);
    if (cfg != wk->ctx.cur->cfg) {
        struct gw_cfgref *old = wk->ctx.cur;
        wk->ctx.cur = gw_cfgref_new(&wk->ctx, cfg);
        gw_cfgref_release(&wk->ctx, old);
        if (!wk->ctx.draining)
            sync_listeners(wk, cfg);
        /* a smaller cap takes effect as entries are added */
        wk->ctx.l1.cap = cfg->cache_l1_bytes / wk->nworkers;
        redis_configure(&wk->ctx, cfg);
        set_busy_poll(&wk->ctx, cfg);
    }
    atomic_store_explicit(&wk->seen_gen, gen, memory_order_release);
}

static void start_drain(struct gw_worker *wk)
{
    struct listener *l, *next;

    wk->ctx.draining = true;
    /* Close the listeners, so that new connections are refused (and go
     * to another instance) rather than wait in a backlog nobody reads;
     * what already waits there is accepted and served. */
    for (l = wk->ls; l != NULL; l = next) {
        next = l->next;
        if (!l->closing)
            retire_listener(l);
    }
    gw_conns_drain(&wk->ctx);
    gw_pools_close_idle(&wk->ctx);
}

static void *worker_main(void *arg)
{
    struct gw_worker *wk = arg;
    struct gw_wctx *w = &wk->ctx;
    struct gw_config *cfg = wk->start_cfg;
    bool draining = false;
    int ret;

    gw_clock_update();
    ret = gw_ring_init(&w->ring, RING_ENTRIES, wk->err, sizeof(wk->err));
    if (ret < 0)
        goto fail;
    {
        /* Splices run in io-wq threads. With fewer threads than bodies in
         * flight, splices queue behind each other: 8 cost get1m about 10%
         * against 32 in perf/ (16 connections, one worker). */
        unsigned vals[2] = {2, 32};
        io_uring_register_iowq_max_workers(&w->ring.ring, vals);
    }
    set_busy_poll(w, cfg);
    gw_job_home_init(&w->jobs, wk->evfd);
    ret = gw_bufring_init(&w->br, &w->ring, 1, BUFRING_COUNT, BUFRING_SIZE);
    if (ret < 0) {
        snprintf(wk->err, sizeof(wk->err),
                 "io_uring provided buffers: %s (Linux 5.19 or newer is required)",
                 strerror(-ret));
        goto fail;
    }
    gw_timers_init(&w->timers);
    w->stats = gw_metrics_worker(w->id);
    w->cur = gw_cfgref_new(w, cfg);
    atomic_store(&wk->seen_gen, cfg->generation);
    gw_l1_init(&w->l1, cfg->cache_l1_bytes / wk->nworkers);
    redis_configure(w, cfg);
    w->max_conns = cfg->limits.max_connections / wk->nworkers;
    if (w->max_conns == 0)
        w->max_conns = 1;
    if (getrandom(&w->rid_seed, sizeof(w->rid_seed), 0) != sizeof(w->rid_seed))
        w->rid_seed = gw_clock_wall_us() ^ ((uint64_t)w->id << 48);
    {
        size_t hb = cfg->limits.max_header_bytes;
        gw_bufpool_init(&w->in_pool, hb + 16 * 1024);
        gw_bufpool_init(&w->out_pool, hb + GW_UP_BUF_BODY);
        gw_bufpool_init(&w->body_pool, GW_BODY_BUF);
    }

    for (size_t i = 0; i < cfg->nlistens; i++)
        if (add_listener(wk, &cfg->listens[i], wk->err, sizeof(wk->err)) != 0)
            goto fail;
    wk->ev_op.cb = on_event;
    arm_event(wk);
    atomic_store(&wk->state, WS_RUNNING);

    for (;;) {
        uint64_t now = gw_clock_update();
        unsigned wait;

        if (atomic_load_explicit(&stop_flag, memory_order_relaxed))
            break;
        switch_config(wk);
        if (!draining && atomic_load_explicit(&drain_flag, memory_order_relaxed)) {
            draining = true;
            start_drain(wk);
        }
        if (draining) {
            gw_conns_drain(w);
            if (w->nconns == 0 && wk->listeners_armed == 0 && wk->listeners_grace == 0 &&
                !w->log_busy &&
                w->log_len[w->log_cur] == 0)
                break;
        }
        gw_timers_run(&w->timers, now);
        gw_log_flush(w);
        if (w->redis.ring != NULL)
            gw_redis_flush(&w->redis);
        arm_event(wk);
        wait = gw_timers_wait_ms(&w->timers, now, draining ? 50 : LOOP_MAX_WAIT_MS);
        ret = gw_ring_run(&w->ring, wait ? wait : 1);
        if (ret < 0) {
            gw_log_error("worker %u: io_uring_enter: %s", w->id, strerror(-ret));
            break;
        }
        gw_jobs_collect(&w->jobs);
        if (gw_ring_cq_overflowed(&w->ring))
            gw_stat_add(&w->stats->cq_overflow, 1);
        for (int k = 0; k < 2; k++)
            atomic_store_explicit(&w->stats->busy_polls[k], w->ring.busy_polls[k],
                                  memory_order_relaxed);
    }
    /* What the last callbacks queued goes out (a drain's close_notify to
     * upstreams it closed), and a last access-log write finishes, before
     * the process exits. */
    gw_ring_run(&w->ring, 0);
    for (int i = 0; i < 100 && w->log_busy; i++)
        gw_ring_run(&w->ring, 10);
    gw_log_flush(w);
    for (int i = 0; i < 100 && w->log_busy; i++)
        gw_ring_run(&w->ring, 10);
    atomic_store(&wk->state, WS_DONE);
    return NULL;

fail:
    atomic_store(&wk->state, WS_FAILED);
    return NULL;
}

/* CPUs a container may use: its cpuset (the affinity mask) and, with
 * cgroup v2, its CPU quota ("docker run --cpus 2" sets cpu.max to
 * "200000 100000"), rounded up. */
static unsigned cpu_count(void)
{
    cpu_set_t set;
    unsigned n;
    long long quota, period;
    FILE *f;

    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) {
        n = (unsigned)CPU_COUNT(&set);
    } else {
        long m = sysconf(_SC_NPROCESSORS_ONLN);
        n = m > 0 ? (unsigned)m : 1;
    }
    f = fopen("/sys/fs/cgroup/cpu.max", "r");
    if (f != NULL) {
        if (fscanf(f, "%lld %lld", &quota, &period) == 2 && quota > 0 && period > 0) {
            unsigned q = (unsigned)((quota + period - 1) / period);
            if (q > 0 && q < n)
                n = q;
        }
        fclose(f);
    }
    return n;
}

unsigned gw_workers_resolve(unsigned n)
{
    if (n == 0)
        n = cpu_count();
    return n > GW_METRICS_MAX_WORKERS ? GW_METRICS_MAX_WORKERS : n;
}

static uint16_t port_of(const struct gw_sockaddr *a)
{
    if (a->sa.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&a->sa)->sin6_port);
    return ntohs(((const struct sockaddr_in *)&a->sa)->sin_port);
}

int gw_workers_check_listen(const struct gw_config *cfg, const struct gw_config *running,
                            char *err, size_t errlen)
{
    /* With SO_REUSEPORT a second gateway on the same port would silently
     * share it; a plain bind first tells "port in use" clearly. */
    for (size_t i = 0; i < cfg->nlistens; i++) {
        const struct gw_sockaddr *a = &cfg->listens[i].addr;
        const char *ours = NULL;
        bool kept = false;
        unsigned slot;
        int fd;

        for (size_t j = 0; running != NULL && j < running->nlistens && !kept; j++) {
            kept = strcmp(running->listens[j].addr.text, a->text) == 0;
            if (port_of(&running->listens[j].addr) == port_of(a))
                ours = running->listens[j].addr.text;
        }
        if (kept)
            continue;
        slot = gw_metrics_listen_find(a->text);
        if (slot < GW_METRICS_MAX_LISTENS && atomic_load(&grace_by_slot[slot]) > 0)
            continue;
        fd = open_listener(a, false, err, errlen);
        if (fd < 0) {
            /* 127.0.0.1:80 -> 0.0.0.0:80 in one reload overlaps our own
             * socket; say that rather than blame another process. */
            if (errno == EADDRINUSE && ours != NULL)
                snprintf(err, errlen,
                         "cannot listen on %s: it overlaps %s, which the running config "
                         "listens on; remove that one in one reload and add this in the next, "
                         "or restart",
                         a->text, ours);
            return -1;
        }
        close(fd);
    }
    return 0;
}

int gw_workers_start(struct gw_config *cfg, unsigned n, char *err, size_t errlen)
{
    if (gw_workers_check_listen(cfg, NULL, err, errlen) != 0)
        return -1;

    nworkers = n;
    /* Helpers for full TLS handshakes, by default as many as workers:
     * without them a worker does the slow steps in place. */
    (void)gw_jobs_start(cfg->tls_helpers < 0 ? n : (unsigned)cfg->tls_helpers);
    workers = gw_xcalloc(n, sizeof(*workers));
    atomic_store(&published, gw_config_ref(cfg));
    atomic_store(&published_gen, cfg->generation);
    for (unsigned i = 0; i < n; i++) {
        struct gw_worker *wk = &workers[i];
        wk->ctx.id = i;
        wk->start_cfg = cfg;
        wk->nworkers = n;
        wk->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (wk->evfd == -1 || pthread_create(&wk->thread, NULL, worker_main, wk) != 0) {
            snprintf(err, errlen, "cannot start worker %u: %s", i, strerror(errno));
            return -1;
        }
    }
    for (unsigned i = 0; i < n; i++) {
        while (atomic_load(&workers[i].state) == WS_STARTING)
            usleep(1000);
        if (atomic_load(&workers[i].state) == WS_FAILED) {
            snprintf(err, errlen, "%s", workers[i].err);
            return -1;
        }
    }
    return 0;
}

void gw_workers_publish(struct gw_config *cfg)
{
    struct gw_config *old = atomic_exchange(&published, gw_config_ref(cfg));
    struct retired *rt = gw_xmalloc(sizeof(*rt));

    atomic_store_explicit(&published_gen, cfg->generation, memory_order_release);
    rt->cfg = old;
    rt->until_gen = cfg->generation;
    rt->next = retired;
    retired = rt;
    for (unsigned i = 0; i < nworkers; i++)
        wake(&workers[i]);
}

void gw_workers_tick(void)
{
    struct retired **pp = &retired;
    while (*pp) {
        struct retired *rt = *pp;
        bool all = true;
        for (unsigned i = 0; i < nworkers; i++) {
            int st = atomic_load(&workers[i].state);
            if (st == WS_RUNNING && atomic_load(&workers[i].seen_gen) < rt->until_gen)
                all = false;
        }
        if (!all) {
            pp = &rt->next;
            continue;
        }
        *pp = rt->next;
        gw_config_unref(rt->cfg);
        free(rt);
    }
}

void gw_workers_drain(void)
{
    atomic_store(&drain_flag, true);
    for (unsigned i = 0; i < nworkers; i++)
        wake(&workers[i]);
}

bool gw_workers_done(void)
{
    for (unsigned i = 0; i < nworkers; i++)
        if (atomic_load(&workers[i].state) == WS_RUNNING)
            return false;
    return true;
}

void gw_workers_stop(void)
{
    atomic_store(&stop_flag, true);
    for (unsigned i = 0; i < nworkers; i++)
        wake(&workers[i]);
}

void gw_workers_join(void)
{
    for (unsigned i = 0; i < nworkers; i++)
        pthread_join(workers[i].thread, NULL);
}
