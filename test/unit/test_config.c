/* Unit test of core/config.c: the example file, defaults, every value of the
 * schema, the "FILE:LINE: reason" of each error class, addresses, and the
 * reference count (leaks show up under LeakSanitizer). */
#include "core/config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tap.h"

static char tmpdir[64];
static char conf_path[128];
static char err[512];
static int nconf; /* files c0.conf .. c<nconf-1>.conf written so far */

/* Writes text to a fresh file in tmpdir; returns its path. */
static const char *write_conf(const char *text)
{
    FILE *f;

    snprintf(conf_path, sizeof(conf_path), "%s/c%d.conf", tmpdir, nconf++);
    f = fopen(conf_path, "w");
    if (f == NULL) {
        perror(conf_path);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
    return conf_path;
}

static struct gw_config *load_ok(const char *text)
{
    struct gw_config *cfg = NULL;
    int rc = gw_config_load(write_conf(text), &cfg, err, sizeof(err));

    if (!ok(rc == 0 && cfg != NULL, "loads"))
        printf("#   %s\n", err);
    return rc == 0 ? cfg : NULL;
}

/* Loading text fails with "PATH:line: " followed by a reason containing
 * needle. */
static void load_err(const char *text, int line, const char *needle)
{
    struct gw_config *cfg = (struct gw_config *)1;
    char want[256];
    const char *path = write_conf(text);
    int rc = gw_config_load(path, &cfg, err, sizeof(err));

    snprintf(want, sizeof(want), "%s:%d: ", path, line);
    ok(rc == -1 && cfg == NULL, "fails: %s", needle);
    if (!ok(strncmp(err, want, strlen(want)) == 0 && strstr(err + strlen(want), needle) != NULL,
            "line %d, '%s'", line, needle))
        printf("#   got: %s\n", err);
}

#define LISTEN "listen = ( { address = \"127.0.0.1:8080\"; } );\n"
#define UPSTREAM "upstreams = ( { name = \"app\"; servers = [ \"127.0.0.1:9000\" ]; } );\n"

static void test_example(void)
{
    const char *data = getenv("GW_TEST_DATA");
    char path[512];
    struct gw_config *cfg = NULL;

    if (data != NULL)
        snprintf(path, sizeof(path), "%s/../conf/gateway.conf", data);
    else
        snprintf(path, sizeof(path), "conf/gateway.conf");
    if (!ok(gw_config_load(path, &cfg, err, sizeof(err)) == 0, "%s loads", path)) {
        printf("#   %s\n", err);
        return;
    }
    is(cfg->nlistens, 1, "one listener");
    ok(strcmp(cfg->listens[0].addr.text, "0.0.0.0:8080") == 0, "listen 0.0.0.0:8080");
    ok(strcmp(cfg->admin.text, "127.0.0.1:9901") == 0, "admin 127.0.0.1:9901");
    is(cfg->nupstreams, 1, "one upstream");
    ok(strcmp(cfg->upstreams[0].name, "app") == 0, "upstream app");
    is(cfg->upstreams[0].nservers, 1, "one server");
    ok(strcmp(cfg->upstreams[0].servers[0]->addr.text, "127.0.0.1:9000") == 0, "server 9000");
    is(cfg->nroutes, 1, "one route");
    ok(strcmp(cfg->routes[0].name, "default") == 0, "route default");
    is(cfg->routes[0].host_match, GW_HOST_ANY, "host *");
    ok(strcmp(cfg->routes[0].path, "/") == 0 && !cfg->routes[0].path_exact, "prefix /");
    ok(cfg->routes[0].upstream == &cfg->upstreams[0], "-> app");
    ok(strcmp(cfg->path, path) == 0, "path kept");
    gw_config_unref(cfg);
}

static void test_defaults(void)
{
    struct gw_config *cfg = load_ok(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = "
                                                    "\"app\"; } );\n");

    if (cfg == NULL)
        return;
    is(atomic_load(&cfg->refs), 1, "one reference");
    is(cfg->generation, 0, "generation 0");
    is(cfg->workers, 0, "workers 0");
    ok(cfg->access_log, "access_log true");
    is(cfg->drain_timeout_ms, 10000, "drain_timeout_ms");
    is(cfg->busy_poll_us, 10, "busy_poll_us");
    is(cfg->tls_helpers, -1, "tls_helpers: one per worker");
    ok(strcmp(cfg->admin.text, "127.0.0.1:9901") == 0, "admin default");
    is(cfg->admin.sa.ss_family, AF_INET, "admin AF_INET");
    is(cfg->limits.max_header_bytes, 16384, "max_header_bytes");
    is(cfg->limits.max_body_bytes, 10485760, "max_body_bytes");
    is(cfg->limits.header_timeout_ms, 10000, "header_timeout_ms");
    is(cfg->limits.idle_timeout_ms, 60000, "idle_timeout_ms");
    is(cfg->limits.max_connections, 10000, "max_connections");
    ok(cfg->listens[0].defer_accept, "defer_accept true");
    is(cfg->upstreams[0].balance, GW_BALANCE_ROUND_ROBIN, "round_robin");
    is(cfg->upstreams[0].keepalive, 32, "keepalive");
    is(cfg->upstreams[0].connect_timeout_ms, 1000, "connect_timeout_ms");
    is(cfg->routes[0].host_match, GW_HOST_ANY, "host any");
    ok(cfg->routes[0].host == NULL, "host NULL");
    ok(strcmp(cfg->routes[0].path, "/") == 0 && cfg->routes[0].path_len == 1, "path /");
    ok(!cfg->routes[0].path_exact, "prefix");
    ok(cfg->routes[0].methods == NULL && cfg->routes[0].nmethods == 0, "all methods");
    is(cfg->routes[0].timeout_ms, 30000, "timeout_ms");
    gw_config_unref(cfg);

    cfg = load_ok(LISTEN);
    if (cfg == NULL)
        return;
    ok(cfg->nupstreams == 0 && cfg->nroutes == 0 && cfg->nservers == 0, "no upstreams/routes");
    gw_config_unref(cfg);
}

static void test_full(void)
{
    struct gw_config *cfg = load_ok(
        "workers = 4;\n"
        "access_log = false;\n"
        "drain_timeout_ms = 0;\n"
        "busy_poll_us = 0;\n"
        "tls_helpers = 0;\n"
        "listen = ( { address = \"0.0.0.0:80\"; }, { address = \"[::]:8080\"; } );\n"
        "admin = { address = \"[::1]:9000\"; };\n"
        "limits = { max_header_bytes = 1024; max_body_bytes = 1099511627776L;\n"
        "  header_timeout_ms = 1; idle_timeout_ms = 86400000; max_connections = 10000000; };\n"
        "upstreams = (\n"
        "  { name = \"a\"; servers = ( \"10.0.0.1:1\", \"10.0.0.2:65535\" );\n"
        "    balance = \"least_conn\"; keepalive = 0; connect_timeout_ms = 600000; },\n"
        "  { name = \"B-2.x_y\"; servers = [ \"[2001:DB8::1]:443\" ]; keepalive = 100000; }\n"
        ");\n"
        "routes = (\n"
        "  { name = \"api\"; host = \"API.Example.COM\"; path = \"/v1/x\";\n"
        "    methods = [ \"GET\", \"POST\" ]; upstream = \"B-2.x_y\"; timeout_ms = 86400000; },\n"
        "  { name = \"wild\"; host = \"*.Example.com\"; path_prefix = \"/api/\";\n"
        "    methods = ( \"DELETE\" ); upstream = \"a\"; timeout_ms = 1; },\n"
        "  { name = \"v6\"; host = \"[::1]\"; upstream = \"a\"; }\n"
        ");\n");
    const struct sockaddr_in6 *sin6;
    const struct sockaddr_in *sin;

    if (cfg == NULL)
        return;
    is(cfg->workers, 4, "workers");
    ok(!cfg->access_log, "access_log false");
    is(cfg->drain_timeout_ms, 0, "drain 0");
    is(cfg->busy_poll_us, 0, "busy_poll_us 0");
    is(cfg->tls_helpers, 0, "tls_helpers 0");
    is(cfg->nlistens, 2, "two listeners");
    ok(strcmp(cfg->listens[1].addr.text, "[::]:8080") == 0, "IPv6 listen text");
    sin6 = (const struct sockaddr_in6 *)&cfg->listens[1].addr.sa;
    ok(sin6->sin6_family == AF_INET6 && ntohs(sin6->sin6_port) == 8080 &&
           cfg->listens[1].addr.len == sizeof(*sin6),
       "IPv6 listen sockaddr");
    ok(strcmp(cfg->admin.text, "[::1]:9000") == 0, "IPv6 admin");
    sin = (const struct sockaddr_in *)&cfg->listens[0].addr.sa;
    ok(sin->sin_family == AF_INET && ntohs(sin->sin_port) == 80 && sin->sin_addr.s_addr == 0,
       "IPv4 sockaddr");
    is(cfg->limits.max_header_bytes, 1024, "max_header_bytes");
    ok(cfg->limits.max_body_bytes == 1ULL << 40, "max_body_bytes 1<<40 (int64)");
    is(cfg->limits.header_timeout_ms, 1, "header_timeout_ms");
    is(cfg->limits.idle_timeout_ms, 86400000, "idle_timeout_ms");
    is(cfg->limits.max_connections, 10000000, "max_connections");

    is(cfg->nupstreams, 2, "two upstreams");
    is(cfg->nservers, 3, "three servers");
    is(cfg->upstreams[0].balance, GW_BALANCE_LEAST_CONN, "least_conn");
    is(cfg->upstreams[0].keepalive, 0, "keepalive 0");
    is(cfg->upstreams[0].connect_timeout_ms, 600000, "connect_timeout_ms");
    is(cfg->upstreams[1].keepalive, 100000, "keepalive max");
    is(cfg->upstreams[1].index, 1, "upstream index");
    for (size_t i = 0; i < cfg->nservers; i++) {
        is(cfg->servers[i].index, i, "server %zu index", i);
        is(cfg->servers[i].metrics_slot, 0, "server %zu metrics_slot", i);
    }
    ok(cfg->upstreams[0].servers[0] == &cfg->servers[0] &&
           cfg->upstreams[0].servers[1] == &cfg->servers[1] &&
           cfg->upstreams[1].servers[0] == &cfg->servers[2],
       "upstream servers point into cfg->servers");
    ok(cfg->servers[1].upstream == &cfg->upstreams[0] &&
           cfg->servers[2].upstream == &cfg->upstreams[1],
       "server->upstream");
    ok(strcmp(cfg->servers[1].addr.text, "10.0.0.2:65535") == 0, "server text");
    ok(strcmp(cfg->servers[2].addr.text, "[2001:db8::1]:443") == 0, "IPv6 server normalised");

    is(cfg->nroutes, 3, "three routes");
    is(cfg->routes[0].host_match, GW_HOST_EXACT, "exact host");
    ok(strcmp(cfg->routes[0].host, "api.example.com") == 0 && cfg->routes[0].host_len == 15,
       "host lower-cased");
    ok(cfg->routes[0].path_exact && strcmp(cfg->routes[0].path, "/v1/x") == 0 &&
           cfg->routes[0].path_len == 5,
       "exact path");
    ok(cfg->routes[0].nmethods == 2 && strcmp(cfg->routes[0].methods[0], "GET") == 0 &&
           strcmp(cfg->routes[0].methods[1], "POST") == 0,
       "methods array");
    ok(cfg->routes[0].upstream == &cfg->upstreams[1], "route -> upstream");
    is(cfg->routes[0].timeout_ms, 86400000, "timeout_ms");
    is(cfg->routes[1].host_match, GW_HOST_SUFFIX, "suffix host");
    ok(strcmp(cfg->routes[1].host, ".example.com") == 0 && cfg->routes[1].host_len == 12,
       "suffix stored as .example.com");
    ok(!cfg->routes[1].path_exact && strcmp(cfg->routes[1].path, "/api/") == 0, "prefix");
    ok(cfg->routes[1].nmethods == 1 && strcmp(cfg->routes[1].methods[0], "DELETE") == 0,
       "methods list");
    is(cfg->routes[1].index, 1, "route index");
    is(cfg->routes[1].metrics_slot, 0, "route metrics_slot");
    ok(cfg->routes[2].host_match == GW_HOST_EXACT && strcmp(cfg->routes[2].host, "[::1]") == 0,
       "IPv6 host");
    gw_config_unref(cfg);
}

static void test_refs(void)
{
    struct gw_config *cfg = load_ok(LISTEN);

    if (cfg == NULL)
        return;
    ok(gw_config_ref(cfg) == cfg, "ref returns cfg");
    is(atomic_load(&cfg->refs), 2, "two references");
    gw_config_unref(cfg);
    is(atomic_load(&cfg->refs), 1, "one left");
    gw_config_unref(cfg); /* frees: LeakSanitizer checks the rest */
    gw_config_unref(NULL);
    ok(1, "unref(NULL) is fine");
}

static void test_syntax_and_io(void)
{
    struct gw_config *cfg = (struct gw_config *)1;
    char path[128];

    load_err(LISTEN "workers = 1\n  = 2;\n", 3, "syntax error");
    load_err(LISTEN "a = 1;\na = 2;\n", 3, "duplicate setting name");
    snprintf(path, sizeof(path), "%s/missing.conf", tmpdir);
    ok(gw_config_load(path, &cfg, err, sizeof(err)) == -1 && cfg == NULL, "missing file fails");
    ok(strncmp(err, path, strlen(path)) == 0 && strstr(err, "No such file") != NULL,
       "missing file: %s", err);
}

static void test_unknown_keys(void)
{
    load_err("\n" LISTEN "wrokers = 2;\n", 3, "unknown top-level key 'wrokers'");
    load_err(LISTEN "limits = {\n max_header_bytes = 2048;\n foo = 1; };\n", 4,
             "unknown key 'foo' in limits");
    load_err(LISTEN "admin = {\n  adress = \"127.0.0.1:1\"; };\n", 3,
             "unknown key 'adress' in admin");
    load_err("listen = (\n { address = \"127.0.0.1:80\";\n  backlog = 5; } );\n", 3,
             "unknown key 'backlog' in listen");
    load_err(LISTEN "upstreams = ( { name = \"a\"; servers = [ \"1.2.3.4:5\" ];\n"
                    "  weight = 2; } );\n",
             3, "unknown key 'weight' in upstream");
    load_err(LISTEN UPSTREAM "routes = (\n { name = \"r\"; upstream = \"app\"; },\n"
                             " { name = \"s\"; upstream = \"app\";\n   foo = \"x\"; } );\n",
             6, "unknown key 'foo' in route");
}

static void test_types(void)
{
    load_err(LISTEN "\nworkers = \"4\";\n", 3, "'workers' must be an integer");
    load_err(LISTEN "workers = 1.5;\n", 2, "'workers' must be an integer");
    load_err(LISTEN "access_log = 1;\n", 2, "'access_log' must be true or false");
    load_err(LISTEN "limits = 5;\n", 2, "'limits' must be a group");
    load_err(LISTEN "admin = \"127.0.0.1:9901\";\n", 2, "'admin' must be a group");
    load_err("listen = \"0.0.0.0:80\";\n", 1, "'listen' must be a list of groups");
    load_err("listen = ( \"0.0.0.0:80\" );\n", 1, "must be a group");
    load_err("listen = ( { address = 80; } );\n", 1, "'address' must be a string");
    load_err("listen = ( { address = \"127.0.0.1:80\";\n defer_accept = 0; } );\n", 2,
             "'defer_accept' must be true or false");
    load_err(LISTEN "upstreams = { name = \"a\"; };\n", 2, "'upstreams' must be a list");
    load_err(LISTEN "upstreams = ( { name = \"a\";\n servers = \"1.2.3.4:5\"; } );\n", 3,
             "'servers' must be a list");
    load_err(LISTEN "upstreams = ( { name = \"a\"; servers = [\n 5 ]; } );\n", 3,
             "each server must be a string");
    load_err(LISTEN "upstreams = ( { name = 1; servers = [ \"1.2.3.4:5\" ]; } );\n", 2,
             "'name' must be a string");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
                             "  methods = ( \"GET\",\n 1 ); } );\n",
             5, "each method must be a string");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
                             "  methods = \"GET\"; } );\n",
             4, "'methods' must be a list");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
                             "  timeout_ms = true; } );\n",
             4, "'timeout_ms' must be an integer");
}

