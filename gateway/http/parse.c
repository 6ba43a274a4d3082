/* Owns the strict HTTP/1.x head parser: request line, status line, header
 * fields, and the framing rules of RFC 9112 that decide where a body ends.
 * Anything two parsers could read differently is refused rather than
 * guessed at. */
#include "http/parse.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

/* Empty lines tolerated before a request line (RFC 9112 2.2). */
#define MAX_LEADING_CRLF 4
/* Largest Content-Length we accept: far above any real body, far below
 * anything that overflows arithmetic on it. */
#define CL_MAX (INT64_C(1) << 62)

enum {
    C_TCHAR = 1 << 0,  /* token character (RFC 9110 5.6.2) */
    C_VALUE = 1 << 1,  /* field-value octet: VCHAR, obs-text, SP, HTAB */
    C_TARGET = 1 << 2, /* request-target octet: VCHAR but '#', and obs-text */
    C_AUTH = 1 << 3,   /* authority octet: host, IP literal, port; no userinfo */
};

#define V C_VALUE
#define VU (C_VALUE | C_TARGET)
#define VUA (C_VALUE | C_TARGET | C_AUTH)
#define TV (C_TCHAR | C_VALUE)
#define TVU (C_TCHAR | C_VALUE | C_TARGET)
#define TVUA (C_TCHAR | C_VALUE | C_TARGET | C_AUTH)

/* clang-format off */
static const uint8_t cls[256] = {
    ['\t'] = V,
    [' '] = V,
    ['!'] = TVUA,
    ['"'] = VU,
    ['#'] = TV,
    ['$'] = TVUA,
    ['%'] = TVUA,
    ['&'] = TVUA,
    ['\''] = TVUA,
    ['('] = VUA,
    [')'] = VUA,
    ['*'] = TVUA,
    ['+'] = TVUA,
    [','] = VUA,
    ['-'] = TVUA,
    ['.'] = TVUA,
    ['/'] = VU,
    ['0' ... '9'] = TVUA,
    [':'] = VUA,
    [';'] = VUA,
    ['<'] = VU,
    ['='] = VUA,
    ['>'] = VU,
    ['?'] = VU,
    ['@'] = VU,
    ['A' ... 'Z'] = TVUA,
    ['['] = VUA,
    ['\\'] = VU,
    [']'] = VUA,
    ['^'] = TVU,
    ['_'] = TVUA,
    ['`'] = TVU,
    ['a' ... 'z'] = TVUA,
    ['{'] = VU,
    ['|'] = TVU,
    ['}'] = VU,
    ['~'] = TVUA,
    [0x80 ... 0xff] = VU,
};
/* clang-format on */

#undef V
#undef VU
#undef VUA
#undef TV
#undef TVU
#undef TVUA

static inline bool is_a(char c, unsigned class)
{
    return cls[(unsigned char)c] & class;
}

static inline bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static inline bool is_digit(char c)
{
    return (unsigned char)(c - '0') < 10;
}

static inline char lower(char c)
{
    return (unsigned char)(c - 'A') < 26 ? (char)(c + ('a' - 'A')) : c;
}

/* a[0..n) equals the lower-case literal lit, ignoring the case of a. */
static bool ieq(const char *a, const char *lit, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower(a[i]) != lit[i])
            return false;
    return true;
}

#define IEQ(p, n, lit) ((n) == sizeof(lit) - 1 && ieq((p), (lit), sizeof(lit) - 1))

/* What the header fields say about framing and the connection. */
struct framing {
    int64_t content_length; /* -1 when absent */
    unsigned ncl;           /* Content-Length fields */
    unsigned ncodings;      /* transfer codings listed, over all fields */
    bool te;                /* a Transfer-Encoding field was seen */
    bool chunked;           /* "chunked" was listed */
    bool chunked_last;      /* ... and is the last coding so far */
    bool close, keepalive, conn_upgrade;
    bool upgrade; /* an Upgrade field was seen */
    bool expect_continue;
    unsigned nhost;
    struct gw_slice host;
};

struct err {
    int status;
    const char *reason;
};

static int fail(struct err *e, int status, const char *reason)
{
    e->status = status;
    e->reason = reason;
    return -1;
}

