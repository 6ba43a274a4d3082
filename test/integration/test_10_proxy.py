"""Proxying: what goes in one side comes out the other, byte for byte, with the right
headers added and removed, over reused connections."""

import concurrent.futures
import hashlib
import json
import random
import socket
import threading
import time

import pytest

from gwtest import route_block, upstream_block
from rawhttp import chunked_body, connection_tokens, header_values, request_bytes
from upstream import pattern, sha256

MiB = 1 << 20


def echo_doc(res):
    assert res.status == 200, res
    return json.loads(res.body)


def test_get_ok(gateway, upstream):
    """A GET is answered with the upstream's status, headers and body, plus X-Request-Id."""
    r = gateway.get("/ok")
    assert r.status == 200
    assert r.body == b"ok"
    assert r.header("X-Upstream") == "app"
    assert r.header("Content-Type") == "text/plain"
    assert r.header("X-Request-Id")
    reqs = upstream.wait_requests(1)
    assert [(q.method, q.target) for q in reqs] == [("GET", "/ok")]


def test_post_headers_and_body_pass_through(gateway, upstream):
    """Method, target with query, end-to-end request headers (order of repeats kept) and body
    reach the upstream; response headers (repeated Set-Cookie too) reach the client."""
    body = b"hello \x00\xff world" * 100
    with gateway.raw() as c:
        c.send(request_bytes("POST", "/echo/x?a=1&b=%20", [
            ("X-Custom", "v1"), ("X-Multi", "first"), ("X-Multi", "second"),
            ("Content-Type", "application/octet-stream")], body))
        r = c.read_response()
    assert r.status == 200, r
    doc = json.loads(r.body)
    assert doc["method"] == "POST"
    assert doc["path"] == "/echo/x?a=1&b=%20"
    assert doc["body_length"] == len(body)
    assert doc["body_sha256"] == sha256(body)
    got = doc["headers"]
    assert header_values(got, "X-Custom") == ["v1"]
    assert header_values(got, "X-Multi") == ["first", "second"] or \
        header_values(got, "X-Multi") == ["first, second"]
    assert header_values(got, "Content-Type") == ["application/octet-stream"]
    assert r.header("X-Echo") == "yes"
    assert r.headers_all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]


def test_download_10mib(gateway):
    """A 10 MiB Content-Length response arrives complete and unaltered (sha256)."""
    n = 10 * MiB
    with gateway.raw(timeout=60) as c:
        c.send(request_bytes("GET", "/size/%d" % n))
        r = c.read_response(timeout=60)
    assert r.status == 200
    assert r.complete and r.body_len == n
    assert r.body_sha256 == sha256(pattern(n))


def test_upload_10mib_content_length(gateway, upstream):
    """A 10 MiB Content-Length request body reaches the upstream unaltered."""
    data = pattern(10 * MiB)
    r = gateway.request("POST", "/upload", body=data, timeout=60)
    assert r.status == 200, r
    doc = r.json()
    assert doc["length"] == len(data)
    assert doc["sha256"] == sha256(data)


def test_upload_10mib_chunked(gateway, upstream):
    """A 10 MiB chunked request body reaches the upstream unaltered."""
    data = pattern(10 * MiB)
    pieces = [data[i:i + 300000] for i in range(0, len(data), 300000)]
    c = gateway.conn(timeout=60)
    try:
        c.request("POST", "/upload", body=iter(pieces), encode_chunked=True,
                  headers={"Transfer-Encoding": "chunked"})
        r = c.getresponse()
        doc = json.loads(r.read())
    finally:
        c.close()
    assert r.status == 200
    assert doc["length"] == len(data)
    assert doc["sha256"] == sha256(data)


def test_chunked_request_with_trailer(gateway, upstream):
    """A chunked request body with odd chunk sizes and a trailer arrives complete."""
    data = pattern(200000)
    with gateway.raw() as c:
        c.send(request_bytes("POST", "/upload", [("Transfer-Encoding", "chunked")],
                             chunked_body(data, trailers=[("X-Sum", "1")])))
        r = c.read_response()
    assert r.status == 200, r
    doc = json.loads(r.body)
    assert (doc["length"], doc["sha256"]) == (len(data), sha256(data))


