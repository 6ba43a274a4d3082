/* Owns the provided-buffer ring's memory and its registration. */
#include "io/bufring.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int gw_bufring_init(struct gw_bufring *b, struct gw_ring *r, uint16_t bgid, unsigned count,
                    unsigned size)
{
    struct io_uring_buf_reg reg;
    size_t ring_bytes = count * sizeof(struct io_uring_buf);
    void *ring_mem;
    int ret;

    if (count == 0 || (count & (count - 1)) != 0)
        return -EINVAL;
    ring_mem = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ring_mem == MAP_FAILED)
        return -errno;
    b->mem = mmap(NULL, (size_t)count * size, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b->mem == MAP_FAILED) {
        ret = -errno;
        goto fail_ring;
    }
    b->br = ring_mem;
    b->count = count;
    b->size = size;
    b->bgid = bgid;

    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)ring_mem;
    reg.ring_entries = count;
    reg.bgid = bgid;
    ret = io_uring_register_buf_ring(&r->ring, &reg, 0);
    if (ret != 0)
        goto fail_mem;

    io_uring_buf_ring_init(b->br);
    for (unsigned i = 0; i < count; i++)
        io_uring_buf_ring_add(b->br, gw_bufring_buf(b, i), size, (unsigned short)i,
                              io_uring_buf_ring_mask(count), (int)i);
    io_uring_buf_ring_advance(b->br, (int)count);
    return 0;

fail_mem:
    munmap(b->mem, (size_t)count * size);
fail_ring:
    munmap(ring_mem, ring_bytes);
    return ret;
}

void gw_bufring_free(struct gw_bufring *b, struct gw_ring *r)
{
    if (b->br == NULL)
        return;
    io_uring_unregister_buf_ring(&r->ring, b->bgid);
    munmap(b->mem, (size_t)b->count * b->size);
    munmap(b->br, b->count * sizeof(struct io_uring_buf));
    b->br = NULL;
}

void gw_bufring_recycle(struct gw_bufring *b, unsigned bid)
{
    io_uring_buf_ring_add(b->br, gw_bufring_buf(b, bid), b->size, (unsigned short)bid,
                          io_uring_buf_ring_mask(b->count), 0);
    io_uring_buf_ring_advance(b->br, 1);
}
