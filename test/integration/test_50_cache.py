"""The response cache of a route, with the in-process L1 alone (no Redis block): what is
stored and what is not (RFC 9111 as a shared cache), HEAD from a stored GET, conditional
requests, Vary, request coalescing, stale-if-error, PURGE, size limits and the metrics."""

import http.client
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote_plus

import pytest

from gwtest import route_block


def cached_gateway(gateway_factory, upstream, workers=1, **cache):
    route = route_block("default", "app")
    route["cache"] = dict(cache)
    return gateway_factory(upstreams=[{"name": "app", "servers": [upstream.addr]}],
                           routes=[route], workers=workers)


def path(name, *headers, **params):
    q = ["h=" + quote_plus(h) for h in headers] + ["%s=%s" % kv for kv in params.items()]
    return "/cache/%s%s" % (name, ("?" + "&".join(q)) if q else "")


def test_hit_after_miss(gateway_factory, upstream):
    gw = cached_gateway(gateway_factory, upstream)
    p = path("a", "Cache-Control: max-age=60")
    r1 = gw.get(p)
    assert (r1.status, r1.body, r1.header("X-Cache")) == (200, b"a 1", "MISS")
    r2 = gw.get(p)
    assert (r2.status, r2.body, r2.header("X-Cache")) == (200, b"a 1", "HIT")
    assert r2.header("Age") is not None and int(r2.header("Age")) >= 0
    assert r2.header("Content-Length") == "3"
    assert r2.header("X-Upstream") == "app" and r2.header("X-Request-Id")
    assert r2.header("X-Request-Id") != r1.header("X-Request-Id")
    assert upstream.cache_count("a") == 1
    # counters are updated after the response is written
    m = gw.wait_metric("gateway_cache_requests_total", 1, route="default", result="hit")
    assert m.value("gateway_cache_requests_total", route="default", result="hit") == 1
    assert m.value("gateway_cache_requests_total", route="default", result="miss") == 1
    assert m.value("gateway_cache_bytes_stored_total") == 3
    assert m.value("gateway_cache_l1_entries") == 1
    log = gw.wait_access_log(2)
    assert [(e["cache"], e["upstream"] != "") for e in log[:2]] == [("miss", True), ("hit", False)]


def test_default_ttl_and_query_in_key(gateway_factory, upstream):
    gw = cached_gateway(gateway_factory, upstream, ttl_s=60)
    assert gw.get("/cache/q?x=1").header("X-Cache") == "MISS"
    assert gw.get("/cache/q?x=1").header("X-Cache") == "HIT"
    assert gw.get("/cache/q?x=2").header("X-Cache") == "MISS"
    assert upstream.cache_count("q") == 2


def test_ttl_zero_stores_only_explicit_freshness(gateway_factory, upstream):
    gw = cached_gateway(gateway_factory, upstream, ttl_s=0)
    gw.get("/cache/n")
    assert gw.get("/cache/n").header("X-Cache") == "MISS"
    p = path("e", "Cache-Control: max-age=30")
    gw.get(p)
    assert gw.get(p).header("X-Cache") == "HIT"


@pytest.mark.parametrize("field", [
    "Cache-Control: no-store",
    "Cache-Control: private, max-age=60",
    "Cache-Control: no-cache",
    "Cache-Control: max-age=0",
    "Expires: Thu, 01 Jan 1970 00:00:00 GMT",
    "Set-Cookie: session=1",
    "Vary: *",
])
def test_not_stored(gateway_factory, upstream, field):
    gw = cached_gateway(gateway_factory, upstream)
    p = path("ns", field)
    assert gw.get(p).header("X-Cache") == "MISS"
    r = gw.get(p)
    assert (r.header("X-Cache"), r.body) == ("MISS", b"ns 2")


def test_status_not_stored(gateway_factory, upstream):
    gw = cached_gateway(gateway_factory, upstream)
    gw.get(path("s5", status=500))
    assert gw.get(path("s5", status=500)).body == b"s5 2"
    gw.get(path("s4", status=404))
    assert gw.get(path("s4", status=404)).header("X-Cache") == "HIT", "404 is cacheable"


def test_set_cookie_stored_when_allowed(gateway_factory, upstream):
    gw = cached_gateway(gateway_factory, upstream, store_set_cookie=True)
    p = path("ck", "Set-Cookie: a=1")
    gw.get(p)
    r = gw.get(p)
    assert r.header("X-Cache") == "HIT" and r.header("Set-Cookie") == "a=1"


