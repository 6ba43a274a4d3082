/* Unit tests of the strict head parser (http/parse.c). Every valid input is
 * parsed whole, at every prefix and ending at a PROT_NONE page; every
 * rejection has a near twin that passes, so the test shows the rule and
 * not some other error is what refuses it. */
#include "http/parse.h"

#include "tap.h"

#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_HEAD 8192

/* A copy of the input that ends right before an inaccessible page, so a
 * read past len faults under any build. */
struct guarded {
    char *map;
    size_t maplen;
    char *p;
};

static struct guarded guard(const char *s, size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), data = (n + pg - 1) / pg * pg;
    struct guarded g;

    if (data == 0)
        data = pg;
    g.maplen = data + pg;
    g.map = mmap(NULL, g.maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g.map == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    if (mprotect(g.map + data, pg, PROT_NONE) != 0) {
        perror("mprotect");
        exit(1);
    }
    g.p = g.map + data - n;
    memcpy(g.p, s, n);
    return g;
}

static void unguard(struct guarded *g)
{
    munmap(g->map, g->maplen);
}

/* The parsed slices point into the copy, so it lives until the next call. */
static struct guarded last;

static const char *at_guard(const char *s, size_t n)
{
    if (last.map)
        unguard(&last);
    last = guard(s, n);
    return last.p;
}

static int req_at(const char *s, size_t n, size_t max_head, struct gw_request *req)
{
    return gw_http_parse_request(at_guard(s, n), n, max_head, req);
}

static int resp_at(const char *s, size_t n, size_t max_head, enum gw_method m,
                   struct gw_response *resp)
{
    return gw_http_parse_response(at_guard(s, n), n, max_head, m, resp);
}

static bool slice_is(struct gw_slice s, const char *want)
{
    return s.len == strlen(want) && memcmp(s.ptr, want, s.len) == 0;
}

static struct gw_request req;
static struct gw_response resp;

/* Parses a valid request (whose head is all of s) whole, then at every
 * prefix ending at a guard page (each must be -2), and leaves the whole
 * parse in req. */
static int parse_ok(const char *s)
{
    size_t n = strlen(s);
    int bad = 0;

    for (size_t i = 0; i < n; i++) {
        int r = req_at(s, i, MAX_HEAD, &req);
        if (r != -2) {
            bad++;
            printf("#   prefix %zu of %zu: %d (%s)\n", i, n, r,
                   req.error_reason ? req.error_reason : "");
            break;
        }
    }
    int r = req_at(s, n, MAX_HEAD, &req);
    if (r != (int)n)
        printf("#   whole: %d (%s)\n", r, req.error_reason ? req.error_reason : "");
    return bad ? -3 : r;
}

#define OK_REQ(s, ...) is(parse_ok(s), strlen(s), __VA_ARGS__)

/* An invalid request: -1 with the status, and no prefix is ever accepted. */
static int reject_status(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int r = req_at(s, i, MAX_HEAD, &req);
        if (r >= 0 || (r == -1 && req.error_status == 0))
            return -100;
    }
    int r = req_at(s, n, MAX_HEAD, &req);
    if (r != -1 || req.error_reason == NULL || req.error_reason[0] == '\0')
        return -200;
    return req.error_status;
}

#define BAD_REQ(s, status, ...) is(reject_status(s, sizeof(s) - 1), status, __VA_ARGS__)

static int parse_resp_ok(const char *s, enum gw_method m)
{
    size_t n = strlen(s);

    for (size_t i = 0; i < n; i++)
        if (resp_at(s, i, MAX_HEAD, m, &resp) != -2)
            return -3;
    return resp_at(s, n, MAX_HEAD, m, &resp);
}

#define OK_RESP(s, m, ...) is(parse_resp_ok(s, m), strlen(s), __VA_ARGS__)

static bool resp_rejected(const char *s, enum gw_method m)
{
    size_t n = strlen(s);

    for (size_t i = 0; i < n; i++)
        if (resp_at(s, i, MAX_HEAD, m, &resp) >= 0)
            return false;
    return resp_at(s, n, MAX_HEAD, m, &resp) == -1 && resp.error_reason != NULL &&
           resp.error_reason[0] != '\0';
}

