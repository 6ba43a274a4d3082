/* Unit tests of the head writers (http/write.c): exact output for each
 * filtering and forwarding rule, and no byte written past cap. */
#include "http/write.h"

#include "http/parse.h"
#include "tap.h"

#include <sys/mman.h>
#include <unistd.h>

static struct gw_request req;
static struct gw_response resp;
static char out[8192];

static const struct gw_fwd_info fwd = {
    .client_addr = GW_SLICE_LIT("10.0.0.1"),
    .proto = GW_SLICE_LIT("http"),
    .request_id = GW_SLICE_LIT("rid-1"),
};

/* Parses a request head (which must be valid) and writes it for the
 * upstream; returns the output as a string, or "(error)". */
static const char *rewrite_request(const char *in, const struct gw_fwd_info *fi)
{
    if (gw_http_parse_request(in, strlen(in), 8192, &req) != (int)strlen(in))
        return "(parse error)";
    ssize_t n = gw_http_write_request_head(out, sizeof(out) - 1, &req, fi);
    if (n < 0)
        return "(error)";
    out[n] = '\0';
    return out;
}

static const char *rewrite_response(const char *in, enum gw_method m, struct gw_slice rid,
                                    bool close, int client_minor)
{
    if (gw_http_parse_response(in, strlen(in), 8192, m, &resp) != (int)strlen(in))
        return "(parse error)";
    ssize_t n = gw_http_write_response_head(out, sizeof(out) - 1, &resp, rid, close, client_minor);
    if (n < 0)
        return "(error)";
    out[n] = '\0';
    return out;
}

static bool same(const char *got, const char *want)
{
    if (strcmp(got, want) == 0)
        return true;
    printf("#   got:  \"");
    for (const char *p = got; *p; p++) {
        if (*p == '\r')
            fputs("\\r", stdout);
        else if (*p == '\n')
            fputs("\\n\"\n#         \"", stdout);
        else
            putchar(*p);
    }
    printf("\"\n");
    return false;
}

#define REQ_IS(in, fi, want, ...) ok(same(rewrite_request(in, fi), want), __VA_ARGS__)
#define RESP_IS(in, m, rid, close, minor, want, ...)                                               \
    ok(same(rewrite_response(in, m, rid, close, minor), want), __VA_ARGS__)

static void test_request(void)
{
    REQ_IS("GET /p?q HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\n\r\n", &fwd,
           "GET /p?q HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\nX-Forwarded-For: 10.0.0.1\r\n"
           "X-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n\r\n",
           "plain request: forwarding fields added");

    REQ_IS("POST /p HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n"
           "Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-Sum\r\nProxy-Connection: k\r\n"
           "Proxy-Authorization: Basic x\r\nProxy-Foo: 1\r\nUpgrade: h2c\r\n"
           "Expect: 100-continue\r\nX-Forwarded-Proto: https\r\nx-drop: 2\r\nX-Keep: a\r\n"
           "Content-Length: 3\r\n\r\n",
           &fwd,
           "POST /p HTTP/1.1\r\nHost: h\r\nX-Keep: a\r\nContent-Length: 3\r\n"
           "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n\r\n",
           "hop-by-hop, listed, Expect and X-Forwarded-Proto dropped");

    REQ_IS("POST /p HTTP/1.1\r\nHost: h\r\nConnection: Content-Length, host, Transfer-Encoding\r\n"
           "Transfer-Encoding: chunked\r\n\r\n",
           &fwd,
           "POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
           "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n\r\n",
           "framing fields and Host survive being listed in Connection");

    REQ_IS("GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nHost: h\r\n"
           "x-forwarded-for: 2.2.2.2, 3.3.3.3\r\nX-Forwarded-For:\r\n\r\n",
           &fwd,
           "GET / HTTP/1.1\r\nHost: h\r\n"
           "X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1\r\n"
           "X-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n\r\n",
           "client X-Forwarded-For joined, ours appended");

    REQ_IS("GET / HTTP/1.1\r\nHost: h\r\nConnection: X-Forwarded-For\r\n"
           "X-Forwarded-For: 1.1.1.1\r\n\r\n",
           &fwd,
           "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\n"
           "X-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n\r\n",
           "a listed X-Forwarded-For is hop-by-hop");

    struct gw_fwd_info keep = fwd;
    keep.request_id_present = true;
    keep.request_id = GW_SLICE_LIT("client-id");
    REQ_IS("GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: client-id\r\nConnection: x-request-id\r\n"
           "\r\n",
           &keep,
           "GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: client-id\r\n"
           "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\n\r\n",
           "the client's X-Request-Id is kept and not added again");
    REQ_IS("GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: forged\r\n\r\n", &fwd,
           "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\n"
           "X-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n\r\n",
           "a client X-Request-Id not kept is replaced");

    REQ_IS("GET http://up.example:81 HTTP/1.0\r\nAccept: */*\r\n\r\n", &fwd,
           "GET / HTTP/1.1\r\nHost: up.example:81\r\nAccept: */*\r\n"
           "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n\r\n",
           "absolute-form without Host: Host from the authority");
    REQ_IS("GET http://up.example/x HTTP/1.1\r\nAccept: */*\r\nHost: other\r\n\r\n", &fwd,
           "GET /x HTTP/1.1\r\nHost: up.example\r\nAccept: */*\r\n"
           "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n\r\n",
           "absolute-form with Host: the authority wins");

    REQ_IS("OPTIONS http://up.example HTTP/1.1\r\nHost: up.example\r\n\r\n", &fwd,
           "OPTIONS * HTTP/1.1\r\nHost: up.example\r\n"
           "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n\r\n",
           "OPTIONS to an absolute URI without a path becomes OPTIONS *");
    REQ_IS("OPTIONS http://up.example/ HTTP/1.1\r\nHost: up.example\r\n\r\n", &fwd,
           "OPTIONS / HTTP/1.1\r\nHost: up.example\r\n"
           "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n\r\n",
           "... but not with the path /");

    struct gw_fwd_info dflt = fwd;
    dflt.host = GW_SLICE_LIT("backend");
    REQ_IS("GET / HTTP/1.0\r\n\r\n", &dflt,
           "GET / HTTP/1.1\r\nHost: backend\r\nX-Forwarded-For: 10.0.0.1\r\n"
           "X-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n\r\n",
           "HTTP/1.0 without Host gets fi->host");
    REQ_IS("GET / HTTP/1.0\r\n\r\n", &fwd,
           "GET / HTTP/1.1\r\nHost: \r\nX-Forwarded-For: 10.0.0.1\r\n"
           "X-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n\r\n",
           "... or an empty Host");

    REQ_IS("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           "Sec-WebSocket-Key: k\r\n\r\n",
           &fwd,
           "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n"
           "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n"
           "Connection: upgrade\r\n\r\n",
           "upgrade: Upgrade kept, Connection: upgrade added");

    REQ_IS("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", &(struct gw_fwd_info){0},
           "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", "nothing to add: nothing added");
}