def test_max_age_expires(gateway_factory, upstream):
    gw = cached_gateway(gateway_factory, upstream)
    p = path("ma", "Cache-Control: max-age=1")
    gw.get(p)
    assert gw.get(p).header("X-Cache") == "HIT"
    time.sleep(1.2)
    r = gw.get(p)
    assert (r.header("X-Cache"), r.body) == ("MISS", b"ma 2")


def test_request_directives(gateway_factory, upstream):
    gw = cached_gateway(gateway_factory, upstream)
    p = path("rq", "Cache-Control: max-age=60")
    gw.get(p)
    r = gw.get(p, headers={"Cache-Control": "no-store"})
    assert (r.header("X-Cache"), r.body) == ("BYPASS", b"rq 2")
    r = gw.get(p, headers={"Cache-Control": "no-cache"})
    assert (r.header("X-Cache"), r.body) == ("MISS", b"rq 3"), "no-cache goes to the upstream"
    r = gw.get(p)
    assert (r.header("X-Cache"), r.body) == ("HIT", b"rq 3"), "... and refreshes the entry"
    r = gw.request("POST", p, body=b"x")
    assert r.header("X-Cache") == "BYPASS"
    r = gw.get(p, headers={"Authorization": "Bearer t"})
    assert r.header("X-Cache") == "BYPASS"
    m = gw.wait_metric("gateway_cache_requests_total", 3, route="default", result="bypass")
    assert m.value("gateway_cache_requests_total", route="default", result="bypass") == 3


def test_authorized_requests_when_allowed(gateway_factory, upstream):
    gw = cached_gateway(gateway_factory, upstream, cache_authorized=True)
    p = path("au", "Cache-Control: max-age=60")
    gw.get(p, headers={"Authorization": "Bearer t"})
    assert gw.get(p, headers={"Authorization": "Bearer t"}).header("X-Cache") == "MISS", \
        "without public or s-maxage an authorized response is not stored"
    p = path("au2", "Cache-Control: public, max-age=60")
    gw.get(p, headers={"Authorization": "Bearer t"})
    assert gw.get(p, headers={"Authorization": "Bearer u"}).header("X-Cache") == "HIT"


def test_head_from_stored_get(gateway_factory, upstream):
    gw = cached_gateway(gateway_factory, upstream)
    p = path("hd", "Cache-Control: max-age=60")
    gw.get(p)
    r = gw.request("HEAD", p)
    assert (r.status, r.body, r.header("X-Cache")) == (200, b"", "HIT")
    assert r.header("Content-Length") == "4"
    # a HEAD miss is forwarded as it is and stores nothing
    q = path("hd2", "Cache-Control: max-age=60")
    assert gw.request("HEAD", q).header("X-Cache") == "MISS"
    assert gw.get(q).header("X-Cache") == "MISS"
    # the connection is still in step after a bodiless hit
    c = gw.conn()
    for _ in range(3):
        assert gw.request("HEAD", p, conn=c).status == 200
        assert gw.request("GET", p, conn=c).body == b"hd 1"
    c.close()


def test_conditional_requests(gateway_factory, upstream):
    gw = cached_gateway(gateway_factory, upstream)
    p = path("cond", "Cache-Control: max-age=60", 'ETag: "v7"',
             "Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT")
    gw.get(p)
    r = gw.get(p, headers={"If-None-Match": '"x", W/"v7"'})
    assert (r.status, r.body, r.header("ETag"), r.header("X-Cache")) == (304, b"", '"v7"', "HIT")
    assert r.header("Cache-Control") == "max-age=60" and r.header("Content-Type") is None
    r = gw.get(p, headers={"If-None-Match": '"v8"'})
    assert (r.status, r.body) == (200, b"cond 1")
    r = gw.get(p, headers={"If-Modified-Since": "Sun, 06 Nov 1994 08:49:37 GMT"})
    assert r.status == 304
    r = gw.get(p, headers={"If-Modified-Since": "Sat, 05 Nov 1994 08:49:37 GMT"})
    assert r.status == 200
    assert upstream.cache_count("cond") == 1


def test_vary(gateway_factory, upstream):
    gw = cached_gateway(gateway_factory, upstream)
    p = path("v", "Cache-Control: max-age=60", "Vary: Accept-Language")
    en, fr = {"Accept-Language": "en"}, {"Accept-Language": "fr"}
    assert gw.get(p, headers=en).body == b"v 1"
    r = gw.get(p, headers=en)
    assert (r.header("X-Cache"), r.body) == ("HIT", b"v 1")
    r = gw.get(p, headers=fr)
    assert (r.header("X-Cache"), r.body) == ("MISS", b"v 2"), "another variant is not served"
    assert gw.get(p, headers=fr).body == b"v 2"
    assert gw.get(p).header("X-Cache") == "MISS", "no header is a variant of its own"


