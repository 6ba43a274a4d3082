/* Byte slices and a growable-but-capped byte buffer. A slice points into
 * memory someone else owns and is not NUL-terminated. */
#ifndef GW_CORE_BUF_H
#define GW_CORE_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

struct gw_slice {
    const char *ptr;
    size_t len;
};

#define GW_SLICE_LIT(s) ((struct gw_slice){(s), sizeof(s) - 1})

static inline struct gw_slice gw_slice(const char *p, size_t n)
{
    return (struct gw_slice){p, n};
}

/* Case-insensitive equality of a slice and a NUL-terminated ASCII string. */
bool gw_slice_ieq(struct gw_slice s, const char *lit);
bool gw_slice_eq(struct gw_slice s, const char *lit);

/* A byte buffer with a fixed capacity: data lives in [off, off + len) of
 * [0, cap). The owner of the struct owns `data`. */
struct gw_buf {
    char *data;
    size_t off;
    size_t len;
    size_t cap;
};

void gw_buf_init(struct gw_buf *b, size_t cap);
void gw_buf_free(struct gw_buf *b);
/* Moves the live bytes to the start so that the tail has room. */
void gw_buf_compact(struct gw_buf *b);
/* Bytes that can be appended after a compact. */
static inline size_t gw_buf_room(const struct gw_buf *b)
{
    return b->cap - b->len;
}
/* Appends n bytes; returns 0, or -1 if they do not fit (nothing copied). */
int gw_buf_append(struct gw_buf *b, const void *p, size_t n);
static inline char *gw_buf_head(const struct gw_buf *b)
{
    return b->data + b->off;
}
static inline void gw_buf_consume(struct gw_buf *b, size_t n)
{
    b->off += n;
    b->len -= n;
    if (b->len == 0)
        b->off = 0;
}

#endif
