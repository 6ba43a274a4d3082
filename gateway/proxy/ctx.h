/* The per-worker proxy state and the objects that live on a worker: client
 * connections, requests, upstream connections and pools, splice pumps.
 * Everything here is owned by one worker thread and touched by no other;
 * nothing takes a lock. */
#ifndef GW_PROXY_CTX_H
#define GW_PROXY_CTX_H

#include "cache/l1.h"
#include "core/buf.h"
#include "core/config.h"
#include "core/jobs.h"
#include "core/metrics.h"
#include "http/chunked.h"
#include "http/msg.h"
#include "io/bufring.h"
#include "io/redis.h"
#include "tls/tls.h"
#include "io/ring.h"
#include "io/timer.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

/* Bodies with at least this many bytes still to move go through a pipe
 * with splice; smaller ones are copied from the buffer we already hold. */
#define GW_SPLICE_MIN_BYTES (64 * 1024)
/* Request bodies (client -> upstream) at least this large go by splice. */
#ifndef GW_SPLICE_MIN_UP_BYTES
#define GW_SPLICE_MIN_UP_BYTES GW_SPLICE_MIN_BYTES
#endif
/* Response bodies (upstream -> client) with at least this much left go by
 * splice. */
#ifndef GW_SPLICE_MIN_DOWN_BYTES
#define GW_SPLICE_MIN_DOWN_BYTES GW_SPLICE_MIN_BYTES
#endif
/* Response bytes read per upstream recv in copy mode. */
#define GW_UP_BUF_BODY (32 * 1024)
/* A request body that is copied (chunked, or too small or not able to be
 * spliced) is read straight into r->uout, in reads of up to this much.
 * 128 KiB ran perf/ postchunk at 1.05x the rate of 64 KiB (5 rounds, within
 * the spread), but a fast upload in flight then held 194 KiB of memory
 * against 122 KiB (73 KiB with 16 KiB reads through c->in). */
#ifndef GW_BODY_BUF
#define GW_BODY_BUF (64 * 1024)
#endif
#define GW_CACHE_KEY_MAX 1024 /* longer keys bypass the cache */
#define GW_FILL_BUCKETS 256   /* requests fetching a key for others, by key hash */

struct gw_wctx;
struct gw_conn;

/* A stack of equal-sized buffers, so that steady-state requests do not
 * call malloc. */
struct gw_bufpool {
    size_t size;
    unsigned keep; /* free buffers kept at most; more are freed */
    char **free;
    unsigned n, cap;
};

/* A worker's hold on one config snapshot. Requests point at the cfgref they
 * started on; it is dropped when it is no longer current and has no users. */
struct gw_cfgref {
    struct gw_config *cfg;
    unsigned users;         /* requests in flight on it, +1 while current */
    struct gw_pool **pools; /* by gw_server.index */
    unsigned *rr;           /* round-robin cursor by gw_upstream.index */
};

/* Idle and active connections to one upstream server, for one worker. */
struct gw_pool {
    struct gw_sockaddr addr;
    /* NULL for plain TCP; for TLS what the connections were made with
     * (SNI, verification, client certificate): connections made for one
     * name are not handed to an upstream that asks for another */
    char *tls_id;
    uint64_t tls_log_ms; /* last handshake failure logged (one per second) */
    /* TLS session resumption (upstream.c "tls"): the last session and the
     * config generation it was made under; the connection whose full
     * handshake is to provide one, and the connections waiting for it */
    struct gw_tls_session *tls_session;
    uint64_t tls_session_gen;
    uint64_t tls_session_ms; /* when a handshake last made or resumed it */
    struct gw_upconn *tls_leader;
    struct gw_upconn *tls_waiters;
    unsigned stats_slot;
    struct gw_upconn *idle; /* LIFO: the most recently used first */
    unsigned nidle;
    unsigned active; /* connections serving a request (least_conn) */
    bool retired;    /* not in the current config: keeps no idle connections */
    struct gw_pool *next;
};

/* Moves bytes from one socket to another through a pipe with splice. The
 * in side (socket -> pipe) and the out side (pipe -> socket) run at the
 * same time, one op each, so reading the next chunk overlaps writing the
 * last. Owned by its embedder, which must not free it while refs > 0. */
