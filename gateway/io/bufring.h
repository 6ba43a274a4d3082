/* A ring of provided buffers registered with io_uring for buffer-select
 * recvs (proxy/session.c arms one-shot recvs that pick from it).
 * liburing 2.3 has no io_uring_setup_buf_ring, so the ring memory is
 * allocated and registered here by hand. A buffer handed out by a CQE
 * belongs to the caller until gw_bufring_recycle gives it back. */
#ifndef GW_IO_BUFRING_H
#define GW_IO_BUFRING_H

#include "io/ring.h"

#include <stddef.h>
#include <stdint.h>

struct gw_bufring {
    struct io_uring_buf_ring *br;
    char *mem;
    unsigned count; /* power of two */
    unsigned size;  /* bytes per buffer */
    uint16_t bgid;
};

/* Returns 0 or -errno. */
int gw_bufring_init(struct gw_bufring *b, struct gw_ring *r, uint16_t bgid, unsigned count,
                    unsigned size);
void gw_bufring_free(struct gw_bufring *b, struct gw_ring *r);

static inline char *gw_bufring_buf(struct gw_bufring *b, unsigned bid)
{
    return b->mem + (size_t)bid * b->size;
}

/* The buffer id a CQE carries (valid when IORING_CQE_F_BUFFER is set). */
static inline unsigned gw_bufring_bid(unsigned cqe_flags)
{
    return cqe_flags >> IORING_CQE_BUFFER_SHIFT;
}

/* Gives buffer bid back to the kernel. */
void gw_bufring_recycle(struct gw_bufring *b, unsigned bid);

#endif
