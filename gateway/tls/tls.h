/* TLS termination with mbedtls on memory buffers. The worker's ring does
 * every socket operation; mbedtls only ever sees what was received
 * (gw_tls_feed) and writes what is to be sent into the connection's output
 * buffers. A snapshot's TLS listeners get their certificates, keys and
 * mbedtls configuration from gw_tls_load, which checks them (key matches
 * certificate, not expired) so that a bad file fails the start or the
 * reload with its reason. A connection keeps the snapshot it was accepted
 * on, so a reload with new certificates touches no open connection. */
#ifndef GW_TLS_TLS_H
#define GW_TLS_TLS_H

#include "core/buf.h"
#include "core/config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Loads and checks the certificates of every TLS listener of cfg, and the
 * CA bundles and client certificates of its TLS upstreams. Returns
 * 0, or -1 with "FILE:LINE: reason" in err. Warnings (expiry within 14
 * days) go to the log. */
int gw_tls_load(struct gw_config *cfg, char *err, size_t errlen);

/* Calls fn for every certificate of cfg's TLS listeners (metrics). */
void gw_tls_each_cert(const struct gw_config *cfg,
                      void (*fn)(void *arg, const char *listener, const char *name,
                                 int64_t not_after),
                      void *arg);

struct gw_tls_conn;

enum gw_tls_state {
    GW_TLS_HANDSHAKE = 0, /* more bytes are needed */
    GW_TLS_OPEN,          /* the handshake is done */
    GW_TLS_FAILED,        /* handshake or record error: close */
    GW_TLS_SLOW,          /* the next step multiplies points: gw_tls_slow_step it elsewhere */
};

struct gw_tls_conn *gw_tls_conn_new(struct gw_tls_ctx *ctx);
void gw_tls_conn_free(struct gw_tls_conn *t);

/* Ciphertext received from the peer. */
void gw_tls_feed(struct gw_tls_conn *t, const char *p, size_t n);
/* Room (at least want bytes, *room in all) at the end of the ciphertext
 * input, for a recv straight into it; gw_tls_in_commit says how much came.
 * Nothing else may touch t while such a recv is in flight, and it is not
 * for a connection with gw_tls_defer_slow: a slow step away on another
 * thread may be reading that input (feed with gw_tls_feed there). */
char *gw_tls_in_room(struct gw_tls_conn *t, size_t want, size_t *room);
void gw_tls_in_commit(struct gw_tls_conn *t, size_t n);

/* Advances the handshake as far as the fed bytes allow. After
 * gw_tls_defer_slow, a full server handshake stops with GW_TLS_SLOW before
 * its ServerKeyExchange (the ECDHE key and the signature: about 2 ms of CPU
 * with mbedtls 2.28) and before the ClientKeyExchange (the shared secret,
 * under 1 ms). The caller then runs gw_tls_slow_step, on another thread if
 * it likes, and calls gw_tls_handshake again. */
enum gw_tls_state gw_tls_handshake(struct gw_tls_conn *t);
void gw_tls_defer_slow(struct gw_tls_conn *t);
/* The step that GW_TLS_SLOW announced. It touches the connection's mbedtls
 * context, the input fed before GW_TLS_SLOW and the output buffer, which
 * has nothing new to send; while it runs, the owner may feed input
 * (gw_tls_feed, held until the next gw_tls_handshake) and finish a send
 * (gw_tls_sent), and must call nothing else on t. */
void gw_tls_slow_step(struct gw_tls_conn *t);
/* After a finished handshake: whether it resumed a session (no certificate
 * was sent or checked). */
bool gw_tls_resumed(const struct gw_tls_conn *t);

/* Decrypted bytes into buf: > 0 bytes, 0 when more ciphertext is needed,
 * -1 when the peer closed (close_notify), -2 when the stream is broken. */
ssize_t gw_tls_read(struct gw_tls_conn *t, char *buf, size_t cap);

/* Whether decrypted or undecrypted bytes are held, that a read would use. */
bool gw_tls_pending(const struct gw_tls_conn *t);

/* Encrypts all of p. Returns 0, or -1 when the connection is broken. */
int gw_tls_write(struct gw_tls_conn *t, const char *p, size_t n);

/* A client session, kept to resume later handshakes with the same server
 * (an abbreviated handshake: no key exchange, no certificate check). */
struct gw_tls_session;

/* A copy of the session of t's finished handshake, or NULL. */
struct gw_tls_session *gw_tls_session_get(const struct gw_tls_conn *t);
void gw_tls_session_free(struct gw_tls_session *s);
/* Offers s in t's handshake, which has not begun. */
void gw_tls_session_offer(struct gw_tls_conn *t, const struct gw_tls_session *s);

/* Queues a close_notify alert behind what is already encrypted, to go out
 * like any other ciphertext. Returns 0, or -1 when the stream is broken.
 * Once queued it is not queued again: a second call returns 0 and adds
 * nothing (a tunnel sends it when its direction ends, the close after). */
int gw_tls_close_notify(struct gw_tls_conn *t);

/* Ciphertext to send: the buffer to hand to one send, frozen until
 * gw_tls_sent reports it gone; NULL when nothing waits. */
struct gw_slice gw_tls_out_take(struct gw_tls_conn *t);
/* n bytes of the taken buffer were sent. Returns what to send next: the
 * rest of it after a short send, else whatever was encrypted meanwhile
 * (taken, as by gw_tls_out_take); an empty slice when all is out. */
struct gw_slice gw_tls_sent(struct gw_tls_conn *t, size_t n);

/* The ALPN protocol chosen, or NULL. */
const char *gw_tls_alpn(const struct gw_tls_conn *t);

/* Why the handshake or the stream failed, in one line (the certificate
 * checks that failed, or mbedtls's error text). */
void gw_tls_describe(const struct gw_tls_conn *t, char *buf, size_t len);

#endif