struct gw_pump {
    struct gw_wctx *w;
    int from, to;
    int pipe[2];
    size_t pipe_cap;  /* bytes the pipe holds */
    uint64_t left;    /* bytes still to read; UINT64_MAX: until EOF */
    size_t in_pipe;   /* bytes spliced in and not yet out */
    uint64_t moved;   /* bytes delivered to `to` */
    unsigned refs;    /* ops in flight */
    bool in_busy, out_busy;           /* a splice of that side is in flight */
    bool in_wait, out_wait;           /* a poll of that side is in flight */
    bool in_again, out_again;         /* last splice said EAGAIN: poll next */
    bool stop, eof, finished;
    bool quick_acks;                  /* `from` was switched to quick ACKs */
    int err;
    struct gw_op in_poll_op, out_poll_op, in_op, out_op;
    void (*done)(struct gw_pump *p, int err); /* called once, after the last op */
};

/* One connection to an upstream server. Owned by its pool while idle, by
 * the request using it otherwise (req->up). */
struct gw_upconn {
    struct gw_wctx *w;
    struct gw_pool *pool;
    int fd;
    unsigned refs;
    unsigned flags;
    struct gw_op connect_op, send_op, recv_op;
    struct __kernel_timespec connect_ts;
    struct gw_buf in; /* response bytes */
    struct msghdr msg;
    struct iovec iov[1];
    struct gw_req *req; /* NULL while idle or closing */
    bool reused;        /* taken from the pool, not freshly connected */
    /* holds one of the server's max_pending places while connecting */
    struct gw_server_shared *pending_on;
    struct gw_upconn *next;
    struct gw_timer idle_timer; /* idle in the pool; bounds the TLS handshake too */
    /* TLS to the server (upstream.c "tls"), NULL for plain TCP; the
     * snapshot whose mbedtls configuration it uses is held while it lives */
    struct gw_tls_conn *tls;
    struct gw_config *tls_cfg;
    size_t tls_plain;  /* plaintext of the send being encrypted, reported once all is out */
    int tls_end;       /* the stream ended: -1 close_notify, -2 broken */
    bool tls_open;     /* handshake done */
    bool tls_sending;  /* a send of ciphertext is in flight */
    bool tls_nop;      /* the recv op in flight is a NOP (decrypted bytes were held) */
    bool tls_send_err; /* the send op in flight is a NOP reporting a failed encryption */
    size_t recv_room;  /* what the recv in flight may fill */
    bool recv_short;   /* the last recv returned less than that: the socket ran dry */
};

enum gw_req_phase {
    GW_REQ_SEND = 0,   /* head (and body bytes) going to the upstream */
    GW_REQ_BODY_SPLICE,
    GW_REQ_DONE,
};

enum gw_resp_phase {
    GW_RESP_WAIT = 0, /* no response byte yet */
    GW_RESP_BODY,     /* head sent or being sent, body in copy mode */
    GW_RESP_SPLICE,
    GW_RESP_TUNNEL,
    GW_RESP_DONE,
};

/* A Redis lookup's way back to its request, which may end first (then r
 * is NULL when the reply comes). */
struct gw_l2_wait {
    struct gw_req *r;
    struct gw_l2_wait *next; /* free list */
};

/* One request in flight on a client connection. */
struct gw_req {
    struct gw_conn *c;
    struct gw_cfgref *cfgref;
    const struct gw_route *route;
    const struct gw_server *server;
    struct gw_upconn *up;
    unsigned attempts; /* stale-connection re-sends (at most one) */
    unsigned route_slot;

    /* policy (see session.c "attempts and retries") */
    const struct gw_server *avoid; /* server of the failed attempt */
    bool holds_active;             /* one of r->server's max_requests places */
    bool attempt_open;             /* the breaker awaits this attempt's outcome */
    bool probe;                    /* the attempt is a half-open probe */
    bool retrying;                 /* counted in w->retries_active */
    bool counted_active;           /* counted in w->reqs_active */
    bool quick_acks;               /* r->up was switched to quick ACKs for this body */
    unsigned retries_done;
    int retry_fail_status;         /* what the failed attempt would have answered */
    uint64_t attempt_start_us;     /* for gateway_upstream_request_duration_seconds */
    uint64_t deadline_at_ms;       /* end of the whole budget */
    size_t dl_off;                 /* deadline value in uout, when dl_on */
    bool dl_on;
    bool rl_headers;               /* RateLimit-* on the response */
    uint32_t rl_limit, rl_remaining;
    uint64_t rl_reset_ms;
    struct gw_timer retry_timer;   /* backoff before the next attempt */
    struct gw_timer try_timer;     /* try_timeout_ms of the attempt */