/* Looks for the blank line that ends a head in buf[from, n). Returns the
 * offset just past it, 0 when it is not there yet, -1 on a bare LF. Every
 * LF must follow a CR, so the parser that runs afterwards sees only CRLF
 * line ends and can stop every scan at the first CR. */
static ssize_t find_head_end(const char *buf, size_t from, size_t n)
{
    const char *p = buf + from, *e = buf + n;

    while ((p = memchr(p, '\n', (size_t)(e - p))) != NULL) {
        if (p == buf + from || p[-1] != '\r')
            return -1;
        if (e - p >= 3 && p[1] == '\r' && p[2] == '\n')
            return p + 3 - buf;
        p++;
    }
    return 0;
}

/* An authority as in absolute-form, authority-form and Host: host
 * (reg-name or IP literal) and an optional ":port". No userinfo. */
static bool valid_authority(const char *p, size_t n, bool need_port)
{
    size_t colon = n;

    for (size_t i = 0; i < n; i++) {
        if (!is_a(p[i], C_AUTH))
            return false;
        if (p[i] == ':')
            colon = i;
        else if (p[i] == '[' && i != 0)
            return false;
        else if (p[i] == ']') {
            if (p[0] != '[' || (i + 1 < n && p[i + 1] != ':'))
                return false;
            colon = n;
        }
    }
    if (n && p[0] == '[' && memchr(p, ']', n) == NULL)
        return false;
    if (colon == n)
        return !need_port;
    if (colon == 0 || (need_port && colon + 1 == n))
        return false;
    for (size_t i = colon + 1; i < n; i++)
        if (!is_digit(p[i]))
            return false;
    return true;
}

/* Content-Length: 1*DIGIT, or a list of identical values ("5, 5"). */
static int parse_content_length(const char *p, const char *e, struct framing *f, struct err *er)
{
    for (;;) {
        uint64_t v = 0;

        while (p < e && is_ows(*p))
            p++;
        if (p == e || !is_digit(*p))
            return fail(er, 400, "bad content-length");
        for (; p < e && is_digit(*p); p++) {
            unsigned d = (unsigned)(*p - '0');
            if (v > ((uint64_t)CL_MAX - d) / 10)
                return fail(er, 400, "content-length too large");
            v = v * 10 + d;
        }
        if (f->content_length >= 0 && (uint64_t)f->content_length != v)
            return fail(er, 400, "conflicting content-length");
        f->content_length = (int64_t)v;
        while (p < e && is_ows(*p))
            p++;
        if (p == e)
            return 0;
        if (*p++ != ',')
            return fail(er, 400, "bad content-length");
    }
}

/* Skips a transfer-parameter value: token or quoted-string. */
static const char *skip_param_value(const char *p, const char *e)
{
    if (p < e && *p == '"') {
        for (p++; p < e; p++) {
            if (*p == '"')
                return p + 1;
            if (*p == '\\' && ++p == e)
                return NULL;
        }
        return NULL;
    }
    const char *s = p;
    while (p < e && is_a(*p, C_TCHAR))
        p++;
    return p == s ? NULL : p;
}

/* Transfer-Encoding: #( token *( OWS ";" OWS token "=" value ) ). Empty
 * list elements are ignored, as RFC 9110 5.6.1 asks. */
static int parse_transfer_encoding(const char *p, const char *e, struct framing *f, struct err *er)
{
    f->te = true;
    for (;;) {
        while (p < e && (is_ows(*p) || *p == ','))
            p++;
        if (p == e)
            return 0;
        const char *tok = p;
        while (p < e && is_a(*p, C_TCHAR))
            p++;
        if (p == tok)
            return fail(er, 400, "bad transfer-encoding");
        bool chunked = IEQ(tok, (size_t)(p - tok), "chunked");
        while (p < e && is_ows(*p))
            p++;
        while (p < e && *p == ';') {
            if (chunked)
                return fail(er, 400, "bad transfer-encoding");
            for (p++; p < e && is_ows(*p); p++)
                ;
            const char *name = p;
            while (p < e && is_a(*p, C_TCHAR))
                p++;
            if (p == name)
                return fail(er, 400, "bad transfer-encoding");
            while (p < e && is_ows(*p))
                p++;
            if (p == e || *p++ != '=')
                return fail(er, 400, "bad transfer-encoding");
            while (p < e && is_ows(*p))
                p++;
            if ((p = skip_param_value(p, e)) == NULL)
                return fail(er, 400, "bad transfer-encoding");
            while (p < e && is_ows(*p))
                p++;
        }
        if (p < e && *p != ',')
            return fail(er, 400, "bad transfer-encoding");
        if (chunked && f->chunked)
            return fail(er, 400, "chunked twice in transfer-encoding");
        f->chunked |= chunked;
        f->chunked_last = chunked;
        f->ncodings++;
    }
}

