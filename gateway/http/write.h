/* Writes the heads a proxy sends: the request to the upstream and the
 * response to the client, with hop-by-hop headers removed and the
 * forwarding headers added. Pure functions over caller buffers. */
#ifndef GW_HTTP_WRITE_H
#define GW_HTTP_WRITE_H

#include "http/msg.h"

#include <stdbool.h>
#include <sys/types.h>

struct gw_fwd_info {
    struct gw_slice client_addr; /* appended to X-Forwarded-For */
    struct gw_slice proto;       /* X-Forwarded-Proto: "http" or "https" */
    struct gw_slice request_id;  /* X-Request-Id to send (kept or generated) */
    bool request_id_present;     /* the client sent X-Request-Id: keep it as is */
    struct gw_slice host;        /* Host to send when the request has neither a
                                    Host field nor an authority (HTTP/1.0);
                                    empty: an empty Host field */
    struct gw_slice deadline_header; /* name of the deadline field to send; empty: none.
                                        The client's fields of that name are dropped. */
    uint64_t deadline_ms;            /* its value: the remaining budget */
    size_t *deadline_value_off;      /* where to store the value's offset in the head, or NULL */
};

/* Width of the deadline value: right-padded with spaces (optional white
 * space in HTTP), so a retry can rewrite it in place with a smaller value. */
#define GW_DEADLINE_VALUE_WIDTH 10

/* Request head for the upstream: "METHOD path HTTP/1.1", the client's
 * headers minus hop-by-hop ones (Connection and the names it lists,
 * Keep-Alive, TE, Trailer, Proxy-*, Upgrade unless the request upgrades,
 * Expect), then X-Forwarded-For (appended to the client's), X-Forwarded-Proto
 * (replaced), X-Request-Id (added if the client sent none), and for upgrades
 * "Connection: upgrade". Host is kept (added from the authority for
 * absolute-form, which wins over a Host field; from fi->host for an
 * HTTP/1.0 request without either; OPTIONS to an absolute URI without a
 * path goes out as "OPTIONS *"). When request_id_present is false the
 * client's X-Request-Id fields are dropped and fi->request_id sent instead.
 * With fi->deadline_header set, "NAME: <deadline_ms>" is sent (value padded
 * to GW_DEADLINE_VALUE_WIDTH; its offset in *fi->deadline_value_off) in place
 * of the client's fields of that name.
 * Content-Length, Transfer-Encoding and Host are never dropped, even when
 * Connection names them. Returns the length written or -1 if it does not
 * fit; nothing is written past cap. */
ssize_t gw_http_write_request_head(char *out, size_t cap, const struct gw_request *req,
                                   const struct gw_fwd_info *fi);

/* Writes v into the GW_DEADLINE_VALUE_WIDTH bytes at p, left-aligned and
 * padded with spaces (values above 9999999999 are clamped). */
void gw_http_put_deadline(char *p, uint64_t v);

/* Response head for the client: "HTTP/1.1 status reason", the upstream's
 * headers minus hop-by-hop ones (kept for a 101 upgrade), X-Request-Id, and
 * "Connection: close" when close is true (a keep-alive client of HTTP/1.0
 * gets "Connection: keep-alive"). Returns the length or -1. */
ssize_t gw_http_write_response_head(char *out, size_t cap, const struct gw_response *resp,
                                    struct gw_slice request_id, bool close, int client_minor);

/* The head of a response as a cache stores it: the status line and the
 * end-to-end fields (no hop-by-hop or framing fields, no Age, X-Cache or
 * X-Request-Id, no Set-Cookie unless keep_set_cookie), then Content-Length:
 * body_len (not for 204 and 304, nor when body_len is UINT64_MAX, for a
 * length known only later). No blank line: gw_http_write_head_tail
 * ends it per request. Returns the length or -1. */
ssize_t gw_http_write_stored_head(char *out, size_t cap, const struct gw_response *resp,
                                  uint64_t body_len, bool keep_set_cookie);

/* The per-request end of a head: "Age" (unless age_s is UINT64_MAX),
 * "X-Cache" (unless NULL), X-Request-Id, the Connection field as
 * gw_http_write_response_head writes it, and the blank line. Returns the
 * length or -1. */
ssize_t gw_http_write_head_tail(char *out, size_t cap, uint64_t age_s, const char *x_cache,
                                struct gw_slice request_id, bool close, int client_minor);

/* The standard reason phrase of a status code, or "" when we know none. */
const char *gw_http_reason(int status);

/* A whole response the gateway makes itself: status line, Content-Type:
 * text/plain (when body is not empty), Content-Length (not for 1xx, 204,
 * 304), X-Request-Id (when request_id is not empty), "Connection: close"
 * when close is true, extra_headers as given (NULL, or lines each ending
 * in CRLF), the blank line and the body. Returns the length or -1 if it
 * does not fit in cap. */
ssize_t gw_http_write_simple_response(char *out, size_t cap, int status, struct gw_slice request_id,
                                      bool close, const char *extra_headers, struct gw_slice body);

#endif
