/* libFuzzer target for the HTTP/1 codec: the request and response head
 * parsers and the chunked scanner, each fed the input whole and split at a
 * point taken from the input. Besides memory errors it checks that the
 * split does not change any answer, and that a head we write parses back
 * with the same framing. Build: see test/meson.build (-Dfuzz=true). */
#include "http/chunked.h"
#include "http/parse.h"
#include "http/write.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

static struct gw_request req, req2;
static struct gw_response resp, resp2;
static char out[16384];

/* Parsing only the first `split` bytes must agree with parsing them all:
 * a head that ended within them is found again, a complete parse is the
 * same parse, and a prefix is never invalid unless the whole is. */
static void check_prefix(int whole, int part, size_t split)
{
    if (whole > 0 && (size_t)whole <= split)
        CHECK(part == whole);
    else if (part > 0)
        CHECK(part == whole);
    else if (part == -1)
        CHECK(whole == -1);
}

static void fuzz_request(const char *buf, size_t size, size_t split, size_t max_head)
{
    int whole = gw_http_parse_request(buf, size, max_head, &req);
    CHECK(whole >= -2 && whole <= (int)size && whole != 0);
    CHECK(whole != -1 || (req.error_status && req.error_reason));

    if (whole > 0) {
        /* what we forward must parse back, framed the same way */
        struct gw_fwd_info fi = {GW_SLICE_LIT("192.0.2.1"), GW_SLICE_LIT("http"),
                                 GW_SLICE_LIT("rid"), split & 1, GW_SLICE_LIT("up")};
        ssize_t n = gw_http_write_request_head(out, sizeof(out), &req, &fi);
        if (n > 0 && req.nheaders + 5 <= GW_HTTP_MAX_HEADERS) {
            int back = gw_http_parse_request(out, (size_t)n, sizeof(out), &req2);
            CHECK(back == n);
            CHECK(req2.content_length == req.content_length);
            CHECK((req2.flags & (GW_MSG_CHUNKED | GW_MSG_HAS_BODY | GW_MSG_UPGRADE)) ==
                  (req.flags & (GW_MSG_CHUNKED | GW_MSG_HAS_BODY | GW_MSG_UPGRADE)));
        }
    }

    check_prefix(whole, gw_http_parse_request(buf, split, max_head, &req), split);
}

static void fuzz_response(const char *buf, size_t size, size_t split, size_t max_head,
                          enum gw_method m)
{
    int whole = gw_http_parse_response(buf, size, max_head, m, &resp);
    CHECK(whole >= -2 && whole <= (int)size && whole != 0);
    CHECK(whole != -1 || resp.error_reason);

    if (whole > 0) {
        ssize_t n = gw_http_write_response_head(out, sizeof(out), &resp, GW_SLICE_LIT("rid"),
                                                split & 1, (int)(split & 2) >> 1);
        bool dechunked = (split & 2) == 0 && (resp.flags & GW_MSG_CHUNKED);
        if (n > 0 && resp.nheaders + 2 <= GW_HTTP_MAX_HEADERS) {
            int back = gw_http_parse_response(out, (size_t)n, sizeof(out), m, &resp2);
            CHECK(back == n);
            CHECK(resp2.status == resp.status);
            if (dechunked) {
                /* an HTTP/1.0 client gets the body decoded: no chunked
                 * coding is announced to it */
                CHECK(!(resp2.flags & GW_MSG_CHUNKED));
            } else {
                CHECK(resp2.content_length == resp.content_length);
                CHECK((resp2.flags & (GW_MSG_CHUNKED | GW_MSG_HAS_BODY | GW_MSG_UNTIL_CLOSE)) ==
                      (resp.flags & (GW_MSG_CHUNKED | GW_MSG_HAS_BODY | GW_MSG_UNTIL_CLOSE)));
            }
        }
    }

    check_prefix(whole, gw_http_parse_response(buf, split, max_head, m, &resp), split);
}

static void fuzz_chunked(const char *buf, size_t size, size_t split)
{
    struct gw_chunked a, b;

    gw_chunked_init(&a);
    ssize_t whole = gw_chunked_scan(&a, buf, size);
    CHECK(whole >= -1 && whole <= (ssize_t)size);
    CHECK(whole == -1 || a.done || whole == (ssize_t)size);

    gw_chunked_init(&b);
    ssize_t r1 = gw_chunked_scan(&b, buf, split), total = r1;
    if (r1 >= 0 && !b.done) {
        CHECK(r1 == (ssize_t)split);
        ssize_t r2 = gw_chunked_scan(&b, buf + split, size - split);
        total = r2 < 0 ? -1 : r1 + r2;
    }
    CHECK(total == whole);
    CHECK(a.done == b.done);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* the input is parsed as it is, so seeds stay plain HTTP; the split
     * and the limits come from its last byte */
    unsigned ctl = size ? data[size - 1] : 0;
    size_t split = size * ctl / 255;
    size_t max_head = ctl & 0x80 ? 16 + (ctl & 0x7f) : 8192;
    static const enum gw_method methods[] = {GW_METHOD_GET, GW_METHOD_HEAD, GW_METHOD_CONNECT,
                                             GW_METHOD_POST};

    /* copies of the exact length, so ASan catches a read past the end */
    char *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    fuzz_request(buf, size, split, max_head);
    fuzz_response(buf, size, split, max_head, methods[ctl & 3]);
    fuzz_chunked(buf, size, split);
    free(buf);
    return 0;
}