static void test_ranges(void)
{
    struct gw_config *cfg;

    load_err(LISTEN "workers = 257;\n", 2, "'workers' must be between 0 and 256");
    load_err(LISTEN "workers = -1;\n", 2, "between 0 and 256");
    load_err(LISTEN "drain_timeout_ms = 3600001;\n", 2, "between 0 and 3600000");
    load_err(LISTEN "busy_poll_us = 1001;\n", 2, "'busy_poll_us' must be between 0 and 1000");
    load_err(LISTEN "tls_helpers = 257;\n", 2, "'tls_helpers' must be between -1 and 256");
    load_err(LISTEN "tls_helpers = -2;\n", 2, "between -1 and 256");
    load_err(LISTEN "limits = { max_header_bytes = 1023; };\n", 2, "between 1024 and 1048576");
    load_err(LISTEN "limits = { max_body_bytes = 1099511627777L; };\n", 2,
             "between 0 and 1099511627776");
    load_err(LISTEN "limits = { header_timeout_ms = 0; };\n", 2, "between 1 and 3600000");
    load_err(LISTEN "limits = { idle_timeout_ms = 86400001; };\n", 2, "between 1 and 86400000");
    load_err(LISTEN "limits = { max_connections = 0; };\n", 2, "between 1 and 10000000");
    load_err(LISTEN "upstreams = ( { name = \"a\"; servers = [ \"1.2.3.4:5\" ];\n"
                    " keepalive = 100001; } );\n",
             3, "'keepalive' must be between 0 and 100000");
    load_err(LISTEN "upstreams = ( { name = \"a\"; servers = [ \"1.2.3.4:5\" ];\n"
                    " connect_timeout_ms = 0; } );\n",
             3, "between 1 and 600000");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
                             "  timeout_ms = 0; } );\n",
             4, "between 1 and 86400000");
    /* libconfig would silently truncate these to 32 bits. */
    load_err(LISTEN "# 99999999999 in a comment is fine\n"
                    "s = \"99999999999\";\n"
                    "limits = {\n max_body_bytes = 10000000000; };\n",
             5, "write 10000000000L");
    load_err(LISTEN "\nworkers = 4294967297;\n", 3, "too large");
    load_err(LISTEN "\nworkers = 0x100000000;\n", 3, "too large");
    cfg = load_ok(LISTEN "limits = { max_body_bytes = 0; max_connections = 1; };\n");
    if (cfg != NULL) {
        ok(cfg->limits.max_body_bytes == 0, "max_body_bytes 0");
        gw_config_unref(cfg);
    }
    cfg = load_ok(LISTEN "limits = { max_body_bytes = 0x7fffffff; };\n");
    if (cfg != NULL) {
        ok(cfg->limits.max_body_bytes == 0x7fffffff, "hex int");
        gw_config_unref(cfg);
    }
}