def _send_in_pieces(c, data, cuts, pause=0.15):
    """Sends data in the pieces between cuts, pausing before each: the first pause lets the
    upstream connection come up, so the later pieces meet a body already streaming."""
    at = 0
    for cut in list(cuts) + [len(data)]:
        c.send(data[at:cut])
        at = cut
        time.sleep(pause)


def _upload_then_get(gateway, head, framed, data, cuts, next_path, pause=0.15):
    """Sends an upload (head, then its framed body) and a GET of next_path right behind it,
    in the pieces between cuts; checks the upstream got data whole and the GET its answer."""
    msg = head + framed + request_bytes("GET", next_path)
    with gateway.raw(timeout=20) as c:
        _send_in_pieces(c, msg, cuts, pause=pause)
        first = c.read_response()
        second = c.read_response()
    assert first.status == 200, first
    doc = json.loads(first.body)
    assert (doc["length"], doc["sha256"]) == (len(data), sha256(data))
    assert echo_doc(second)["path"] == next_path


def test_chunked_upload_in_pieces_then_pipelined_request(gateway, upstream):
    """A chunked body that arrives in pieces while it streams to the upstream, with the next
    request in the same packet as its last piece: the body arrives unaltered, and the
    pipelined request is answered after it, on the same connection."""
    data = pattern(600000)
    head = request_bytes("POST", "/upload", [("Transfer-Encoding", "chunked")])
    _upload_then_get(gateway, head, chunked_body(data), data,
                     [len(head) + 500, len(head) + 250000], "/echo/next")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chunked_upload_split_at_random_points(gateway, upstream, seed):
    """A chunked body with random chunk sizes, sent in random pieces while it streams, so that
    reads end inside chunk-size lines, CRLFs and the last chunk: it arrives unaltered, and a
    request pipelined after it is answered."""
    rnd = random.Random(seed)
    data = bytes(rnd.getrandbits(8) for _ in range(400000))
    sizes = [rnd.choice([1, 2, 15, 16, 17, 255, 4096, 70000]) for _ in range(40)]
    head = request_bytes("POST", "/upload", [("Transfer-Encoding", "chunked")])
    framed = chunked_body(data, sizes=sizes)
    end = len(head) + len(framed) + len(request_bytes("GET", "/echo/last"))
    cuts = sorted(rnd.sample(range(len(head) + 1, end), 30))
    _upload_then_get(gateway, head, framed, data, cuts, "/echo/last", pause=0.01)


def test_midsize_upload_in_pieces_then_pipelined_request(gateway, upstream):
    """A Content-Length body too large to keep for a retry but too small to splice (48 KiB),
    arriving in pieces with the next request right behind it: both are answered, in order,
    and no byte of the second request is taken for the first one's body."""
    data = pattern(48 * 1024)
    head = request_bytes("POST", "/upload", [("Content-Length", str(len(data)))])
    _upload_then_get(gateway, head, data, data, [len(head) + 100, len(head) + 20000],
                     "/echo/after")


def test_client_leaving_mid_chunked_body_disturbs_no_one(gateway, upstream):
    """A client that goes away while its chunked body streams abandons only its own request:
    the upstream never sees that body complete, and other clients are served meanwhile."""
    with gateway.raw(timeout=10) as c:
        c.send(request_bytes("POST", "/upload", [("Transfer-Encoding", "chunked")]) +
               b"10000\r\n" + b"x" * 30000)
        time.sleep(0.3)
        c.send(b"y" * 20000)
        time.sleep(0.1)
    for _ in range(5):
        assert gateway.get("/ok").status == 200
    time.sleep(0.2)
    assert [q.complete for q in upstream.requests if q.path == "/upload"] == [False]
    assert gateway.alive()


