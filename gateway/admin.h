/* The admin listener on the main thread: /healthz, /readyz, /metrics, /config. It is
 * a separate socket from the data listeners, so admin paths are never
 * reachable through them, and a slow scrape never runs on a data worker. */
#ifndef GW_ADMIN_H
#define GW_ADMIN_H

#include "core/config.h"

#include <poll.h>
#include <stdbool.h>
#include <stdint.h>

/* What main tells the admin endpoints. */
struct gw_admin_state {
    bool ready;    /* config loaded and workers running */
    bool draining; /* /readyz answers 503 */
    uint64_t generation;
    uint64_t reloads_ok, reloads_failed;
    bool last_reload_ok;
    double start_time; /* seconds since the epoch */
    const struct gw_config *cfg; /* the running snapshot (main holds it) */
    double loaded_at;            /* when it was loaded, seconds since the epoch */
};

extern struct gw_admin_state gw_admin;

/* Binds the admin address, replacing the socket of a previous call (clients
 * being served keep their connections). Returns 0, or -1 with the reason in
 * err and the previous socket still listening. */
int gw_admin_open(const struct gw_sockaddr *addr, char *err, size_t errlen);
/* Adds the admin sockets to fds (at most max); returns how many. */
unsigned gw_admin_pollfds(struct pollfd *fds, unsigned max);
/* Handles whatever those poll entries reported. */
void gw_admin_handle(struct pollfd *fds, unsigned n);

#endif