static void test_addresses(void)
{
    load_err("listen = ( { address = \"localhost:80\"; } );\n", 1, "use an IP address");
    load_err("listen = ( { address = \"0.0.0.0\"; } );\n", 1, "missing ':port'");
    load_err("listen = ( { address = \"0.0.0.0:0\"; } );\n", 1, "from 1 to 65535");
    load_err("listen = ( { address = \"0.0.0.0:65536\"; } );\n", 1, "from 1 to 65535");
    load_err("listen = ( { address = \"::1:80\"; } );\n", 1, "in brackets");
    load_err("listen = ( { address = \"[::1]\"; } );\n", 1, "missing ':port'");
    load_err("listen = ( { address = \"[::g]:80\"; } );\n", 1, "not an IPv6 address");
    load_err(LISTEN "admin = {\n address = \"127.0.0.1:x\"; };\n", 3, "from 1 to 65535");
    load_err(LISTEN "upstreams = ( { name = \"a\"; servers = [ \"1.2.3.4:5\",\n"
                    " \"app.local:80\" ]; } );\n",
             3, "invalid address 'app.local:80'");
    load_err(LISTEN "upstreams = ( { name = \"a\"; servers = [ \"1.2.3.4:5\",\n"
                    " \"1.2.3.4:5\" ]; } );\n",
             3, "duplicate server 1.2.3.4:5");
}