/* Connection: a list of tokens; only three of them mean something here.
 * The writer drops the fields named by the others. */
static void parse_connection(const char *p, const char *e, struct framing *f)
{
    while (p < e) {
        while (p < e && (is_ows(*p) || *p == ','))
            p++;
        const char *tok = p;
        while (p < e && *p != ',')
            p++;
        const char *te = p;
        while (te > tok && is_ows(te[-1]))
            te--;
        size_t n = (size_t)(te - tok);
        if (IEQ(tok, n, "close"))
            f->close = true;
        else if (IEQ(tok, n, "keep-alive"))
            f->keepalive = true;
        else if (IEQ(tok, n, "upgrade"))
            f->conn_upgrade = true;
    }
}

/* Notes what one field means for framing. Only a few names matter, so the
 * length picks the one candidate before any bytes are compared. */
static int apply_field(const char *name, size_t nlen, const char *v, const char *ve,
                       struct framing *f, struct err *er)
{
    switch (nlen) {
    case 4:
        if (ieq(name, "host", 4)) {
            if (f->nhost++)
                return fail(er, 400, "multiple host headers");
            if (!valid_authority(v, (size_t)(ve - v), false))
                return fail(er, 400, "bad host header");
            f->host = gw_slice(v, (size_t)(ve - v));
        }
        break;
    case 6:
        if (ieq(name, "expect", 6) && IEQ(v, (size_t)(ve - v), "100-continue"))
            f->expect_continue = true;
        break;
    case 7:
        if (ieq(name, "upgrade", 7))
            f->upgrade = true;
        break;
    case 10:
        if (ieq(name, "connection", 10))
            parse_connection(v, ve, f);
        break;
    case 14:
        if (ieq(name, "content-length", 14)) {
            f->ncl++;
            return parse_content_length(v, ve, f, er);
        }
        break;
    case 17:
        if (ieq(name, "transfer-encoding", 17))
            return parse_transfer_encoding(v, ve, f, er);
        break;
    }
    return 0;
}

/* Whether any of the eight octets at p is a control character (below SP,
 * HTAB included, or DEL): the usual "has a byte less than n" and "has a
 * zero byte" word tricks, exact for "any", with obs-text passing. */
static inline bool has_ctl8(const unsigned char *p)
{
    uint64_t x, ones = 0x0101010101010101u, high = 0x8080808080808080u, del;

    memcpy(&x, p, 8);
    del = x ^ (0x7f * ones);
    return (((x - 0x20 * ones) & ~x) | ((del - ones) & ~del)) & high;
}

/* Skips field-value octets, a word at a time while the head (which ends in
 * CRLFCRLF) has room: values (User-Agent, Cookie) are most of a head. The
 * table takes over at the first word with a control character, which is
 * the CR ending the value unless the value has an HTAB. */
static const char *skip_value(const char *p, const char *end)
{
    const unsigned char *u = (const unsigned char *)p, *e = (const unsigned char *)end;

    while (e - u >= 8 && !has_ctl8(u))
        u += 8;
    while (cls[*u] & C_VALUE)
        u++;
    return (const char *)u;
}

/* Parses the field lines from p to the blank line that ends the head at
 * end. find_head_end guarantees the head ends in CRLFCRLF and has no bare
 * LF, so every scan below stops at a CR inside the head. */
static int parse_fields(const char *p, const char *end, struct gw_header *hs, size_t *nh,
                        struct framing *f, struct err *er)
{
    size_t n = 0;