static void test_basic(void)
{
    OK_REQ("GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent:  curl/8 \t\r\n"
           "Accept: */*\r\nX-Empty:\r\n\r\n",
           "simple GET");
    ok(slice_is(req.method_str, "GET") && req.method == GW_METHOD_GET, "method");
    ok(slice_is(req.target, "/index.html?q=1") && slice_is(req.path, "/index.html?q=1"), "path");
    ok(req.authority.len == 0 && slice_is(req.host, "example.com"), "host from Host");
    is(req.minor_version, 1, "HTTP/1.1");
    is(req.nheaders, 4, "four fields");
    ok(slice_is(req.headers[1].name, "User-Agent") && slice_is(req.headers[1].value, "curl/8"),
       "value trimmed of OWS on both sides");
    ok(slice_is(req.headers[3].name, "X-Empty") && req.headers[3].value.len == 0, "empty value");
    is(req.content_length, -1, "no content-length");
    is(req.flags, GW_MSG_KEEPALIVE, "only keep-alive");
    is(req.error_status, 0, "no error");

    OK_REQ("GET / HTTP/1.0\r\n\r\n", "HTTP/1.0 without fields");
    ok(req.minor_version == 0 && req.nheaders == 0 && req.host.len == 0, "1.0 fields");
    is(req.flags, 0, "1.0 is not keep-alive by default");

    OK_REQ("GET / HTTP/1.1\r\nHost: a\r\nX-Tab: a\tb\r\nX-Obs: caf\xc3\xa9\r\n\r\n",
           "HTAB and obs-text in values");
    ok(slice_is(req.headers[1].value, "a\tb"), "inner HTAB kept");

    const struct gw_header *h = gw_http_find_header(req.headers, req.nheaders, "x-OBS");
    ok(h == &req.headers[2], "find_header ignores case");
    ok(gw_http_find_header(req.headers, req.nheaders, "x-ob") == NULL, "find_header: no prefix");
    ok(gw_http_find_header(req.headers, req.nheaders, "Nope") == NULL, "find_header: absent");
}

static void test_methods(void)
{
    static const struct {
        const char *m;
        enum gw_method e;
    } t[] = {
        {"GET", GW_METHOD_GET},     {"HEAD", GW_METHOD_HEAD},     {"POST", GW_METHOD_POST},
        {"PUT", GW_METHOD_PUT},     {"DELETE", GW_METHOD_DELETE}, {"OPTIONS", GW_METHOD_OPTIONS},
        {"PATCH", GW_METHOD_PATCH}, {"TRACE", GW_METHOD_TRACE},   {"get", GW_METHOD_OTHER},
        {"PURGE", GW_METHOD_OTHER}, {"GETS", GW_METHOD_OTHER},    {"M-SEARCH", GW_METHOD_OTHER},
    };
    char buf[128];

    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        snprintf(buf, sizeof(buf), "%s / HTTP/1.1\r\nHost: a\r\n\r\n", t[i].m);
        OK_REQ(buf, "%s parses", t[i].m);
        ok(req.method == t[i].e && slice_is(req.method_str, t[i].m), "%s -> enum %d", t[i].m,
           t[i].e);
    }
    OK_REQ("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "CONNECT");
    ok(req.method == GW_METHOD_CONNECT && slice_is(req.path, "example.com:443"),
       "CONNECT authority-form kept as path");
}

