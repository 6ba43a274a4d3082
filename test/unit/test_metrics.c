/* Metrics: slots by name, sums over workers, Prometheus text shape. */
#include "core/metrics.h"
#include "tap.h"

static int has(const struct gw_text *t, const char *s)
{
    return t->p != NULL && strstr(t->p, s) != NULL;
}

static void test_slots_and_render(void)
{
    struct gw_text t = {0};
    unsigned r1, r2, s1;

    gw_metrics_init(2);
    r1 = gw_metrics_route_slot("api");
    r2 = gw_metrics_route_slot("web");
    ok(r1 != r2 && r1 != GW_METRICS_ROUTE_NONE, "distinct routes get distinct slots");
    is(gw_metrics_route_slot("api"), r1, "a name keeps its slot (reloads keep counters)");
    s1 = gw_metrics_server_slot("app", "127.0.0.1:9000");
    is(gw_metrics_server_slot("app", "127.0.0.1:9000"), s1, "server slot stable");
    ok(gw_metrics_server_slot("other", "127.0.0.1:9000") != s1, "same address, other upstream");

    gw_metrics_request(gw_metrics_worker(0), r1, 200, 3000);
    gw_metrics_request(gw_metrics_worker(1), r1, 200, 700000);
    gw_metrics_request(gw_metrics_worker(1), r1, 503, 20);
    gw_metrics_request(gw_metrics_worker(0), GW_METRICS_ROUTE_NONE, 404, 10);
    gw_stat_add(&gw_metrics_worker(0)->servers[s1]->outcome[GW_OUTCOME_SUCCESS], 2);
    gw_stat_add(&gw_metrics_worker(1)->servers[s1]->outcome[GW_OUTCOME_SUCCESS], 1);
    unsigned l4 = gw_metrics_listen_slot("0.0.0.0:8080");
    unsigned l6 = gw_metrics_listen_slot("[::]:8080");
    unsigned lgone = gw_metrics_listen_slot("127.0.0.1:8081");
    unsigned lold = gw_metrics_listen_slot("127.0.0.1:8082");
    is(gw_metrics_listen_slot("[::]:8080"), l6, "listener slot stable");
    ok(l4 != l6 && l6 != lgone, "listener slots distinct");
    unsigned live[] = {l4, l6};
    gw_metrics_listeners_live(live, 2);
    gw_stat_gauge_add(&gw_metrics_worker(0)->active_by_listen[l4], 3);
    gw_stat_gauge_add(&gw_metrics_worker(1)->active_by_listen[l4], -1);
    gw_stat_gauge_add(&gw_metrics_worker(1)->active_by_listen[l6], 4);
    gw_stat_gauge_add(&gw_metrics_worker(1)->active_by_listen[lold], 1);
    gw_stat_add(&gw_metrics_worker(1)->accepted, 5);

    gw_metrics_render(&t);
    ok(has(&t, "gateway_requests_total{route=\"api\",code=\"200\"} 2\n"), "summed over workers");
    ok(has(&t, "gateway_requests_total{route=\"api\",code=\"503\"} 1\n"), "other code");
    ok(has(&t, "gateway_requests_total{route=\"none\",code=\"404\"} 1\n"), "unrouted requests");
    ok(!has(&t, "route=\"web\",code"), "no series for codes never seen");
    ok(has(&t, "gateway_request_duration_seconds_bucket{route=\"api\",le=\"0.005\"} 2\n"),
       "buckets are cumulative");
    ok(has(&t, "gateway_request_duration_seconds_bucket{route=\"api\",le=\"+Inf\"} 3\n"),
       "+Inf bucket equals the count");
    ok(has(&t, "gateway_request_duration_seconds_count{route=\"api\"} 3\n"), "count");
    ok(has(&t, "gateway_request_duration_seconds_sum{route=\"api\"} 0.703020\n"), "sum in s");
    ok(has(&t, "gateway_upstream_requests_total{upstream=\"app\",server=\"127.0.0.1:9000\","
               "outcome=\"success\"} 3\n"),
       "upstream outcomes");
    ok(has(&t, "gateway_connections_active{listener=\"0.0.0.0:8080\"} 2\n"), "gauge summed");
    ok(has(&t, "gateway_connections_active{listener=\"[::]:8080\"} 4\n"), "by listener");
    ok(!has(&t, "listener=\"127.0.0.1:8081\""), "a removed listener without connections is gone");
    ok(has(&t, "gateway_connections_active{listener=\"127.0.0.1:8082\"} 1\n"),
       "a removed listener stays while it has connections");
    ok(has(&t, "gateway_connections_accepted_total 5\n"), "accepted");

    /* Every sample line belongs to a family announced with HELP and TYPE. */
    int good = 1;
    char *save = NULL, *copy = strdup(t.p);
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char fam[128], want[160];
        if (line[0] == '#')
            continue;
        size_t n = strcspn(line, "{ ");
        snprintf(fam, sizeof(fam), "%.*s", (int)n, line);
        for (const char *suf = NULL; (suf = strstr(fam, "_bucket")) || (suf = strstr(fam, "_sum")) ||
                                     (suf = strstr(fam, "_count"));) {
            if (strstr(fam, "duration_seconds") == NULL)
                break;
            fam[suf - fam] = '\0';
        }
        snprintf(want, sizeof(want), "# TYPE %s ", fam);
        if (!has(&t, want)) {
            printf("# no TYPE for %s\n", fam);
            good = 0;
        }
    }
    free(copy);
    ok(good, "every sample has a # TYPE line");
    gw_text_free(&t);
}

int main(void)
{
    subtest("slots and render", test_slots_and_render);
    return done_testing();
}
