/* Strict HTTP/1.1 head parser for requests (from clients) and responses
 * (from upstreams). It never allocates and never writes to the input.
 *
 * Both functions return the length of the head (through the blank line) on
 * success, -2 when the head is incomplete, -1 when the input is invalid.
 * A head longer than max_head bytes is -1 (request: error_status 431) even
 * when incomplete, so a caller can stop reading. */
#ifndef GW_HTTP_PARSE_H
#define GW_HTTP_PARSE_H

#include "http/msg.h"

#include <stddef.h>

int gw_http_parse_request(const char *buf, size_t len, size_t max_head, struct gw_request *req);

/* req_method tells whether the response can have a body (HEAD, CONNECT). */
int gw_http_parse_response(const char *buf, size_t len, size_t max_head, enum gw_method req_method,
                           struct gw_response *resp);

/* Finds a header by case-insensitive name; returns NULL if absent. */
const struct gw_header *gw_http_find_header(const struct gw_header *h, size_t n, const char *name);

#endif