static void test_sockaddr_parse(void)
{
    struct gw_sockaddr a;

    ok(gw_sockaddr_parse("1.2.3.4:80", &a) == 0 && strcmp(a.text, "1.2.3.4:80") == 0, "v4");
    is(a.len, sizeof(struct sockaddr_in), "v4 len");
    ok(gw_sockaddr_parse("[::1]:8080", &a) == 0 && strcmp(a.text, "[::1]:8080") == 0, "v6");
    is(a.len, sizeof(struct sockaddr_in6), "v6 len");
    ok(gw_sockaddr_parse("[0:0::0:1]:8080", &a) == 0 && strcmp(a.text, "[::1]:8080") == 0,
       "v6 normalised");
    ok(gw_sockaddr_parse("*:80", &a) == 0 && strcmp(a.text, "0.0.0.0:80") == 0, "*:80");
    ok(gw_sockaddr_parse("0.0.0.0:65535", &a) == 0, "port 65535");
    ok(gw_sockaddr_parse("0.0.0.0:0", &a) == -1, "port 0");
    ok(gw_sockaddr_parse("1.2.3.4:", &a) == -1, "empty port");
    ok(gw_sockaddr_parse("1.2.3.4:+80", &a) == -1, "signed port");
    ok(gw_sockaddr_parse("1.2.3.4:000080", &a) == -1, "long port");
    ok(gw_sockaddr_parse(":80", &a) == -1, "no host");
    ok(gw_sockaddr_parse("1.2.3:80", &a) == -1, "short v4");
    ok(gw_sockaddr_parse("example.com:80", &a) == -1, "host name");
    ok(gw_sockaddr_parse("[::1]80", &a) == -1, "v6 without colon");
    ok(gw_sockaddr_parse("[1.2.3.4]:80", &a) == -1, "v4 in brackets");
    ok(gw_sockaddr_parse("", &a) == -1, "empty");
}