def test_upstream_answering_before_the_body_ends(gateway_factory, upstream):
    """An upstream that answers (403, keep-alive) before it has read a streaming chunked
    body, while the gateway waits for more of it: the client gets the answer and the
    connection closes after it, since the rest of the body can't be skipped; the gateway
    goes on serving."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    addr = "127.0.0.1:%d" % srv.getsockname()[1]
    got = []

    def answer_early():
        s, _ = srv.accept()
        with s:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            got.append(buf)
            time.sleep(0.4)  # meanwhile the client sends more, and the gateway reads it
            s.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno\n")
            time.sleep(1.0)

    t = threading.Thread(target=answer_early, daemon=True)
    t.start()
    gw = gateway_factory(upstreams=[upstream_block("early", addr), upstream_block("app", upstream.addr)],
                         routes=[route_block("ok", "app", path_prefix="/ok"),
                                 route_block("early", "early")],
                         workers=1)
    with gw.raw(timeout=10) as c:
        c.send(request_bytes("POST", "/up", [("Transfer-Encoding", "chunked")]) +
               b"8000\r\n" + b"x" * 1000)
        time.sleep(0.2)
        c.send(b"x" * 1000)
        r = c.read_response(timeout=5)
        assert r.status == 403 and r.body == b"no\n"
        assert c.wait_closed(5)
    t.join(timeout=5)
    srv.close()
    assert got and got[0].startswith(b"POST /up ")
    assert gw.get("/ok").status == 200


def test_chunked_response_intact(gateway):
    """Chunked responses (empty, small, 1 MiB; chunks of 1..65536 bytes; a trailer) reach the
    client with the exact body, and the connection stays usable afterwards."""
    with gateway.raw(timeout=30) as c:
        for n in (0, 1, 100000, MiB):
            c.send(request_bytes("GET", "/chunked/%d" % n))
            r = c.read_response()
            assert r.status == 200, (n, r)
            assert r.complete, n
            assert r.body_len == n and r.body_sha256 == sha256(pattern(n)), n
            for name, value in r.trailers:
                if name.lower() == "x-checksum":
                    assert value == sha256(pattern(n))
        c.send(request_bytes("GET", "/ok"))
        assert c.read_response().body == b"ok"


def test_chunked_response_split_across_reads(gateway):
    """A chunked response written in tiny pieces (size lines split) arrives intact."""
    n = 5000
    with gateway.raw(timeout=30) as c:
        c.send(request_bytes("GET", "/chunked/%d?drip=1" % n))
        r = c.read_response()
    assert r.status == 200
    assert r.complete and r.body == pattern(n)


def test_until_close_response(gateway):
    """A response delimited by the upstream closing (no CL, not chunked) is delivered in full
    and its end is clear to the client (re-framed, or the client connection is closed)."""
    n = 300000
    with gateway.raw(timeout=30) as c:
        c.send(request_bytes("GET", "/until-close/%d" % n))
        r = c.read_response()
        assert r.status == 200
        assert r.complete
        assert r.body == pattern(n)
        if r.framing != "close":
            c.send(request_bytes("GET", "/ok"))
            assert c.read_response().body == b"ok"


def _no_body_case(gateway, method, path, status):
    with gateway.raw() as c:
        c.send(request_bytes(method, path))
        r = c.read_response(method=method)
        assert r is not None and r.status == status, r
        # Any stray body byte would corrupt the next response on this connection.
        assert c.send(request_bytes("GET", "/ok"))
        r2 = c.read_response()
        assert r2 is not None and r2.status == 200 and r2.body == b"ok", r2
    return r


def test_head_has_no_body(gateway, upstream):
    """HEAD gets the upstream's headers (Content-Length 1234) and no body bytes."""
    r = _no_body_case(gateway, "HEAD", "/head-test", 200)
    assert r.header("Content-Length") == "1234"
    assert upstream.wait_requests(2)[0].method == "HEAD"


def test_204_has_no_body(gateway):
    """A 204 is relayed without a body, and the connection stays in sync."""
    _no_body_case(gateway, "GET", "/nocontent", 204)


def test_304_has_no_body(gateway):
    """A 304 is relayed with its ETag and without a body."""
    r = _no_body_case(gateway, "GET", "/notmod", 304)
    assert r.header("ETag") == '"v1"'