static void test_request_line(void)
{
    OK_REQ("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "leading empty lines skipped");
    ok(slice_is(req.method_str, "GET"), "method after empty lines");
    OK_REQ("\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "four leading empty lines");
    BAD_REQ("\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "five are too many");
    BAD_REQ("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "leading bare LF");
    BAD_REQ(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "leading space");

    BAD_REQ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "two spaces after method");
    BAD_REQ("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400, "two spaces after target");
    BAD_REQ("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400, "space after version");
    BAD_REQ("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "tab as separator");
    BAD_REQ("G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "non-token method");
    BAD_REQ(" / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "empty method");
    BAD_REQ("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "space in target");
    BAD_REQ("GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "control char in target");
    BAD_REQ("GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400, "DEL in target");
    BAD_REQ("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400, "fragment in target");
    BAD_REQ("GET /\r\nHost: a\r\n\r\n", 400, "HTTP/0.9 style: no version");
    BAD_REQ("GET / http/1.1\r\nHost: a\r\n\r\n", 400, "lower-case version");
    BAD_REQ("GET / HTTP/1.1x\r\nHost: a\r\n\r\n", 400, "junk after version");
    BAD_REQ("GET / HTTP/11\r\nHost: a\r\n\r\n", 400, "malformed version");
    BAD_REQ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505, "HTTP/1.2 is 505");
    BAD_REQ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.0 is 505");
    BAD_REQ("GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505, "HTTP/0.9 is 505");
    OK_REQ("GET /%7e!$&'()*+,;=:@[]{}|\\^`\"<>?/ HTTP/1.1\r\nHost: a\r\n\r\n",
           "printable target octets");
    OK_REQ("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", "raw UTF-8 in the target");

    /* a TLS ClientHello or binary noise is refused before a head completes */
    is(gw_http_parse_request("\x16\x03\x01\x02", 4, MAX_HEAD, &req), -1, "TLS handshake: -1 early");
    is(req.error_status, 400, "... with 400");
    is(gw_http_parse_request("GET", 3, MAX_HEAD, &req), -2, "a method prefix is partial");
    is(gw_http_parse_request("", 0, MAX_HEAD, &req), -2, "nothing is partial");
    is(gw_http_parse_request("\r", 1, MAX_HEAD, &req), -2, "a lone CR is partial");
}

static void test_targets(void)
{
    OK_REQ("GET http://Example.com:8080/a/b?c HTTP/1.1\r\nHost: other\r\n\r\n", "absolute-form");
    ok(slice_is(req.authority, "Example.com:8080"), "authority");
    ok(slice_is(req.path, "/a/b?c"), "path after the authority");
    ok(slice_is(req.host, "Example.com:8080"), "the authority wins over Host");
    ok(slice_is(req.target, "http://Example.com:8080/a/b?c"), "target as sent");
    OK_REQ("GET http://example.com HTTP/1.0\r\n\r\n", "absolute-form, empty path, no Host in 1.0");
    ok(slice_is(req.path, "/") && slice_is(req.host, "example.com"), "empty path is /");
    OK_REQ("GET HTTPS://[::1]:443/ HTTP/1.1\r\nHost: x\r\n\r\n", "https scheme, IP literal");
    ok(slice_is(req.authority, "[::1]:443"), "IPv6 authority");
    BAD_REQ("GET ftp://example.com/ HTTP/1.1\r\nHost: x\r\n\r\n", 400, "other scheme");
    BAD_REQ("GET http://user@example.com/ HTTP/1.1\r\nHost: x\r\n\r\n", 400, "userinfo");
    BAD_REQ("GET http:///a HTTP/1.1\r\nHost: x\r\n\r\n", 400, "empty authority");
    BAD_REQ("GET http://example.com:8x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad port");
    BAD_REQ("GET http://example.com?a HTTP/1.1\r\nHost: x\r\n\r\n", 400, "query right after host");
    BAD_REQ("GET http:// HTTP/1.1\r\nHost: x\r\n\r\n", 400, "scheme only");

    OK_REQ("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "asterisk-form with OPTIONS");
    ok(slice_is(req.path, "*"), "path is *");
    BAD_REQ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, "asterisk-form with GET");
    BAD_REQ("OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n", 400, "asterisk and more");

    OK_REQ("CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n", "CONNECT to an IP literal");
    BAD_REQ("CONNECT /a HTTP/1.1\r\nHost: a\r\n\r\n", 400, "CONNECT with origin-form");
    BAD_REQ("CONNECT example.com HTTP/1.1\r\nHost: a\r\n\r\n", 400, "CONNECT without port");
    BAD_REQ("CONNECT http://a:1/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "CONNECT with absolute-form");
    BAD_REQ("GET example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "authority-form with GET");
}

static void test_line_endings(void)
{
    BAD_REQ("GET / HTTP/1.1\nHost: a\r\n\r\n", 400, "bare LF after request line");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a\n\r\n", 400, "bare LF after a field");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a\r\n\n", 400, "bare LF as the blank line");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: 1\n\n", 400, "LF LF ending");
    is(gw_http_parse_request("GET / HTTP/1.1\n", 15, MAX_HEAD, &req), -1,
       "bare LF is refused before the head is complete");
    is(req.error_status, 400, "... with 400");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400, "bare CR in a value");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a\r\n\rX: b\r\n\r\n", 400, "bare CR starting a line");
    BAD_REQ("GET / HTTP/1.1\r\r\nHost: a\r\n\r\n", 400, "CR CR LF");
}

static void test_fields(void)
{
    BAD_REQ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "space before colon");
    BAD_REQ("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400, "tab before colon");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n", 400, "empty name");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a\r\nX(y): x\r\n\r\n", 400, "non-token name");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400, "no colon");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", 400, "obs-fold with SP");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\t2\r\n\r\n", 400, "obs-fold with HTAB");
    BAD_REQ("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, "first field line starts with SP");
    ok(strcmp(req.error_reason, "obs-fold") == 0, "reason: %s", req.error_reason);
    BAD_REQ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "space before colon, again");
    ok(strcmp(req.error_reason, "whitespace before colon") == 0, "reason: %s", req.error_reason);
    BAD_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01z\r\n\r\n", 400, "SOH in value");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x1fz\r\n\r\n", 400, "US in value");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fz\r\n\r\n", 400, "DEL in value");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x00z\r\n\r\n", 400, "NUL in value");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a\r\nX\x01: a\r\n\r\n", 400, "control char in name");

    /* every octet at every position of a long value (scanned a word at a
     * time): only controls other than HTAB, and DEL, are refused */
    int wrong = 0;
    for (int c = 0; c < 256; c++) {
        for (int i = 0; i < 24; i++) {
            char in[128];
            int n = snprintf(in, sizeof(in), "GET / HTTP/1.1\r\nHost: a\r\nX: %s\r\n\r\n",
                             "vvvvvvvvvvvvvvvvvvvvvvvv");
            in[n - 28 + i] = (char)c;
            bool bad = (c < 0x20 && c != '\t') || c == 0x7f;
            int r = req_at(in, (size_t)n, MAX_HEAD, &req);
            if (bad ? (r != -1 || req.error_status != 400) : r != n)
                wrong++;
        }
    }
    is(wrong, 0, "each octet at each position of a value");

    /* GW_HTTP_MAX_HEADERS fields pass, one more is 431 */
    char buf[4096];
    size_t n = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 1; i < GW_HTTP_MAX_HEADERS; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "X%d: v\r\n", i);
    snprintf(buf + n, sizeof(buf) - n, "\r\n");
    OK_REQ(buf, "%d fields", GW_HTTP_MAX_HEADERS);
    is(req.nheaders, GW_HTTP_MAX_HEADERS, "all fields kept");
    snprintf(buf + n, sizeof(buf) - n, "X: v\r\n\r\n");
    is(req_at(buf, strlen(buf), MAX_HEAD, &req), -1, "one field more");
    is(req.error_status, 431, "... is 431");
}

static void test_size(void)
{
    const char *s = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    size_t n = strlen(s);

    is(req_at(s, n, n, &req), (int)n, "head of exactly max_head");
    is(req_at(s, n, n - 1, &req), -1, "head one byte over max_head");
    is(req.error_status, 431, "... is 431");
    is(req_at(s, n - 1, n - 1, &req), -2, "partial head of max_head bytes is partial");
    is(req_at(s, n - 1, n - 2, &req), -1, "partial head over max_head");
    is(req.error_status, 431, "... is 431");

    /* a large head, parsed ending at a guard page */
    static char big[MAX_HEAD + 64];
    size_t m = (size_t)snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nHost: a\r\nX: ");
    memset(big + m, 'v', MAX_HEAD - m - 4);
    memcpy(big + MAX_HEAD - 4, "\r\n\r\n", 4);
    is(req_at(big, MAX_HEAD, MAX_HEAD, &req), MAX_HEAD, "head of max_head with a long value");
    is(req.headers[1].value.len, MAX_HEAD - m - 4, "the long value");
    is(req_at(big, MAX_HEAD - 1, MAX_HEAD, &req), -2, "... one byte short is partial");
    memcpy(big + MAX_HEAD, "GET", 3);
    is(req_at(big, MAX_HEAD + 3, MAX_HEAD, &req), MAX_HEAD, "bytes after the head do not count");
}

static void test_framing(void)
{
    OK_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n", "content-length");
    ok(req.content_length == 10 && (req.flags & GW_MSG_HAS_BODY), "CL 10 has a body");
    OK_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", "content-length 0");
    ok(req.content_length == 0 && !(req.flags & GW_MSG_HAS_BODY), "CL 0 has no body");
    OK_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n", "leading zeros");
    is(req.content_length, 7, "007 is 7");
    OK_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4611686018427387904\r\n\r\n", "CL 2^62");
    is(req.content_length, INT64_C(1) << 62, "2^62");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4611686018427387905\r\n\r\n", 400,
            "CL 2^62 + 1");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400,
            "CL overflowing 64 bits");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1a\r\n\r\n", 400, "CL with a letter");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, "negative CL");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", 400, "CL with a sign");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400, "empty CL");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", 400, "CL with a space");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400, "hex CL");

    OK_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5 ,5\r\n\r\n", "identical CL list");
    is(req.content_length, 5, "... is 5");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400, "differing CL list");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\n", 400, "trailing comma");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,,5\r\n\r\n", 400, "empty element");
    OK_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
           "identical CL fields");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 50\r\n\r\n", 400,
            "differing CL fields");

    OK_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", "chunked");
    is(req.flags, GW_MSG_CHUNKED | GW_MSG_HAS_BODY | GW_MSG_KEEPALIVE, "chunked flags");
    is(req.content_length, -1, "no length when chunked");
    OK_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Gzip ;q=\"a\\\"b\", CHUNKED\r\n\r\n",
           "gzip (with a parameter) before chunked");
    ok(req.flags & GW_MSG_CHUNKED, "chunked set");
    OK_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
           "Transfer-Encoding: chunked\r\n\r\n",
           "codings over two fields");
    ok(req.flags & GW_MSG_CHUNKED, "chunked set");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            400, "CL and TE");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
            400, "TE and CL 0");
    ok(strcmp(req.error_reason, "content-length and transfer-encoding together") == 0, "reason: %s",
       req.error_reason);
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400,
            "TE not ending in chunked");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400,
            "chunked not last");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400,
            "chunked twice in a field");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            "Transfer-Encoding: chunked\r\n\r\n",
            400, "chunked twice over two fields");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;a=b\r\n\r\n", 400,
            "chunked with a parameter");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", 400, "empty TE");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chun ked\r\n\r\n", 400,
            "TE with a space inside a coding");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400,
            "quoted coding");
    BAD_REQ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip;q=\"x, chunked\r\n\r\n", 400,
            "unterminated quoted parameter");
    OK_REQ("POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\n", "1.0 with CL");
    BAD_REQ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "TE in HTTP/1.0");

    OK_REQ("GET / HTTP/1.1\r\nhOST: a\r\n\r\n", "Host in any case");
    BAD_REQ("GET / HTTP/1.1\r\nX: a\r\n\r\n", 400, "missing Host in 1.1");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, "two Host fields");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "space in Host");
    BAD_REQ("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400, "userinfo in Host");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a:b\r\n\r\n", 400, "bad port in Host");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "slash in Host");
    OK_REQ("GET / HTTP/1.1\r\nHost:\r\n\r\n", "empty Host (RFC 9112 3.2)");
    OK_REQ("GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n", "IPv6 Host");
    BAD_REQ("GET / HTTP/1.1\r\nHost: [2001:db8::1:80\r\n\r\n", 400, "unclosed IP literal");
    BAD_REQ("GET / HTTP/1.1\r\nHost: [2001:db8::1]x\r\n\r\n", 400, "junk after IP literal");
    BAD_REQ("GET / HTTP/1.1\r\nHost: a[::1]\r\n\r\n", 400, "IP literal not first");
}

