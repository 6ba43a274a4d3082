"""Deadline propagation and retries: the budget is the smaller of the route timeout and the
client's X-Request-Timeout-Ms, the upstream sees what is left, an expired budget is 504
without upstream contact; retries go to another server, only for safe requests, with a
shrinking deadline, under a retry budget."""

import json

from gwtest import route_block, upstream_block

HDR = "X-Request-Timeout-Ms"


def gw_with(gateway_factory, servers, workers=2, **route_kw):
    route = route_block("default", "app", timeout_ms=route_kw.pop("timeout_ms", 30000))
    route.update(route_kw)
    return gateway_factory(upstreams=[upstream_block("app", *servers)], routes=[route],
                           workers=workers)


def sent_deadline(req):
    vals = req.headers_all(HDR.lower())
    assert len(vals) == 1, "exactly one %s field, got %r" % (HDR, vals)
    return int(vals[0].strip())


def test_route_budget_propagated(gateway_factory, upstream):
    """Without a client deadline the upstream gets the route's budget (timeout_ms 30000)."""
    gw = gw_with(gateway_factory, [upstream.addr])
    assert gw.get("/ok").status == 200
    v = sent_deadline(upstream.last("/ok"))
    assert 29000 < v <= 30000, v


def test_client_deadline_smaller_wins(gateway_factory, upstream):
    """A client deadline below the route timeout becomes the budget; the client's field is
    replaced, not duplicated. A larger one does not extend the route's timeout."""
    gw = gw_with(gateway_factory, [upstream.addr], timeout_ms=10000)
    assert gw.get("/ok", headers={HDR: "5000"}).status == 200
    v = sent_deadline(upstream.last("/ok"))
    assert 4000 < v <= 5000, v
    assert gw.get("/ok", headers={HDR: "99999"}).status == 200
    v = sent_deadline(upstream.last("/ok"))
    assert 9000 < v <= 10000, v
    # not a number: ignored
    assert gw.get("/ok", headers={HDR: "soon"}).status == 200
    v = sent_deadline(upstream.last("/ok"))
    assert 9000 < v <= 10000, v


def test_expired_deadline_504_without_upstream(gateway_factory, upstream):
    """X-Request-Timeout-Ms: 0 is already expired: 504 at once, nothing sent upstream, counted
    in gateway_deadline_exceeded_total."""
    gw = gw_with(gateway_factory, [upstream.addr])
    r = gw.get("/ok", headers={HDR: "0"})
    assert r.status == 504, r
    assert upstream.paths() == []
    m = gw.wait_metric("gateway_deadline_exceeded_total", 1, route="default")
    assert m.value("gateway_deadline_exceeded_total", route="default") == 1
    assert gw.get("/ok").status == 200


def test_client_deadline_cuts_slow_upstream(gateway_factory, upstream):
    """A 300 ms client deadline against a 3 s upstream answers 504 (the route allows 30 s)."""
    gw = gw_with(gateway_factory, [upstream.addr])
    r = gw.get("/slow/3000", headers={HDR: "300"}, timeout=15)
    assert r.status == 504, r
    m = gw.wait_metric("gateway_deadline_exceeded_total", 1, route="default")
    assert m.value("gateway_deadline_exceeded_total", route="default") == 1


def test_deadline_header_off(gateway_factory, upstream):
    """deadline_header = "" turns it off: nothing read, nothing sent."""
    gw = gw_with(gateway_factory, [upstream.addr], deadline_header="")
    assert gw.get("/ok", headers={HDR: "0"}).status == 200
    # the client's field is passed on as any other header
    assert upstream.last("/ok").headers_all(HDR.lower()) == ["0"]


def test_listener_deadline_header_name(gateway_factory, upstream):
    """A listener's deadline_header names the field for routes that set none."""
    def settings(port, admin_port):
        from gwtest import gateway_settings
        s = gateway_settings(port, admin_port, [upstream_block("app", upstream.addr)],
                             [route_block("default", "app")])
        s["listen"][0]["deadline_header"] = "X-Budget"
        return s
    gw = gateway_factory(settings=settings)
    assert gw.get("/ok", headers={"X-Budget": "0"}).status == 504
    assert gw.get("/ok", headers={"X-Budget": "2000"}).status == 200
    req = upstream.last("/ok")
    assert 1000 < int(req.header("x-budget").strip()) <= 2000
    assert req.headers_all(HDR.lower()) == []


def test_deadline_decreases_across_retry(gateway_factory, upstream):
    """A 5xx retried: the second attempt carries a smaller remaining budget than the first."""
    gw = gw_with(gateway_factory, [upstream.addr], retries=2, retry_on=["5xx"])
    upstream.fail("503", n=1)
    r = gw.get("/ok")
    assert r.status == 200 and r.body == b"ok", r
    reqs = upstream.wait_requests(2)
    first, second = sent_deadline(reqs[0]), sent_deadline(reqs[1])
    assert second < first, (first, second)
    m = gw.wait_metric("gateway_upstream_retries_total", 1, upstream="app")
    assert m.value("gateway_upstream_retries_total", upstream="app") == 1