def test_304_with_content_length_has_no_body(gateway):
    """A 304 carrying Content-Length: 5 still ends at its head (RFC 9112 6.3): the gateway
    neither waits for 5 bytes nor sends any."""
    _no_body_case(gateway, "GET", "/notmod?cl=5", 304)


def test_keepalive_reuse(gateway, upstream):
    """50 sequential requests on one client connection use that one connection, and the
    gateway reuses its upstream connection (the upstream sees only a few)."""
    c = gateway.conn()
    try:
        ports = set()
        for i in range(50):
            r = gateway.request("GET", "/ok" if i % 2 else "/size/1000", conn=c)
            assert r.status == 200
            assert not r.will_close, "gateway closed a keep-alive connection"
            ports.add(c.sock.getsockname()[1])
    finally:
        c.close()
    assert len(ports) == 1
    assert len(upstream.wait_requests(50)) == 50
    assert 1 <= upstream.accepted <= 3, upstream.accepted


def test_pipelining(gateway, upstream):
    """Three requests sent in one write on one connection get three responses, in order."""
    body = b"pipelined body"
    data = (request_bytes("GET", "/echo/1") + request_bytes("POST", "/echo/2", body=body)
            + request_bytes("GET", "/echo/3"))
    with gateway.raw() as c:
        c.send(data)
        docs = [json.loads(c.read_response().body) for _ in range(3)]
    assert [d["path"] for d in docs] == ["/echo/1", "/echo/2", "/echo/3"]
    assert docs[1]["method"] == "POST" and docs[1]["body_sha256"] == sha256(body)


def test_x_forwarded_for_appended(gateway):
    """An incoming X-Forwarded-For gets the client address appended."""
    doc = echo_doc(gateway.get("/echo", headers={"X-Forwarded-For": "1.2.3.4"}))
    assert header_values(doc["headers"], "X-Forwarded-For") == ["1.2.3.4, 127.0.0.1"]