def test_concurrent_misses_reach_the_upstream_once(gateway_factory, upstream):
    gw = cached_gateway(gateway_factory, upstream, workers=1)
    p = path("co", "Cache-Control: max-age=60", delay=400)
    barrier = threading.Barrier(10)

    def one(_):
        barrier.wait(5)
        return gw.get(p, timeout=10)

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(one, range(10)))
    assert [r.status for r in results] == [200] * 10
    assert {r.body for r in results} == {b"co 1"}
    assert upstream.cache_count("co") == 1
    assert sorted(r.header("X-Cache") for r in results) == ["HIT"] * 9 + ["MISS"]


def test_waiters_go_upstream_when_the_response_is_not_storable(gateway_factory, upstream):
    gw = cached_gateway(gateway_factory, upstream, workers=1)
    p = path("cn", "Cache-Control: no-store", delay=300)
    barrier = threading.Barrier(4)

    def one(_):
        barrier.wait(5)
        return gw.get(p, timeout=10)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    assert [r.status for r in results] == [200] * 4
    assert upstream.cache_count("cn") == 4


def test_parked_request_times_out(gateway_factory, upstream):
    route = route_block("default", "app", timeout_ms=400)
    route["cache"] = {}
    gw = gateway_factory(upstreams=[{"name": "app", "servers": [upstream.addr]}],
                         routes=[route], workers=1)
    p = path("pt", "Cache-Control: max-age=60", delay=2000)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(gw.get, p)
        time.sleep(0.1)
        second = pool.submit(gw.get, p)
        assert first.result(10).status == 504
        assert second.result(10).status == 504
    assert gw.get("/ok").status == 200


def test_stale_if_error(gateway_factory, upstream):
    gw = cached_gateway(gateway_factory, upstream)
    p = path("st", "Cache-Control: max-age=1, stale-if-error=60")
    gw.get(p)
    time.sleep(1.2)
    upstream.fail("503")
    r = gw.get(p)
    assert (r.status, r.body, r.header("X-Cache")) == (200, b"st 1", "STALE")
    upstream.fail(None)
    r = gw.get(p)
    assert (r.status, r.header("X-Cache")) == (200, "MISS")
    assert gw.wait_metric("gateway_cache_requests_total", 1, route="default",
                          result="stale").value("gateway_cache_requests_total", route="default",
                                                result="stale") == 1


def test_stale_if_error_when_the_upstream_is_gone(gateway_factory, upstream_factory):
    up = upstream_factory("app")
    gw = cached_gateway(gateway_factory, up, stale_if_error_s=60)
    p = path("gone", "Cache-Control: max-age=1")
    gw.get(p)
    time.sleep(1.2)
    up.stop()
    r = gw.get(p)
    assert (r.status, r.body, r.header("X-Cache")) == (200, b"gone 1", "STALE")


def test_must_revalidate_is_never_served_stale(gateway_factory, upstream):
    gw = cached_gateway(gateway_factory, upstream, stale_if_error_s=60)
    p = path("mr", "Cache-Control: max-age=1, must-revalidate")
    gw.get(p)
    time.sleep(1.2)
    upstream.fail("503")
    assert gw.get(p).status == 503


def test_purge(gateway_factory, upstream):
    gw = cached_gateway(gateway_factory, upstream, workers=2)
    p = path("pg", "Cache-Control: max-age=60")
    # fill both workers' L1s (connections spread over them)
    for _ in range(16):
        gw.get(p, headers={"Connection": "close"})
    r = gw.request("PURGE", p)
    assert r.status == 200
    for _ in range(12):
        r = gw.get(p, headers={"Connection": "close"})
        assert r.body != b"pg 1", "a purged entry was served"


def test_purge_from_untrusted_peer(gateway_factory, upstream):
    route = route_block("default", "app")
    route["cache"] = {}
    gw = gateway_factory(upstreams=[{"name": "app", "servers": [upstream.addr]}],
                         routes=[route], workers=1, cache={"purge_from": ["10.0.0.0/8"]})
    p = path("pu", "Cache-Control: max-age=60")
    gw.get(p)
    assert gw.request("PURGE", p).status == 403
    assert gw.get(p).header("X-Cache") == "HIT"


