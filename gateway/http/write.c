/* Owns the rewriting of heads between client and upstream: which fields are
 * hop-by-hop (RFC 9110 7.6.1), the forwarding fields we add, and the small
 * responses the gateway writes itself. Output goes to caller buffers and
 * never past their end. */
#include "http/write.h"

#include <stdint.h>
#include <string.h>

/* A bounded output cursor: once something does not fit, nothing more is
 * written and the result is -1. */
struct out {
    char *p, *end;
    bool full;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->full || (size_t)(o->end - o->p) < n) {
        o->full = true;
        return;
    }
    if (n) {
        memcpy(o->p, s, n);
        o->p += n;
    }
}

#define PUT_LIT(o, lit) put((o), (lit), sizeof(lit) - 1)

static void put_slice(struct out *o, struct gw_slice s)
{
    put(o, s.ptr, s.len);
}

static void put_uint(struct out *o, uint64_t v)
{
    char tmp[20];
    size_t i = sizeof(tmp);

    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(o, tmp + i, sizeof(tmp) - i);
}

static void put_header(struct out *o, const struct gw_header *h)
{
    put_slice(o, h->name);
    PUT_LIT(o, ": ");
    put_slice(o, h->value);
    PUT_LIT(o, "\r\n");
}

static ssize_t finish(struct out *o, char *start)
{
    return o->full ? -1 : o->p - start;
}

static inline char lower(char c)
{
    return (unsigned char)(c - 'A') < 26 ? (char)(c + ('a' - 'A')) : c;
}

/* a[0..n) equals the lower-case literal lit, ignoring the case of a. */
static bool ieq_lit(const char *a, const char *lit, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower(a[i]) != lit[i])
            return false;
    return true;
}

static bool ieq(struct gw_slice a, struct gw_slice b)
{
    if (a.len != b.len)
        return false;
    for (size_t i = 0; i < a.len; i++)
        if (lower(a.ptr[i]) != lower(b.ptr[i]))
            return false;
    return true;
}

/* The fields the writers treat specially. */
enum field {
    F_OTHER = 0,
    F_CONNECTION,
    F_KEEP_ALIVE,
    F_TE,
    F_TRAILER,
    F_PROXY, /* Proxy-* */
    F_UPGRADE,
    F_EXPECT,
    F_HOST,
    F_XFF,
    F_XFP,
    F_XRID,
    F_FRAMING, /* Content-Length, Transfer-Encoding: the body is forwarded as is */
};

#define IS(p, lit) ieq_lit((p), (lit), sizeof(lit) - 1)

/* The length picks the one candidate before any bytes are compared. */
static enum field classify(struct gw_slice name)
{
    const char *p = name.ptr;

    if (name.len > 6 && IS(p, "proxy-"))
        return F_PROXY;
    switch (name.len) {
    case 2:
        return IS(p, "te") ? F_TE : F_OTHER;
    case 4:
        return IS(p, "host") ? F_HOST : F_OTHER;
    case 6:
        return IS(p, "expect") ? F_EXPECT : F_OTHER;
    case 7:
        return IS(p, "upgrade") ? F_UPGRADE : IS(p, "trailer") ? F_TRAILER : F_OTHER;
    case 10:
        return IS(p, "connection") ? F_CONNECTION : IS(p, "keep-alive") ? F_KEEP_ALIVE : F_OTHER;
    case 12:
        return IS(p, "x-request-id") ? F_XRID : F_OTHER;
    case 14:
        return IS(p, "content-length") ? F_FRAMING : F_OTHER;
    case 15:
        return IS(p, "x-forwarded-for") ? F_XFF : F_OTHER;
    case 17:
        if (IS(p, "transfer-encoding"))
            return F_FRAMING;
        return IS(p, "x-forwarded-proto") ? F_XFP : F_OTHER;
    }
    return F_OTHER;
}

#undef IS

/* Each field's kind, and the Connection values whose tokens name more
 * hop-by-hop fields. Built once per head so no field is classified twice. */
struct scan {
    unsigned char kind[GW_HTTP_MAX_HEADERS];
    struct gw_slice conn[GW_HTTP_MAX_HEADERS];
    size_t nconn;
};