def test_x_forwarded_for_and_proto_set(gateway):
    """Without one, X-Forwarded-For is the client address; X-Forwarded-Proto is http."""
    doc = echo_doc(gateway.get("/echo"))
    assert header_values(doc["headers"], "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(doc["headers"], "X-Forwarded-Proto") == ["http"]


def test_x_forwarded_proto_overwritten(gateway):
    """A client's own X-Forwarded-Proto is not trusted: the upstream sees only "http"."""
    doc = echo_doc(gateway.get("/echo", headers={"X-Forwarded-Proto": "https"}))
    assert header_values(doc["headers"], "X-Forwarded-Proto") == ["http"]


def test_request_id_generated(gateway):
    """Without X-Request-Id, the gateway makes one, sends it upstream and returns the same
    value to the client; two requests get different ids."""
    r1 = gateway.get("/echo")
    r2 = gateway.get("/echo")
    ids = []
    for r in (r1, r2):
        rid = r.header("X-Request-Id")
        assert rid, "no X-Request-Id in the response"
        assert header_values(echo_doc(r)["headers"], "X-Request-Id") == [rid]
        ids.append(rid)
    assert ids[0] != ids[1]


def test_request_id_kept(gateway):
    """A client's X-Request-Id is kept: forwarded unchanged and returned."""
    r = gateway.get("/echo", headers={"X-Request-Id": "test-id-123"})
    assert header_values(echo_doc(r)["headers"], "X-Request-Id") == ["test-id-123"]
    assert r.headers_all("X-Request-Id") == ["test-id-123"]


def test_hop_by_hop_request_headers_removed(gateway, upstream):
    """Keep-Alive, TE, Trailer, Proxy-Authorization and headers named in Connection are not
    forwarded; neither are the client's Connection tokens; other headers are."""
    with gateway.raw() as c:
        c.send(request_bytes("GET", "/echo", [
            ("Connection", "keep-alive, X-Foo"), ("X-Foo", "1"), ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"), ("Trailer", "X-T"), ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("X-Bar", "kept")]))
        r = c.read_response()
    got = json.loads(r.body)["headers"]
    for name in ("X-Foo", "Keep-Alive", "TE", "Trailer", "Proxy-Authorization"):
        assert not header_values(got, name), "%s forwarded upstream" % name
    assert "x-foo" not in connection_tokens(got)
    assert header_values(got, "X-Bar") == ["kept"]


def test_connection_close_from_client(gateway, upstream):
    """Connection: close from the client is honoured on the client side (response, then close)
    and not forwarded to the upstream."""
    with gateway.raw() as c:
        c.send(request_bytes("GET", "/echo", [("Connection", "close")]))
        r = c.read_response()
        assert r.status == 200
        assert c.wait_closed(5), "client asked for close; connection stayed open"
    assert "close" not in connection_tokens(json.loads(r.body)["headers"])


def test_hop_by_hop_response_headers_removed(gateway):
    """Headers named in the upstream's Connection and its Keep-Alive do not reach the client;
    end-to-end response headers do."""
    r = gateway.get("/hop")
    assert r.status == 200 and r.body == b"hop"
    assert r.header("X-End") == "kept"
    assert r.header("X-Hop") is None
    assert r.header("Keep-Alive") != "timeout=5"
    assert "x-hop" not in {t.strip().lower() for v in r.headers_all("Connection")
                           for t in v.split(",")}


def test_expect_100_continue(gateway, upstream):
    """A request with Expect: 100-continue gets "100 Continue" before sending its body, then
    the final response for the full body."""
    data = pattern(MiB)
    with gateway.raw(timeout=30) as c:
        c.send(request_bytes("POST", "/upload", [("Expect", "100-continue"),
                                                 ("Content-Length", str(len(data)))]))
        interim = c.read_head(timeout=5)
        assert interim is not None, "connection closed instead of 100 Continue"
        assert interim.status == 100, interim
        c.send(data)
        r = c.read_response()
    assert r.status == 200, r
    doc = json.loads(r.body)
    assert (doc["length"], doc["sha256"]) == (len(data), sha256(data))


def test_websocket_upgrade(gateway, upstream):
    """An Upgrade request to /ws gets 101 and then becomes a two-way byte tunnel."""
    with gateway.raw(timeout=10) as c:
        c.send(request_bytes("GET", "/ws", [
            ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]))
        r = c.read_response()
        assert r is not None and r.status == 101, r
        assert r.header("Upgrade", "").lower() == "websocket"
        assert "upgrade" in r.connection_tokens
        assert r.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        c.send(b"hello")
        assert c.recv_exact(5) == b"hello"
        blob = random.Random(7).randbytes(300000)
        threading.Thread(target=c.send, args=(blob,), daemon=True).start()
        assert c.recv_exact(len(blob), timeout=20) == blob
    req = upstream.wait_requests(1)[0]
    assert req.header("Upgrade", "").lower() == "websocket"
    assert "upgrade" in connection_tokens(req.headers)


def test_websocket_idle_tunnel_is_closed(gateway_factory, upstream):
    """A tunnel that moves nothing either way for idle_timeout_ms is closed; one in use is not."""
    import time as _t
    gw = gateway_factory(upstreams=[upstream_block("app", upstream.addr)],
                         limits={"idle_timeout_ms": 600})
    hdrs = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]
    with gw.raw(timeout=10) as busy, gw.raw(timeout=10) as idle:
        for c in (busy, idle):
            c.send(request_bytes("GET", "/ws", hdrs))
            assert c.read_response().status == 101
        t0 = _t.monotonic()
        while _t.monotonic() - t0 < 1.8:
            busy.send(b"ping")
            assert busy.recv_exact(4) == b"ping"
            _t.sleep(0.2)
        assert idle.wait_closed(3), "an idle tunnel stayed open"
        busy.send(b"still")
        assert busy.recv_exact(5) == b"still", "a busy tunnel was closed"


def test_http10_client(gateway, upstream):
    """An HTTP/1.0 request without Host is proxied, and the connection closes after it."""
    with gateway.raw() as c:
        c.send(b"GET /ok HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.body == b"ok"
        assert c.wait_closed(5)


@pytest.mark.parametrize("conn", ["", "Connection: keep-alive\r\n"])
def test_http10_client_gets_chunked_body_decoded(gateway, conn):
    """HTTP/1.0 has no chunked coding: a chunked upstream response reaches a 1.0 client
    decoded, without Transfer-Encoding, and ended by the close."""
    import socket as _s
    s = _s.create_connection(("127.0.0.1", gateway.port), timeout=10)
    s.sendall(("GET /chunked/100000 HTTP/1.0\r\n%s\r\n" % conn).encode())
    data = b""
    while True:
        got = s.recv(65536)
        if not got:
            break
        data += got
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0].split()[1] == "200"
    names = [x.split(":", 1)[0].lower() for x in lines[1:]]
    assert "transfer-encoding" not in names and "content-length" not in names
    assert "connection: close" in [x.lower() for x in lines[1:]]
    assert body == pattern(100000)


def test_route_selection(gateway_factory, upstream_factory):
    """Routes match by host (exact, *.suffix; case and port ignored), path (prefix or exact)
    and method, first match wins; unmatched requests get 404."""
    a, b = upstream_factory("A"), upstream_factory("B")
    gw = gateway_factory(
        upstreams=[upstream_block("a", a.addr), upstream_block("b", b.addr)],
        routes=[route_block("api", "a", host="api.example.com", path_prefix="/echo"),
                route_block("wild", "b", host="*.example.com", path="/ok"),
                route_block("post", "a", host="*", path_prefix="/upload", methods=["POST"]),
                route_block("catch", "b", host="*", path_prefix="/echo")])

    def who(method, path, host, body=None):
        r = gw.request(method, path, body=body, headers={"Host": host})
        return r.status, r.header("X-Upstream")

    assert who("GET", "/echo/x", "api.example.com") == (200, "A")
    assert who("GET", "/echo/y", "API.Example.COM:8080") == (200, "A")
    assert who("GET", "/echo/z", "other.example.com") == (200, "B")  # falls to "catch"
    assert who("GET", "/ok", "www.example.com") == (200, "B")
    assert who("GET", "/ok/more", "www.example.com")[0] == 404
    assert who("GET", "/ok", "example.org")[0] == 404
    assert who("POST", "/upload", "x.test", body=b"123") == (200, "A")
    assert who("GET", "/upload", "x.test")[0] == 404
    assert "/ok/more" not in a.paths() + b.paths()


def test_many_concurrent_clients(gateway, upstream):
    """50 clients x 20 keep-alive requests at once (downloads, echoes, uploads) all get
    exactly their own answers."""
    def client(k):
        rnd = random.Random(k)
        c = gateway.conn(timeout=30)
        try:
            for i in range(20):
                kind = rnd.randrange(3)
                if kind == 0:
                    n = rnd.randrange(0, 200000)
                    r = gateway.request("GET", "/size/%d" % n, conn=c)
                    if r.status != 200 or hashlib.sha256(r.body).hexdigest() != sha256(pattern(n)):
                        return "client %d req %d: /size/%d bad (%d)" % (k, i, n, r.status)
                elif kind == 1:
                    path = "/echo/%d/%d" % (k, i)
                    r = gateway.request("GET", path, conn=c)
                    if r.status != 200 or json.loads(r.body)["path"] != path:
                        return "client %d req %d: echo mismatch" % (k, i)
                else:
                    body = rnd.randbytes(rnd.randrange(1, 50000))
                    r = gateway.request("POST", "/upload", body=body, conn=c)
                    if r.status != 200 or json.loads(r.body)["sha256"] != sha256(body):
                        return "client %d req %d: upload mismatch" % (k, i)
        except Exception as e:  # a client error is a test failure, reported below
            return "client %d: %r" % (k, e)
        finally:
            c.close()
        return None

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        errors = [e for e in pool.map(client, range(50)) if e]
    assert not errors, errors[:5]
    assert len(upstream.requests) == 1000
