/* Owns TLS: certificates and mbedtls configurations per snapshot, and the
 * per-connection record layer over memory buffers. See tls.h. */
#include "tls/tls.h"

#include "core/clock.h"
#include "core/log.h"
#include "core/mem.h"

#include <mbedtls/ecdsa.h>
#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ciphersuites.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509_crt.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define EXPIRY_WARN_S (14 * 86400)
#define TICKET_LIFETIME_S 86400 /* also how often the ticket keys rotate */

struct tls_cert {
    mbedtls_x509_crt crt; /* with its chain, as the file holds it */
    mbedtls_pk_context pk;
    char **names; /* DNS names (SAN, else CN), lower-case */
    size_t nnames;
    int64_t not_after;
};

struct gw_tls_ctx {
    mbedtls_ssl_config conf;
    mbedtls_ssl_ticket_context ticket;
    mbedtls_x509_crt ca; /* client side: what the server's chain must end in */
    char *sni;           /* client side: the name sent and verified, or NULL */
    struct tls_cert *certs;
    size_t ncerts;
    int *suites;       /* 0-terminated */
    const char **alpn; /* NULL-terminated */
    char listener[64];
};

/* Growable byte buffer for ciphertext. */
struct bytes {
    char *p;
    size_t off, len, cap;
};

struct gw_tls_conn {
    mbedtls_ssl_context ssl;
    struct bytes in;     /* received, not yet read by mbedtls */
    struct bytes out[2]; /* mbedtls writes into out[fill]; out[!fill] may be in a send */
    int fill;
    bool taken;    /* out[!fill] is handed to a send */
    bool fresh_in; /* bytes came since a read last wanted more */
    int last_rc;   /* the last mbedtls error, for gw_tls_describe */
    bool bye;      /* our close_notify is queued: nothing more goes out */
    bool full;     /* the handshake went through the server's certificate */
    bool defer;    /* stop with GW_TLS_SLOW before the slow steps */
    bool slow_out; /* between GW_TLS_SLOW and the next gw_tls_handshake */
    bool slow_ran; /* gw_tls_slow_step ran; slow_rc is its result */
    int slow_rc;
    /* While a slow step may run elsewhere it may read `in` (bio_recv), so
     * what is fed meanwhile waits here and is appended after it. */
    struct bytes held;
};

/* ---- randomness: the OS's, thread-safe ---- */

static int os_random(void *p, unsigned char *out, size_t n)
{
    (void)p;
    while (n > 0) {
        ssize_t k = getrandom(out, n, 0);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
        }
        out += k;
        n -= (size_t)k;
    }
    return 0;
}

/* ---- loading ---- */

/* Where the tls group of the error is. */
struct where {
    const char *file;
    int line;
};

__attribute__((format(printf, 5, 6))) static int fail(char *err, size_t errlen,
                                                      const struct where *tc, int rc,
                                                      const char *fmt, ...)
{
    char reason[256], why[160] = "";
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    if (rc != 0) {
        mbedtls_strerror(rc, why, sizeof(why));
        snprintf(err, errlen, "%s:%d: %s: %s", tc->file, tc->line, reason, why);
    } else {
        snprintf(err, errlen, "%s:%d: %s", tc->file, tc->line, reason);
    }
    return -1;
}

static int64_t x509_epoch(const mbedtls_x509_time *t)
{
    return gw_days_from_civil(t->year, (unsigned)t->mon, (unsigned)t->day) * 86400 +
           t->hour * 3600 + t->min * 60 + t->sec;
}

static void add_name(struct tls_cert *c, const unsigned char *p, size_t n)
{
    char *s = gw_xmalloc(n + 1);
    for (size_t i = 0; i < n; i++)
        s[i] = (char)(p[i] >= 'A' && p[i] <= 'Z' ? p[i] + 32 : p[i]);
    s[n] = '\0';
    c->names = gw_xrealloc(c->names, (c->nnames + 1) * sizeof(*c->names));
    c->names[c->nnames++] = s;
}

