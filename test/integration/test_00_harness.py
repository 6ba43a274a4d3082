"""The harness itself, without the gateway: the upstream server (talked to directly with
http.client and raw sockets), the raw client, the port helpers, the config renderer and the
metrics parser. If these fail, no gateway test result means anything."""

import http.client
import json
import socket
import threading

import pytest

from gwtest import Arr, parse_metrics, render_config
from rawhttp import RawConn, chunked_body, request_bytes
from upstream import Blackhole, RefusedPort, Upstream, pattern, sha256


@pytest.fixture
def direct(upstream):
    """A raw connection straight to the upstream."""
    c = RawConn("127.0.0.1", upstream.port, timeout=5)
    yield c
    c.close()


def hc(upstream):
    return http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)


def test_ok_keepalive_and_recording(upstream):
    """/ok answers 200 "ok"; three requests share one connection; requests are recorded with
    headers in order."""
    c = hc(upstream)
    try:
        for i in range(3):
            c.request("GET", "/ok?i=%d" % i, headers={"X-B": "2", "X-A": "1"})
            r = c.getresponse()
            assert (r.status, r.read(), r.getheader("X-Upstream")) == (200, b"ok", "app")
    finally:
        c.close()
    reqs = upstream.wait_requests(3)
    assert upstream.accepted == 1
    assert [q.target for q in reqs] == ["/ok?i=0", "/ok?i=1", "/ok?i=2"]
    names = [n for n, _ in reqs[0].headers]
    assert names.index("X-B") < names.index("X-A")
    assert reqs[0].path == "/ok" and reqs[0].qparam("i") == "0"


def test_echo(upstream):
    """/echo returns method, target, headers and the body's length and sha256."""
    c = hc(upstream)
    try:
        c.request("POST", "/echo/x?q=1", body=b"abc", headers={"X-T": "v"})
        r = c.getresponse()
        doc = json.loads(r.read())
        cookies = [v for n, v in r.getheaders() if n == "Set-Cookie"]
    finally:
        c.close()
    assert doc["method"] == "POST" and doc["path"] == "/echo/x?q=1"
    assert ["X-T", "v"] in doc["headers"]
    assert doc["body_length"] == 3 and doc["body_sha256"] == sha256(b"abc")
    assert len(cookies) == 2


def test_size_and_pattern(direct):
    """/size/N sends N pattern bytes with Content-Length; the pattern is deterministic."""
    assert pattern(10) == pattern(20)[:10] and len(pattern(100000)) == 100000
    direct.send(request_bytes("GET", "/size/123457"))
    r = direct.read_response()
    assert r.framing == "length" and r.body == pattern(123457)


@pytest.mark.parametrize("query", ["", "?drip=1"])
def test_chunked_response(direct, query):
    """/chunked/N is chunked, decodes to pattern(N), and has the X-Checksum trailer."""
    n = 70000 if not query else 3000
    direct.send(request_bytes("GET", "/chunked/%d%s" % (n, query)))
    r = direct.read_response()
    assert r.framing == "chunked" and r.complete
    assert r.body == pattern(n)
    assert ("X-Checksum", sha256(pattern(n))) in r.trailers
    direct.send(request_bytes("GET", "/ok"))
    assert direct.read_response().body == b"ok"


def test_chunked_zero(direct):
    """/chunked/0 is a valid empty chunked body."""
    direct.send(request_bytes("GET", "/chunked/0"))
    r = direct.read_response()
    assert r.framing == "chunked" and r.complete and r.body == b""


def test_slow_and_slowbody(direct):
    """/slow/MS and /slowbody/MS answer after the delay."""
    direct.send(request_bytes("GET", "/slow/200"))
    assert direct.read_response().body == b"slow"
    direct.send(request_bytes("GET", "/slowbody/200"))
    head = direct.read_head()
    assert head.status == 200 and head.header("Content-Length") == "4"
    assert direct.recv_exact(4) == b"slow"


def test_status_codes(direct):
    """/status/CODE answers that code; 204 and 304 have no body; /notmod?cl=5 has a CL but no
    body; HEAD /head-test has CL 1234 and no body; the connection stays in sync."""
    direct.send(request_bytes("GET", "/status/503"))
    r = direct.read_response()
    assert (r.status, r.body) == (503, b"status 503\n")
    for method, path, status in (("GET", "/nocontent", 204), ("GET", "/notmod", 304),
                                 ("GET", "/notmod?cl=5", 304), ("HEAD", "/head-test", 200)):
        direct.send(request_bytes(method, path))
        r = direct.read_response(method=method)
        assert r.status == status and r.body == b""
    assert r.header("Content-Length") == "1234"
    direct.send(request_bytes("GET", "/head-test"))
    assert direct.read_response().body == pattern(1234)


def test_reset(direct, upstream):
    """/reset reads the request and resets the connection without a response."""
    direct.send(request_bytes("GET", "/reset"))
    assert direct.read_response() is None
    assert direct.reader.reset
    assert upstream.wait_requests(1)[0].path == "/reset"


def test_close_mid_body(direct):
    """/close-mid-body announces 100000 bytes, sends 10, closes."""
    direct.send(request_bytes("GET", "/close-mid-body"))
    r = direct.read_response()
    assert r.status == 200 and not r.complete and r.body == pattern(10)


def test_garbage(direct):
    """/garbage sends bytes that are not an HTTP status line, then closes."""
    direct.send(request_bytes("GET", "/garbage"))
    with pytest.raises(ValueError):
        direct.read_response()


def test_until_close(direct):
    """/until-close/N has no framing headers and ends with the close."""
    direct.send(request_bytes("GET", "/until-close/50000"))
    r = direct.read_response()
    assert r.framing == "close" and r.body == pattern(50000)
    assert r.header("Content-Length") is None and r.header("Transfer-Encoding") is None


