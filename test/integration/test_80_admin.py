"""The admin listener (/healthz, /readyz, /metrics in Prometheus text) and the JSON access
log on stdout."""

import math
import time

from gwtest import route_block, upstream_block
from rawhttp import request_bytes

REQS = "gateway_requests_total"
DUR = "gateway_request_duration_seconds"
UPS = "gateway_upstream_requests_total"


def test_healthz_and_readyz(gateway):
    """/healthz and /readyz on the admin port answer 200."""
    assert gateway.admin("/healthz").status == 200
    assert gateway.admin("/readyz").status == 200


def test_metrics_counts_requests(gateway, upstream):
    """After N requests, gateway_requests_total{route="default",code="200"} is exactly N, the
    duration histogram (route label) counts N in +Inf/_count, and the upstream counter counts
    N successes for the server."""
    n = 7
    c = gateway.conn()
    try:
        for _ in range(n):
            assert gateway.request("GET", "/ok", conn=c).status == 200
    finally:
        c.close()
    m = gateway.wait_metric(REQS, n, route="default", code="200")
    assert m.value(REQS, route="default", code="200") == n, m.text
    m = gateway.wait_metric(DUR + "_count", n, route="default")
    assert m.value(DUR + "_count", route="default") == n
    assert m.type.get(DUR) == "histogram"
    assert m.value(DUR + "_sum", route="default") >= 0
    buckets = [(float(lab["le"]), v) for _, lab, v in m.find(DUR + "_bucket", route="default")]
    assert buckets, "no %s_bucket{route=\"default\"} samples" % DUR
    assert any(math.isinf(le) for le, _ in buckets), "no le=\"+Inf\" bucket"
    assert sum(v for le, v in buckets if math.isinf(le)) == n
    # buckets are cumulative: never decreasing with le (per label set, summed here)
    by_le = {}
    for le, v in buckets:
        by_le[le] = by_le.get(le, 0) + v
    vals = [by_le[le] for le in sorted(by_le)]
    assert vals == sorted(vals), by_le
    m = gateway.wait_metric(UPS, n, upstream="app", server=upstream.addr, outcome="success")
    assert m.value(UPS, upstream="app", server=upstream.addr, outcome="success") == n


def test_metrics_route_none_for_rejected(gateway):
    """A request rejected before routing (400) is counted with route="none"."""
    with gateway.raw() as c:
        c.send(b"GET /ok HTTP/1.1\r\n\r\n")  # no Host
        r = c.read_response(timeout=5)
        assert r is not None and r.status == 400
    m = gateway.wait_metric(REQS, 1, route="none", code="400")
    assert m.value(REQS, route="none", code="400") == 1
    assert m.value(REQS, route="default") == 0


def test_metrics_connections(gateway):
    """gateway_connections_active counts open client connections (at least 3 while 3 are held
    open, back to at most its earlier value once they close);
    gateway_connections_accepted_total counts accepted ones."""
    before = gateway.metrics()
    assert before.type.get("gateway_connections_active") == "gauge"
    base = before.value("gateway_connections_active")
    accepted0 = before.value("gateway_connections_accepted_total")
    conns = [gateway.raw() for _ in range(3)]
    try:
        for c in conns:
            c.send(request_bytes("GET", "/ok"))
            assert c.read_response().status == 200
        m = gateway.metrics()
        assert m.value("gateway_connections_active") >= 3, m.text
        assert m.value("gateway_connections_accepted_total") >= accepted0 + 3
    finally:
        for c in conns:
            c.close()
    deadline = time.monotonic() + 5
    while True:
        active = gateway.metrics().value("gateway_connections_active")
        if active <= base or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert active <= base, "gateway_connections_active %s after closing, %s before" % (
        active, base)


def test_metrics_format(gateway_factory, upstream, refused_port):
    """Every sample belongs to a family declared with # HELP and # TYPE before its first
    sample; no series appears twice; the body is Prometheus text."""
    gw = gateway_factory(
        upstreams=[upstream_block("app", upstream.addr), upstream_block("down", refused_port.addr)],
        routes=[route_block("down", "down", path_prefix="/down"), route_block("default", "app")])
    for path in ("/ok", "/status/503", "/down/x", "/nope"):
        gw.get(path)
    with gw.raw() as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        c.read_response(timeout=5)
    r = gw.admin("/metrics")
    assert r.status == 200
    assert (r.header("Content-Type") or "").startswith("text/plain")
    m = gw.metrics()
    assert m.samples
    problems = []
    seen = set()
    help_line = {}
    type_line = {}
    for no, line in enumerate(m.text.splitlines(), 1):
        parts = line.split(None, 3)
        if line.startswith("# HELP") and len(parts) >= 3:
            help_line.setdefault(parts[2], no)
        if line.startswith("# TYPE") and len(parts) >= 3:
            type_line.setdefault(parts[2], no)
    for name, labels, _, no in m.samples:
        fam = m.family_of(name)
        if fam is None:
            problems.append("%s: no # TYPE for its family" % name)
            continue
        if fam not in m.help:
            problems.append("%s: no # HELP" % fam)
        if type_line.get(fam, 1 << 30) > no or help_line.get(fam, 1 << 30) > no:
            problems.append("%s: sample on line %d before its # HELP/# TYPE" % (name, no))
        key = (name, tuple(sorted(labels.items())))
        if key in seen:
            problems.append("duplicate series %s%s" % key)
        seen.add(key)
    assert not problems, "\n".join(sorted(set(problems))[:20]) + "\n" + m.text
    for fam in (REQS, DUR, UPS, "gateway_connections_active",
                "gateway_connections_accepted_total"):
        assert m.family_of(fam) or m.family_of(fam + "_bucket"), "family %s missing" % fam
    for _, labels, _ in m.find(REQS):
        assert "client" not in labels and "path" not in labels  # bounded labels only
    assert m.value(UPS, upstream="down", outcome="connect_error") >= 1