    memset(f, 0, sizeof(*f));
    f->content_length = -1;
    while (*p != '\r') {
        const char *name = p, *v, *ve;

        while (is_a(*p, C_TCHAR))
            p++;
        if (*p != ':') {
            if (p == name && is_ows(*p))
                return fail(er, 400, "obs-fold");
            if (is_ows(*p))
                return fail(er, 400, "whitespace before colon");
            return fail(er, 400, "bad header name");
        }
        if (p == name)
            return fail(er, 400, "empty header name");
        size_t nlen = (size_t)(p - name);
        for (p++; is_ows(*p); p++)
            ;
        v = p;
        p = skip_value(p, end);
        if (*p != '\r' || p[1] != '\n')
            return fail(er, 400, "bad header value");
        for (ve = p; ve > v && is_ows(ve[-1]); ve--)
            ;
        p += 2;
        if (n == GW_HTTP_MAX_HEADERS)
            return fail(er, 431, "too many headers");
        hs[n].name = gw_slice(name, nlen);
        hs[n].value = gw_slice(v, (size_t)(ve - v));
        n++;
        if (apply_field(name, nlen, v, ve, f, er) < 0)
            return -1;
    }
    if (p[1] != '\n' || p + 2 != end)
        return fail(er, 400, "bad line ending");
    *nh = n;
    return 0;
}

static enum gw_method method_of(const char *m, size_t n)
{
#define M(lit, val)                                                                                \
    if (n == sizeof(lit) - 1 && memcmp(m, lit, n) == 0)                                            \
        return val;
    switch (n) {
    case 3:
        M("GET", GW_METHOD_GET);
        M("PUT", GW_METHOD_PUT);
        break;
    case 4:
        M("HEAD", GW_METHOD_HEAD);
        M("POST", GW_METHOD_POST);
        break;
    case 5:
        M("PATCH", GW_METHOD_PATCH);
        M("TRACE", GW_METHOD_TRACE);
        break;
    case 6:
        M("DELETE", GW_METHOD_DELETE);
        break;
    case 7:
        M("OPTIONS", GW_METHOD_OPTIONS);
        M("CONNECT", GW_METHOD_CONNECT);
        break;
    }
#undef M
    return GW_METHOD_OTHER;
}

/* "HTTP/1.0" or "HTTP/1.1" at p: returns the minor version, -505 for
 * another well-formed version, -400 for anything else. The head's final
 * CRLFCRLF stops the comparison before it can run past the head. */
static int http_version(const char *p)
{
    if (p[0] != 'H' || p[1] != 'T' || p[2] != 'T' || p[3] != 'P' || p[4] != '/' ||
        !is_digit(p[5]) || p[6] != '.' || !is_digit(p[7]))
        return -400;
    if (p[5] != '1' || (p[7] != '0' && p[7] != '1'))
        return -505;
    return p[7] - '0';
}

/* Splits the request-target by its form (RFC 9112 3.2). */
static int parse_target(struct gw_request *req, struct err *er)
{
    const char *t = req->target.ptr;
    size_t n = req->target.len;

    req->authority = gw_slice(t, 0);
    if (req->method == GW_METHOD_CONNECT) {
        if (!valid_authority(t, n, true))
            return fail(er, 400, "CONNECT needs authority-form");
        req->path = req->target;
        return 0;
    }
    if (t[0] == '/') {
        req->path = req->target;
        return 0;
    }
    if (n == 1 && t[0] == '*') {
        if (req->method != GW_METHOD_OPTIONS)
            return fail(er, 400, "asterisk-form only for OPTIONS");
        req->path = req->target;
        return 0;
    }
    size_t skip;
    if (n > 7 && ieq(t, "http://", 7))
        skip = 7;
    else if (n > 8 && ieq(t, "https://", 8))
        skip = 8;
    else
        return fail(er, 400, "bad request target");
    const char *a = t + skip, *e = t + n, *s = memchr(a, '/', (size_t)(e - a));
    if (s == NULL)
        s = e;
    if (s == a || !valid_authority(a, (size_t)(s - a), false))
        return fail(er, 400, "bad authority in request target");
    req->authority = gw_slice(a, (size_t)(s - a));
    req->path = s == e ? GW_SLICE_LIT("/") : gw_slice(s, (size_t)(e - s));
    return 0;
}