static void cert_names(struct tls_cert *c)
{
    for (const mbedtls_x509_sequence *s = &c->crt.subject_alt_names; s != NULL && s->buf.p;
         s = s->next)
        if (s->buf.tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_X509_SAN_DNS_NAME))
            add_name(c, s->buf.p, s->buf.len);
    if (c->nnames > 0)
        return;
    for (const mbedtls_x509_name *n = &c->crt.subject; n != NULL; n = n->next)
        if (n->oid.p != NULL && MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) == 0)
            add_name(c, n->val.p, n->val.len);
}

/* Does the SNI name match a certificate name (exact, or "*.example.com"
 * for exactly one more label)? */
static bool name_matches(const char *pattern, const unsigned char *name, size_t n)
{
    size_t pl = strlen(pattern);

    if (pattern[0] == '*' && pattern[1] == '.') {
        const unsigned char *dot = memchr(name, '.', n);
        if (dot == NULL || dot == name)
            return false;
        n -= (size_t)(dot - name); /* compare ".example.com" with ".example.com" */
        name = dot;
        pattern++;
        pl--;
    }
    if (pl != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = name[i] >= 'A' && name[i] <= 'Z' ? name[i] + 32 : name[i];
        if (ch != (unsigned char)pattern[i])
            return false;
    }
    return true;
}

static int on_sni(void *arg, mbedtls_ssl_context *ssl, const unsigned char *name, size_t n)
{
    struct gw_tls_ctx *ctx = arg;

    /* exact names first, then wildcards; no match keeps the first cert */
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < ctx->ncerts; i++)
            for (size_t k = 0; k < ctx->certs[i].nnames; k++) {
                const char *cn = ctx->certs[i].names[k];
                if ((cn[0] == '*') == (pass == 1) && name_matches(cn, name, n))
                    return mbedtls_ssl_set_hs_own_cert(ssl, &ctx->certs[i].crt,
                                                       &ctx->certs[i].pk);
            }
    return 0;
}

/* AEAD suites with forward secrecy, fastest first: as a server mbedtls
 * takes the first of ours that the client offers, and as a client we offer
 * them in this order. mbedtls 2.28's GCM hashes 16 bytes per call and
 * moves 115-135 MB/s on one core of our benchmark guest, its
 * ChaCha20-Poly1305 180-285 MB/s (records of 128 B to 16 KiB), so ChaCha
 * comes first; OpenSSL's GCM does 3 GB/s there. */
static const char *const default_suites[] = {
    "TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256", "TLS-ECDHE-RSA-WITH-CHACHA20-POLY1305-SHA256",
    "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256",       "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256",
    "TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384",       "TLS-ECDHE-RSA-WITH-AES-256-GCM-SHA384",
    NULL};
static const char *const default_alpn[] = {"http/1.1", NULL};

static void ctx_free(struct gw_tls_ctx *ctx)
{
    if (ctx == NULL)
        return;
    mbedtls_ssl_config_free(&ctx->conf);
    mbedtls_ssl_ticket_free(&ctx->ticket);
    mbedtls_x509_crt_free(&ctx->ca);
    free(ctx->sni);
    for (size_t i = 0; i < ctx->ncerts; i++) {
        mbedtls_x509_crt_free(&ctx->certs[i].crt);
        mbedtls_pk_free(&ctx->certs[i].pk);
        for (size_t k = 0; k < ctx->certs[i].nnames; k++)
            free(ctx->certs[i].names[k]);
        free(ctx->certs[i].names);
    }
    free(ctx->certs);
    free(ctx->suites);
    free(ctx->alpn);
    free(ctx);
}

static void on_config_free(struct gw_config *cfg)
{
    for (size_t i = 0; i < cfg->nlistens; i++) {
        ctx_free(cfg->listens[i].tls_ctx);
        cfg->listens[i].tls_ctx = NULL;
    }
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        ctx_free(cfg->upstreams[i].tls_ctx);
        cfg->upstreams[i].tls_ctx = NULL;
    }
}

static struct gw_tls_ctx *ctx_new(void)
{
    struct gw_tls_ctx *ctx = gw_xcalloc(1, sizeof(*ctx));

    mbedtls_ssl_config_init(&ctx->conf);
    mbedtls_ssl_ticket_init(&ctx->ticket);
    mbedtls_x509_crt_init(&ctx->ca);
    return ctx;
}

