"""The strict request parser and the request limits: ambiguous or malformed requests are
refused with the right status and the connection is closed; nothing ambiguous is forwarded."""

import threading
import time

import pytest

from gwtest import route_block, upstream_block
from rawhttp import request_bytes
from upstream import pattern

H = b"Host: gw.test\r\n"

# (request bytes, may the head reach the upstream before the error is found?)
MALFORMED = {
    "cl_and_te": (b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", False),
    "two_differing_cl": (b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n"
                         b"Content-Length: 6\r\n\r\nhello!", False),
    "cl_list_differing": (b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 5, 6\r\n\r\n"
                          b"hello!", False),
    "cl_not_a_number": (b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 5x\r\n\r\n"
                        b"hello", False),
    "te_gzip": (b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\nhello",
                False),
    "te_chunked_not_last": (b"POST /upload HTTP/1.1\r\n" + H
                            + b"Transfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                            False),
    "obs_fold": (b"GET /ok HTTP/1.1\r\n" + H + b"X-Foo: a\r\n  b\r\n\r\n", False),
    "ctl_in_value": (b"GET /ok HTTP/1.1\r\n" + H + b"X-Foo: a\x01b\r\n\r\n", False),
    "nul_in_value": (b"GET /ok HTTP/1.1\r\n" + H + b"X-Foo: a\x00b\r\n\r\n", False),
    "space_before_colon": (b"GET /ok HTTP/1.1\r\n" + H + b"X-Foo : 1\r\n\r\n", False),
    "missing_host": (b"GET /ok HTTP/1.1\r\nX-Foo: 1\r\n\r\n", False),
    "two_hosts": (b"GET /ok HTTP/1.1\r\n" + H + b"Host: other.test\r\n\r\n", False),
    "bare_lf": (b"GET /ok HTTP/1.1\nHost: gw.test\nX-Foo: 1\n\n", False),
    "bad_chunk_size": (b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                       b"zz\r\nhello\r\n0\r\n\r\n", True),
    "chunk_size_overflow": (b"POST /upload HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
                            b"\r\n5\r\nhello\r\n1000000000000000000001\r\nx\r\n0\r\n\r\n", True),
}


def assert_rejected(c, status, *, note=""):
    """Reads the gateway's error response and checks it closes the connection."""
    r = c.read_response(timeout=5)
    assert r is not None, "connection closed without a %d response %s" % (status, note)
    assert r.status == status, "%r %s" % (r, note)
    assert "close" in r.connection_tokens, "no Connection: close on %d" % status
    assert r.body, "gateway error responses carry a short body"
    assert r.header("X-Request-Id"), "X-Request-Id missing on %d" % status
    assert c.wait_closed(5), "connection still open after %d" % status
    return r


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_400(gateway, upstream, case):
    """Ambiguous framing and malformed heads are answered 400 + close and never forwarded
    as a complete request."""
    data, head_may_reach = MALFORMED[case]
    with gateway.raw() as c:
        c.send(data)
        assert_rejected(c, 400, note="for " + case)
    # Also the gateway itself is still fine.
    assert gateway.get("/ok").status == 200
    reqs = upstream.wait_requests(1)
    forwarded = [q for q in reqs if q.path != "/ok"]
    if head_may_reach:
        assert all(not q.complete for q in forwarded), forwarded
    else:
        assert not forwarded, "malformed request reached the upstream: %r" % forwarded


def _limited(gateway_factory, upstream, **limits):
    return gateway_factory(upstreams=[upstream_block("app", upstream.addr)],
                           routes=[route_block("default", "app")], limits=limits)


def test_431_header_too_large(gateway_factory, upstream):
    """A head over max_header_bytes (4096) gets 431 + close; one well under it passes."""
    gw = _limited(gateway_factory, upstream, max_header_bytes=4096)
    assert gw.get("/ok", headers={"X-Big": "a" * 2000}).status == 200
    with gw.raw() as c:
        c.send(request_bytes("GET", "/ok", [("X-Big", "a" * 8000)]))
        assert_rejected(c, 431)
    assert upstream.paths() == ["/ok"]


def test_431_many_small_headers(gateway_factory, upstream):
    """The header limit counts the whole head, not one line: 90 lines of ~50 bytes -> 431."""
    gw = _limited(gateway_factory, upstream, max_header_bytes=4096)
    with gw.raw() as c:
        c.send(request_bytes("GET", "/ok", [("X-H%03d" % i, "v" * 40) for i in range(90)]))
        assert_rejected(c, 431)
    assert upstream.paths() == []


def test_413_content_length_too_large(gateway_factory, upstream):
    """Content-Length over max_body_bytes gets 413 + close before any body is sent, and the
    request is not forwarded; a body exactly at the limit passes."""
    gw = _limited(gateway_factory, upstream, max_body_bytes=65536)
    ok = gw.request("POST", "/upload", body=pattern(65536))
    assert ok.status == 200 and ok.json()["length"] == 65536
    with gw.raw() as c:
        c.send(request_bytes("POST", "/upload", [("Content-Length", "1000000")]))
        assert_rejected(c, 413)
    assert upstream.paths() == ["/upload"]


def test_413_chunked_body_grows_too_large(gateway_factory, upstream):
    """A chunked body that grows past max_body_bytes gets 413 + close, and the upstream never
    receives it complete."""
    gw = _limited(gateway_factory, upstream, max_body_bytes=65536)
    body = b"".join(b"1000\r\n" + b"x" * 4096 + b"\r\n" for _ in range(18)) + b"0\r\n\r\n"
    with gw.raw() as c:
        c.send(request_bytes("POST", "/upload", [("Transfer-Encoding", "chunked")]) + body)
        assert_rejected(c, 413)
    time.sleep(0.2)
    assert all(not q.complete for q in upstream.requests), upstream.requests


def test_408_header_timeout(gateway_factory, upstream):
    """A head that is not complete within header_timeout_ms (500) gets 408 + close."""
    gw = _limited(gateway_factory, upstream, header_timeout_ms=500)
    with gw.raw() as c:
        c.send(b"GET /ok HTTP/1.1\r\nHost: gw.test\r\nX-Partial: 1\r\n")
        assert_rejected(c, 408)
    assert upstream.paths() == []


def test_408_slowloris_trickle(gateway_factory, upstream):
    """The header timeout is a deadline for the whole head: a client trickling a byte every
    50 ms still gets 408 + close (bytes arriving do not extend it)."""
    gw = _limited(gateway_factory, upstream, header_timeout_ms=500)
    stop = threading.Event()
    with gw.raw() as c:
        c.send(b"GET /ok HTTP/1.1\r\nHost: gw.test\r\n")

        def trickle():
            for b in (b"X-Slow: " + b"a" * 200):
                if stop.wait(0.05) or not c.send(bytes([b])):
                    return

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            assert_rejected(c, 408)
        finally:
            stop.set()
            t.join(5)
    assert upstream.paths() == []


def test_404_no_route(gateway_factory, upstream):
    """With a route for one host and path prefix only, other requests get 404 (short body,
    X-Request-Id) without reaching the upstream; the route itself works."""
    gw = gateway_factory(upstreams=[upstream_block("app", upstream.addr)],
                         routes=[route_block("api", "app", host="api.example.com",
                                             path_prefix="/echo")])
    with gw.raw() as c:
        c.send(request_bytes("GET", "/echo/x", host="other.example.com"))
        r = c.read_response(timeout=5)
        assert r is not None and r.status == 404, r
        assert r.body and r.header("X-Upstream") is None
        assert r.header("X-Request-Id")
        if "close" not in r.connection_tokens:  # 404 does not need to close: reuse
            c.send(request_bytes("GET", "/ok", host="api.example.com"))
            assert c.read_response(timeout=5).status == 404
            c.send(request_bytes("GET", "/echo/y", host="api.example.com"))
            assert c.read_response(timeout=5).status == 200
    assert gw.get("/echo/z", headers={"Host": "api.example.com"}).status == 200
    assert upstream.paths() in (["/echo/y", "/echo/z"], ["/echo/z"])


def test_505_http_version(gateway, upstream):
    """A request line with HTTP/2.0 gets 505."""
    with gateway.raw() as c:
        c.send(b"GET /ok HTTP/2.0\r\nHost: gw.test\r\n\r\n")
        r = c.read_response(timeout=5)
        assert r is not None and r.status == 505, r
    assert upstream.paths() == []


def test_bad_request_does_not_disturb_other_connection(gateway, upstream):
    """A 400 on one connection leaves a concurrent keep-alive connection working, before and
    after, on the same socket."""
    good = gateway.conn()
    try:
        assert gateway.request("GET", "/ok", conn=good).status == 200
        port = good.sock.getsockname()[1]
        with gateway.raw() as bad:
            bad.send(b"GET /ok HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 2\r\n"
                     b"\r\nab")
            assert_rejected(bad, 400)
        for _ in range(3):
            r = gateway.request("GET", "/ok", conn=good)
            assert r.status == 200 and r.body == b"ok"
        assert good.sock.getsockname()[1] == port
    finally:
        good.close()