def test_retry_goes_to_other_server(gateway_factory, upstream_factory):
    """A reset by one server is retried on the other: every GET succeeds."""
    bad, good = upstream_factory("bad"), upstream_factory("good")
    gw = gw_with(gateway_factory, [bad.addr, good.addr], retries=1, retry_on=["reset"])
    bad.fail("reset")
    got = [gw.get("/ok") for _ in range(6)]
    assert all(r.status == 200 and r.header("X-Upstream") == "good" for r in got), got
    assert len(bad.paths()) >= 2  # round robin did pick it, and it was retried elsewhere


def test_connect_failure_retried_by_default(gateway_factory, upstream, refused_port):
    """With the default policy (one retry on connect-failure or reset) a refused server in a
    pool of two never shows: the request goes to the other one, POST included (nothing had
    been sent)."""
    route = route_block("default", "app")
    gw = gateway_factory(upstreams=[upstream_block("app", refused_port.addr, upstream.addr)],
                         routes=[route])
    assert all(gw.get("/ok").status == 200 for _ in range(6))
    r = gw.request("POST", "/upload", body=b"x" * 1000)
    assert r.status == 200 and json.loads(r.body)["length"] == 1000, r


def test_post_not_retried(gateway_factory, upstream):
    """A POST whose request reached the upstream is not retried on reset, even with retries
    configured: one attempt, 502."""
    gw = gw_with(gateway_factory, [upstream.addr], retries=3, retry_on=["reset", "5xx"])
    upstream.fail("reset")
    r = gw.request("POST", "/upload", body=b"payload")
    assert r.status == 502, r
    assert len(upstream.wait_requests(1)) == 1
    upstream.fail("503")
    r = gw.request("POST", "/upload", body=b"payload")
    assert r.status == 503 and r.header("X-Upstream") == "app", r
    assert len(upstream.paths()) == 2


def test_post_retried_when_marked(gateway_factory, upstream):
    """retry_methods = [ "POST" ]: a small buffered POST body is sent again, whole."""
    gw = gw_with(gateway_factory, [upstream.addr], retries=1, retry_on=["5xx"],
                 retry_methods=["POST"])
    upstream.fail("503", n=1)
    r = gw.request("POST", "/upload", body=b"abc" * 100)
    assert r.status == 200, r
    assert json.loads(r.body)["length"] == 300
    assert len(upstream.paths()) == 2


def test_retries_exhausted_passes_last_answer(gateway_factory, upstream):
    """retries = 2 against a server that always answers 503: three attempts, the client gets
    the upstream's 503."""
    gw = gw_with(gateway_factory, [upstream.addr], retries=2, retry_on=["5xx"])
    upstream.fail("503")
    r = gw.get("/ok")
    assert r.status == 503 and r.header("X-Upstream") == "app", r
    assert len(upstream.wait_requests(3)) == 3


def test_try_timeout_retry(gateway_factory, upstream_factory):
    """try_timeout_ms 300 with retry_on timeout: a hanging server is given up per attempt and
    the other server answers."""
    hang, good = upstream_factory("hang"), upstream_factory("good")
    gw = gw_with(gateway_factory, [hang.addr, good.addr], retries=1, retry_on=["timeout"],
                 try_timeout_ms=300)
    hang.fail("hang")
    got = [gw.get("/ok", timeout=15) for _ in range(4)]
    assert all(r.status == 200 and r.header("X-Upstream") == "good" for r in got), got


def test_try_timeout_without_retry_504(gateway_factory, upstream):
    """A per-try timeout with nothing left to retry answers 504."""
    gw = gw_with(gateway_factory, [upstream.addr], retries=0, try_timeout_ms=300)
    r = gw.get("/slow/3000", timeout=15)
    assert r.status == 504, r


def test_retry_budget_limits_storm(gateway_factory, upstream):
    """retry_budget 0 leaves the minimum of 3 concurrent retries per worker: 10 requests timing
    out together against a hanging server make 3 retries, not 10."""
    gw = gw_with(gateway_factory, [upstream.addr], workers=1, retries=1, retry_on=["timeout"],
                 try_timeout_ms=500, retry_budget=0.0)
    upstream.fail("hang")
    statuses = gw.statuses_at_once("/ok", 10)
    assert statuses == [504] * 10, statuses
    m = gw.wait_metric("gateway_upstream_retries_total", 3, upstream="app")
    assert m.value("gateway_upstream_retries_total", upstream="app") == 3
    assert len(upstream.wait_requests(13)) == 13


def test_body_arriving_late_still_retried(gateway_factory, upstream_factory):
    """A small POST body that arrives after its head is kept whole as it comes, so a
    retry (marked retryable, 5xx) re-sends head and body intact."""
    import time
    from rawhttp import request_bytes
    up = upstream_factory("app")
    gw = gw_with(gateway_factory, [up.addr], retries=1, retry_on=["5xx"],
                 retry_methods=["POST"])
    up.fail("503", n=1)
    body = b"late body " * 50
    raw = request_bytes("POST", "/upload", body=body)
    head, rest = raw[:raw.index(b"\r\n\r\n") + 4], raw[raw.index(b"\r\n\r\n") + 4:]
    with gw.raw(timeout=10) as c:
        c.send(head)
        time.sleep(0.2)
        c.send(rest)
        r = c.read_response(timeout=10)
    assert r is not None and r.status == 200, r
    assert json.loads(r.body)["length"] == len(body)
    reqs = up.wait_requests(2)
    assert [q.body_len for q in reqs] == [len(body), len(body)]
