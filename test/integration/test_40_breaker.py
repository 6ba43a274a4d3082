"""Circuit breakers and concurrency limits per upstream server: open after failures, 503 with
Retry-After without touching the server, half-open probes, closing again; open servers
skipped in a pool; max_requests; all visible in /metrics."""

import time

from gwtest import route_block, upstream_block

STATE = "gateway_upstream_breaker_state"
TRANS = "gateway_upstream_breaker_transitions_total"
REJECTED = "gateway_upstream_rejected_total"


def breaker_gateway(gateway_factory, servers, breaker, retries=0, **up_kw):
    route = route_block("default", "app")
    route["retries"] = retries
    return gateway_factory(upstreams=[upstream_block("app", *servers, breaker=breaker, **up_kw)],
                           routes=[route])


def wait_state(gw, server, value, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        m = gw.metrics()
        v = m.value(STATE, upstream="app", server=server)
        if v == value or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def test_open_reject_probe_close(gateway_factory, upstream):
    """failures = 3: three upstream 503s open the circuit; then 503 with Retry-After comes from
    the gateway without contacting the server; after open_ms a probe passes, succeeds and
    closes the circuit. Metrics follow each step."""
    gw = breaker_gateway(gateway_factory, [upstream.addr],
                         {"failures": 3, "open_ms": 800, "half_open_requests": 1})
    upstream.fail("503")
    for _ in range(3):
        r = gw.get("/ok")
        assert r.status == 503 and r.header("X-Upstream") == "app", r
    m = wait_state(gw, upstream.addr, 2)
    assert m.value(STATE, upstream="app", server=upstream.addr) == 2
    assert m.value(TRANS, upstream="app", server=upstream.addr, to="open") == 1

    seen = len(upstream.paths())
    r = gw.get("/ok")
    assert r.status == 503 and r.header("X-Upstream") is None, r
    assert r.header("Retry-After") == "1", r
    assert len(upstream.paths()) == seen, "an open circuit must not reach the server"
    m = gw.wait_metric(REJECTED, 1, upstream="app", reason="breaker_open")
    assert m.value(REJECTED, upstream="app", reason="breaker_open") >= 1

    upstream.fail(None)
    time.sleep(0.9)
    r = gw.get("/ok")
    assert r.status == 200 and r.body == b"ok", r
    m = wait_state(gw, upstream.addr, 0)
    assert m.value(STATE, upstream="app", server=upstream.addr) == 0
    assert m.value(TRANS, upstream="app", server=upstream.addr, to="half_open") == 1
    assert m.value(TRANS, upstream="app", server=upstream.addr, to="closed") == 1
    assert all(gw.get("/ok").status == 200 for _ in range(5))


def test_failed_probe_reopens(gateway_factory, upstream):
    """A probe that fails sends the circuit back to open for another open_ms."""
    gw = breaker_gateway(gateway_factory, [upstream.addr], {"failures": 2, "open_ms": 500})
    upstream.fail("reset")
    assert [gw.get("/ok").status for _ in range(2)] == [502, 502]
    wait_state(gw, upstream.addr, 2)
    time.sleep(0.6)
    seen = len(upstream.paths())
    assert gw.get("/ok").status == 502  # the probe reached the server and failed
    assert len(upstream.paths()) == seen + 1
    m = wait_state(gw, upstream.addr, 2)
    assert m.value(TRANS, upstream="app", server=upstream.addr, to="open") == 2
    assert m.value(TRANS, upstream="app", server=upstream.addr, to="half_open") == 1
    r = gw.get("/ok")
    assert r.status == 503 and r.header("Retry-After"), r
    assert len(upstream.paths()) == seen + 1


def test_consecutive_only(gateway_factory, upstream):
    """failures counts consecutive failures: failures interleaved with successes never open."""
    gw = breaker_gateway(gateway_factory, [upstream.addr], {"failures": 2, "open_ms": 5000})
    for _ in range(5):
        upstream.fail("503", n=1)
        assert gw.get("/ok").status == 503
        assert gw.get("/ok").status == 200
    m = gw.metrics()
    assert m.value(STATE, upstream="app", server=upstream.addr) == 0
    assert m.value(TRANS, upstream="app", server=upstream.addr, to="open") == 0


def test_error_rate(gateway_factory, upstream):
    """error_rate 0.5 with min_requests 4: two failures in four requests open the circuit."""
    gw = breaker_gateway(gateway_factory, [upstream.addr],
                         {"failures": 0, "error_rate": 0.5, "min_requests": 4,
                          "window_ms": 10000, "open_ms": 5000})
    assert gw.get("/ok").status == 200
    upstream.fail("503", n=1)
    assert gw.get("/ok").status == 503
    assert gw.get("/ok").status == 200
    assert gw.metrics().value(STATE, upstream="app", server=upstream.addr) == 0
    upstream.fail("503", n=1)
    assert gw.get("/ok").status == 503
    wait_state(gw, upstream.addr, 2)
    r = gw.get("/ok")
    assert r.status == 503 and r.header("X-Upstream") is None, r


def test_failure_status_configurable(gateway_factory, upstream):
    """failure_status = [ 502 ]: upstream 503s are answers, not failures."""
    gw = breaker_gateway(gateway_factory, [upstream.addr],
                         {"failures": 2, "open_ms": 5000, "failure_status": [502]})
    upstream.fail("503")
    assert [gw.get("/ok").status for _ in range(4)] == [503] * 4
    assert gw.metrics().value(STATE, upstream="app", server=upstream.addr) == 0
    assert len(upstream.paths()) == 4


def test_open_server_skipped_in_pool(gateway_factory, upstream_factory):
    """Of two servers, the failing one opens and gets no more traffic; the other serves every
    request."""
    bad, good = upstream_factory("bad"), upstream_factory("good")
    gw = breaker_gateway(gateway_factory, [bad.addr, good.addr], {"failures": 2, "open_ms": 5000})
    bad.fail("503")
    for _ in range(6):
        gw.get("/ok")
    wait_state(gw, bad.addr, 2)
    seen_bad = len(bad.paths())
    assert seen_bad == 2
    got = [gw.get("/ok") for _ in range(10)]
    assert all(r.status == 200 and r.header("X-Upstream") == "good" for r in got), got
    assert len(bad.paths()) == seen_bad


def test_connect_failures_open(gateway_factory, refused_port):
    """Connection refusals count: after two, answers are 503 straight from the gateway."""
    gw = breaker_gateway(gateway_factory, [refused_port.addr], {"failures": 2, "open_ms": 5000})
    assert [gw.get("/ok").status for _ in range(2)] == [502, 502]
    wait_state(gw, refused_port.addr, 2)
    m = gw.metrics()
    connects = m.value("gateway_upstream_connects_total", upstream="app",
                       server=refused_port.addr)
    r = gw.get("/ok")
    assert r.status == 503 and r.header("Retry-After"), r
    assert gw.metrics().value("gateway_upstream_connects_total", upstream="app",
                              server=refused_port.addr) == connects


def test_state_shared_by_workers(gateway_factory, upstream):
    """With 4 workers, failures seen by any worker open the circuit for all: after it opens,
    no new connection (landing on any worker) reaches the server."""
    route = route_block("default", "app")
    route["retries"] = 0
    gw = gateway_factory(upstreams=[upstream_block("app", upstream.addr,
                                                   breaker={"failures": 3, "open_ms": 5000})],
                         routes=[route], workers=4)
    upstream.fail("503")
    for _ in range(3):
        gw.get("/ok")  # a new connection each: spread over workers
    wait_state(gw, upstream.addr, 2)
    seen = len(upstream.paths())
    statuses = [gw.get("/ok").status for _ in range(12)]
    assert statuses == [503] * 12
    assert len(upstream.paths()) == seen


def test_max_requests(gateway_factory, upstream):
    """max_requests = 2: with four slow requests at once, two are served and two answered 503
    at once (reason max_requests)."""
    gw = breaker_gateway(gateway_factory, [upstream.addr], {"failures": 5}, max_requests=2)
    statuses = gw.statuses_at_once("/slow/800", 4)
    assert statuses == [200, 200, 503, 503], statuses
    m = gw.wait_metric(REJECTED, 2, upstream="app", reason="max_requests")
    assert m.value(REJECTED, upstream="app", reason="max_requests") == 2
    assert gw.get("/ok").status == 200
    assert gw.metrics().value("gateway_upstream_requests_active", upstream="app",
                              server=upstream.addr) == 0


def test_max_pending(gateway_factory):
    """max_pending = 2 against a server whose handshake never completes: of four requests at
    once two wait for their connection (then 502/504 at connect_timeout_ms) and two are
    answered 503 at once (reason max_pending)."""
    from upstream import Blackhole
    hole = Blackhole()
    try:
        route = route_block("default", "app")
        route["retries"] = 0
        gw = gateway_factory(upstreams=[upstream_block("app", hole.addr, max_pending=2,
                                                       connect_timeout_ms=1500)],
                             routes=[route])
        statuses = gw.statuses_at_once("/ok", 4)
        assert statuses.count(503) == 2, statuses
        assert all(s in (502, 503, 504) for s in statuses), statuses
        m = gw.wait_metric(REJECTED, 2, upstream="app", reason="max_pending")
        assert m.value(REJECTED, upstream="app", reason="max_pending") == 2
    finally:
        hole.close()


def test_open_circuit_survives_reload(gateway_factory, upstream):
    """A reload that keeps the upstream's name and server keeps its open circuit; one that
    removes the breaker block lets traffic through again."""
    gw = breaker_gateway(gateway_factory, [upstream.addr], {"failures": 2, "open_ms": 60000})
    upstream.fail("503")
    gw.get("/ok")
    gw.get("/ok")
    wait_state(gw, upstream.addr, 2)
    upstream.fail(None)

    gw.reload(lambda s: s["upstreams"][0].update(connect_timeout_ms=2000))
    r = gw.get("/ok")
    assert r.status == 503 and r.header("X-Upstream") is None, r
    assert gw.metrics().value(STATE, upstream="app", server=upstream.addr) == 2

    gw.reload(lambda s: s["upstreams"][0].pop("breaker"))
    r = gw.get("/ok")
    assert r.status == 200, r