/* Calls fn for each element of a comma-separated list, blanks trimmed;
 * stops and returns true when fn does. */
static bool each_token(struct gw_slice list, bool (*fn)(struct gw_slice tok, const void *arg),
                       const void *arg)
{
    const char *p = list.ptr, *e = p + list.len;

    while (p < e) {
        while (p < e && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        const char *tok = p;
        while (p < e && *p != ',')
            p++;
        const char *te = p;
        while (te > tok && (te[-1] == ' ' || te[-1] == '\t'))
            te--;
        if (te > tok && fn(gw_slice(tok, (size_t)(te - tok)), arg))
            return true;
    }
    return false;
}

static bool names_a_field(struct gw_slice tok, const void *arg)
{
    (void)arg;
    return !ieq(tok, GW_SLICE_LIT("close")) && !ieq(tok, GW_SLICE_LIT("keep-alive")) &&
           !ieq(tok, GW_SLICE_LIT("upgrade"));
}

static bool same_name(struct gw_slice tok, const void *name)
{
    return ieq(tok, *(const struct gw_slice *)name);
}

static void scan_fields(struct scan *s, const struct gw_header *hs, size_t n)
{
    s->nconn = 0;
    for (size_t i = 0; i < n; i++) {
        s->kind[i] = (unsigned char)classify(hs[i].name);
        /* the usual "keep-alive" or "close" names no field worth a look */
        if (s->kind[i] == F_CONNECTION && each_token(hs[i].value, names_a_field, NULL))
            s->conn[s->nconn++] = hs[i].value;
    }
}

/* Whether a Connection field lists name. */
static bool listed(const struct scan *s, struct gw_slice name)
{
    for (size_t i = 0; i < s->nconn; i++)
        if (each_token(s->conn[i], same_name, &name))
            return true;
    return false;
}

void gw_http_put_deadline(char *p, uint64_t v)
{
    char tmp[GW_DEADLINE_VALUE_WIDTH];
    int n = 0;

    if (v > 9999999999ull)
        v = 9999999999ull;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    for (int i = 0; i < GW_DEADLINE_VALUE_WIDTH; i++)
        p[i] = i < n ? tmp[n - 1 - i] : ' ';
}

ssize_t gw_http_write_request_head(char *out, size_t cap, const struct gw_request *req,
                                   const struct gw_fwd_info *fi)
{
    struct out o = {out, out + cap, false};
    struct scan s;
    bool upgrade = req->flags & GW_MSG_UPGRADE;
    bool absolute = req->authority.len > 0;
    bool have_host = absolute, have_xff = false;

    scan_fields(&s, req->headers, req->nheaders);
    put_slice(&o, req->method_str);
    PUT_LIT(&o, " ");
    if (absolute && req->method == GW_METHOD_OPTIONS &&
        req->authority.ptr + req->authority.len == req->target.ptr + req->target.len)
        PUT_LIT(&o, "*"); /* RFC 9112 3.2.4: OPTIONS with an empty path */
    else
        put_slice(&o, req->path);
    PUT_LIT(&o, " HTTP/1.1\r\n");
    if (absolute) {
        /* RFC 9112 3.2.2: the authority of an absolute-form target
         * replaces any Host field. */
        PUT_LIT(&o, "Host: ");
        put_slice(&o, req->authority);
        PUT_LIT(&o, "\r\n");
    }
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct gw_header *h = &req->headers[i];
        switch (s.kind[i]) {
        case F_UPGRADE:
            if (upgrade)
                break;
            continue;
        case F_HOST:
            if (absolute)
                continue;
            have_host = true;
            break;
        case F_XRID:
            /* kept even when listed in Connection: the caller told the
             * rest of the gateway this is the id */
            if (fi->request_id_present)
                break;
            continue;
        case F_FRAMING:
            break;
        case F_OTHER:
            if (listed(&s, h->name))
                continue;
            if (fi->deadline_header.len > 0 && ieq(h->name, fi->deadline_header))
                continue; /* replaced by the remaining budget below */
            break;
        case F_XFF:
            /* joined into one field below */
            have_xff |= h->value.len > 0 && !listed(&s, h->name);
            continue;
        default: /* hop-by-hop, Expect, and X-Forwarded-Proto, which we set */
            continue;
        }
        put_header(&o, h);
    }
    if (!have_host) {
        PUT_LIT(&o, "Host: ");
        put_slice(&o, fi->host);
        PUT_LIT(&o, "\r\n");
    }
    if (have_xff || fi->client_addr.len) {
        const char *sep = "X-Forwarded-For: ";
        for (size_t i = 0; have_xff && i < req->nheaders; i++) {
            if (s.kind[i] != F_XFF || req->headers[i].value.len == 0)
                continue;
            put(&o, sep, strlen(sep));
            put_slice(&o, req->headers[i].value);
            sep = ", ";
        }
        if (fi->client_addr.len) {
            put(&o, sep, strlen(sep));
            put_slice(&o, fi->client_addr);
        }
        PUT_LIT(&o, "\r\n");
    }
    if (fi->proto.len) {
        PUT_LIT(&o, "X-Forwarded-Proto: ");
        put_slice(&o, fi->proto);
        PUT_LIT(&o, "\r\n");
    }
    if (!fi->request_id_present && fi->request_id.len) {
        PUT_LIT(&o, "X-Request-Id: ");
        put_slice(&o, fi->request_id);
        PUT_LIT(&o, "\r\n");
    }
    if (fi->deadline_header.len > 0) {
        char v[GW_DEADLINE_VALUE_WIDTH];
        put_slice(&o, fi->deadline_header);
        PUT_LIT(&o, ": ");
        if (fi->deadline_value_off != NULL)
            *fi->deadline_value_off = (size_t)(o.p - out);
        gw_http_put_deadline(v, fi->deadline_ms);
        put(&o, v, sizeof(v));
        PUT_LIT(&o, "\r\n");
    }
    if (upgrade)
        PUT_LIT(&o, "Connection: upgrade\r\n");
    PUT_LIT(&o, "\r\n");
    return finish(&o, out);
}

