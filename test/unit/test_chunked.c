/* Unit tests of the chunked scanner (http/chunked.c). Every input is fed
 * whole, byte by byte, and split in two at every point, each piece ending
 * at a PROT_NONE page, and must give the same answer each way. */
#include "http/chunked.h"

#include "tap.h"

#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

/* Feeds pieces, each copied to end right before an inaccessible page. */
static ssize_t feed(struct gw_chunked *c, const char *s, size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), data = (n + pg - 1) / pg * pg;
    if (data == 0)
        data = pg;
    char *map = mmap(NULL, data + pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (map == MAP_FAILED || mprotect(map + data, pg, PROT_NONE) != 0) {
        perror("mmap");
        exit(1);
    }
    memcpy(map + data - n, s, n);
    ssize_t r = gw_chunked_scan(c, map + data - n, n);
    munmap(map, data + pg);
    return r;
}

/* Scans s in pieces cut at the given points; returns the bytes consumed
 * up to the end of the body, -1 on an error, -2 when it never ended. */
static ssize_t scan_cuts(const char *s, size_t n, const size_t *cuts, size_t ncuts)
{
    struct gw_chunked c;
    size_t off = 0;

    gw_chunked_init(&c);
    for (size_t i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : n;
        ssize_t r = feed(&c, s + off, end - off);
        if (r < 0)
            return -1;
        off += (size_t)r;
        if (c.done)
            return (ssize_t)off;
        if (off != end)
            return -3; /* consumed less without finishing */
    }
    return -2;
}

/* The one answer an input must give whole, byte by byte and at every
 * split, or -4 if the ways disagree. */
static ssize_t scan_every_way(const char *s, size_t n)
{
    ssize_t whole = scan_cuts(s, n, NULL, 0);
    size_t cuts[1];

    for (size_t i = 0; i <= n; i++) {
        cuts[0] = i;
        if (scan_cuts(s, n, cuts, 1) != whole) {
            printf("#   split at %zu differs\n", i);
            return -4;
        }
    }
    struct gw_chunked c;
    ssize_t total = 0, r = 0;
    gw_chunked_init(&c);
    for (size_t i = 0; i < n && !c.done; i++) {
        if ((r = feed(&c, s + i, 1)) < 0)
            break;
        total += r;
    }
    ssize_t bytewise = r < 0 ? -1 : c.done ? total : -2;
    if (bytewise != whole) {
        printf("#   byte by byte differs: %zd vs %zd\n", bytewise, whole);
        return -4;
    }
    return whole;
}

#define BODY_OK(s, ...) is(scan_every_way(s, sizeof(s) - 1), sizeof(s) - 1, __VA_ARGS__)
#define BODY_BAD(s, ...) is(scan_every_way(s, sizeof(s) - 1), -1, __VA_ARGS__)
#define BODY_PARTIAL(s, ...) is(scan_every_way(s, sizeof(s) - 1), -2, __VA_ARGS__)