static int request_line(const char *p, struct gw_request *req, const char **next, struct err *er)
{
    const char *m = p, *t;

    while (is_a(*p, C_TCHAR))
        p++;
    if (p == m || *p != ' ')
        return fail(er, 400, "bad method");
    req->method_str = gw_slice(m, (size_t)(p - m));
    req->method = method_of(m, (size_t)(p - m));
    t = ++p;
    while (is_a(*p, C_TARGET))
        p++;
    if (p == t)
        return fail(er, 400, "bad request target");
    if (*p != ' ')
        return fail(er, 400, *p == '\r' ? "missing http version" : "bad request target");
    req->target = gw_slice(t, (size_t)(p - t));
    int v = http_version(++p);
    if (v == -505)
        return fail(er, 505, "http version not supported");
    if (v < 0 || p[8] != '\r' || p[9] != '\n')
        return fail(er, 400, "bad http version");
    req->minor_version = v;
    *next = p + 10;
    return parse_target(req, er);
}

static int request_fields(const char *p, const char *end, struct gw_request *req, struct err *er)
{
    struct framing f;

    if (parse_fields(p, end, req->headers, &req->nheaders, &f, er) < 0)
        return -1;
    bool http11 = req->minor_version == 1;
    if (f.te) {
        if (f.ncl)
            return fail(er, 400, "content-length and transfer-encoding together");
        if (!http11)
            return fail(er, 400, "transfer-encoding in HTTP/1.0");
        if (!f.chunked_last)
            return fail(er, 400, "transfer-encoding does not end in chunked");
    }
    if (http11 && f.nhost == 0)
        return fail(er, 400, "missing host header");

    unsigned flags = 0;
    if (f.chunked) {
        flags |= GW_MSG_CHUNKED | GW_MSG_HAS_BODY;
        req->content_length = -1;
    } else {
        req->content_length = f.content_length;
        if (f.content_length > 0)
            flags |= GW_MSG_HAS_BODY;
    }
    if (f.close)
        flags |= GW_MSG_CONN_CLOSE;
    else if (http11 || f.keepalive)
        flags |= GW_MSG_KEEPALIVE;
    /* Both are HTTP/1.1 mechanisms an HTTP/1.0 request must not trigger
     * (RFC 9110 10.1.1, 7.8). */
    if (http11 && f.expect_continue)
        flags |= GW_MSG_EXPECT_CONTINUE;
    if (http11 && f.upgrade && f.conn_upgrade)
        flags |= GW_MSG_UPGRADE;
    req->flags = flags;
    req->host = req->authority.len ? req->authority : f.host;
    return 0;
}

/* The start of a request that cannot become valid: fail before the head
 * is complete, so that a TLS handshake or binary noise gets its 400 now. */
static bool bad_request_prefix(const char *p, const char *e)
{
    while (p < e && is_a(*p, C_TCHAR))
        p++;
    return p < e && *p != ' ';
}

int gw_http_parse_request(const char *buf, size_t len, size_t max_head, struct gw_request *req)
{
    struct err er = {0, NULL};
    size_t start = 0, lim = len < max_head ? len : max_head;
    ssize_t end;

    req->error_status = 0;
    req->error_reason = NULL;
    req->nheaders = 0;
    for (int i = 0; start < len && buf[start] == '\r'; i++) {
        if (start + 1 == len)
            return -2;
        if (buf[start + 1] != '\n' || i == MAX_LEADING_CRLF) {
            fail(&er, 400, "bad request line");
            goto bad;
        }
        start += 2;
    }
    end = start < lim ? find_head_end(buf, start, lim) : 0;
    if (end < 0) {
        fail(&er, 400, "bare LF");
        goto bad;
    }
    if (end == 0) {
        if (len > max_head) {
            fail(&er, 431, "request head too large");
            goto bad;
        }
        if (bad_request_prefix(buf + start, buf + len)) {
            fail(&er, 400, "bad method");
            goto bad;
        }
        return -2;
    }

    const char *p;
    if (request_line(buf + start, req, &p, &er) < 0 || request_fields(p, buf + end, req, &er) < 0)
        goto bad;
    return (int)end;

bad:
    req->error_status = er.status;
    req->error_reason = er.reason;
    return -1;
}

