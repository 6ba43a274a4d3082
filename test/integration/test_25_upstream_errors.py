"""Upstream failures: each maps to the right status for the client and the right outcome in
the metrics, never a hang, and the gateway keeps serving afterwards. Stale pooled
connections are retried invisibly; load balancing spreads requests."""

import concurrent.futures
import threading
import time

import pytest

from gwtest import route_block, upstream_block
from rawhttp import request_bytes
from upstream import Blackhole, Upstream

UPSTREAM_REQ = "gateway_upstream_requests_total"


def still_serves(gw):
    r = gw.get("/ok")
    assert r.status == 200 and r.body == b"ok", "gateway no longer serves /ok: %r" % r


def outcome_count(gw, upstream_name, outcome):
    m = gw.wait_metric(UPSTREAM_REQ, 1, upstream=upstream_name, outcome=outcome)
    return m.value(UPSTREAM_REQ, upstream=upstream_name, outcome=outcome)


def app_gateway(gateway_factory, upstream, route_timeout_ms=30000):
    return gateway_factory(
        upstreams=[upstream_block("app", upstream.addr)],
        routes=[route_block("slow", "app", path_prefix="/slow", timeout_ms=route_timeout_ms),
                route_block("default", "app")])


def test_connect_refused_502(gateway_factory, upstream, refused_port):
    """An upstream server refusing connections gives 502 (with X-Request-Id) and outcome
    connect_error; other routes are unaffected."""
    gw = gateway_factory(
        upstreams=[upstream_block("app", upstream.addr),
                   upstream_block("down", refused_port.addr)],
        routes=[route_block("down", "down", path_prefix="/down"), route_block("default", "app")])
    r = gw.get("/down/x")
    assert r.status == 502, r
    assert r.body and r.header("X-Request-Id")
    assert outcome_count(gw, "down", "connect_error") >= 1
    still_serves(gw)


def test_connect_timeout(gateway_factory, upstream):
    """A server that never completes the TCP handshake is given up after connect_timeout_ms:
    502 or 504, outcome connect_timeout."""
    hole = Blackhole()
    try:
        gw = gateway_factory(
            upstreams=[upstream_block("app", upstream.addr),
                       upstream_block("hole", hole.addr, connect_timeout_ms=300)],
            routes=[route_block("hole", "hole", path_prefix="/hole"),
                    route_block("default", "app")])
        r = gw.get("/hole/x", timeout=15)
        assert r.status in (502, 504), r
        assert outcome_count(gw, "hole", "connect_timeout") >= 1
        still_serves(gw)
    finally:
        hole.close()


def test_garbage_response_502(gateway_factory, upstream):
    """An upstream answering with non-HTTP bytes gives 502, outcome bad_response."""
    gw = app_gateway(gateway_factory, upstream)
    r = gw.get("/garbage")
    assert r.status == 502, r
    assert b"NOT HTTP" not in r.body
    assert outcome_count(gw, "app", "bad_response") >= 1
    still_serves(gw)


def test_reset_502(gateway_factory, upstream):
    """An upstream resetting the connection before any response gives 502, outcome reset."""
    gw = app_gateway(gateway_factory, upstream)
    r = gw.get("/reset")
    assert r.status == 502, r
    assert outcome_count(gw, "app", "reset") >= 1
    still_serves(gw)


def test_post_not_retried_after_reset(gateway_factory, upstream):
    """A non-idempotent request that reached the upstream is not retried: one POST seen,
    502 to the client."""
    gw = app_gateway(gateway_factory, upstream)
    r = gw.request("POST", "/reset", body=b"once only")
    assert r.status == 502, r
    time.sleep(0.3)  # a retry, if any, would arrive now
    assert upstream.paths() == ["/reset"]
    still_serves(gw)


def test_route_timeout_504(gateway_factory, upstream):
    """An upstream slower than the route's timeout_ms (300 ms vs 2000 ms) gives 504 (with
    X-Request-Id), outcome timeout."""
    gw = app_gateway(gateway_factory, upstream, route_timeout_ms=300)
    r = gw.get("/slow/2000", timeout=15)
    assert r.status == 504, r
    assert r.body and r.header("X-Request-Id")
    assert outcome_count(gw, "app", "timeout") >= 1
    still_serves(gw)


def test_close_mid_body_truncates(gateway_factory, upstream):
    """An upstream closing after 10 of 100000 announced bytes: the client sees a truncated
    response and a closed connection (or a 502 if nothing had been sent yet), not a hang."""
    gw = app_gateway(gateway_factory, upstream)
    with gw.raw(timeout=10) as c:
        c.send(request_bytes("GET", "/close-mid-body"))
        r = c.read_response(timeout=10)
        assert r is not None, "connection closed without any response"
        if r.status == 200:
            assert not r.complete, "a 100000-byte response cannot be complete"
            assert r.body_len < 100000
            assert c.wait_closed(1)
        else:
            assert r.status == 502, r
    still_serves(gw)


