"""Per-route rate limits: token buckets shared by every worker, 429 with Retry-After and the
RateLimit-* headers, keys by route / client address / header, trusted proxies, a bounded key
table, and bucket state kept across a reload."""

import threading
import time

from gwtest import route_block, upstream_block

REJECTED = "gateway_ratelimit_rejected_total"


def limited_gateway(gateway_factory, upstream, rate_limit, workers=2, **extra):
    route = route_block("limited", "app", path_prefix="/")
    route["rate_limit"] = rate_limit
    return gateway_factory(upstreams=[upstream_block("app", upstream.addr)], routes=[route],
                           workers=workers, **extra)


def test_burst_then_429_with_headers(gateway_factory, upstream):
    """rate 0.5/s burst 3, one bucket for the route: three requests pass with RateLimit-*
    counting down, the fourth is 429 with Retry-After and never reaches the upstream."""
    gw = limited_gateway(gateway_factory, upstream,
                         {"rate": 0.5, "burst": 3, "key": "route", "headers": True})
    c = gw.conn()
    try:
        got = [gw.request("GET", "/ok", conn=c) for _ in range(3)]
        assert [r.status for r in got] == [200, 200, 200], got
        assert [r.header("RateLimit-Remaining") for r in got] == ["2", "1", "0"]
        assert all(r.header("RateLimit-Limit") == "3" for r in got)
        r = gw.request("GET", "/ok", conn=c)
    finally:
        c.close()
    assert r.status == 429, r
    # one token every 2 s: the next one is 1-2 s away
    assert r.header("Retry-After") in ("1", "2"), r
    assert r.header("RateLimit-Limit") == "3"
    assert r.header("RateLimit-Remaining") == "0"
    assert int(r.header("RateLimit-Reset")) >= 1
    assert r.header("X-Request-Id")
    assert len(upstream.paths()) == 3
    m = gw.wait_metric(REJECTED, 1, route="limited")
    assert m.value(REJECTED, route="limited") == 1


def test_headers_off_by_default(gateway_factory, upstream):
    """Without headers = true, admitted responses carry no RateLimit-* fields."""
    gw = limited_gateway(gateway_factory, upstream, {"rate": 100.0, "burst": 10, "key": "route"})
    r = gw.get("/ok")
    assert r.status == 200 and r.header("RateLimit-Remaining") is None


def test_accuracy_across_workers(gateway_factory, upstream):
    """rate 40/s, burst 20, 4 workers, 16 keep-alive clients sending as fast as they can for
    3 s: admitted = burst + rate * elapsed within 10 %. A per-worker bucket would admit
    about four times that."""
    rate, burst, run_s = 40.0, 20, 3.0
    gw = limited_gateway(gateway_factory, upstream,
                         {"rate": rate, "burst": burst, "key": "route"}, workers=4,
                         access_log=False)
    counts = {"ok": 0, "limited": 0, "other": 0}
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + run_s

    def client():
        c = gw.conn()
        local = {"ok": 0, "limited": 0, "other": 0}
        try:
            while time.monotonic() < stop_at:
                r = gw.request("GET", "/ok", conn=c)
                key = "ok" if r.status == 200 else "limited" if r.status == 429 else "other"
                local[key] += 1
        finally:
            c.close()
            with lock:
                for k, v in local.items():
                    counts[k] += v

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    elapsed = time.monotonic() - start
    expected = burst + rate * elapsed
    assert counts["other"] == 0, counts
    assert counts["limited"] > counts["ok"], counts  # the clients really were over the limit
    print("admitted %d, expected %.1f over %.2f s, limited %d" % (counts["ok"], expected, elapsed,
                                                                counts["limited"]))
    assert abs(counts["ok"] - expected) <= 0.10 * expected, (counts, expected, elapsed)


def test_client_ip_behind_trusted_proxy(gateway_factory, upstream):
    """key client_ip with 127.0.0.1 trusted: the client is the nearest untrusted
    X-Forwarded-For entry, so two clients behind the proxy have separate buckets, and a
    client cannot escape its bucket by prepending made-up entries."""
    gw = limited_gateway(gateway_factory, upstream,
                         {"rate": 0.01, "burst": 2, "key": "client_ip"},
                         trusted_proxies=["127.0.0.0/8", "10.9.0.0/16"])

    def get(xff):
        return gw.get("/ok", headers={"X-Forwarded-For": xff}).status

    assert [get("192.0.2.1"), get("192.0.2.1"), get("192.0.2.1")] == [200, 200, 429]
    assert get("192.0.2.2") == 200, "another client behind the proxy has its own bucket"
    # made-up entries to the left of the real client do not change who it is
    assert get("203.0.113.77, 192.0.2.1") == 429
    # a trusted hop (10.9.x.x) between client and us is skipped
    assert get("192.0.2.1, 10.9.0.5") == 429
    assert get("198.51.100.3, 10.9.0.5") == 200