static void test_structure(void)
{
    load_err("workers = 1;\n", 1, "missing required key 'listen'");
    load_err("listen = ();\n", 1, "'listen' must have 1 to 64 entries, not 0");
    load_err("listen = (\n { address = \"127.0.0.1:1\"; },\n { address = \"127.0.0.1:01\"; } );\n",
             3, "duplicate listen address 127.0.0.1:1 (also on line 2)");
    load_err("listen = (\n { } );\n", 2, "missing required key 'address' in listen");
    load_err("listen = ( { address = \"127.0.0.1:9901\"; } );\n", 1,
             "admin address 127.0.0.1:9901 is also a listen address");
    load_err(LISTEN "admin = {\n address = \"127.0.0.1:8080\"; };\n", 3,
             "is also a listen address");
    load_err(LISTEN "upstreams = (\n { servers = [ \"1.2.3.4:5\" ]; } );\n", 3,
             "missing required key 'name' in upstream");
    load_err(LISTEN "upstreams = (\n { name = \"a\"; } );\n", 3,
             "missing required key 'servers' in upstream 'a'");
    load_err(LISTEN "upstreams = ( { name = \"a\";\n servers = [ ]; } );\n", 3,
             "'servers' must have 1 to 256 entries, not 0");
    load_err(LISTEN "upstreams = ( { name = \"a b\"; servers = [ \"1.2.3.4:5\" ]; } );\n", 2,
             "upstream name 'a b' is invalid");
    load_err(LISTEN "upstreams = ( { name = \"\"; servers = [ \"1.2.3.4:5\" ]; } );\n", 2,
             "is invalid");
    load_err(LISTEN "upstreams = (\n { name = \"a\"; servers = [ \"1.2.3.4:5\" ]; },\n"
                    " { name = \"a\"; servers = [ \"1.2.3.4:6\" ]; } );\n",
             4, "duplicate upstream name 'a' (also on line 3)");
    load_err(LISTEN "upstreams = ( { name = \"a\"; servers = [ \"1.2.3.4:5\" ];\n"
                    " balance = \"random\"; } );\n",
             3, "'balance' must be \"round_robin\" or \"least_conn\"");
    load_err(LISTEN UPSTREAM "routes = (\n { upstream = \"app\"; } );\n", 4,
             "missing required key 'name' in route");
    load_err(LISTEN UPSTREAM "routes = (\n { name = \"r\"; } );\n", 4,
             "missing required key 'upstream' in route");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\";\n upstream = \"nope\"; } );\n", 4,
             "route 'r': upstream 'nope' is not defined");
    load_err(LISTEN "routes = ( { name = \"r\";\n upstream = \"app\"; } );\n", 3,
             "upstream 'app' is not defined");
    load_err(LISTEN UPSTREAM "routes = (\n { name = \"r\"; upstream = \"app\"; },\n"
                             " { name = \"r\"; upstream = \"app\"; } );\n",
             5, "duplicate route name 'r' (also on line 4)");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r/1\"; upstream = \"app\"; } );\n", 3,
             "route name 'r/1' is invalid");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\"; path = \"/a\";\n"
                             " path_prefix = \"/b\"; } );\n",
             4, "not both");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
                             " path_prefix = \"api\"; } );\n",
             4, "'path_prefix' must start with '/'");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
                             " path = \"\"; } );\n",
             4, "'path' must start with '/'");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
                             " path = \"/a?b=1\"; } );\n",
             4, "must not contain '?'");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
                             " methods = [ ]; } );\n",
             4, "'methods' must not be empty");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
                             " methods = [ \"GET\", \"BAD METHOD\" ]; } );\n",
             4, "invalid method");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
                             " host = \"example.com:8080\"; } );\n",
             4, "leave out the port");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
                             " host = \"a.*.com\"; } );\n",
             4, "'*' is allowed only");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
                             " host = \"*.\"; } );\n",
             4, "invalid host");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
                             " host = \"a..b\"; } );\n",
             4, "invalid host");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
                             " host = \"\"; } );\n",
             4, "invalid host");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
                             " host = \"[::1]:80\"; } );\n",
             4, "invalid host");
}

static void test_include(void)
{
    char inc[128], text[256];
    struct gw_config *cfg;
    FILE *f;

    /* @include is relative to the including file's folder, and its errors
     * name the included file. */
    snprintf(inc, sizeof(inc), "%s/part.inc", tmpdir);
    f = fopen(inc, "w");
    if (f == NULL)
        return;
    fputs(UPSTREAM, f);
    fclose(f);
    snprintf(text, sizeof(text), LISTEN "@include \"part.inc\"\n");
    cfg = load_ok(text);
    if (cfg != NULL) {
        is(cfg->nupstreams, 1, "upstream from the included file");
        gw_config_unref(cfg);
    }
    f = fopen(inc, "w");
    if (f == NULL)
        return;
    fputs("\nworkers = \"x\";\n", f);
    fclose(f);
    cfg = NULL;
    ok(gw_config_load(write_conf(text), &cfg, err, sizeof(err)) == -1, "include error fails");
    ok(strcmp(err, "part.inc:2: 'workers' must be an integer") == 0, "error names %s", err);
    unlink(inc);
}