/* An EC key as mbedtls_pk_parse_keyfile gives it (type ECKEY) is copied
 * into a fresh ECDSA context for every signature, and the copy's table of
 * multiples of the generator is computed again each time: more than half
 * of what a signature costs (mbedtls 2.28, callgrind: 8.9 against 4.2
 * million instructions with a kept context). Keyed as ECDSA, the same key
 * signs in place and keeps the table in its group. The one signature made
 * here fills that table while a single thread owns the key; from then on
 * signing only reads it, so the workers and helpers may sign with the key
 * at once. Any failure keeps the key as it was: only slower. */
static void keep_sign_table(mbedtls_pk_context *key)
{
    mbedtls_pk_context pk;
    unsigned char hash[32] = {0};
    unsigned char sig[MBEDTLS_ECDSA_MAX_LEN];
    size_t n;

    if (mbedtls_pk_get_type(key) != MBEDTLS_PK_ECKEY)
        return;
    mbedtls_pk_init(&pk);
    if (mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECDSA)) != 0 ||
        mbedtls_ecdsa_from_keypair(mbedtls_pk_ec(pk), mbedtls_pk_ec(*key)) != 0 ||
        mbedtls_pk_sign(&pk, MBEDTLS_MD_SHA256, hash, sizeof(hash), sig, &n, os_random, NULL) !=
            0) {
        mbedtls_pk_free(&pk);
        return;
    }
    mbedtls_pk_free(key);
    *key = pk; /* the context only points at its key */
}

/* Loads the next certificate of ctx (ctx->certs is allocated for all of
 * them: mbedtls structures are not moved once filled) with its key, and
 * checks that they belong together and that it has not expired. */
static int load_pair(struct gw_tls_ctx *ctx, const char *cert, const char *key,
                     const struct where *at, char *err, size_t errlen)
{
    struct tls_cert *c;
    int64_t now = gw_clock_wall_ms() / 1000;
    int rc;

    c = &ctx->certs[ctx->ncerts++];
    mbedtls_x509_crt_init(&c->crt);
    mbedtls_pk_init(&c->pk);
    if ((rc = mbedtls_x509_crt_parse_file(&c->crt, cert)) != 0)
        return fail(err, errlen, at, rc, "cannot load certificate %s", cert);
    if ((rc = mbedtls_pk_parse_keyfile(&c->pk, key, NULL)) != 0)
        return fail(err, errlen, at, rc, "cannot load key %s", key);
    if ((rc = mbedtls_pk_check_pair(&c->crt.pk, &c->pk)) != 0)
        return fail(err, errlen, at, rc, "key %s does not match certificate %s", key, cert);
    keep_sign_table(&c->pk);
    c->not_after = x509_epoch(&c->crt.valid_to);
    if (c->not_after <= now)
        return fail(err, errlen, at, 0, "certificate %s expired on %04d-%02d-%02d", cert,
                    c->crt.valid_to.year, c->crt.valid_to.mon, c->crt.valid_to.day);
    if (c->not_after - now < EXPIRY_WARN_S)
        gw_log_error("%s:%d: warning: certificate %s expires in %lld days", at->file, at->line,
                     cert, (long long)((c->not_after - now) / 86400));
    cert_names(c);
    return 0;
}

/* The configured suite names, or the defaults, as mbedtls ids. */
static int load_suites(struct gw_tls_ctx *ctx, char *const *configured, const struct where *at,
                       char *err, size_t errlen)
{
    const char *const *names = configured ? (const char *const *)configured : default_suites;
    size_t n;

    for (n = 0; names[n] != NULL; n++)
        ;
    ctx->suites = gw_xcalloc(n + 1, sizeof(int));
    for (size_t i = 0; i < n; i++) {
        ctx->suites[i] = mbedtls_ssl_get_ciphersuite_id(names[i]);
        if (ctx->suites[i] == 0)
            return fail(err, errlen, at, 0, "unknown cipher suite \"%s\" (names as mbedtls "
                                            "spells them, e.g. TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256)",
                        names[i]);
    }
    return 0;
}