def test_admin_paths_not_on_data_port(gateway, upstream):
    """/metrics, /healthz and /readyz on the data port are proxied to the upstream, not served
    by the gateway."""
    for path in ("/metrics", "/healthz", "/readyz"):
        r = gateway.get(path)
        assert r.header("X-Upstream") == "app", (path, r)
        assert r.status == 404 and r.body == b"no such upstream path\n"
    assert upstream.paths() == ["/metrics", "/healthz", "/readyz"]


ACCESS_KEYS = {"time", "client", "method", "path", "status", "bytes", "duration_ms", "upstream",
               "route", "request_id"}


def test_access_log_lines(gateway):
    """One JSON line per request on stdout with time, client, method, path, status, bytes,
    duration_ms, upstream, route and request_id (= the X-Request-Id the client got)."""
    c = gateway.conn()
    sent = []
    try:
        for method, path, body in (("GET", "/ok", None), ("POST", "/echo/a", b"xyz"),
                                   ("GET", "/size/1000", None), ("GET", "/status/503", None)):
            r = gateway.request(method, path, body=body, conn=c)
            sent.append((method, path, r.status, r.header("X-Request-Id"), len(r.body)))
    finally:
        c.close()
    gateway.stop()  # flushes whatever the process buffered
    lines = gateway.access_log()
    assert len(lines) == len(sent), lines
    by_id = {doc.get("request_id"): doc for doc in lines}
    for method, path, status, rid, nbytes in sent:
        assert rid in by_id, "no access log line with request_id %r: %r" % (rid, lines)
        doc = by_id[rid]
        assert ACCESS_KEYS <= set(doc), "missing keys %s" % (ACCESS_KEYS - set(doc))
        assert doc["method"] == method
        assert doc["path"] == path
        assert str(doc["status"]) == str(status)
        assert doc["route"] == "default"
        assert "127.0.0.1" in str(doc["client"])
        assert doc["time"]
        assert doc["upstream"]
        assert int(doc["bytes"]) >= nbytes
        assert float(doc["duration_ms"]) >= 0


def test_access_log_written_promptly(gateway):
    """Access log lines appear on stdout while the gateway runs (not only at exit)."""
    for _ in range(3):
        assert gateway.get("/ok").status == 200
    lines = gateway.wait_access_log(3, timeout=5)
    assert len(lines) == 3, "access log lines not written within 5 s: %r" % lines


def test_access_log_off(gateway_factory, upstream):
    """access_log = false: nothing on stdout."""
    gw = gateway_factory(upstreams=[upstream_block("app", upstream.addr)], access_log=False)
    assert gw.get("/ok").status == 200
    gw.stop()
    assert gw.stdout().strip() == ""


def test_metrics_parse_with_prometheus_client(gateway_factory, upstream):
    """The official Python parser (Debian's python3-prometheus-client) reads the whole scrape,
    policy families included, with one TYPE per family and sane values."""
    from prometheus_client.parser import text_string_to_metric_families
    route = route_block("default", "app")
    route["rate_limit"] = {"rate": 0.01, "burst": 1, "key": "client_ip"}
    gw = gateway_factory(upstreams=[upstream_block("app", upstream.addr,
                                                   breaker={"failures": 3})],
                         routes=[route])
    assert [gw.get("/ok").status for _ in range(2)] == [200, 429]
    text = gw.admin("/metrics").body.decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    want = {
        "gateway_ratelimit_rejected": "counter",
        "gateway_ratelimit_evictions": "counter",
        "gateway_deadline_exceeded": "counter",
        "gateway_upstream_retries": "counter",
        "gateway_upstream_rejected": "counter",
        "gateway_upstream_breaker_state": "gauge",
        "gateway_upstream_breaker_transitions": "counter",
        "gateway_upstream_requests_active": "gauge",
        "gateway_requests": "counter",
        "gateway_request_duration_seconds": "histogram",
    }
    for name, kind in want.items():
        assert name in fams, "family %s missing" % name
        assert fams[name].type == kind, (name, fams[name].type)
    rejected = [s for s in fams["gateway_ratelimit_rejected"].samples
                if s.labels.get("route") == "default"]
    assert rejected and rejected[0].value == 1
    state = fams["gateway_upstream_breaker_state"].samples
    assert [s.value for s in state] == [0] and state[0].labels["server"] == upstream.addr