def test_upload_cl_chunked_expect(direct, upstream):
    """/upload reads Content-Length and chunked bodies (with trailers) and reports length and
    sha256; Expect: 100-continue gets 100 Continue first."""
    data = pattern(300001)
    direct.send(request_bytes("POST", "/upload", body=data))
    assert json.loads(direct.read_response().body) == {
        "length": len(data), "sha256": sha256(data), "chunked": False}
    direct.send(request_bytes("POST", "/upload", [("Transfer-Encoding", "chunked")],
                              chunked_body(data, trailers=[("X-T", "1")])))
    assert json.loads(direct.read_response().body) == {
        "length": len(data), "sha256": sha256(data), "chunked": True}
    assert upstream.wait_requests(2)[1].trailers == [("X-T", "1")]
    direct.send(request_bytes("POST", "/upload", [("Expect", "100-continue"),
                                                  ("Content-Length", "5")]))
    assert direct.read_head().status == 100
    direct.send(b"hello")
    assert json.loads(direct.read_response().body)["sha256"] == sha256(b"hello")


def test_hop(direct):
    """/hop sends hop-by-hop response headers and an end-to-end one."""
    direct.send(request_bytes("GET", "/hop"))
    r = direct.read_response()
    assert r.header("X-Hop") == "secret" and r.header("X-End") == "kept" and r.body == b"hop"


def test_ws(direct):
    """/ws answers 101 to an Upgrade request and then echoes raw bytes."""
    direct.send(request_bytes("GET", "/ws", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                             ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]))
    r = direct.read_response()
    assert r.status == 101
    assert r.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    direct.send(b"ping")
    assert direct.recv_exact(4) == b"ping"


def test_ws_requires_upgrade(direct):
    """/ws without Upgrade headers answers 400 (so a gateway that drops them is caught)."""
    direct.send(request_bytes("GET", "/ws"))
    assert direct.read_response().status == 400


def test_close_after(direct):
    """/close-after answers with keep-alive headers and then closes the connection."""
    direct.send(request_bytes("GET", "/close-after"))
    r = direct.read_response()
    assert r.body == b"ok" and r.header("Connection") == "keep-alive"
    assert direct.wait_closed(2)


def test_unknown_path_404(direct):
    """Unknown paths answer 404 with a recognisable body."""
    direct.send(request_bytes("GET", "/metrics"))
    r = direct.read_response()
    assert r.status == 404 and r.body == b"no such upstream path\n"


def test_connection_close_request(direct):
    """A request with Connection: close is answered and the connection closed."""
    direct.send(request_bytes("GET", "/ok", [("Connection", "close")]))
    assert direct.read_response().body == b"ok"
    assert direct.wait_closed(2)


def test_idle_close():
    """With idle_close_ms=100 the upstream closes an idle keep-alive connection; without it,
    the connection stays open."""
    with Upstream("idle", idle_close_ms=100) as up, Upstream("keep") as keep:
        for server, closes in ((up, True), (keep, False)):
            c = RawConn("127.0.0.1", server.port, timeout=5)
            c.send(request_bytes("GET", "/ok"))
            assert c.read_response().body == b"ok"
            assert c.wait_closed(0.6) is closes
            c.close()


def test_concurrent_connections(upstream):
    """The upstream serves many connections at once and counts them."""
    def one(i):
        c = hc(upstream)
        try:
            c.request("GET", "/size/%d" % (i * 1000))
            assert c.getresponse().read() == pattern(i * 1000)
        finally:
            c.close()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert upstream.accepted == 40 and len(upstream.requests) == 40


def test_refused_port():
    """RefusedPort: connecting is refused."""
    rp = RefusedPort()
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", rp.port), timeout=2)
    finally:
        rp.close()


def test_blackhole():
    """Blackhole: connecting does not complete (times out)."""
    bh = Blackhole()
    try:
        with pytest.raises(socket.timeout):
            socket.create_connection(("127.0.0.1", bh.port), timeout=0.5)
    finally:
        bh.close()


def test_render_config():
    """Config rendering: one top-level setting per line; lists, arrays, groups, strings."""
    text = render_config({"workers": 2, "access_log": True, "listen": [{"address": "a:1"}],
                          "r": {"methods": Arr(["GET", "POST"]), "s": 'x"y'}})
    assert text.splitlines() == [
        "workers = 2;", "access_log = true;", 'listen = ( { address = "a:1"; } );',
        'r = { methods = [ "GET", "POST" ]; s = "x\\"y"; };']


def test_parse_metrics():
    """The metrics parser reads HELP/TYPE, labels with escapes, +Inf, and sums subsets."""
    m = parse_metrics('# HELP a_total A.\n# TYPE a_total counter\n'
                      'a_total{route="x",code="200"} 3\na_total{route="y",code="200"} 4\n'
                      '# HELP h H.\n# TYPE h histogram\nh_bucket{le="+Inf",l="a\\"b"} 2\n'
                      'h_sum 0.5\nh_count 2\n')
    assert m.value("a_total", code="200") == 7
    assert m.value("a_total", route="x") == 3
    assert m.find("h_bucket")[0][1] == {"le": "+Inf", "l": 'a"b'}
    assert m.family_of("h_sum") == "h" and m.family_of("a_total") == "a_total"
    assert m.family_of("nope") is None


def test_redis_server(redis_server):
    """The redis_server fixture runs a private redis-server that answers commands."""
    assert redis_server.command("SET", "k", "v") == "OK"
    assert redis_server.command("GET", "k") == "v"
    assert redis_server.command("GET", "missing") is None
    assert redis_server.command("DBSIZE") == 1
