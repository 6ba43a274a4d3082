/* Request budgets and retry rules: the pure decisions behind deadline
 * propagation and retries (no clock reads, no I/O; `now` and random bits
 * are passed in). */
#ifndef GW_POLICY_DEADLINE_H
#define GW_POLICY_DEADLINE_H

#include "core/buf.h"
#include "core/config.h"
#include "http/msg.h"

#include <stdbool.h>
#include <stdint.h>

/* The value of an incoming deadline header: decimal milliseconds with
 * optional surrounding white space. Returns it, or -1 when it is not a
 * plain non-negative number (the header is then ignored). */
int64_t gw_deadline_parse(struct gw_slice v);

/* Budget of a request in ms: the route's timeout, or the client's deadline
 * when that is smaller (client_ms < 0: none). 0 means already expired. */
uint64_t gw_deadline_budget(unsigned route_timeout_ms, int64_t client_ms);

/* RFC 9110 9.2.2: methods whose repetition has the effect of one request. */
bool gw_method_idempotent(enum gw_method m);

/* May a request of this method be sent again? Idempotent methods always;
 * others only when the route lists them in retry_methods (the body was
 * kept whole, which the caller checks). */
bool gw_retry_method_allowed(const struct gw_route *r, enum gw_method m, struct gw_slice name);

/* Pause before retry number `attempt` (1 = first retry): exponential from
 * 10 ms, capped at 250 ms, with jitter in [half, full] from rnd. */
unsigned gw_retry_backoff_ms(unsigned attempt, uint64_t rnd);

/* The retry budget: a retry may start while the retries in flight stay
 * under budget * active requests, with at least 3 allowed (as Envoy's
 * min_retry_concurrency), so a quiet route can still retry. */
bool gw_retry_budget_allows(unsigned active, unsigned retrying, double budget);

/* Does the status count as a failure for the upstream's breaker? */
bool gw_breaker_status_fails(const struct gw_breaker_conf *b, int status);

#endif
