/* Owns the arithmetic of budgets and retries; see deadline.h. */
#include "policy/deadline.h"

#include <string.h>

int64_t gw_deadline_parse(struct gw_slice v)
{
    const char *p = v.ptr, *end = v.ptr + v.len;
    int64_t n = 0;
    bool digits = false;

    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        if (n > (INT64_MAX - 9) / 10)
            return INT64_MAX / 1000; /* absurdly long: effectively no limit */
        n = n * 10 + (*p - '0');
        digits = true;
    }
    return digits ? n : -1;
}

uint64_t gw_deadline_budget(unsigned route_timeout_ms, int64_t client_ms)
{
    if (client_ms >= 0 && (uint64_t)client_ms < route_timeout_ms)
        return (uint64_t)client_ms;
    return route_timeout_ms;
}

bool gw_method_idempotent(enum gw_method m)
{
    switch (m) {
    case GW_METHOD_GET:
    case GW_METHOD_HEAD:
    case GW_METHOD_PUT:
    case GW_METHOD_DELETE:
    case GW_METHOD_OPTIONS:
    case GW_METHOD_TRACE:
        return true;
    default:
        return false;
    }
}

bool gw_retry_method_allowed(const struct gw_route *r, enum gw_method m, struct gw_slice name)
{
    if (gw_method_idempotent(m))
        return true;
    for (size_t i = 0; i < r->nretry_methods; i++)
        if (strlen(r->retry_methods[i]) == name.len &&
            memcmp(r->retry_methods[i], name.ptr, name.len) == 0)
            return true;
    return false;
}

unsigned gw_retry_backoff_ms(unsigned attempt, uint64_t rnd)
{
    unsigned base = 10;

    for (unsigned i = 1; i < attempt && base < 250; i++)
        base *= 2;
    if (base > 250)
        base = 250;
    /* Jitter spreads the retries of many clients that failed at once. */
    return base / 2 + (unsigned)(rnd % (base - base / 2 + 1));
}

bool gw_retry_budget_allows(unsigned active, unsigned retrying, double budget)
{
    double cap = budget * (double)active;

    if (cap < 3.0)
        cap = 3.0;
    return (double)retrying < cap;
}

bool gw_breaker_status_fails(const struct gw_breaker_conf *b, int status)
{
    if (status < 0 || status >= 640)
        return false;
    return (b->fail_status[status / 64] >> (status % 64)) & 1;
}
