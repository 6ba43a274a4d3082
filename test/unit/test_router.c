/* Unit test of policy/router.c: host kinds (exact, suffix, any), ports and
 * case in Host, prefix and exact paths, the query, methods, first match in
 * file order, and no match. Routes come from a real config file. */
#include "policy/router.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tap.h"

static const char conf_text[] =
    "listen = ( { address = \"127.0.0.1:8080\"; } );\n"
    "upstreams = ( { name = \"app\"; servers = [ \"127.0.0.1:9000\" ]; } );\n"
    "routes = (\n"
    "  { name = \"exact-path\"; host = \"API.example.com\"; path = \"/v1/health\";\n"
    "    upstream = \"app\"; },\n"
    "  { name = \"api-get\"; host = \"api.example.com\"; path_prefix = \"/v1/\";\n"
    "    methods = [ \"GET\", \"HEAD\" ]; upstream = \"app\"; },\n"
    "  { name = \"api-write\"; host = \"api.example.com\"; path_prefix = \"/v1/\";\n"
    "    methods = [ \"POST\", \"PUT\", \"DELETE\" ]; upstream = \"app\"; },\n"
    "  { name = \"wild\"; host = \"*.Example.com\"; path_prefix = \"/\"; upstream = \"app\"; },\n"
    "  { name = \"v6\"; host = \"[::1]\"; upstream = \"app\"; },\n"
    "  { name = \"static\"; path_prefix = \"/static\"; upstream = \"app\"; },\n"
    "  { name = \"root\"; host = \"example.com\"; path = \"/\"; upstream = \"app\"; },\n"
    "  { name = \"only-get\"; host = \"get.test\"; methods = [ \"GET\" ];\n"
    "    upstream = \"app\"; }\n"
    ");\n";

static const struct gw_config *cfg;

/* The name of the route chosen, or "-" for none. */
static const char *route(const char *host, const char *path, const char *method)
{
    const struct gw_route *r =
        gw_router_match(cfg, gw_slice(host, strlen(host)), gw_slice(path, strlen(path)),
                        gw_slice(method, strlen(method)));
    return r ? r->name : "-";
}

#define match(host, path, method, want)                                                            \
    do {                                                                                           \
        const char *got_ = route(host, path, method);                                              \
        if (!ok(strcmp(got_, want) == 0, "%s %s%s -> %s", method, host, path, want))               \
            printf("#   got %s\n", got_);                                                          \
    } while (0)

static void test_hosts(void)
{
    match("api.example.com", "/v1/x", "GET", "api-get");
    match("API.Example.COM", "/v1/x", "GET", "api-get");
    match("api.example.com:8080", "/v1/x", "GET", "api-get");
    match("api.example.com.", "/v1/x", "GET", "api-get");
    match("a.example.com", "/anything", "GET", "wild");
    match("a.b.EXAMPLE.com:443", "/", "GET", "wild");
    match("xexample.com", "/static/a.css", "GET", "static");
    match(".example.com", "/static/a.css", "GET", "static");
    match("[::1]:8080", "/x", "GET", "v6");
    match("[::1]", "/x", "GET", "v6");
    match("[::2]:8080", "/x", "GET", "-");
    match("example.com", "/", "GET", "root");
    match("example.com:80", "/", "GET", "root");
    match("other.org", "/static/", "GET", "static");
    match("", "/static/", "GET", "static");
    match("", "/", "GET", "-");
    match("example.com", "/x", "GET", "-");
}

static void test_paths(void)
{
    match("api.example.com", "/v1/health", "DELETE", "exact-path");
    match("api.example.com", "/v1/health?verbose=1", "PATCH", "exact-path");
    match("api.example.com", "/v1/health/", "GET", "api-get");
    match("api.example.com", "/v1/healthz", "GET", "api-get");
    /* not under /v1/: falls through to the next route that matches */
    match("api.example.com", "/v1", "GET", "wild");
    match("api.example.com", "/v1?/v1/", "GET", "wild");
    match("h", "/staticx", "GET", "static");
    match("h", "/static", "GET", "static");
    match("h", "/stati", "GET", "-");
    match("h", "/STATIC", "GET", "-");
    match("h", "/static?x", "GET", "static");
    match("h", "?/static", "GET", "-");
    match("example.com", "/?q=1", "GET", "root");
}

static void test_methods(void)
{
    match("api.example.com", "/v1/x", "HEAD", "api-get");
    match("api.example.com", "/v1/x", "POST", "api-write");
    match("api.example.com", "/v1/x", "DELETE", "api-write");
    /* first match in file order: the method-restricted routes come first */
    match("api.example.com", "/v1/x", "PATCH", "wild");
    match("get.test", "/x", "GET", "only-get");
    match("get.test", "/x", "get", "-");
    match("get.test", "/x", "GE", "-");
    match("get.test", "/x", "GETS", "-");
    match("get.test", "/x", "POST", "-");
    match("get.test", "/x", "", "-");
    match("h", "/static", "ANYTHING", "static");
}

static void test_nul_in_method(void)
{
    const struct gw_route *r =
        gw_router_match(cfg, GW_SLICE_LIT("get.test"), GW_SLICE_LIT("/x"), gw_slice("GET\0XY", 6));
    ok(r == NULL, "a method with a NUL does not match GET");
}

static void test_empty(void)
{
    struct gw_config none = {0};

    ok(gw_router_match(&none, GW_SLICE_LIT("a"), GW_SLICE_LIT("/"), GW_SLICE_LIT("GET")) == NULL,
       "no routes -> NULL");
}

int main(void)
{
    char dir[] = "/tmp/gw_test_router.XXXXXX", path[64], err[512];
    struct gw_config *c = NULL;
    FILE *f;

    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof(path), "%s/router.conf", dir);
    f = fopen(path, "w");
    if (f == NULL) {
        perror(path);
        return 1;
    }
    fputs(conf_text, f);
    fclose(f);
    if (!ok(gw_config_load(path, &c, err, sizeof(err)) == 0, "config loads")) {
        printf("#   %s\n", err);
        return done_testing();
    }
    unlink(path);
    rmdir(dir);
    cfg = c;
    subtest("hosts", test_hosts);
    subtest("paths", test_paths);
    subtest("methods", test_methods);
    subtest("NUL in method", test_nul_in_method);
    subtest("empty config", test_empty);
    gw_config_unref(c);
    return done_testing();
}