/* ECDHE groups, fastest first. mbedtls 2.28's default list is ordered by
 * size, so a server picked secp521r1 for every OpenSSL client (which offers
 * it) and a client offered it first: a handshake cost several times what
 * X25519 costs on both ends (openssl s_client said "Server Temp Key: ECDH,
 * secp521r1"). */
static const mbedtls_ecp_group_id tls_curves[] = {
    MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1, MBEDTLS_ECP_DP_SECP384R1,
    MBEDTLS_ECP_DP_NONE};

/* The settings both sides share: OS randomness, TLS 1.2 and newer, the
 * suites and groups, no renegotiation. */
static int conf_common(struct gw_tls_ctx *ctx, int endpoint, const struct where *at, char *err,
                       size_t errlen)
{
    int rc = mbedtls_ssl_config_defaults(&ctx->conf, endpoint, MBEDTLS_SSL_TRANSPORT_STREAM,
                                         MBEDTLS_SSL_PRESET_DEFAULT);
    if (rc != 0)
        return fail(err, errlen, at, rc, "TLS setup");
    mbedtls_ssl_conf_rng(&ctx->conf, os_random, NULL);
    mbedtls_ssl_conf_min_version(&ctx->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_ciphersuites(&ctx->conf, ctx->suites);
    mbedtls_ssl_conf_renegotiation(&ctx->conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
    mbedtls_ssl_conf_curves(&ctx->conf, tls_curves);
    return 0;
}

static int load_one(struct gw_listen *l, char *err, size_t errlen)
{
    const struct gw_tls_conf *tc = &l->tls;
    const struct where at = {tc->file, tc->line};
    struct gw_tls_ctx *ctx = ctx_new();
    const char *const *names;
    size_t n;
    int rc;

    l->tls_ctx = ctx; /* freed with the snapshot, whatever happens below */
    snprintf(ctx->listener, sizeof(ctx->listener), "%s", l->addr.text);
    ctx->certs = gw_xcalloc(tc->ncerts, sizeof(*ctx->certs));
    for (size_t i = 0; i < tc->ncerts; i++)
        if (load_pair(ctx, tc->certs[i], tc->keys[i], &at, err, errlen) != 0)
            return -1;
    if (load_suites(ctx, tc->ciphers, &at, err, errlen) != 0)
        return -1;
    names = tc->alpn ? (const char *const *)tc->alpn : default_alpn;
    for (n = 0; names[n] != NULL; n++)
        ;
    ctx->alpn = gw_xcalloc(n + 1, sizeof(char *));
    memcpy(ctx->alpn, names, n * sizeof(char *));

    if (conf_common(ctx, MBEDTLS_SSL_IS_SERVER, &at, err, errlen) != 0)
        return -1;
    if ((rc = mbedtls_ssl_conf_own_cert(&ctx->conf, &ctx->certs[0].crt, &ctx->certs[0].pk)) != 0)
        return fail(err, errlen, &at, rc, "certificate %s", tc->certs[0]);
    mbedtls_ssl_conf_sni(&ctx->conf, on_sni, ctx);
    if ((rc = mbedtls_ssl_conf_alpn_protocols(&ctx->conf, ctx->alpn)) != 0)
        return fail(err, errlen, &at, rc, "alpn");
    if ((rc = mbedtls_ssl_ticket_setup(&ctx->ticket, os_random, NULL, MBEDTLS_CIPHER_AES_256_GCM,
                                       TICKET_LIFETIME_S)) != 0)
        return fail(err, errlen, &at, rc, "session tickets");
    mbedtls_ssl_conf_session_tickets_cb(&ctx->conf, mbedtls_ssl_ticket_write,
                                        mbedtls_ssl_ticket_parse, &ctx->ticket);
    return 0;
}

/* The client side, for an upstream with a tls group. */
static int load_upstream(struct gw_upstream *u, char *err, size_t errlen)
{
    const struct gw_upstream_tls_conf *tc = &u->tls;
    const struct where at = {tc->file, tc->line};
    const char *ca = tc->ca != NULL ? tc->ca : GW_DEFAULT_CA;
    struct gw_tls_ctx *ctx = ctx_new();
    int rc;

    u->tls_ctx = ctx;
    snprintf(ctx->listener, sizeof(ctx->listener), "upstream:%s", u->name);
    if (tc->sni != NULL)
        ctx->sni = gw_xstrdup(tc->sni);
    ctx->certs = gw_xcalloc(1, sizeof(*ctx->certs));
    if (tc->cert != NULL && load_pair(ctx, tc->cert, tc->key, &at, err, errlen) != 0)
        return -1;
    if (load_suites(ctx, tc->ciphers, &at, err, errlen) != 0)
        return -1;
    if (conf_common(ctx, MBEDTLS_SSL_IS_CLIENT, &at, err, errlen) != 0)
        return -1;
    if (tc->verify || tc->ca != NULL) {
        /* parse_file counts certificates it could not read; a bundle with
         * none readable is an error, a few odd ones in a system bundle are
         * not */
        rc = mbedtls_x509_crt_parse_file(&ctx->ca, ca);
        if (rc < 0 || ctx->ca.version == 0)
            return fail(err, errlen, &at, rc < 0 ? rc : 0, "cannot load CA certificates %s%s",
                        ca, tc->ca == NULL ? " (the default; set tls.ca, or verify = false)" : "");
        mbedtls_ssl_conf_ca_chain(&ctx->conf, &ctx->ca, NULL);
    }
    mbedtls_ssl_conf_authmode(&ctx->conf,
                              tc->verify ? MBEDTLS_SSL_VERIFY_REQUIRED : MBEDTLS_SSL_VERIFY_NONE);
    if (ctx->ncerts > 0 &&
        (rc = mbedtls_ssl_conf_own_cert(&ctx->conf, &ctx->certs[0].crt, &ctx->certs[0].pk)) != 0)
        return fail(err, errlen, &at, rc, "certificate %s", tc->cert);
    if (tc->verify && tc->sni == NULL)
        gw_log_error("%s:%d: warning: upstream %s: tls.verify checks the certificate chain but "
                     "not the name without tls.sni",
                     tc->file, tc->line, u->name);
    return 0;
}

int gw_tls_load(struct gw_config *cfg, char *err, size_t errlen)
{
    /* set by the first load, before any worker runs: a reload only reads
     * it, where writing it again raced with the workers' reads */
    if (gw_config_on_free_tls == NULL)
        gw_config_on_free_tls = on_config_free;
    for (size_t i = 0; i < cfg->nlistens; i++)
        if (cfg->listens[i].tls.enabled && load_one(&cfg->listens[i], err, errlen) != 0)
            return -1;
    for (size_t i = 0; i < cfg->nupstreams; i++)
        if (cfg->upstreams[i].tls.enabled && load_upstream(&cfg->upstreams[i], err, errlen) != 0)
            return -1;
    return 0;
}

void gw_tls_each_cert(const struct gw_config *cfg,
                      void (*fn)(void *arg, const char *listener, const char *name,
                                 int64_t not_after),
                      void *arg)
{
    for (size_t i = 0; i < cfg->nlistens; i++) {
        const struct gw_tls_ctx *ctx = cfg->listens[i].tls_ctx;
        for (size_t k = 0; ctx != NULL && k < ctx->ncerts; k++)
            fn(arg, ctx->listener,
               ctx->certs[k].nnames ? ctx->certs[k].names[0] : cfg->listens[i].tls.certs[k],
               ctx->certs[k].not_after);
    }
}

/* ---- connections ---- */

static void bytes_append(struct bytes *b, const void *p, size_t n)
{
    if (b->off > 0 && b->off + b->len + n > b->cap) {
        memmove(b->p, b->p + b->off, b->len);
        b->off = 0;
    }
    if (b->len + n > b->cap) {
        size_t want = b->cap ? b->cap : 16384;
        while (want < b->len + n)
            want *= 2;
        b->p = gw_xrealloc(b->p, want);
        b->cap = want;
    }
    memcpy(b->p + b->off + b->len, p, n);
    b->len += n;
}

static int bio_send(void *arg, const unsigned char *p, size_t n)
{
    struct gw_tls_conn *t = arg;
    bytes_append(&t->out[t->fill], p, n);
    return (int)n;
}

static int bio_recv(void *arg, unsigned char *p, size_t n)
{
    struct gw_tls_conn *t = arg;

    if (t->in.len == 0)
        return MBEDTLS_ERR_SSL_WANT_READ;
    if (n > t->in.len)
        n = t->in.len;
    memcpy(p, t->in.p + t->in.off, n);
    t->in.off += n;
    t->in.len -= n;
    if (t->in.len == 0)
        t->in.off = 0;
    return (int)n;
}

struct gw_tls_conn *gw_tls_conn_new(struct gw_tls_ctx *ctx)
{
    struct gw_tls_conn *t = gw_xcalloc(1, sizeof(*t));

    mbedtls_ssl_init(&t->ssl);
    if (mbedtls_ssl_setup(&t->ssl, &ctx->conf) != 0) {
        mbedtls_ssl_free(&t->ssl);
        free(t);
        return NULL;
    }
    if (ctx->sni != NULL && mbedtls_ssl_set_hostname(&t->ssl, ctx->sni) != 0) {
        gw_tls_conn_free(t);
        return NULL;
    }
    mbedtls_ssl_set_bio(&t->ssl, t, bio_send, bio_recv, NULL);
    return t;
}

void gw_tls_conn_free(struct gw_tls_conn *t)
{
    if (t == NULL)
        return;
    mbedtls_ssl_free(&t->ssl);
    free(t->in.p);
    free(t->held.p);
    free(t->out[0].p);
    free(t->out[1].p);
    free(t);
}

void gw_tls_feed(struct gw_tls_conn *t, const char *p, size_t n)
{
    bytes_append(t->slow_out ? &t->held : &t->in, p, n);
    t->fresh_in = true;
}

char *gw_tls_in_room(struct gw_tls_conn *t, size_t want, size_t *room)
{
    struct bytes *b = &t->in;

    if (b->off > 0 && b->off + b->len + want > b->cap) {
        memmove(b->p, b->p + b->off, b->len);
        b->off = 0;
    }
    if (b->len + want > b->cap) {
        size_t cap = b->cap ? b->cap : 16384;
        while (cap < b->len + want)
            cap *= 2;
        b->p = gw_xrealloc(b->p, cap);
        b->cap = cap;
    }
    *room = b->cap - b->off - b->len;
    return b->p + b->off + b->len;
}

void gw_tls_in_commit(struct gw_tls_conn *t, size_t n)
{
    t->in.len += n;
    t->fresh_in = true;
}

enum gw_tls_state gw_tls_handshake(struct gw_tls_conn *t)
{
    int rc = 0;

    /* mbedtls_ssl_handshake's own loop, written out to watch the states: a
     * resumed handshake (a ticket or a session id) goes from ServerHello
     * straight to ChangeCipherSpec on both sides, and only a full one
     * passes the server's Certificate. mbedtls 2.28 has no getter for it. */
    if (t->slow_ran) {
        t->slow_ran = false;
        rc = t->slow_rc;
    }
    if (t->slow_out) {
        t->slow_out = false;
        if (t->held.len > 0) {
            bytes_append(&t->in, t->held.p + t->held.off, t->held.len);
            t->held.off = t->held.len = 0;
        }
    }
    while (rc == 0 && t->ssl.state != MBEDTLS_SSL_HANDSHAKE_OVER) {
        if (t->ssl.state == MBEDTLS_SSL_SERVER_CERTIFICATE)
            t->full = true;
        /* The two steps that multiply points: the ServerKeyExchange (our
         * ECDHE key and the signature) and, once its bytes are here, the
         * ClientKeyExchange (the shared secret). */
        if (t->defer && (t->ssl.state == MBEDTLS_SSL_SERVER_KEY_EXCHANGE ||
                         (t->ssl.state == MBEDTLS_SSL_CLIENT_KEY_EXCHANGE && t->in.len > 0))) {
            t->slow_out = true;
            return GW_TLS_SLOW;
        }
        rc = mbedtls_ssl_handshake_step(&t->ssl);
    }
    if (rc == 0)
        return GW_TLS_OPEN;
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
        t->fresh_in = false;
        return GW_TLS_HANDSHAKE;
    }
    t->last_rc = rc;
    return GW_TLS_FAILED;
}

void gw_tls_defer_slow(struct gw_tls_conn *t)
{
    t->defer = true;
}

void gw_tls_slow_step(struct gw_tls_conn *t)
{
    t->slow_rc = mbedtls_ssl_handshake_step(&t->ssl);
    t->slow_ran = true;
}

bool gw_tls_resumed(const struct gw_tls_conn *t)
{
    return t->ssl.state == MBEDTLS_SSL_HANDSHAKE_OVER && !t->full;
}

ssize_t gw_tls_read(struct gw_tls_conn *t, char *buf, size_t cap)
{
    int rc = mbedtls_ssl_read(&t->ssl, (unsigned char *)buf, cap);

    if (rc > 0)
        return rc;
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
        t->fresh_in = false;
        return 0;
    }
    t->last_rc = rc;
    return rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY ? -1 : -2;
}

