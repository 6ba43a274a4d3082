/* Worker threads: one io_uring each, owning its listeners (SO_REUSEPORT),
 * connections, pools and timers. Main talks to them only through atomics
 * and an eventfd per worker. */
#ifndef GW_WORKER_H
#define GW_WORKER_H

#include "core/config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Starts n workers (see gw_workers_resolve; metrics must be set up for n)
 * on cfg and waits until each is serving or has failed.
 * Returns 0, or -1 with the first failure's reason in err. */
int gw_workers_start(struct gw_config *cfg, unsigned n, char *err, size_t errlen);

/* Checks that cfg's listen addresses that running (NULL at start) does not
 * have can be bound: 0, or -1 with the reason in err. */
int gw_workers_check_listen(const struct gw_config *cfg, const struct gw_config *running,
                            char *err, size_t errlen);

/* Makes cfg (with generation set) the config new requests use. Takes a
 * reference; the previous snapshot is released once every worker has
 * switched (gw_workers_tick). */
void gw_workers_publish(struct gw_config *cfg);

/* Main's periodic housekeeping: release superseded snapshots. */
void gw_workers_tick(void);

/* Stop accepting and finish what is in flight. */
void gw_workers_drain(void);
/* True when every worker has finished draining and exited its loop. */
bool gw_workers_done(void);
/* Ends the loops now (drain timeout) and joins the threads. */
void gw_workers_stop(void);
void gw_workers_join(void);

/* How many workers `workers = n` means here (0: one per CPU we may run on). */
unsigned gw_workers_resolve(unsigned n);

#endif