static void test_flags(void)
{
    OK_REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "close");
    is(req.flags, GW_MSG_CONN_CLOSE, "close, not keep-alive");
    OK_REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive , CLOSE\r\n\r\n", "close in list");
    is(req.flags, GW_MSG_CONN_CLOSE, "close wins");
    OK_REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo\r\nConnection: close\r\n\r\n",
           "close in a second Connection field");
    is(req.flags, GW_MSG_CONN_CLOSE, "close found");
    OK_REQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n", "a token that is not close");
    is(req.flags, GW_MSG_KEEPALIVE, "still keep-alive");
    OK_REQ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", "1.0 keep-alive");
    is(req.flags, GW_MSG_KEEPALIVE, "keep-alive");
    OK_REQ("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", "1.0 keep-alive and close");
    is(req.flags, GW_MSG_CONN_CLOSE, "close wins");

    OK_REQ("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
           "expect");
    is(req.flags, GW_MSG_EXPECT_CONTINUE | GW_MSG_KEEPALIVE | GW_MSG_HAS_BODY, "expect flag");
    OK_REQ("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continued\r\n\r\n", "another expectation");
    ok(!(req.flags & GW_MSG_EXPECT_CONTINUE), "no expect flag");
    OK_REQ("PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", "expect in 1.0");
    ok(!(req.flags & GW_MSG_EXPECT_CONTINUE), "ignored in 1.0");

    OK_REQ("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade"
           "\r\n\r\n",
           "upgrade");
    is(req.flags, GW_MSG_UPGRADE | GW_MSG_KEEPALIVE, "upgrade flag");
    OK_REQ("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", "Upgrade, not listed");
    ok(!(req.flags & GW_MSG_UPGRADE), "no upgrade flag");
    OK_REQ("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n", "listed, no Upgrade");
    ok(!(req.flags & GW_MSG_UPGRADE), "no upgrade flag");
    OK_REQ("GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
           "upgrade in 1.0");
    ok(!(req.flags & GW_MSG_UPGRADE), "ignored in 1.0");
}