/* Every cap short of the full length fails without writing past it: the
 * output ends right before a PROT_NONE page. */
static void test_cap(void)
{
    const char *in = "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     "X-Forwarded-For: 1.1.1.1\r\n\r\n";
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    char *map = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (map == MAP_FAILED || mprotect(map + pg, pg, PROT_NONE) != 0) {
        perror("mmap");
        exit(1);
    }
    gw_http_parse_request(in, strlen(in), 8192, &req);
    ssize_t full = gw_http_write_request_head(out, sizeof(out), &req, &fwd);
    ok(full > 0 && (size_t)full < pg, "request head fits");
    int fails = 0;
    for (size_t cap = 0; cap < (size_t)full; cap++)
        if (gw_http_write_request_head(map + pg - cap, cap, &req, &fwd) != -1)
            fails++;
    is(fails, 0, "every smaller cap gives -1");
    is(gw_http_write_request_head(map + pg - (size_t)full, (size_t)full, &req, &fwd), full,
       "the exact cap fits");
    ok(memcmp(map + pg - full, out, (size_t)full) == 0, "same bytes");

    in = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    gw_http_parse_response(in, strlen(in), 8192, GW_METHOD_GET, &resp);
    full = gw_http_write_response_head(out, sizeof(out), &resp, GW_SLICE_LIT("r"), true, 1);
    fails = 0;
    for (size_t cap = 0; cap < (size_t)full; cap++)
        if (gw_http_write_response_head(map + pg - cap, cap, &resp, GW_SLICE_LIT("r"), true, 1) !=
            -1)
            fails++;
    is(fails, 0, "response: every smaller cap gives -1");
    is(gw_http_write_response_head(map + pg - full, (size_t)full, &resp, GW_SLICE_LIT("r"), true,
                                   1),
       full, "response: the exact cap fits");

    full = gw_http_write_simple_response(out, sizeof(out), 404, GW_SLICE_LIT("r"), true, "A: b\r\n",
                                         GW_SLICE_LIT("not found\n"));
    fails = 0;
    for (size_t cap = 0; cap < (size_t)full; cap++)
        if (gw_http_write_simple_response(map + pg - cap, cap, 404, GW_SLICE_LIT("r"), true,
                                          "A: b\r\n", GW_SLICE_LIT("not found\n")) != -1)
            fails++;
    is(fails, 0, "simple response: every smaller cap gives -1");
    munmap(map, 2 * pg);
}

