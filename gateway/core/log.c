/* Owns the log formats: error lines on stderr and JSON access lines. */
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

void gw_log_error(const char *fmt, ...)
{
    char line[1024];
    struct timespec ts;
    struct tm tm;
    size_t n;
    va_list ap;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%SZ gateway: ", &tm);
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    n += (size_t)m < sizeof(line) - n - 1 ? (size_t)m : sizeof(line) - n - 2;
    line[n++] = '\n';
    /* One write per line so that lines of different threads do not mix. */
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}

/* Appends s as a JSON string body, escaping quotes, backslashes and
 * control bytes; at most max input bytes. Returns the new position or
 * NULL when out of room. */
static char *put_str(char *p, char *end, struct gw_slice s, size_t max)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = s.len < max ? s.len : max;

    if (p >= end)
        return NULL;
    *p++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s.ptr[i];
        if (end - p < 7)
            return NULL;
        if (ch == '"' || ch == '\\') {
            *p++ = '\\';
            *p++ = (char)ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            /* Non-ASCII is escaped byte by byte: the line stays valid JSON
             * whatever a client put in its request target. */
            *p++ = '\\';
            *p++ = 'u';
            *p++ = '0';
            *p++ = '0';
            *p++ = hex[ch >> 4];
            *p++ = hex[ch & 15];
        } else {
            *p++ = (char)ch;
        }
    }
    if (end - p < 1)
        return NULL;
    *p++ = '"';
    return p;
}

static char *put_raw(char *p, char *end, const char *s, size_t n)
{
    if (p == NULL || (size_t)(end - p) < n)
        return NULL;
    memcpy(p, s, n);
    return p + n;
}

#define PUT_LIT(p, end, lit) put_raw(p, end, lit, sizeof(lit) - 1)

size_t gw_log_access_format(char *out, size_t cap, const struct gw_access_rec *r)
{
    char *p = out, *end = out + cap;
    char tmp[96];
    struct tm tm;
    time_t secs = (time_t)(r->wall_us / 1000000u);
    int n;

    gmtime_r(&secs, &tm);
    n = snprintf(tmp, sizeof(tmp), "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03uZ\",\"client\":",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (unsigned)(r->wall_us / 1000u % 1000u));
    p = put_raw(p, end, tmp, (size_t)n);
    if (p == NULL || (p = put_str(p, end, r->client, 64)) == NULL)
        return 0;
    if ((p = PUT_LIT(p, end, ",\"method\":")) == NULL || (p = put_str(p, end, r->method, 32)) == NULL)
        return 0;
    if ((p = PUT_LIT(p, end, ",\"path\":")) == NULL || (p = put_str(p, end, r->path, 1024)) == NULL)
        return 0;
    n = snprintf(tmp, sizeof(tmp), ",\"status\":%d,\"bytes\":%llu,\"duration_ms\":%.3f,\"upstream\":",
                 r->status, (unsigned long long)r->bytes, (double)r->duration_us / 1000.0);
    if ((p = put_raw(p, end, tmp, (size_t)n)) == NULL || (p = put_str(p, end, r->upstream, 64)) == NULL)
        return 0;
    if ((p = PUT_LIT(p, end, ",\"route\":")) == NULL || (p = put_str(p, end, r->route, 64)) == NULL)
        return 0;
    if ((p = PUT_LIT(p, end, ",\"request_id\":")) == NULL ||
        (p = put_str(p, end, r->request_id, 128)) == NULL)
        return 0;
    if (r->cache != NULL &&
        ((p = PUT_LIT(p, end, ",\"cache\":")) == NULL ||
         (p = put_str(p, end, gw_slice(r->cache, strlen(r->cache)), 16)) == NULL))
        return 0;
    if ((p = PUT_LIT(p, end, "}\n")) == NULL)
        return 0;
    return (size_t)(p - out);
}