bool gw_tls_pending(const struct gw_tls_conn *t)
{
    return mbedtls_ssl_get_bytes_avail(&t->ssl) > 0 || (t->in.len > 0 && t->fresh_in);
}

int gw_tls_write(struct gw_tls_conn *t, const char *p, size_t n)
{
    while (n > 0) {
        int rc = mbedtls_ssl_write(&t->ssl, (const unsigned char *)p, n);
        if (rc < 0)
            return -1;
        p += rc;
        n -= (size_t)rc;
    }
    return 0;
}

struct gw_tls_session {
    mbedtls_ssl_session s;
};

struct gw_tls_session *gw_tls_session_get(const struct gw_tls_conn *t)
{
    struct gw_tls_session *s = gw_xcalloc(1, sizeof(*s));

    mbedtls_ssl_session_init(&s->s);
    if (mbedtls_ssl_get_session(&t->ssl, &s->s) != 0) {
        gw_tls_session_free(s);
        return NULL;
    }
    return s;
}

void gw_tls_session_free(struct gw_tls_session *s)
{
    if (s == NULL)
        return;
    mbedtls_ssl_session_free(&s->s);
    free(s);
}

void gw_tls_session_offer(struct gw_tls_conn *t, const struct gw_tls_session *s)
{
    /* on failure the handshake is simply a full one */
    (void)mbedtls_ssl_set_session(&t->ssl, &s->s);
}