static void test_valid(void)
{
    BODY_OK("0\r\n\r\n", "empty body");
    BODY_OK("5\r\nhello\r\n0\r\n\r\n", "one chunk");
    BODY_OK("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "two chunks");
    BODY_OK("A\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n", "hex in both cases");
    BODY_OK("000000000000000A\r\n0123456789\r\n0\r\n\r\n", "16 hex digits");
    BODY_OK("5;name\r\nhello\r\n0;x=1;y=\"a b\"\r\n\r\n", "chunk extensions");
    BODY_OK("5 \t;name=v\t\r\nhello\r\n0\r\n\r\n", "blanks before an extension");
    BODY_OK("5;\xe9t\xe9\r\nhello\r\n0\r\n\r\n", "obs-text in an extension");
    BODY_OK("5\r\nhe\r\nl\r\n0\r\n\r\n", "CRLF inside the data is data");
    BODY_OK("0\r\nExpires: never\r\nX-Sum:  abc \t\r\nEmpty:\r\n\r\n", "trailers");
    BODY_OK("1\r\n\x00\r\n0\r\n\r\n", "data may be any byte");

    /* the body ends where it ends; the rest is the next message */
    const char *two = "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    size_t body = strlen("3\r\nabc\r\n0\r\n\r\n");
    is(scan_every_way(two, strlen(two)), body, "stops at the end of the body");

    struct gw_chunked c;
    gw_chunked_init(&c);
    is(gw_chunked_scan(&c, two, strlen(two)), body, "consumed");
    ok(c.done, "done");
    is(gw_chunked_scan(&c, two + body, 3), 0, "nothing more once done");
    ok(c.done, "still done");

    gw_chunked_init(&c);
    is(gw_chunked_scan(&c, "FFFFFFFFFFFFFFFF\r\nabc", 21), 21, "the largest size");
    ok(!c.done && c.remaining == UINT64_MAX - 3, "remaining after three bytes");
    gw_chunked_init(&c);
    is(gw_chunked_scan(&c, "", 0), 0, "nothing to scan");
}

static void test_partial(void)
{
    BODY_PARTIAL("5\r\nhel", "inside data");
    BODY_PARTIAL("5\r\nhello\r\n0\r\n", "before the final CRLF");
    BODY_PARTIAL("5\r\nhello\r\n0\r\nX: y\r\n", "after a trailer");
    BODY_PARTIAL("5", "inside the size");
}

static void test_invalid(void)
{
    BODY_BAD("\r\n\r\n", "no size");
    BODY_BAD("g\r\n", "not hex");
    BODY_BAD("-1\r\n", "negative");
    BODY_BAD("0x5\r\nhello\r\n0\r\n\r\n", "0x prefix");
    BODY_BAD(" 5\r\nhello\r\n0\r\n\r\n", "blank before the size");
    BODY_BAD("5 \r\nhello\r\n0\r\n\r\n", "blank after the size, no extension");
    BODY_BAD("5 x\r\nhello\r\n0\r\n\r\n", "junk after the size");
    BODY_BAD("00000000000000001\r\nx\r\n0\r\n\r\n", "17 hex digits");
    BODY_BAD("10000000000000000\r\n", "size over 64 bits");
    BODY_BAD("5\nhello\r\n0\r\n\r\n", "bare LF after the size");
    BODY_BAD("5\rhello\r\n0\r\n\r\n", "bare CR after the size");
    BODY_BAD("5;a\x01\r\nhello\r\n0\r\n\r\n", "control char in an extension");
    BODY_BAD("5;a\nhello\r\n0\r\n\r\n", "bare LF after an extension");
    BODY_BAD("5\r\nhelloX\r\n0\r\n\r\n", "data longer than its size");
    BODY_BAD("5\r\nhello\n0\r\n\r\n", "bare LF after the data");
    BODY_BAD("5\r\nhello\r\r\n0\r\n\r\n", "CR CR after the data");
    BODY_BAD("0\r\n\n", "bare LF as the last line");
    BODY_BAD("0\r\n\rX", "CR and junk as the last line");
    BODY_BAD("0\r\n X: y\r\n\r\n", "trailer starting with a blank");
    BODY_BAD("0\r\nX : y\r\n\r\n", "blank before a trailer colon");
    BODY_BAD("0\r\nNoColon\r\n\r\n", "trailer without colon");
    BODY_BAD("0\r\n: y\r\n\r\n", "trailer with an empty name");
    BODY_BAD("0\r\nX: a\x7f\r\n\r\n", "DEL in a trailer value");
    BODY_BAD("0\r\nX: a\nY: b\r\n\r\n", "bare LF after a trailer");

    static char line[4200];
    size_t n = (size_t)snprintf(line, sizeof(line), "1;");
    memset(line + n, 'e', 4092 - n);
    memcpy(line + 4092, "\r\nx\r\n0\r\n\r\n", 11);
    is(scan_every_way(line, strlen(line)), strlen(line), "size line of 4094 bytes with CRLF");
    memset(line + n, 'e', 4095 - n);
    memcpy(line + 4095, "\r\nx\r\n0\r\n\r\n", 11);
    is(scan_every_way(line, strlen(line)), -1, "size line over 4 KiB");

    n = (size_t)snprintf(line, sizeof(line), "0\r\nX: ");
    memset(line + n, 'v', 4097 - n); /* the line starts at 3 */
    memcpy(line + 4097, "\r\n\r\n", 5);
    is(scan_every_way(line, strlen(line)), strlen(line), "trailer line of 4 KiB with CRLF");
    memset(line + n, 'v', 4098 - n);
    memcpy(line + 4098, "\r\n\r\n", 5);
    is(scan_every_way(line, strlen(line)), -1, "trailer line over 4 KiB");

    struct gw_chunked c;
    gw_chunked_init(&c);
    is(gw_chunked_scan(&c, "z", 1), -1, "error");
    is(gw_chunked_scan(&c, "0\r\n\r\n", 5), -1, "stays an error");
    ok(!c.done, "not done");
}

int main(void)
{
    subtest("valid", test_valid);
    subtest("partial", test_partial);
    subtest("invalid", test_invalid);
    return done_testing();
}
