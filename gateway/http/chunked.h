/* Chunked transfer-coding scanner. It validates the framing and finds where
 * the body ends without changing the bytes, so a proxy can forward them as
 * they are. Trailers are validated as header fields. */
#ifndef GW_HTTP_CHUNKED_H
#define GW_HTTP_CHUNKED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct gw_chunked {
    int state;
    uint64_t remaining; /* data bytes left in the current chunk */
    unsigned line_len;  /* bytes of the current size or trailer line */
    bool done;          /* the last CRLF of the body has been consumed */
    /* when set, called with each run of chunk data as it is scanned (a
     * cache keeps the decoded body) */
    void (*on_data)(void *arg, const char *p, size_t n);
    void *arg;
};

void gw_chunked_init(struct gw_chunked *c);

/* Consumes up to len bytes of chunked body. Returns the bytes consumed: all
 * of them, or fewer when the body ended inside buf (c->done is then true and
 * the rest belongs to the next message). Returns -1 on invalid framing
 * (bad hex, size overflow, missing CRLF, size line or trailer over 4 KiB). */
ssize_t gw_chunked_scan(struct gw_chunked *c, const char *buf, size_t len);

#endif