int gw_tls_close_notify(struct gw_tls_conn *t)
{
    if (t->bye)
        return 0;
    if (mbedtls_ssl_close_notify(&t->ssl) != 0)
        return -1;
    t->bye = true;
    return 0;
}

struct gw_slice gw_tls_out_take(struct gw_tls_conn *t)
{
    struct bytes *b;

    if (t->taken || t->out[t->fill].len == 0)
        return gw_slice(NULL, 0);
    b = &t->out[t->fill];
    t->fill ^= 1;
    t->taken = true;
    return gw_slice(b->p + b->off, b->len);
}

struct gw_slice gw_tls_sent(struct gw_tls_conn *t, size_t n)
{
    struct bytes *b = &t->out[t->fill ^ 1];

    b->off += n;
    b->len -= n;
    if (b->len > 0)
        return gw_slice(b->p + b->off, b->len); /* a short send: the rest */
    b->off = 0;
    t->taken = false;
    return gw_tls_out_take(t); /* what was encrypted meanwhile, if anything */
}

const char *gw_tls_alpn(const struct gw_tls_conn *t)
{
    return mbedtls_ssl_get_alpn_protocol(&t->ssl);
}

void gw_tls_describe(const struct gw_tls_conn *t, char *buf, size_t len)
{
    uint32_t flags = mbedtls_ssl_get_verify_result(&t->ssl);
    char *nl;

    if (t->last_rc == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED && flags != 0 && flags != (uint32_t)-1) {
        /* one line: the reasons joined, without mbedtls's newlines */
        mbedtls_x509_crt_verify_info(buf, len, "", flags);
        while ((nl = strchr(buf, '\n')) != NULL)
            *nl = nl[1] != '\0' ? ';' : '\0';
        return;
    }
    mbedtls_strerror(t->last_rc, buf, len);
}