    /* copied out of the head for the log and for decisions after the head
     * bytes are gone */
    enum gw_method method;
    unsigned req_flags;
    int client_minor;
    char method_str[16];
    char path[256];
    unsigned method_len, path_len;
    char rid[129];
    unsigned rid_len;

    uint64_t start_us;
    int status;
    uint64_t bytes_out;

    /* request side */
    enum gw_req_phase req_phase;
    struct gw_buf uout;    /* bytes for the upstream: head, then body pieces */
    bool uout_sending;
    bool uout_keep;        /* whole request in uout: keep it for a retry */
    size_t uout_sent;      /* bytes of uout sent when uout_keep */
    uint64_t body_left;    /* Content-Length bytes not yet taken from c->in */
    uint64_t body_seen;    /* chunked body bytes taken so far (max_body_bytes) */
    size_t body_recv_at;   /* where in uout.data the body recv in flight writes */
    bool body_chunked;
    bool up_ready;         /* r->up is connected */
    bool up_recv_started;  /* the response recv has been issued */
    bool pump_down_on, pump_up_on;
    bool aborting;
    bool logged;
    struct gw_chunked chunk;

    /* response side */
    enum gw_resp_phase resp_phase;
    bool resp_head_sent;
    bool resp_until_close;
    bool resp_chunked;
    bool client_close; /* announce and do close the client after this */
    bool up_reusable;
    uint64_t resp_left;
    struct gw_chunked rchunk;
    size_t resp_pending; /* bytes of up->in being sent to the client */
    size_t resp_send_len; /* of those, what goes out (fewer when de-chunking) */
    bool resp_dechunk;    /* chunked response, HTTP/1.0 client: send it decoded */

    struct gw_timer deadline;
    struct gw_op defer_op;
    int defer_err;
    struct gw_pump pump_up;   /* upstream -> client */
    struct gw_pump pump_down; /* client -> upstream */
    unsigned tunnel_open;     /* tunnel directions still running */
    struct gw_timer tunnel_timer; /* idle check of a tunnel */
    uint64_t tunnel_seen;         /* bytes it had moved at the last check */
    /* a tunnel with TLS on a side is copied, not spliced (session.c
     * "upgrade tunnels") */
    bool tunnel_copy;
    bool tunnel_down_done, tunnel_up_done; /* client -> upstream, upstream -> client */
    uint64_t tunnel_copied;                /* bytes copied either way */
    struct gw_req *next_free;

    /* response cache (session.c, "cache") */
    uint8_t cache_use;        /* enum gw_cache_use + 1; 0: the route has no cache */
    uint8_t cache_result;     /* enum gw_cache_result, counted when the request ends */
    bool cache_auth;          /* the request carried Authorization */
    bool cache_fill;          /* in w->fills: fetching the key, others may wait for it */
    bool cache_park;          /* decided in req_start: wait for the fill of the key */
    bool cache_parked;        /* waiting behind wait_on */
    bool cache_capture;       /* the response body is copied into cap_ent */
    uint64_t ckey_hash;
    size_t ckey_len;
    struct gw_l1_ent *cent;    /* the entry being served, or a stale one kept for errors */
    struct gw_slice cent_body; /* what of it is sent (none for HEAD and 304) */
    struct gw_l1_ent *cap_ent; /* the entry being filled */
    uint64_t cap_len;          /* body bytes captured so far */
    bool cap_chunked;          /* decoded from a chunked body into cap_data, stored at the end */
    char *cap_data;
    size_t cap_alloc;
    struct gw_req *fill_next;  /* chain of w->fills */
    struct gw_req *waiters;    /* parked behind this fill */
    struct gw_req *wait_next;
    struct gw_req *wait_on;    /* the fill this one waits for */
    struct gw_l2_wait *l2_wait; /* a Redis lookup in flight for this request */
    bool l2_done;               /* Redis was asked (or could not be) */
    bool gl_done;               /* the global rate limit was asked (or could not be) */
    size_t gl_head_len;         /* the head left in c->in while Redis decides */
    char ckey[GW_CACHE_KEY_MAX];
};

