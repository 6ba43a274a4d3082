/* Circuit breaker per upstream server: closed / open / half-open, opened by
 * consecutive failures or by the error rate over a sliding window, shared by
 * every worker thread through atomics (no mutex). Also the concurrency cap
 * on a shared counter that upstream.c uses for max_conns. Pure: the caller
 * passes now_ms (monotonic); nothing here reads a clock, logs or does I/O. */
#ifndef GW_POLICY_BREAKER_H
#define GW_POLICY_BREAKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

enum gw_breaker_state { GW_BREAKER_CLOSED = 0, GW_BREAKER_HALF_OPEN = 1, GW_BREAKER_OPEN = 2 };

/* Validated by the config loader; the limits below are asserted. */
struct gw_breaker_params {
    uint32_t failures;           /* consecutive failures that open; 0 = off */
    double error_rate;           /* failure ratio that opens; 0 = off */
    uint32_t window_ms;          /* >= 10 */
    uint32_t min_requests;       /* requests in the window before error_rate applies */
    uint32_t open_ms;            /* time open before half-open, >= 1 */
    uint32_t half_open_requests; /* probes allowed at once when half-open, >= 1 */
};

enum gw_breaker_verdict { GW_BREAKER_DENY = 0, GW_BREAKER_PASS, GW_BREAKER_PROBE };

struct gw_breaker; /* opaque, shared by workers, reference counted */

/* A closed breaker holding one reference. Aborts when memory runs out. */
struct gw_breaker *gw_breaker_new(const struct gw_breaker_params *p);
/* Takes another reference and returns b. Any thread. */
struct gw_breaker *gw_breaker_ref(struct gw_breaker *b);
/* Drops a reference; frees with the last one. NULL does nothing. Any thread. */
void gw_breaker_unref(struct gw_breaker *b);
/* New parameters, state kept (config reload). Safe while others use it (relaxed stores): for a
 * moment a reader may see some fields old and some new, each of them valid. A new window_ms
 * empties the error-rate window. */
void gw_breaker_set_params(struct gw_breaker *b, const struct gw_breaker_params *p);
/* May a request go to this server now? PASS: closed. PROBE: half-open and a probe permit was
 * taken (the caller must report with probe = true exactly once). DENY: open (or half-open with
 * every permit taken); *retry_after_ms (if not NULL) gets the ms until a probe could pass
 * (>= 1; for half-open-full use open_ms as a guess). The first allow() at or after the end of
 * the open period moves OPEN to HALF_OPEN. */
enum gw_breaker_verdict gw_breaker_allow(struct gw_breaker *b, uint64_t now_ms,
                                         uint64_t *retry_after_ms);
/* Outcome of one request admitted by allow(). probe: it was admitted as PROBE (its permit is
 * given back). A probe that is abandoned without an outcome (client went away) is reported with
 * gw_breaker_cancel_probe so the permit is not lost. Only reports of requests admitted while
 * closed count toward opening; in HALF_OPEN only probes decide; in OPEN everything is ignored
 * (a late outcome never extends or ends the open period). */
void gw_breaker_report(struct gw_breaker *b, bool probe, bool success, uint64_t now_ms);
void gw_breaker_cancel_probe(struct gw_breaker *b);
/* The stored state for metrics (OPEN stays OPEN until an allow() moves it). */
enum gw_breaker_state gw_breaker_state(const struct gw_breaker *b);
/* Transitions into `to` since creation. */
uint64_t gw_breaker_transitions(const struct gw_breaker *b, enum gw_breaker_state to);

/* Concurrency cap on a shared counter: increments *n and returns true if it was below max
 * (max == 0: no cap, always increments); otherwise false and *n unchanged. CAS loop. */
bool gw_breaker_limit_take(_Atomic uint32_t *n, uint32_t max);
/* Decrements *n; never below 0 (asserted; with NDEBUG a put at 0 does nothing). */
void gw_breaker_limit_put(_Atomic uint32_t *n);

#endif