def test_upstream_connections_and_duration(gateway_factory, upstream):
    """gateway_upstream_connections shows the pooled connection idle after a request and
    active while one is in flight; gateway_upstream_request_duration_seconds counts each
    response head and sees a slow upstream in its upper buckets."""
    from prometheus_client.parser import text_string_to_metric_families
    gw = gateway_factory(upstreams=[upstream_block("app", upstream.addr)], workers=1)
    assert gw.get("/ok").status == 200
    m = gw.wait_metric("gateway_upstream_connections", 1, state="idle")
    assert m.value("gateway_upstream_connections", state="idle") == 1
    assert m.value("gateway_upstream_connections", state="active") == 0

    t = __import__("threading").Thread(target=lambda: gw.get("/slow/600", timeout=10))
    t.start()
    m = gw.wait_metric("gateway_upstream_connections", 1, state="active")
    assert m.value("gateway_upstream_connections", state="active") == 1
    t.join(10)

    text = gw.admin("/metrics").body.decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    h = fams["gateway_upstream_request_duration_seconds"]
    assert h.type == "histogram"
    count = [s.value for s in h.samples if s.name.endswith("_count")]
    assert count == [2], h.samples
    below_half = [s.value for s in h.samples
                  if s.name.endswith("_bucket") and s.labels["le"] == "0.5"]
    assert below_half == [1], "the 600 ms response must land above the 0.5 s bucket"


def test_config_endpoint(gateway_factory, upstream, refused_port):
    """GET /config is JSON with the running generation, file and load time, the routes and
    servers as parsed and each server's breaker state and pool; a reload shows at once."""
    import json as _json
    route = route_block("api", "down", path_prefix="/api/", methods=["GET"])
    route["rate_limit"] = {"rate": 5.0, "burst": 10, "key": "route"}
    gw = gateway_factory(
        upstreams=[upstream_block("app", upstream.addr),
                   upstream_block("down", refused_port.addr, breaker={"failures": 1})],
        routes=[route, route_block("default", "app")])
    assert gw.get("/ok").status == 200
    assert gw.get("/api/x").status == 502
    r = gw.admin("/config")
    assert r.status == 200 and r.header("Content-Type") == "application/json"
    doc = _json.loads(r.body)
    assert doc["generation"] == 1 and doc["file"].endswith(".conf")
    assert doc["loaded_at"] > 1.7e9 and doc["last_reload_success"] is True
    routes = {x["name"]: x for x in doc["routes"]}
    assert routes["api"]["path_prefix"] == "/api/" and routes["api"]["methods"] == ["GET"]
    assert routes["api"]["rate_limit"] == {"rate": 5, "burst": 10, "key": "route",
                                            "scope": "local"}
    assert routes["default"]["methods"] is None and routes["default"]["host"] == "*"
    ups = {x["name"]: x for x in doc["upstreams"]}
    assert ups["down"]["breaker"] is True
    assert ups["down"]["servers"][0]["breaker_state"] == "open"
    app = ups["app"]["servers"][0]
    assert app["address"] == upstream.addr and app["breaker_state"] == "closed"
    assert app["connections_idle"] == 1 and app["requests_active"] == 0

    gw.reload(lambda s: s["routes"].insert(0, route_block("new", "app", path="/new")))
    doc = _json.loads(gw.admin("/config").body)
    assert doc["generation"] == 2
    assert [x["name"] for x in doc["routes"]] == ["new", "api", "default"]


def test_connections_active_by_listener(gateway_factory, upstream):
    """With two listeners, gateway_connections_active counts each one's open connections
    under its own listener label."""
    import socket as _socket
    from upstream import free_port
    second = free_port()

    def settings(port, admin_port):
        from gwtest import gateway_settings
        s = gateway_settings(port, admin_port, [upstream_block("app", upstream.addr)],
                             [route_block("default", "app")])
        s["listen"].append({"address": "127.0.0.1:%d" % second})
        return s
    gw = gateway_factory(settings=settings)
    first = "127.0.0.1:%d" % gw.port
    held = [_socket.create_connection(("127.0.0.1", second)) for _ in range(3)]
    for s in held:
        s.sendall(b"G")  # a first byte: defer_accept hands the connection over now
    try:
        m = gw.wait_metric("gateway_connections_active", 3, listener="127.0.0.1:%d" % second)
        assert m.value("gateway_connections_active", listener="127.0.0.1:%d" % second) == 3
        assert m.value("gateway_connections_active", listener=first) <= 1
    finally:
        for s in held:
            s.close()
