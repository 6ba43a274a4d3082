/* Owns gw_buf's storage rules: fixed capacity, compaction on demand. */
#include "core/buf.h"

#include "core/mem.h"

#include <stdlib.h>
#include <strings.h>

bool gw_slice_ieq(struct gw_slice s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len == n && strncasecmp(s.ptr, lit, n) == 0;
}

bool gw_slice_eq(struct gw_slice s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len == n && memcmp(s.ptr, lit, n) == 0;
}

void gw_buf_init(struct gw_buf *b, size_t cap)
{
    b->data = gw_xmalloc(cap);
    b->off = 0;
    b->len = 0;
    b->cap = cap;
}

void gw_buf_free(struct gw_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->off = b->len = b->cap = 0;
}

void gw_buf_compact(struct gw_buf *b)
{
    if (b->off == 0)
        return;
    if (b->len)
        memmove(b->data, b->data + b->off, b->len);
    b->off = 0;
}

int gw_buf_append(struct gw_buf *b, const void *p, size_t n)
{
    if (n > b->cap - b->len)
        return -1;
    if (b->off + b->len + n > b->cap)
        gw_buf_compact(b);
    memcpy(b->data + b->off + b->len, p, n);
    b->len += n;
    return 0;
}