/* "HTTP/1.x SSS reason": the reason may be empty, and then the SP before
 * it may be missing as well, which many servers do and nobody misreads. */
static int status_line(const char *p, struct gw_response *resp, const char **next, struct err *er)
{
    int v = http_version(p);

    if (v < 0 || p[8] != ' ')
        return fail(er, 502, "bad status line version");
    resp->minor_version = v;
    p += 9;
    if (!is_digit(p[0]) || !is_digit(p[1]) || !is_digit(p[2]))
        return fail(er, 502, "bad status code");
    resp->status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    if (resp->status < 100 || resp->status > 599)
        return fail(er, 502, "bad status code");
    p += 3;
    const char *r = p;
    if (*p == ' ') {
        r = ++p;
        while (is_a(*p, C_VALUE))
            p++;
    }
    if (*p != '\r' || p[1] != '\n')
        return fail(er, 502, "bad status line");
    resp->reason = gw_slice(r, (size_t)(p - r));
    *next = p + 2;
    return 0;
}

static int response_fields(const char *p, const char *end, enum gw_method req_method,
                           struct gw_response *resp, struct err *er)
{
    struct framing f;
    int s = resp->status;

    if (parse_fields(p, end, resp->headers, &resp->nheaders, &f, er) < 0)
        return -1;
    if (f.te && f.ncl)
        return fail(er, 502, "content-length and transfer-encoding together");

    unsigned flags = 0;
    resp->content_length = -1;
    if (req_method == GW_METHOD_HEAD || s < 200 || s == 204 || s == 304 ||
        (req_method == GW_METHOD_CONNECT && s < 300)) {
        /* no body, whatever the fields say (RFC 9112 6.3 items 1 and 2) */
    } else if (f.te) {
        flags |= GW_MSG_HAS_BODY | (f.chunked_last ? GW_MSG_CHUNKED : GW_MSG_UNTIL_CLOSE);
    } else if (f.ncl) {
        resp->content_length = f.content_length;
        if (f.content_length > 0)
            flags |= GW_MSG_HAS_BODY;
    } else {
        flags |= GW_MSG_HAS_BODY | GW_MSG_UNTIL_CLOSE;
    }
    if (f.close)
        flags |= GW_MSG_CONN_CLOSE;
    else if (!(flags & GW_MSG_UNTIL_CLOSE) && (resp->minor_version == 1 || f.keepalive))
        flags |= GW_MSG_KEEPALIVE;
    if (s == 101 && f.upgrade)
        flags |= GW_MSG_UPGRADE;
    resp->flags = flags;
    return 0;
}

int gw_http_parse_response(const char *buf, size_t len, size_t max_head, enum gw_method req_method,
                           struct gw_response *resp)
{
    struct err er = {0, NULL};
    size_t lim = len < max_head ? len : max_head;
    ssize_t end = lim ? find_head_end(buf, 0, lim) : 0;

    resp->error_reason = NULL;
    resp->nheaders = 0;
    if (end < 0) {
        resp->error_reason = "bare LF";
        return -1;
    }
    if (end == 0) {
        if (len > max_head)
            resp->error_reason = "response head too large";
        else if (len && memcmp(buf, "HTTP/", len < 5 ? len : 5) != 0)
            resp->error_reason = "bad status line";
        else
            return -2;
        return -1;
    }

    const char *p;
    if (status_line(buf, resp, &p, &er) < 0 ||
        response_fields(p, buf + end, req_method, resp, &er) < 0) {
        resp->error_reason = er.reason;
        return -1;
    }
    return (int)end;
}

const struct gw_header *gw_http_find_header(const struct gw_header *h, size_t n, const char *name)
{
    size_t len = strlen(name);

    for (size_t i = 0; i < n; i++) {
        if (h[i].name.len != len)
            continue;
        size_t j = 0;
        while (j < len && lower(h[i].name.ptr[j]) == lower(name[j]))
            j++;
        if (j == len)
            return &h[i];
    }
    return NULL;
}