static void test_response(void)
{
    struct gw_slice rid = GW_SLICE_LIT("rid-1");

    RESP_IS("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\n"
            "X-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: x\r\nTrailer: X-Sum\r\n"
            "Proxy-Authenticate: Basic\r\nUpgrade: h2c\r\nServer: up\r\n\r\n",
            GW_METHOD_GET, rid, false, 1,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: up\r\nX-Request-Id: rid-1\r\n\r\n",
            "hop-by-hop fields dropped, X-Request-Id added");
    RESP_IS("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n"
            "X-Request-Id: up-id\r\n\r\n",
            GW_METHOD_GET, rid, false, 1,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Request-Id: up-id\r\n\r\n",
            "framing kept even if listed; the upstream's X-Request-Id kept");
    RESP_IS("HTTP/1.1 200 OK\r\nX-Request-Id: up-id\r\nConnection: X-Request-Id\r\n"
            "Content-Length: 0\r\n\r\n",
            GW_METHOD_GET, rid, false, 1,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Request-Id: rid-1\r\n\r\n",
            "a listed X-Request-Id is replaced by ours");
    RESP_IS("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", GW_METHOD_GET, rid, true, 1,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Request-Id: rid-1\r\nConnection: close\r\n"
            "\r\n",
            "close");
    RESP_IS("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", GW_METHOD_GET, rid, false, 0,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Request-Id: rid-1\r\n"
            "Connection: keep-alive\r\n\r\n",
            "keep-alive for an HTTP/1.0 client");
    RESP_IS("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", GW_METHOD_GET, rid, true, 0,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Request-Id: rid-1\r\nConnection: close\r\n"
            "\r\n",
            "close for an HTTP/1.0 client");
    RESP_IS("HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", GW_METHOD_GET, (struct gw_slice){0},
            false, 1, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            "empty reason: the standard one; no id given: none added");
    RESP_IS("HTTP/1.1 299\r\nContent-Length: 0\r\n\r\n", GW_METHOD_GET, (struct gw_slice){0}, false,
            1, "HTTP/1.1 299 \r\nContent-Length: 0\r\n\r\n", "unknown code, no reason");
    RESP_IS("HTTP/1.1 200 Fine \xe9t\xe9\r\nContent-Length: 0\r\n\r\n", GW_METHOD_GET,
            (struct gw_slice){0}, false, 1,
            "HTTP/1.1 200 Fine \xe9t\xe9\r\nContent-Length: 0\r\n\r\n",
            "upstream reason kept as is");
    RESP_IS("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: a\r\n\r\n",
            GW_METHOD_GET, rid, true, 1,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: a\r\n"
            "X-Request-Id: rid-1\r\nConnection: upgrade\r\n\r\n",
            "101: Upgrade kept, Connection: upgrade");
}

static void test_simple(void)
{
    char buf[512];
    ssize_t n;

#define SIMPLE_IS(want, ...) ok(n >= 0 && (buf[n] = '\0', same(buf, want)), __VA_ARGS__)

    n = gw_http_write_simple_response(buf, sizeof(buf) - 1, 404, GW_SLICE_LIT("rid-1"), false, NULL,
                                      GW_SLICE_LIT("not found\n"));
    SIMPLE_IS("HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n"
              "X-Request-Id: rid-1\r\n\r\nnot found\n",
              "404 with a body");
    n = gw_http_write_simple_response(buf, sizeof(buf) - 1, 429, (struct gw_slice){0}, true,
                                      "Retry-After: 1\r\nRateLimit-Limit: 10\r\n",
                                      (struct gw_slice){0});
    SIMPLE_IS("HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nConnection: close\r\n"
              "Retry-After: 1\r\nRateLimit-Limit: 10\r\n\r\n",
              "429, close, extra headers, no body");
    n = gw_http_write_simple_response(buf, sizeof(buf) - 1, 100, (struct gw_slice){0}, false, NULL,
                                      (struct gw_slice){0});
    SIMPLE_IS("HTTP/1.1 100 Continue\r\n\r\n", "100 Continue: no length");
    n = gw_http_write_simple_response(buf, sizeof(buf) - 1, 204, GW_SLICE_LIT("r"), false, NULL,
                                      GW_SLICE_LIT("ignored"));
    SIMPLE_IS("HTTP/1.1 204 No Content\r\nX-Request-Id: r\r\n\r\n", "204: no length, no body");
    is(gw_http_write_simple_response(buf, sizeof(buf), 42, (struct gw_slice){0}, false, NULL,
                                     (struct gw_slice){0}),
       -1, "status out of range");

    static const int codes[] = {100, 101, 200, 204, 304, 400, 403, 404, 405, 408, 411, 413,
                                414, 417, 426, 429, 431, 500, 501, 502, 503, 504, 505};
    int missing = 0;
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        missing += gw_http_reason(codes[i])[0] == '\0';
    is(missing, 0, "every code we send has a reason phrase");
    ok(strcmp(gw_http_reason(502), "Bad Gateway") == 0, "502 Bad Gateway");
    ok(strcmp(gw_http_reason(599), "") == 0, "unknown: empty");
#undef SIMPLE_IS
}

int main(void)
{
    subtest("request", test_request);
    subtest("cap", test_cap);
    subtest("response", test_response);
    subtest("simple", test_simple);
    return done_testing();
}