/* "HTTP/1.1 STATUS REASON" (the upstream's reason, else the standard one). */
static void put_status_line(struct out *o, const struct gw_response *resp)
{
    PUT_LIT(o, "HTTP/1.1 ");
    put_uint(o, (uint64_t)resp->status);
    PUT_LIT(o, " ");
    if (resp->reason.len) {
        put_slice(o, resp->reason);
    } else {
        const char *r = gw_http_reason(resp->status);
        put(o, r, strlen(r));
    }
    PUT_LIT(o, "\r\n");
}

ssize_t gw_http_write_response_head(char *out, size_t cap, const struct gw_response *resp,
                                    struct gw_slice request_id, bool close, int client_minor)
{
    struct out o = {out, out + cap, false};
    struct scan s;
    bool upgrade = resp->status == 101 && (resp->flags & GW_MSG_UPGRADE);
    bool have_rid = false;

    scan_fields(&s, resp->headers, resp->nheaders);
    put_status_line(&o, resp);
    for (size_t i = 0; i < resp->nheaders; i++) {
        const struct gw_header *h = &resp->headers[i];
        switch (s.kind[i]) {
        case F_CONNECTION:
        case F_KEEP_ALIVE:
        case F_TE:
        case F_TRAILER:
        case F_PROXY:
            continue;
        case F_UPGRADE:
            if (upgrade)
                break;
            continue;
        case F_FRAMING:
            /* an HTTP/1.0 client gets a chunked body decoded (the
             * session does it) and delimited by the close */
            if (client_minor == 0 && ieq(h->name, GW_SLICE_LIT("transfer-encoding")))
                continue;
            break;
        default:
            if (listed(&s, h->name))
                continue;
            have_rid |= s.kind[i] == F_XRID;
            break;
        }
        put_header(&o, h);
    }
    if (!have_rid && request_id.len) {
        PUT_LIT(&o, "X-Request-Id: ");
        put_slice(&o, request_id);
        PUT_LIT(&o, "\r\n");
    }
    if (upgrade)
        PUT_LIT(&o, "Connection: upgrade\r\n");
    else if (close)
        PUT_LIT(&o, "Connection: close\r\n");
    else if (client_minor == 0)
        PUT_LIT(&o, "Connection: keep-alive\r\n");
    PUT_LIT(&o, "\r\n");
    return finish(&o, out);
}