def test_large_and_chunked_responses(gateway_factory, upstream):
    gw = cached_gateway(gateway_factory, upstream, max_object_bytes=100000)
    big = path("big", "Cache-Control: max-age=60", size=300000)
    r = gw.get(big)
    assert r.status == 200 and len(r.body) == 300000
    assert gw.get(big).header("X-Cache") == "MISS"
    fits = path("fits", "Cache-Control: max-age=60", size=90000)
    body = gw.get(fits).body
    r = gw.get(fits)
    assert r.header("X-Cache") == "HIT" and r.body == body and len(body) == 90000
    ch = path("ch", "Cache-Control: max-age=60", chunked=1, size=5000)
    first = gw.get(ch)
    assert first.header("Transfer-Encoding") == "chunked" and len(first.body) == 5000
    r = gw.get(ch)
    assert (r.header("X-Cache"), r.body) == ("HIT", first.body), "a chunked response is stored"
    assert r.header("Content-Length") == "5000" and r.header("Transfer-Encoding") is None
    chbig = path("chbig", "Cache-Control: max-age=60", chunked=1, size=150000)
    assert len(gw.get(chbig).body) == 150000
    r = gw.get(chbig)
    assert r.header("X-Cache") == "MISS" and len(r.body) == 150000, \
        "a chunked body past max_object_bytes is passed on, not stored"


def test_l1_cap_evicts(gateway_factory, upstream):
    route = route_block("default", "app")
    route["cache"] = {}
    gw = gateway_factory(upstreams=[{"name": "app", "servers": [upstream.addr]}],
                         routes=[route], workers=1, cache={"l1_bytes": 200000})
    for i in range(10):
        gw.get(path("ev%d" % i, "Cache-Control: max-age=60", size=50000))
    m = gw.metrics()
    assert m.value("gateway_cache_l1_bytes") <= 200000
    assert m.value("gateway_cache_l1_evictions_total") >= 6
    assert gw.get(path("ev9", "Cache-Control: max-age=60", size=50000)).header("X-Cache") == "HIT"
    assert gw.get(path("ev0", "Cache-Control: max-age=60", size=50000)).header("X-Cache") == \
        "MISS"


def test_route_without_cache_is_untouched(gateway):
    r = gateway.get("/cache/plain?h=Cache-Control:+max-age%3D60")
    assert r.header("X-Cache") is None
    assert "cache" not in gateway.wait_access_log(1)[0]
    assert gateway.get("/cache/plain?h=Cache-Control:+max-age%3D60").body == b"plain 2"


def test_default_config_caches_with_the_demo_upstream(gateway_bin, tmp_path):
    """conf/gateway.conf as shipped (ports moved to free ones) in front of the demo upstream of
    scripts/run.sh: what the demo marks cacheable is answered from the cache, the rest is not."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from upstream import free_port

    root = Path(__file__).resolve().parents[2]
    port, admin, demo = free_port(), free_port(), free_port()
    text = (root / "conf/gateway.conf").read_text()
    for old, new in (("0.0.0.0:8080", "127.0.0.1:%d" % port),
                     ("127.0.0.1:9901", "127.0.0.1:%d" % admin),
                     ("127.0.0.1:9000", "127.0.0.1:%d" % demo)):
        assert old in text
        text = text.replace(old, new)
    conf = tmp_path / "gateway.conf"
    conf.write_text(text)
    up = subprocess.Popen([sys.executable, str(root / "scripts/demo_upstream.py"), "--port",
                           str(demo)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw = subprocess.Popen([gateway_bin, "-c", str(conf)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    try:
        def get(p):
            deadline = time.monotonic() + 10
            while True:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    c.request("GET", p)
                    r = c.getresponse()
                    body = r.read()
                    c.close()
                    if r.status == 200:
                        return r.getheader("X-Cache"), body
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("no 200 for %s" % p)
                time.sleep(0.05)

        get("/hello")  # both up
        hits = [get("/static/app.css")[0] for _ in range(6)]
        assert "HIT" in hits and hits[0] == "MISS", hits
        assert {get("/hello")[0] for _ in range(3)} == {"MISS"}
    finally:
        gw.send_signal(signal.SIGTERM)
        err = gw.communicate(timeout=15)[1].decode()
        up.terminate()
        up.wait(5)
    assert gw.returncode == 0, err
    assert "ERROR: AddressSanitizer" not in err and "runtime error" not in err, err
