/* Owns the chunked transfer-coding state machine (RFC 9112 7.1): it checks
 * the framing byte by byte, skips chunk data in bulk, and stops exactly at
 * the end of the body. Bytes are never changed. */
#include "http/chunked.h"

#include <string.h>

/* A size line (with extensions) or a trailer field line may not be longer. */
#define LINE_MAX_BYTES 4096
/* 16 hex digits hold any uint64_t. */
#define SIZE_MAX_DIGITS 16

enum {
    S_SIZE = 0,  /* first hex digit of a size line */
    S_SIZE_MORE, /* more hex digits, or what follows them */
    S_SIZE_WS,   /* blanks after the size: only ';' may follow */
    S_EXT,       /* chunk extensions, up to CR */
    S_SIZE_LF,   /* LF ending the size line */
    S_DATA,      /* remaining bytes of chunk data */
    S_DATA_CR,   /* CRLF after the data */
    S_DATA_LF,
    S_TRAILER,  /* start of a trailer field line or the final CRLF */
    S_TR_NAME,  /* field name, up to ':' */
    S_TR_VALUE, /* field value, up to CR */
    S_TR_LF,    /* LF ending a trailer field line */
    S_LAST_LF,  /* LF of the final CRLF */
    S_DONE,
    S_ERROR,
};

enum { C_TCHAR = 1 << 0, C_VALUE = 1 << 1 };

#define TV (C_TCHAR | C_VALUE)

/* The same classes as the head parser's (tchar; field-value octets, which
 * also bound what a chunk extension may contain). */
/* clang-format off */
static const unsigned char cls[256] = {
    ['\t'] = C_VALUE, [' '] = C_VALUE,  ['!'] = TV,       ['"'] = C_VALUE,  ['#' ... '\''] = TV,
    ['('] = C_VALUE,  [')'] = C_VALUE,  ['*' ... '+'] = TV, [','] = C_VALUE, ['-' ... '.'] = TV,
    ['/'] = C_VALUE,  ['0' ... '9'] = TV, [':' ... '@'] = C_VALUE, ['A' ... 'Z'] = TV,
    ['[' ... ']'] = C_VALUE, ['^' ... '`'] = TV, ['a' ... 'z'] = TV, ['{'] = C_VALUE,
    ['|'] = TV,       ['}'] = C_VALUE,  ['~'] = TV,       [0x80 ... 0xff] = C_VALUE,
};
/* clang-format on */

#undef TV

static inline int hex_value(unsigned char c)
{
    if ((unsigned char)(c - '0') < 10)
        return c - '0';
    c |= 0x20;
    if ((unsigned char)(c - 'a') < 6)
        return c - 'a' + 10;
    return -1;
}

void gw_chunked_init(struct gw_chunked *c)
{
    memset(c, 0, sizeof(*c));
    c->state = S_SIZE;
}

ssize_t gw_chunked_scan(struct gw_chunked *c, const char *buf, size_t len)
{
    const unsigned char *p = (const unsigned char *)buf, *e = p + len;
    int state = c->state;

    if (state == S_ERROR)
        return -1;
    while (p < e && state != S_DONE) {
        if (state == S_DATA) {
            size_t n = (size_t)(e - p);
            if (c->remaining < n)
                n = (size_t)c->remaining;
            if (c->on_data != NULL)
                c->on_data(c->arg, (const char *)p, n);
            p += n;
            c->remaining -= n;
            if (c->remaining == 0)
                state = S_DATA_CR;
            continue;
        }
        unsigned char ch = *p++;
        if (++c->line_len > LINE_MAX_BYTES)
            goto bad;
        switch (state) {
        case S_SIZE:
            if (hex_value(ch) < 0)
                goto bad;
            c->remaining = (uint64_t)hex_value(ch);
            state = S_SIZE_MORE;
            break;
        case S_SIZE_MORE:
            if (hex_value(ch) >= 0) {
                if (c->line_len > SIZE_MAX_DIGITS)
                    goto bad;
                c->remaining = c->remaining << 4 | (uint64_t)hex_value(ch);
            } else if (ch == ';') {
                state = S_EXT;
            } else if (ch == '\r') {
                state = S_SIZE_LF;
            } else if (ch == ' ' || ch == '\t') {
                state = S_SIZE_WS;
            } else {
                goto bad;
            }
            break;
        case S_SIZE_WS:
            if (ch == ';')
                state = S_EXT;
            else if (ch != ' ' && ch != '\t')
                goto bad;
            break;
        case S_EXT:
            if (ch == '\r')
                state = S_SIZE_LF;
            else if (!(cls[ch] & C_VALUE))
                goto bad;
            break;
        case S_SIZE_LF:
            if (ch != '\n')
                goto bad;
            c->line_len = 0;
            state = c->remaining ? S_DATA : S_TRAILER;
            break;
        case S_DATA_CR:
            if (ch != '\r')
                goto bad;
            state = S_DATA_LF;
            break;
        case S_DATA_LF:
            if (ch != '\n')
                goto bad;
            c->line_len = 0;
            state = S_SIZE;
            break;
        case S_TRAILER:
            if (ch == '\r')
                state = S_LAST_LF;
            else if (cls[ch] & C_TCHAR)
                state = S_TR_NAME;
            else
                goto bad;
            break;
        case S_TR_NAME:
            if (ch == ':')
                state = S_TR_VALUE;
            else if (!(cls[ch] & C_TCHAR))
                goto bad;
            break;
        case S_TR_VALUE:
            if (ch == '\r')
                state = S_TR_LF;
            else if (!(cls[ch] & C_VALUE))
                goto bad;
            break;
        case S_TR_LF:
            if (ch != '\n')
                goto bad;
            c->line_len = 0;
            state = S_TRAILER;
            break;
        case S_LAST_LF:
            if (ch != '\n')
                goto bad;
            state = S_DONE;
            break;
        default:
            goto bad;
        }
    }
    c->state = state;
    c->done = state == S_DONE;
    return p - (const unsigned char *)buf;

bad:
    c->state = S_ERROR;
    return -1;
}