enum {
    GW_C_RECV_ARMED = 1 << 0,
    GW_C_RECV_CANCEL = 1 << 1, /* cancel of the armed recv requested */
    GW_C_SEND_BUSY = 1 << 2,
    GW_C_CLOSING = 1 << 3,
    GW_C_PEER_EOF = 1 << 4,
    GW_C_HOLD_RECV = 1 << 5, /* keep the recv stopped (splice, tunnel) */
    GW_C_IN_HEAD = 1 << 6,   /* bytes of a request head have arrived */
    GW_C_FREED = 1 << 7,     /* back on the free list: nothing may free it again */
    GW_C_TLS_BYE = 1 << 8,   /* closing: the close_notify still goes out first */
    GW_C_RECV_BODY = 1 << 9, /* the armed recv reads body bytes straight into r->uout */
};

struct gw_conn {
    struct gw_wctx *w;
    int fd;
    unsigned refs; /* ops in flight (pumps count through their own refs) */
    unsigned flags;
    struct gw_op recv_op, send_op;
    struct gw_timer timer; /* header / idle timeout */
    struct gw_buf in;      /* bytes from the client not yet used */
    struct gw_buf out;     /* heads and responses we write to the client */
    struct msghdr msg;
    struct iovec iov[2];
    void (*on_sent)(struct gw_conn *c);  /* after a whole send completed */
    void (*deferred)(struct gw_conn *c); /* a send waiting for the current one */
    struct gw_req *req;
    char peer[48];
    unsigned peer_len;
    int peer_family;       /* AF_INET, AF_INET6 or 0 */
    uint8_t peer_addr[16]; /* for trusted_proxies */
    unsigned listen_slot; /* gw_listen.slot of the listener that accepted it */
    /* TLS (session.c "tls"): the record layer, and the snapshot whose
     * certificates it was accepted with, kept while the connection lives */
    struct gw_tls_conn *tls;
    struct gw_config *tls_cfg;
    bool tls_open;  /* handshake done */
    bool tls_nop;   /* a NOP is in flight to drain what mbedtls holds */
    bool tls_job;   /* the handshake's slow step is on a helper thread (core/jobs.h) */
    struct gw_job tls_slow;
    uint64_t tls_start_us;
    struct gw_op tls_op;
    unsigned requests;
    struct gw_conn *prev, *next; /* the worker's list of open connections */
};

struct gw_wctx {
    unsigned id;
    struct gw_ring ring;
    struct gw_job_home jobs; /* helper-thread work of this worker's connections */
    struct gw_bufring br;
    struct gw_timers timers;
    struct gw_worker_stats *stats;
    struct gw_cfgref *cur;

    struct gw_conn *conns; /* open client connections */
    struct gw_conn *free_conns;
    struct gw_req *free_reqs;
    struct gw_upconn *free_upconns;
    struct gw_bufpool in_pool;  /* client input, upstream output */
    struct gw_bufpool out_pool; /* client output heads, upstream input */
    struct gw_bufpool body_pool; /* r->uout while a request body streams through it */
    int *free_pipes;            /* triples: read end, write end, capacity */
    unsigned nfree_pipes;
    struct gw_pool *pools;
    struct gw_l1 l1;                         /* response cache in front of the upstreams */
    struct gw_req *fills[GW_FILL_BUCKETS];   /* requests filling a cache key */
    struct gw_redis redis;                   /* the shared cache level, when configured */
    bool redis_on;
    char rl_sha[41];                         /* the rate-limit script, as Redis knows it */
    bool rl_sha_ok, rl_sha_loading;
    struct gw_l2_wait *free_l2_waits;
    unsigned nconns, max_conns;
    unsigned reqs_active;    /* requests past routing, for the retry budget */
    unsigned retries_active; /* of those, requests on a retry */
    bool draining;

    uint64_t rid_seed, rid_seq;

    /* parse results, used only within one call chain */
    struct gw_request preq;
    struct gw_response presp;

    /* access log: lines gather in log_buf[log_cur] and go to stdout with one
     * ring write per loop turn; while one write is in flight the other
     * buffer fills */
    char *log_buf[2];
    size_t log_len[2];
    unsigned log_cur;
    bool log_busy;
    struct gw_op log_op;
};

