/* Request and response heads as the parser leaves them: every field is a
 * slice into the caller's input buffer, so the buffer must outlive them. */
#ifndef GW_HTTP_MSG_H
#define GW_HTTP_MSG_H

#include "core/buf.h"

#include <stdint.h>

#define GW_HTTP_MAX_HEADERS 100

struct gw_header {
    struct gw_slice name;
    struct gw_slice value; /* leading and trailing blanks removed */
};

enum gw_method {
    GW_METHOD_OTHER = 0,
    GW_METHOD_GET,
    GW_METHOD_HEAD,
    GW_METHOD_POST,
    GW_METHOD_PUT,
    GW_METHOD_DELETE,
    GW_METHOD_OPTIONS,
    GW_METHOD_PATCH,
    GW_METHOD_CONNECT,
    GW_METHOD_TRACE,
};

/* Framing and connection facts the parser derives from the headers. */
enum {
    GW_MSG_CHUNKED = 1 << 0,         /* Transfer-Encoding ends in chunked */
    GW_MSG_KEEPALIVE = 1 << 1,       /* connection may be reused after this message */
    GW_MSG_EXPECT_CONTINUE = 1 << 2, /* Expect: 100-continue */
    GW_MSG_UPGRADE = 1 << 3,         /* Upgrade header and "upgrade" in Connection */
    GW_MSG_CONN_CLOSE = 1 << 4,      /* Connection: close */
    GW_MSG_HAS_BODY = 1 << 5,        /* a body follows the head (CL > 0, chunked, or
                                        response read until close) */
    GW_MSG_UNTIL_CLOSE = 1 << 6,     /* response body ends when the upstream closes */
};

struct gw_request {
    struct gw_slice method_str;
    enum gw_method method;
    struct gw_slice target;    /* as sent */
    struct gw_slice path;      /* origin-form path (with query); for absolute-form
                                  the part after the authority, or "/" */
    struct gw_slice authority; /* absolute-form only, else empty */
    struct gw_slice host;      /* authority if absolute-form, else Host header */
    int minor_version;         /* 0 or 1 */
    struct gw_header headers[GW_HTTP_MAX_HEADERS];
    size_t nheaders;
    int64_t content_length; /* -1 when absent */
    unsigned flags;         /* GW_MSG_* */
    int error_status;       /* when the parser returns -1: 400, 431, 501 or 505 */
    const char *error_reason;
};

struct gw_response {
    int status;
    int minor_version;
    struct gw_slice reason;
    struct gw_header headers[GW_HTTP_MAX_HEADERS];
    size_t nheaders;
    int64_t content_length; /* -1 when absent or not applicable */
    unsigned flags;
    const char *error_reason; /* when the parser returns -1 */
};

#endif
