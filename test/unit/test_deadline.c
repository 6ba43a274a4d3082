/* Unit test of policy/deadline.c: deadline header values, budgets, which
 * methods may be retried, backoff bounds, the retry budget and breaker
 * failure statuses. */
#include "policy/deadline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tap.h"

static int64_t parse(const char *s)
{
    return gw_deadline_parse(gw_slice(s, strlen(s)));
}

static void test_parse(void)
{
    is(parse("1500"), 1500, "plain number");
    is(parse("  250 \t"), 250, "surrounding white space");
    is(parse("0"), 0, "zero is a valid (expired) deadline");
    is(parse(""), -1, "empty is ignored");
    is(parse("   "), -1, "blank is ignored");
    is(parse("-5"), -1, "negative is ignored");
    is(parse("12ms"), -1, "units are not accepted");
    is(parse("1 2"), -1, "inner space is rejected");
    ok(parse("99999999999999999999999") > 1000000000, "huge values saturate, not wrap");
}

static void test_budget(void)
{
    is(gw_deadline_budget(30000, -1), 30000, "no header: the route's timeout");
    is(gw_deadline_budget(30000, 200), 200, "a smaller client deadline wins");
    is(gw_deadline_budget(300, 5000), 300, "a larger client deadline does not extend");
    is(gw_deadline_budget(300, 0), 0, "zero: already expired");
}

static void test_methods(void)
{
    static const char conf[] = "listen = ( { address = \"127.0.0.1:8080\"; } );\n"
                               "upstreams = ( { name = \"a\"; servers = [ \"127.0.0.1:9\" ]; } );\n"
                               "routes = ( { name = \"r\"; upstream = \"a\"; retries = 2;\n"
                               "  retry_methods = [ \"POST\" ]; } );\n";
    char path[] = "/tmp/gw_deadline_XXXXXX";
    struct gw_config *cfg = NULL;
    char err[256];
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");

    fputs(conf, f);
    fclose(f);
    ok(gw_config_load(path, &cfg, err, sizeof(err)) == 0, "config loads: %s", err);
    unlink(path);
    if (cfg == NULL)
        return;
    ok(gw_method_idempotent(GW_METHOD_GET), "GET is idempotent");
    ok(gw_method_idempotent(GW_METHOD_PUT), "PUT is idempotent");
    ok(gw_method_idempotent(GW_METHOD_DELETE), "DELETE is idempotent");
    ok(!gw_method_idempotent(GW_METHOD_POST), "POST is not");
    ok(!gw_method_idempotent(GW_METHOD_PATCH), "PATCH is not");
    ok(gw_retry_method_allowed(&cfg->routes[0], GW_METHOD_POST, GW_SLICE_LIT("POST")),
       "POST listed in retry_methods may be retried");
    ok(!gw_retry_method_allowed(&cfg->routes[0], GW_METHOD_PATCH, GW_SLICE_LIT("PATCH")),
       "PATCH not listed may not");
    is(cfg->routes[0].retries, 2, "retries parsed");
    is(cfg->routes[0].retry_on, GW_RETRY_CONNECT_FAILURE | GW_RETRY_RESET,
       "default retry_on: connect-failure and reset");
    gw_config_unref(cfg);
}

static void test_backoff(void)
{
    unsigned lo = ~0u, hi = 0;

    for (uint64_t rnd = 0; rnd < 1000; rnd++) {
        unsigned b = gw_retry_backoff_ms(1, rnd * 7919);
        lo = b < lo ? b : lo;
        hi = b > hi ? b : hi;
    }
    is(lo, 5, "first retry: at least half of 10 ms");
    is(hi, 10, "first retry: at most 10 ms");
    ok(gw_retry_backoff_ms(3, 0) >= 20 && gw_retry_backoff_ms(3, 12345) <= 40,
       "third retry: within [20, 40] ms");
    ok(gw_retry_backoff_ms(20, 999) <= 250 && gw_retry_backoff_ms(20, 0) >= 125,
       "capped at 250 ms");
}

static void test_budget_share(void)
{
    ok(gw_retry_budget_allows(1, 0, 0.2), "a quiet worker may retry");
    ok(gw_retry_budget_allows(1, 2, 0.2), "up to 3 retries in flight at least");
    ok(!gw_retry_budget_allows(1, 3, 0.2), "not a fourth with 1 active");
    ok(gw_retry_budget_allows(100, 19, 0.2), "19 of 100 under a 20%% budget");
    ok(!gw_retry_budget_allows(100, 20, 0.2), "20 of 100 is the cap");
    ok(!gw_retry_budget_allows(100, 3, 0.0) && gw_retry_budget_allows(100, 2, 0.0),
       "budget 0 still allows the minimum of 3");
}

static void test_fail_status(void)
{
    struct gw_breaker_conf b;

    memset(&b, 0, sizeof(b));
    b.fail_status[503 / 64] |= 1ull << (503 % 64);
    ok(gw_breaker_status_fails(&b, 503), "listed status fails");
    ok(!gw_breaker_status_fails(&b, 500), "unlisted status does not");
    ok(!gw_breaker_status_fails(&b, 200), "200 does not");
    ok(!gw_breaker_status_fails(&b, 1000), "out of range does not");
}

int main(void)
{
    subtest("deadline header values", test_parse);
    subtest("budget", test_budget);
    subtest("retryable methods", test_methods);
    subtest("backoff", test_backoff);
    subtest("retry budget", test_budget_share);
    subtest("breaker failure statuses", test_fail_status);
    return done_testing();
}