ssize_t gw_http_write_stored_head(char *out, size_t cap, const struct gw_response *resp,
                                  uint64_t body_len, bool keep_set_cookie)
{
    struct out o = {out, out + cap, false};
    struct scan s;

    scan_fields(&s, resp->headers, resp->nheaders);
    put_status_line(&o, resp);
    for (size_t i = 0; i < resp->nheaders; i++) {
        const struct gw_header *h = &resp->headers[i];
        if (s.kind[i] != F_OTHER || listed(&s, h->name))
            continue; /* hop-by-hop, framing (ours follows), X-Request-Id (per request) */
        if (ieq(h->name, GW_SLICE_LIT("age")) || ieq(h->name, GW_SLICE_LIT("x-cache")) ||
            (!keep_set_cookie && ieq(h->name, GW_SLICE_LIT("set-cookie"))))
            continue;
        put_header(&o, h);
    }
    if (resp->status != 204 && resp->status != 304 && body_len != UINT64_MAX) {
        PUT_LIT(&o, "Content-Length: ");
        put_uint(&o, body_len);
        PUT_LIT(&o, "\r\n");
    }
    return finish(&o, out);
}

ssize_t gw_http_write_head_tail(char *out, size_t cap, uint64_t age_s, const char *x_cache,
                                struct gw_slice request_id, bool close, int client_minor)
{
    struct out o = {out, out + cap, false};

    if (age_s != UINT64_MAX) {
        PUT_LIT(&o, "Age: ");
        put_uint(&o, age_s);
        PUT_LIT(&o, "\r\n");
    }
    if (x_cache != NULL) {
        PUT_LIT(&o, "X-Cache: ");
        put(&o, x_cache, strlen(x_cache));
        PUT_LIT(&o, "\r\n");
    }
    if (request_id.len) {
        PUT_LIT(&o, "X-Request-Id: ");
        put_slice(&o, request_id);
        PUT_LIT(&o, "\r\n");
    }
    if (close)
        PUT_LIT(&o, "Connection: close\r\n");
    else if (client_minor == 0)
        PUT_LIT(&o, "Connection: keep-alive\r\n");
    PUT_LIT(&o, "\r\n");
    return finish(&o, out);
}

const char *gw_http_reason(int status)
{
    /* clang-format off */
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    }
    /* clang-format on */
    return "";
}

ssize_t gw_http_write_simple_response(char *out, size_t cap, int status, struct gw_slice request_id,
                                      bool close, const char *extra_headers, struct gw_slice body)
{
    struct out o = {out, out + cap, false};
    const char *r = gw_http_reason(status);
    /* RFC 9110 8.6, 15.3.5, 15.4.5: these have no body and no length */
    bool bodiless = status < 200 || status == 204 || status == 304;

    if (status < 100 || status > 999)
        return -1;
    PUT_LIT(&o, "HTTP/1.1 ");
    put_uint(&o, (uint64_t)status);
    PUT_LIT(&o, " ");
    put(&o, r, strlen(r));
    PUT_LIT(&o, "\r\n");
    if (!bodiless) {
        if (body.len)
            PUT_LIT(&o, "Content-Type: text/plain\r\n");
        PUT_LIT(&o, "Content-Length: ");
        put_uint(&o, body.len);
        PUT_LIT(&o, "\r\n");
    }
    if (request_id.len) {
        PUT_LIT(&o, "X-Request-Id: ");
        put_slice(&o, request_id);
        PUT_LIT(&o, "\r\n");
    }
    if (close)
        PUT_LIT(&o, "Connection: close\r\n");
    if (extra_headers)
        put(&o, extra_headers, strlen(extra_headers));
    PUT_LIT(&o, "\r\n");
    if (!bodiless)
        put_slice(&o, body);
    return finish(&o, out);
}