#define ROUTE_WITH(x) "routes = ( { name = \"r\"; upstream = \"app\";\n" x " } );\n"
#define UPSTREAM_WITH(x)                                                                          \
    "upstreams = ( { name = \"app\"; servers = [ \"127.0.0.1:9000\" ];\n" x " } );\n"

static void test_policy(void)
{
    struct gw_config *cfg;

    cfg = load_ok(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\"; } );\n");
    if (cfg != NULL) {
        const struct gw_route *r = &cfg->routes[0];
        const struct gw_upstream *u = &cfg->upstreams[0];
        ok(!r->rate_limit.enabled, "no rate limit by default");
        is(r->retries, 1, "one retry by default");
        is(r->retry_on, GW_RETRY_CONNECT_FAILURE | GW_RETRY_RESET, "on connect-failure, reset");
        ok(r->retry_budget > 0.19 && r->retry_budget < 0.21, "retry budget 0.2");
        ok(r->deadline_header == NULL, "deadline header: the default applies");
        ok(!u->breaker.enabled, "no breaker by default");
        is(u->max_requests, 1024, "max_requests 1024");
        is(u->max_pending, 256, "max_pending 256");
        ok((u->breaker.fail_status[500 / 64] >> (500 % 64)) & 1, "5xx fail by default");
        is(cfg->ntrusted_proxies, 0, "no trusted proxies");
        gw_config_unref(cfg);
    }
    cfg = load_ok(LISTEN
                  "trusted_proxies = [ \"10.0.0.0/8\", \"::1\", \"192.168.1.7\" ];\n"
                  UPSTREAM_WITH("breaker = { failures = 3; error_rate = 0.25; window_ms = 2000;"
                                " min_requests = 10; open_ms = 700; half_open_requests = 2;"
                                " failure_status = [ 502, 504 ]; }; max_requests = 5;"
                                " max_pending = 0;")
                  ROUTE_WITH("rate_limit = { rate = 2.5; burst = 7; key = \"header:X-Api-Key\";"
                             " headers = true; max_keys = 100; }; retries = 3;"
                             " retry_on = [ \"5xx\", \"timeout\" ]; retry_budget = 0.5;"
                             " try_timeout_ms = 250; retry_methods = [ \"POST\" ];"
                             " deadline_header = \"X-Budget\";"));
    if (cfg != NULL) {
        const struct gw_route *r = &cfg->routes[0];
        const struct gw_upstream *u = &cfg->upstreams[0];
        const struct gw_cidr *t = cfg->trusted_proxies;
        uint8_t a[16] = {10, 200, 3, 4};
        uint8_t mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 1, 1};
        uint8_t other[4] = {11, 0, 0, 1};

        ok(r->rate_limit.enabled && r->rate_limit.rate == 2.5 && r->rate_limit.burst == 7,
           "rate and burst");
        ok(r->rate_limit.key == GW_RL_KEY_HEADER && strcmp(r->rate_limit.header, "x-api-key") == 0,
           "header key, lower-cased");
        ok(r->rate_limit.headers && r->rate_limit.max_keys == 100, "headers, max_keys");
        is(r->retries, 3, "retries");
        is(r->retry_on, GW_RETRY_5XX | GW_RETRY_TIMEOUT, "retry_on");
        ok(r->retry_budget == 0.5 && r->try_timeout_ms == 250, "budget, try timeout");
        ok(r->nretry_methods == 1 && strcmp(r->retry_methods[0], "POST") == 0, "retry_methods");
        ok(strcmp(r->deadline_header, "X-Budget") == 0, "deadline_header");
        ok(u->breaker.enabled && u->breaker.failures == 3 && u->breaker.error_rate == 0.25,
           "breaker triggers");
        ok(u->breaker.window_ms == 2000 && u->breaker.min_requests == 10 &&
               u->breaker.open_ms == 700 && u->breaker.half_open_requests == 2,
           "breaker timing");
        ok(((u->breaker.fail_status[502 / 64] >> (502 % 64)) & 1) &&
               !((u->breaker.fail_status[500 / 64] >> (500 % 64)) & 1),
           "failure_status replaces the 5xx default");
        ok(u->max_requests == 5 && u->max_pending == 0, "concurrency caps");
        is(cfg->ntrusted_proxies, 3, "three trusted proxies");
        ok(gw_cidr_match(&t[0], AF_INET, a), "10.200.3.4 in 10.0.0.0/8");
        ok(gw_cidr_match(&t[0], AF_INET6, mapped), "::ffff:10.1.1.1 in 10.0.0.0/8");
        ok(!gw_cidr_match(&t[0], AF_INET, other), "11.0.0.1 not in it");
        is(t[1].prefix, 128, "a bare IPv6 address is a /128");
        is(t[2].prefix, 32, "a bare IPv4 address is a /32");
        gw_config_unref(cfg);
    }
    load_err(LISTEN UPSTREAM ROUTE_WITH("rate_limit = { burst = 5; };"), 4,
             "missing required key 'rate' in rate_limit");
    load_err(LISTEN UPSTREAM ROUTE_WITH("rate_limit = { rate = 0.0; };"), 4,
             "'rate' must be between");
    load_err(LISTEN UPSTREAM ROUTE_WITH("rate_limit = { rate = 1.0; key = \"cookie\"; };"), 4,
             "'key' must be \"client_ip\", \"route\" or \"header:NAME\"");
    load_err(LISTEN UPSTREAM ROUTE_WITH("rate_limit = { rate = 1.0; bucket = 3; };"), 4,
             "unknown key 'bucket' in rate_limit");
    load_err(LISTEN UPSTREAM ROUTE_WITH("retry_on = [ \"5xx\", \"sometimes\" ];"), 4,
             "retry_on entries are");
    load_err(LISTEN UPSTREAM ROUTE_WITH("retries = 11;"), 4, "'retries' must be between 0 and 10");
    load_err(LISTEN UPSTREAM ROUTE_WITH("retry_budget = 1.5;"), 4, "'retry_budget' must be");
    load_err(LISTEN UPSTREAM ROUTE_WITH("deadline_header = \"bad header\";"), 4,
             "'deadline_header' must be a header name");
    load_err(LISTEN UPSTREAM_WITH("breaker = { failures = 0; };") ROUTE_WITH(""), 3,
             "set 'failures' or 'error_rate' above 0");
    load_err(LISTEN UPSTREAM_WITH("breaker = { error_rate = 2.0; };") ROUTE_WITH(""), 3,
             "'error_rate' must be between 0 and 1");
    load_err(LISTEN UPSTREAM_WITH("breaker = { failure_status = [ 200 ]; };") ROUTE_WITH(""), 3,
             "failure status must be 400..599");
    load_err(LISTEN UPSTREAM_WITH("breaker = { trip = 1; };") ROUTE_WITH(""), 3,
             "unknown key 'trip' in breaker");
    load_err(LISTEN "trusted_proxies = [ \"10.0.0.0/33\" ];\n" UPSTREAM, 2,
             "each trusted proxy must be an IP address or CIDR block");
    load_err(LISTEN "trusted_proxies = [ \"proxy.local\" ];\n" UPSTREAM, 2,
             "each trusted proxy must be");
}

