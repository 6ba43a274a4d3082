/* Policy state that outlives one config snapshot and is shared by every
 * worker: the token buckets of each rate-limited route and the circuit
 * breaker and concurrency counters of each upstream server. A new snapshot
 * takes over the state of the running one wherever the name is unchanged
 * (route name; upstream name + server address), so a reload neither resets
 * a limit nor closes an open circuit. */
#ifndef GW_POLICY_SHARED_H
#define GW_POLICY_SHARED_H

#include "core/config.h"

#include <stdatomic.h>
#include <stdint.h>

struct gw_breaker;

/* One upstream server's shared state; referenced by every snapshot that
 * lists the server. */
struct gw_server_shared {
    atomic_uint refs;
    struct gw_breaker *breaker; /* always there; used when the upstream's breaker is enabled */
    _Atomic uint32_t active;    /* requests in flight to the server, all workers */
    _Atomic uint32_t pending;   /* requests waiting for a new connection to it */
};

/* Main thread, after gw_config_load and before the snapshot is published:
 * fills gw_route.rl and gw_server.shared, sharing prev's state by name
 * (prev may be NULL) and updating its parameters to cfg's. The references
 * are dropped when cfg is freed (gw_config_on_free). */
void gw_policy_bind(struct gw_config *cfg, const struct gw_config *prev);

/* A random seed for keyed hashes (rate-limit keys), the same for every
 * worker; chosen on first use. */
uint64_t gw_policy_seed(void);

#endif
