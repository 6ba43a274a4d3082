/* Owns the responses the gateway makes itself (400..504). */
#include "proxy/ctx.h"

#include "http/write.h"

#include <string.h>

void gw_respond_build(struct gw_conn *c, int status, bool close, const char *extra,
                      const char *body)
{
    struct gw_slice rid = c->req ? gw_slice(c->req->rid, c->req->rid_len) : gw_slice("", 0);
    ssize_t n;

    gw_bufpool_get(&c->w->out_pool, &c->out);
    n = gw_http_write_simple_response(c->out.data, c->out.cap, status, rid, close, extra,
                                      gw_slice(body, strlen(body)));
    c->out.off = 0;
    c->out.len = n > 0 ? (size_t)n : 0;
}
