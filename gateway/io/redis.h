/* A worker's Redis connection: hiredis's async context driven by the
 * worker's io_uring. hiredis does the reads and writes on its socket; the
 * ring only reports readiness (one-shot polls), and the worker's timers
 * bound every command. Commands issued during one loop turn leave in one
 * write (gw_redis_flush, called once per turn): that is the pipelining.
 * When Redis is unreachable or too slow the connection is dropped, every
 * command in flight gets a NULL reply, and it reconnects with backoff;
 * meanwhile gw_redis_up is false and callers go without it. */
#ifndef GW_IO_REDIS_H
#define GW_IO_REDIS_H

#include "core/config.h"
#include "io/ring.h"
#include "io/timer.h"

#include <hiredis/async.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define GW_REDIS_MAX_INFLIGHT 4096

/* Called with the reply (NULL: no answer, the connection failed or timed
 * out); the reply is freed after the call. */
typedef void gw_redis_cb(void *arg, const redisReply *reply);

struct gw_redis_stats {
    _Atomic int64_t *up;              /* gauge: 1 while connected */
    void (*depth)(void *ctx, unsigned n); /* commands per write */
    void *depth_ctx;
};

struct gw_redis {
    struct gw_ring *ring;
    struct gw_timers *timers;
    struct gw_redis_conf conf; /* copied; strings owned here */
    redisAsyncContext *ac;
    bool up;        /* connected and AUTH/SELECT done */
    bool want_read, want_write;
    bool read_armed, write_armed; /* polls in flight */
    bool connecting;
    unsigned backoff_ms;
    unsigned unflushed; /* commands since the last write */
    struct gw_op read_op, write_op;
    struct gw_timer retry_timer, timeout_timer;
    /* send times of the commands in flight, oldest first (a ring) */
    uint64_t sent_ms[GW_REDIS_MAX_INFLIGHT];
    unsigned head, count;
    struct gw_redis_stats stats;
    uint64_t connects, failures;
    unsigned setup_left; /* AUTH/SELECT replies still awaited */
    void *free_cmds;     /* reusable command records */
    char name[128];      /* the address, for logs */
};

/* Sets r up for conf (a copy is kept) and starts connecting. */
void gw_redis_init(struct gw_redis *r, struct gw_ring *ring, struct gw_timers *timers,
                   const struct gw_redis_conf *conf, struct gw_redis_stats stats);

/* Switches to another address (a reload): reconnects when it differs. */
void gw_redis_configure(struct gw_redis *r, const struct gw_redis_conf *conf);

static inline bool gw_redis_up(const struct gw_redis *r)
{
    return r->up && r->count < GW_REDIS_MAX_INFLIGHT;
}

/* Queues a command (hiredis argv form); cb runs once, with the reply or
 * NULL. Returns false (and cb is not called) when Redis is down. */
bool gw_redis_command(struct gw_redis *r, gw_redis_cb *cb, void *arg, int argc, const char **argv,
                      const size_t *argvlen);

/* Writes what was queued during this loop turn: once per turn, before the
 * ring waits. */
void gw_redis_flush(struct gw_redis *r);

#endif