static void test_pipelined(void)
{
    const char *a = "GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
    const char *b = "POST /b HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n";
    char buf[256];
    size_t na = strlen(a), nb = strlen(b);

    snprintf(buf, sizeof(buf), "%s%s", a, b);
    is(req_at(buf, na + nb, MAX_HEAD, &req), (int)na, "first of two returns its own length");
    ok(slice_is(req.path, "/a") && req.nheaders == 1, "first request");
    is(req_at(buf + na, nb, MAX_HEAD, &req), (int)nb, "then the second");
    ok(slice_is(req.path, "/b") && slice_is(req.host, "b"), "second request");
    for (size_t i = 0; i < nb; i++)
        if (req_at(buf, na + i, MAX_HEAD, &req) != (int)na)
            ok(0, "first with %zu bytes of the second", i);
    ok(1, "the first parses whatever part of the second follows");

    snprintf(buf, sizeof(buf), "%s\r\n%s", a, b);
    is(req_at(buf + na, nb + 2, MAX_HEAD, &req), (int)nb + 2,
       "an empty line between requests counts as used");
}

/* Byte-by-byte feeding as a connection sees it: the buffer grows by one
 * byte per call, starting from the previous request's end. */
static void test_byte_by_byte(void)
{
    const char *in = "\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab"
                     "GET /y HTTP/1.1\r\nHost: a\r\n\r\n";
    size_t n = strlen(in), start = 0, heads = 0, fails = 0;

    for (size_t end = 1; end <= n; end++) {
        int r = req_at(in + start, end - start, MAX_HEAD, &req);
        if (r == -1)
            fails++;
        if (r > 0) {
            heads++;
            start += (size_t)r + (size_t)(req.content_length > 0 ? req.content_length : 0);
            end = start;
        }
    }
    is(heads, 2, "two heads found");
    is(fails, 0, "no errors");
    is(start, n, "everything consumed");
}