@pytest.mark.parametrize("code", [500, 502, 503])
def test_upstream_5xx_passed_through(gateway, upstream, code):
    """A 5xx made by the upstream reaches the client as is (status, body, headers)."""
    r = gateway.get("/status/%d" % code)
    assert r.status == code
    assert r.body == b"status %d\n" % code
    assert r.header("X-Upstream") == "app"
    still_serves(gateway)


def test_idle_closing_upstream_never_errors(gateway_factory, upstream_factory):
    """An upstream that closes idle keep-alive connections after 100 ms, hit every 300 ms:
    stale pooled connections are detected or retried once on a fresh connection, so all 50
    requests succeed."""
    up = upstream_factory("idle", idle_close_ms=100)
    gw = gateway_factory(upstreams=[upstream_block("app", up.addr)])
    errors = []

    def client(k):
        c = gw.conn()
        try:
            for i in range(25):
                try:
                    r = gw.request("GET", "/ok", conn=c)
                    if r.status != 200 or r.body != b"ok":
                        errors.append((k, i, r.status, r.body[:60]))
                except Exception as e:
                    errors.append((k, i, repr(e)))
                    c.close()
                time.sleep(0.3)
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(2)]
    threads[0].start()
    time.sleep(0.15)  # interleave the two clients
    threads[1].start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:5]
    assert up.accepted > 1  # the upstream really did close connections


def test_close_after_response_retried(gateway, upstream):
    """An upstream that advertises keep-alive but closes right after each response: back-to-
    back requests never see an error (a dead pooled connection is retried on a new one)."""
    c = gateway.conn()
    try:
        for i in range(30):
            r = gateway.request("GET", "/close-after", conn=c)
            assert (r.status, r.body) == (200, b"ok"), (i, r)
    finally:
        c.close()
    assert upstream.accepted >= 30


def test_round_robin_spreads(gateway_factory, upstream_factory):
    """round_robin over two servers sends each a fair share of 20 sequential requests."""
    a, b = upstream_factory("A"), upstream_factory("B")
    gw = gateway_factory(upstreams=[upstream_block("app", a.addr, b.addr)])
    c = gw.conn()
    try:
        seen = [gw.request("GET", "/ok", conn=c).header("X-Upstream") for _ in range(20)]
    finally:
        c.close()
    assert seen.count("A") >= 5 and seen.count("B") >= 5, seen
    still_serves(gw)


def test_least_conn(gateway_factory, upstream_factory):
    """least_conn is accepted; with six slow requests in flight both servers get some, and
    sequential requests all succeed."""
    a, b = upstream_factory("A"), upstream_factory("B")
    gw = gateway_factory(upstreams=[upstream_block("app", a.addr, b.addr, balance="least_conn")])
    barrier = threading.Barrier(6)

    def slow(_):
        barrier.wait(5)
        r = gw.get("/slow/1000", timeout=15)
        return r.status, r.header("X-Upstream")

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(slow, range(6)))
    assert all(s == 200 for s, _ in results), results
    who = [u for _, u in results]
    assert "A" in who and "B" in who, who
    for _ in range(10):
        still_serves(gw)


def test_server_down_in_pool_of_two(gateway_factory, upstream, refused_port):
    """With one of two servers refusing, idempotent requests still get 200 at least from the
    healthy one or a 502 for the dead one, never a hang; the healthy server keeps serving."""
    gw = gateway_factory(upstreams=[upstream_block("app", upstream.addr, refused_port.addr)])
    statuses = [gw.get("/ok").status for _ in range(10)]
    assert set(statuses) <= {200, 502}, statuses
    assert statuses.count(200) >= 5, statuses


def test_upstream_restarts_between_requests(gateway_factory):
    """When the upstream process goes away and comes back on the same port, pooled
    connections to the old one are not used for an error: requests after the restart succeed."""
    up = Upstream("first").start()
    port = up.port
    gw = gateway_factory(upstreams=[upstream_block("app", up.addr)])
    try:
        c = gw.conn()
        assert gw.request("GET", "/ok", conn=c).status == 200
        up.stop()
        up2 = Upstream("second")
        up2.start_on(port)
        try:
            r = gw.request("GET", "/ok", conn=c)
            assert r.status == 200 and r.header("X-Upstream") == "second", r
        finally:
            c.close()
            up2.stop()
    finally:
        up.stop()