/* ctx.c */
void gw_bufpool_init(struct gw_bufpool *bp, size_t size);
void gw_bufpool_free(struct gw_bufpool *bp);
/* A buffer of bp->size (from the pool or malloc) into b. */
void gw_bufpool_get(struct gw_bufpool *bp, struct gw_buf *b);
/* Returns b's storage to the pool (or frees it if of another size). */
void gw_bufpool_put(struct gw_bufpool *bp, struct gw_buf *b);

/* Switches a TCP socket to quick ACKs for the body now arriving; see ctx.c. */
void gw_sock_ack_quickly(int fd);
/* A pipe from the worker's pool (non-blocking, sized up where the kernel
 * allows); its capacity in *cap. */
int gw_pipe_get(struct gw_wctx *w, int fds[2], size_t *cap);
/* clean: the pipe is known empty and may be reused. */
void gw_pipe_put(struct gw_wctx *w, int fds[2], size_t cap, bool clean);

struct gw_cfgref *gw_cfgref_new(struct gw_wctx *w, struct gw_config *cfg);
void gw_cfgref_release(struct gw_wctx *w, struct gw_cfgref *ref);

void gw_log_access(struct gw_wctx *w, const struct gw_req *r);
void gw_log_flush(struct gw_wctx *w);

/* session.c */
void gw_conn_accepted(struct gw_wctx *w, int fd, unsigned listen_slot);
/* Draining: close idle connections, make busy ones close after their
 * response. */
void gw_conns_drain(struct gw_wctx *w);

/* upstream.c */
enum gw_acquire {
    GW_ACQ_READY = 0, /* a pooled connection is ready now: r->up set, no callback follows */
    GW_ACQ_PENDING,   /* gw_req_up_ready(r, 0 or -err) comes later, never before returning */
    GW_ACQ_REJECTED,  /* no server may take it: *why and *retry_after_ms say why */
};

/* Picks a server for the request's route, skipping servers whose circuit
 * is open or whose max_requests are in use and trying r->avoid last, and
 * gets a connection to it. On READY or PENDING the request holds one of the
 * server's max_requests places (r->holds_active) and, when its breaker is
 * on, an attempt whose outcome it must report (r->attempt_open, r->probe).
 * fresh: the same server again on a new connection (a stale pooled one
 * failed), without a new breaker decision. */
enum gw_acquire gw_upstream_acquire(struct gw_req *r, bool fresh, enum gw_reject *why,
                                    uint64_t *retry_after_ms);
/* Gives back r's max_requests place, if it holds one. */
void gw_upstream_put_active(struct gw_req *r);
/* The request is done with its connection: pool it if reusable, else close. */
void gw_upstream_release(struct gw_req *r, bool reusable);
void gw_upconn_send(struct gw_upconn *u, const char *p, size_t n);
void gw_upconn_recv(struct gw_upconn *u);
/* Tells the server that nothing more comes, for a tunnel whose client
 * ended its side: a FIN for plain TCP, close_notify over TLS (the FIN then
 * comes with the close). */
void gw_upconn_end_output(struct gw_upconn *u);
/* The identity of a pool's connections for upstream up (NULL: plain). */
char *gw_pool_tls_id(const struct gw_upstream *up);
void gw_pools_close_idle(struct gw_wctx *w);
/* Closes the idle connections of one pool. */
void gw_pool_close_idle(struct gw_pool *p);

/* Callbacks from upstream.c into session.c. */
void gw_req_up_ready(struct gw_req *r, int err);
void gw_req_up_sent(struct gw_req *r, int res);
void gw_req_up_data(struct gw_req *r, int res);
/* Reports err to gw_req_up_ready on the next loop turn. */
void gw_req_defer_error(struct gw_req *r, int err);

/* pump.c */
/* Starts moving `left` bytes (UINT64_MAX: until EOF) from -> to. The pump
 * calls p->done exactly once, after its last op, never before returning. */
int gw_pump_start(struct gw_pump *p, struct gw_wctx *w, int from, int to, uint64_t left,
                  void (*done)(struct gw_pump *p, int err));
/* Asks a running pump to stop; done still comes. */
void gw_pump_stop(struct gw_pump *p);

/* respond.c */
/* Writes a response the gateway makes into c->out. */
void gw_respond_build(struct gw_conn *c, int status, bool close, const char *extra,
                      const char *body);

#endif