def test_xff_ignored_without_trusted_proxies(gateway_factory, upstream):
    """With no trusted_proxies the peer address is the key: X-Forwarded-For cannot be used to
    get a fresh bucket."""
    gw = limited_gateway(gateway_factory, upstream, {"rate": 0.01, "burst": 2})
    statuses = [gw.get("/ok", headers={"X-Forwarded-For": "192.0.2.%d" % i}).status
                for i in range(3)]
    assert statuses == [200, 200, 429]


def test_header_key(gateway_factory, upstream):
    """key header:X-Api-Key: each key value has its own bucket; a request without the header
    is limited by its address instead of going unlimited."""
    gw = limited_gateway(gateway_factory, upstream,
                         {"rate": 0.01, "burst": 1, "key": "header:X-Api-Key"})
    assert gw.get("/ok", headers={"X-Api-Key": "alpha"}).status == 200
    assert gw.get("/ok", headers={"X-Api-Key": "alpha"}).status == 429
    assert gw.get("/ok", headers={"X-Api-Key": "beta"}).status == 200
    assert gw.get("/ok").status == 200
    assert gw.get("/ok").status == 429


def test_key_table_is_bounded(gateway_factory, upstream):
    """max_keys 16 and 400 distinct clients: the table does not grow, the oldest keys are
    evicted (counted in gateway_ratelimit_evictions_total), and an evicted client starts
    again with a full bucket while the gateway keeps serving."""
    gw = limited_gateway(gateway_factory, upstream,
                         {"rate": 0.001, "burst": 1, "key": "client_ip", "max_keys": 16},
                         trusted_proxies=["127.0.0.1"], access_log=False)
    c = gw.conn()
    try:
        first = gw.request("GET", "/ok", headers={"X-Forwarded-For": "10.1.0.0"}, conn=c)
        again = gw.request("GET", "/ok", headers={"X-Forwarded-For": "10.1.0.0"}, conn=c)
        assert (first.status, again.status) == (200, 429)
        for i in range(1, 400):
            r = gw.request("GET", "/ok", headers={"X-Forwarded-For": "10.1.%d.%d" % (i // 256,
                                                                                     i % 256)},
                           conn=c)
            assert r.status == 200, (i, r)
        back = gw.request("GET", "/ok", headers={"X-Forwarded-For": "10.1.0.0"}, conn=c)
    finally:
        c.close()
    assert back.status == 200, "the first client's entry should have been evicted"
    m = gw.metrics()
    assert m.value("gateway_ratelimit_evictions_total", route="limited") >= 300


def test_bucket_survives_reload(gateway_factory, upstream):
    """An exhausted bucket stays exhausted across a SIGHUP that keeps the route's name (and
    changes something else); a reload that raises the burst lets requests through at once."""
    gw = limited_gateway(gateway_factory, upstream, {"rate": 0.01, "burst": 2, "key": "route"})
    assert [gw.get("/ok").status for _ in range(3)] == [200, 200, 429]

    def bump_timeout(s):
        s["routes"][0]["timeout_ms"] = 20000

    gw.reload(bump_timeout)
    assert gw.get("/ok").status == 429, "reload must not refill the bucket"

    def raise_burst(s):
        s["routes"][0]["rate_limit"]["burst"] = 10

    gw.reload(raise_burst)
    assert gw.get("/ok").status == 200, "a larger bucket has room at once"


def test_429_keeps_connection_and_others_unaffected(gateway_factory, upstream):
    """A limited route answers 429 on a keep-alive connection that stays usable; a route
    without a limit is not affected."""
    limited = route_block("limited", "app", path_prefix="/ok")
    limited["rate_limit"] = {"rate": 0.01, "burst": 1, "key": "route"}
    gw = gateway_factory(upstreams=[upstream_block("app", upstream.addr)],
                         routes=[limited, route_block("free", "app")])
    c = gw.conn()
    try:
        assert gw.request("GET", "/ok", conn=c).status == 200
        assert gw.request("GET", "/ok", conn=c).status == 429
        r = gw.request("GET", "/echo", conn=c)
        assert r.status == 200, r
    finally:
        c.close()