static void test_cache_keys(void)
{
    struct gw_config *cfg;

    cfg = load_ok(LISTEN UPSTREAM ROUTE_WITH("cache = {};"));
    if (cfg != NULL) {
        const struct gw_cache_conf *cc = &cfg->routes[0].cache;
        ok(cc->enabled && cc->ttl_s == 60 && cc->max_object_bytes == 1048576, "cache defaults");
        ok(cc->key_host && cc->key_path && cc->key_query, "key: host, path, query");
        ok(!cc->cache_authorized && !cc->store_set_cookie && cc->stale_if_error_s == 0,
           "no Authorization, no Set-Cookie, no stale window");
        is(cfg->cache_l1_bytes, 64 << 20, "l1_bytes 64 MiB");
        is(cfg->cache_l1_ttl_s, 5, "l1_ttl_s 5");
        is(cfg->npurge_from, 2, "purge from the machine itself");
        ok(!cfg->redis.enabled, "no redis");
        gw_config_unref(cfg);
    }
    cfg = load_ok(LISTEN UPSTREAM
                  "cache = { l1_bytes = 1000; l1_ttl_s = 2; purge_from = [ \"10.0.0.0/8\" ]; };\n"
                  "redis = { address = \"unix:/run/redis.sock\"; password = \"pw\"; db = 2;"
                  " timeout_ms = 50; };\n"
                  ROUTE_WITH("cache = { ttl_s = 0; max_object_bytes = 10; key = [ \"path\" ];"
                             " cache_authorized = true; store_set_cookie = true;"
                             " stale_if_error_s = 30; };"));
    if (cfg != NULL) {
        const struct gw_cache_conf *cc = &cfg->routes[0].cache;
        ok(cc->ttl_s == 0 && cc->max_object_bytes == 10 && !cc->key_host && cc->key_path &&
               !cc->key_query && cc->cache_authorized && cc->store_set_cookie &&
               cc->stale_if_error_s == 30,
           "route cache keys");
        ok(cfg->cache_l1_bytes == 1000 && cfg->cache_l1_ttl_s == 2 && cfg->npurge_from == 1,
           "top-level cache keys");
        ok(cfg->redis.enabled && cfg->redis.unix_path != NULL &&
               strcmp(cfg->redis.unix_path, "/run/redis.sock") == 0 &&
               strcmp(cfg->redis.password, "pw") == 0 && cfg->redis.db == 2 &&
               cfg->redis.timeout_ms == 50,
           "redis over a unix socket");
        gw_config_unref(cfg);
    }
    cfg = load_ok(LISTEN UPSTREAM "redis = { address = \"127.0.0.1:6379\"; };\n");
    if (cfg != NULL) {
        ok(cfg->redis.enabled && cfg->redis.unix_path == NULL && cfg->redis.timeout_ms == 20 &&
               strcmp(cfg->redis.addr.text, "127.0.0.1:6379") == 0,
           "redis over TCP, timeout 20 ms");
        gw_config_unref(cfg);
    }
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
             "  cache = { key = [ \"query\" ]; }; } );\n", 4, "must include \"path\"");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
             "  cache = { key = [ \"path\", \"cookie\" ]; }; } );\n", 4, "key parts are");
    load_err(LISTEN UPSTREAM "routes = ( { name = \"r\"; upstream = \"app\";\n"
             "  cache = { ttl = 5; }; } );\n", 4, "unknown key 'ttl' in cache");
    load_err(LISTEN UPSTREAM "redis = {\n  db = 1; };\n", 3, "missing required key 'address'");
    load_err(LISTEN UPSTREAM "redis = {\n  address = \"redis.local:6379\"; };\n", 4, "");
    load_err(LISTEN UPSTREAM "redis = {\n  address = \"unix:run/x.sock\"; };\n", 4, "absolute");
    load_err(LISTEN UPSTREAM "cache = {\n  purge_from = [ \"nope\" ]; };\n", 4,
             "purge_from entry");
    cfg = load_ok("listen = ( { address = \"127.0.0.1:8443\"; tls = { certs = ( { cert = \"a\";"
                  " key = \"b\"; }, { cert = \"c\"; key = \"d\"; } ); alpn = [ \"http/1.1\" ];"
                  " ciphers = [ \"TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256\" ]; }; } );\n");
    if (cfg != NULL) {
        const struct gw_tls_conf *t = &cfg->listens[0].tls;
        ok(t->enabled && t->ncerts == 2 && strcmp(t->keys[1], "d") == 0 && t->nalpn == 1 &&
               t->nciphers == 1 && t->line == 1,
           "tls with two certificates");
        gw_config_unref(cfg);
    }
    load_err("listen = ( { address = \"127.0.0.1:8443\";\n  tls = { cert = \"a\"; }; } );\n", 2,
             "missing required key 'key'");
    load_err("listen = ( { address = \"127.0.0.1:8443\";\n  tls = { cert = \"a\"; key = \"b\";"
             " certs = ( { cert = \"c\"; key = \"d\"; } ); }; } );\n", 2, "not both");
    load_err("listen = ( { address = \"127.0.0.1:8443\"; tls = { cert = \"a\"; key = \"b\";\n"
             "  min_version = \"1.3\"; }; } );\n", 2, "min_version");
    load_err("listen = ( { address = \"127.0.0.1:8443\"; tls = { cert = \"a\"; key = \"b\";\n"
             "  alpn = [ ]; }; } );\n", 2, "non-empty list");

    /* TLS to upstreams */
    cfg = load_ok(LISTEN "upstreams = ( { name = \"app\"; servers = [ \"127.0.0.1:9\" ];\n"
                  "  tls = { sni = \"API.Internal\"; ca = \"/x/ca.crt\"; cert = \"c\";"
                  " key = \"k\"; }; } );\n"
                  "routes = ( { name = \"r\"; upstream = \"app\"; } );\n");
    if (cfg != NULL) {
        const struct gw_upstream_tls_conf *t = &cfg->upstreams[0].tls;
        ok(t->enabled && t->verify && strcmp(t->sni, "api.internal") == 0 &&
               strcmp(t->ca, "/x/ca.crt") == 0 && strcmp(t->key, "k") == 0 && t->line == 3 &&
               cfg->upstreams[0].tls_ctx == NULL,
           "upstream tls: verify by default, sni lower-cased, nothing loaded yet");
        gw_config_unref(cfg);
    }
    cfg = load_ok(LISTEN "upstreams = ( { name = \"app\"; servers = [ \"127.0.0.1:9\" ]; } );\n"
                  "routes = ( { name = \"r\"; upstream = \"app\"; } );\n");
    if (cfg != NULL) {
        ok(!cfg->upstreams[0].tls.enabled, "upstreams are plain TCP by default");
        gw_config_unref(cfg);
    }
    load_err(LISTEN "upstreams = ( { name = \"app\"; servers = [ \"127.0.0.1:9\" ];\n"
             "  tls = { verify = \"yes\"; }; } );\n", 3, "true or false");
    load_err(LISTEN "upstreams = ( { name = \"app\"; servers = [ \"127.0.0.1:9\" ];\n"
             "  tls = { sni = \"a b\"; }; } );\n", 3, "DNS name");
    load_err(LISTEN "upstreams = ( { name = \"app\"; servers = [ \"127.0.0.1:9\" ];\n"
             "  tls = { key = \"k\"; }; } );\n", 3, "both 'cert' and 'key'");
    load_err(LISTEN "upstreams = ( { name = \"app\"; servers = [ \"127.0.0.1:9\" ];\n"
             "  tls = { ca = \"\"; }; } );\n", 3, "'ca' must name");
    load_err(LISTEN "upstreams = ( { name = \"app\"; servers = [ \"127.0.0.1:9\" ];\n"
             "  tls = { alpn = [ \"h2\" ]; }; } );\n", 3, "unknown key 'alpn'");
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/gw_test_config.XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    subtest("example config", test_example);
    subtest("defaults", test_defaults);
    subtest("every key", test_full);
    subtest("references", test_refs);
    subtest("syntax and I/O errors", test_syntax_and_io);
    subtest("unknown keys", test_unknown_keys);
    subtest("types", test_types);
    subtest("ranges", test_ranges);
    subtest("addresses", test_addresses);
    subtest("gw_sockaddr_parse", test_sockaddr_parse);
    subtest("structure", test_structure);
    subtest("include", test_include);
    subtest("policy keys", test_policy);
    subtest("cache and redis keys", test_cache_keys);
    for (int i = 0; i < nconf; i++) {
        snprintf(conf_path, sizeof(conf_path), "%s/c%d.conf", tmpdir, i);
        unlink(conf_path);
    }
    rmdir(tmpdir);
    return done_testing();
}