static void test_response(void)
{
    OK_RESP("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\n", GW_METHOD_GET, "200");
    ok(resp.status == 200 && resp.minor_version == 1 && slice_is(resp.reason, "OK"), "fields");
    ok(resp.content_length == 5 && resp.flags == (GW_MSG_HAS_BODY | GW_MSG_KEEPALIVE), "framing");
    is(resp.nheaders, 2, "two fields");
    OK_RESP("HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", GW_METHOD_GET, "empty reason");
    ok(resp.status == 404 && resp.reason.len == 0, "404, no reason");
    is(resp.flags, GW_MSG_KEEPALIVE, "CL 0: no body");
    OK_RESP("HTTP/1.1 204\r\n\r\n", GW_METHOD_GET, "no SP and no reason");
    OK_RESP("HTTP/1.0 200 Tr\xe8s bien \t ok\r\nContent-Length: 1\r\n\r\n", GW_METHOD_GET,
            "obs-text in the reason");
    ok(slice_is(resp.reason, "Tr\xe8s bien \t ok"), "reason kept");
    is(resp.flags, GW_MSG_HAS_BODY, "1.0: no keep-alive");

    ok(resp_rejected("HTTP/1.1 099 x\r\n\r\n", GW_METHOD_GET), "status 99");
    ok(resp_rejected("HTTP/1.1 600 x\r\n\r\n", GW_METHOD_GET), "status 600");
    ok(resp_rejected("HTTP/1.1 20 x\r\n\r\n", GW_METHOD_GET), "two digits");
    ok(resp_rejected("HTTP/1.1 2000 x\r\n\r\n", GW_METHOD_GET), "four digits");
    ok(resp_rejected("HTTP/1.1  200 x\r\n\r\n", GW_METHOD_GET), "two spaces");
    ok(resp_rejected("HTTP/2.0 200 x\r\n\r\n", GW_METHOD_GET), "HTTP/2.0");
    ok(resp_rejected("ICY 200 OK\r\n\r\n", GW_METHOD_GET), "not HTTP");
    is(gw_http_parse_response("ICY", 3, MAX_HEAD, GW_METHOD_GET, &resp), -1, "refused early");
    ok(resp_rejected("HTTP/1.1 200 O\x01K\r\n\r\n", GW_METHOD_GET), "control char in reason");
    ok(resp_rejected("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", GW_METHOD_GET), "bare LF");
    ok(resp_rejected("HTTP/1.1 200 OK\r\nX: 1\r\n 2\r\n\r\n", GW_METHOD_GET), "obs-fold");
    ok(resp_rejected("HTTP/1.1 200 OK\r\nX : 1\r\n\r\n", GW_METHOD_GET), "space before colon");
    ok(resp_rejected("HTTP/1.1 200 OK\r\nX: \x7f\r\n\r\n", GW_METHOD_GET), "DEL in value");
    ok(resp_rejected("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                     GW_METHOD_GET),
       "differing CL");
    ok(resp_rejected("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", GW_METHOD_GET), "bad CL");
    ok(resp_rejected("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                     GW_METHOD_GET),
       "chunked twice");
    ok(resp_rejected("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                     GW_METHOD_GET),
       "CL and TE");

    const char *s = "HTTP/1.1 200 OK\r\n\r\n";
    is(resp_at(s, strlen(s), strlen(s) - 1, GW_METHOD_GET, &resp), -1, "head over max_head");
    ok(resp.error_reason != NULL, "... with a reason");
    is(resp_at(s, 10, 9, GW_METHOD_GET, &resp), -1, "partial head over max_head");
}

static void test_response_body(void)
{
    const char *cl = "HTTP/1.1 %d X\r\nContent-Length: 7\r\n\r\n";
    char buf[128];
    static const int none[] = {100, 101, 103, 199, 204, 304};

    for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++) {
        snprintf(buf, sizeof(buf), cl, none[i]);
        OK_RESP(buf, GW_METHOD_GET, "%d with CL", none[i]);
        ok(resp.content_length == -1 && !(resp.flags & GW_MSG_HAS_BODY), "%d has no body", none[i]);
    }
    snprintf(buf, sizeof(buf), cl, 200);
    OK_RESP(buf, GW_METHOD_HEAD, "200 to HEAD");
    ok(resp.content_length == -1 && resp.flags == GW_MSG_KEEPALIVE, "no body for HEAD");
    OK_RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", GW_METHOD_HEAD,
            "chunked 200 to HEAD");
    is(resp.flags, GW_MSG_KEEPALIVE, "no body, not chunked");
    OK_RESP("HTTP/1.1 200 Connection established\r\n\r\n", GW_METHOD_CONNECT, "200 to CONNECT");
    ok(!(resp.flags & (GW_MSG_HAS_BODY | GW_MSG_UNTIL_CLOSE)), "tunnel: no body");
    snprintf(buf, sizeof(buf), cl, 407);
    OK_RESP(buf, GW_METHOD_CONNECT, "407 to CONNECT");
    ok(resp.content_length == 7 && (resp.flags & GW_MSG_HAS_BODY), "has its body");

    OK_RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", GW_METHOD_GET,
            "chunked");
    is(resp.flags, GW_MSG_CHUNKED | GW_MSG_HAS_BODY | GW_MSG_KEEPALIVE, "chunked flags");
    is(resp.content_length, -1, "no length");
    OK_RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", GW_METHOD_GET, "TE gzip");
    is(resp.flags, GW_MSG_UNTIL_CLOSE | GW_MSG_HAS_BODY, "until close, no keep-alive");
    OK_RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", GW_METHOD_GET,
            "chunked not last");
    is(resp.flags, GW_MSG_UNTIL_CLOSE | GW_MSG_HAS_BODY, "until close");
    OK_RESP("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", GW_METHOD_GET, "no length");
    is(resp.flags, GW_MSG_UNTIL_CLOSE | GW_MSG_HAS_BODY, "until close, no keep-alive");
    OK_RESP("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n", GW_METHOD_POST, "CL list");
    is(resp.content_length, 3, "3");

    OK_RESP("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n", GW_METHOD_GET,
            "close");
    is(resp.flags, GW_MSG_HAS_BODY | GW_MSG_CONN_CLOSE, "close, not keep-alive");
    OK_RESP("HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n", GW_METHOD_GET,
            "1.0 keep-alive");
    is(resp.flags, GW_MSG_HAS_BODY | GW_MSG_KEEPALIVE, "keep-alive");
    OK_RESP("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n", GW_METHOD_GET,
            "1.0 keep-alive, no length");
    is(resp.flags, GW_MSG_HAS_BODY | GW_MSG_UNTIL_CLOSE, "until close wins");

    OK_RESP("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            GW_METHOD_GET, "101");
    ok((resp.flags & GW_MSG_UPGRADE) && !(resp.flags & GW_MSG_HAS_BODY), "upgrade, no body");
    OK_RESP("HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n", GW_METHOD_GET,
            "Upgrade on a 200");
    ok(!(resp.flags & GW_MSG_UPGRADE), "no upgrade flag");

    const char *two = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
    is(resp_at(two, strlen(two), MAX_HEAD, GW_METHOD_PUT, &resp), 25, "interim, then final");
    is(resp_at(two + 25, strlen(two) - 25, MAX_HEAD, GW_METHOD_PUT, &resp), 27, "final");
    is(resp.status, 204, "204");
}

int main(void)
{
    subtest("basic", test_basic);
    subtest("methods", test_methods);
    subtest("request line", test_request_line);
    subtest("targets", test_targets);
    subtest("line endings", test_line_endings);
    subtest("fields", test_fields);
    subtest("size", test_size);
    subtest("framing", test_framing);
    subtest("flags", test_flags);
    subtest("pipelined", test_pipelined);
    subtest("byte by byte", test_byte_by_byte);
    subtest("response", test_response);
    subtest("response body", test_response_body);
    return done_testing();
}
