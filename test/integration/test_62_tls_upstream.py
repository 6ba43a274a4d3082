"""TLS from the gateway to upstream servers (`upstreams.tls`): real TLS upstreams (the test
upstream wrapped in Python's ssl), certificates made at run time. Verification by CA and by
name, SNI, keep-alive reuse of TLS connections, bodies both ways, servers that fail the
handshake in each way (wrong name, unknown CA, plain HTTP, silence, a client certificate
required), pools kept apart by SNI, a reload that changes the name, TLS on both sides, and the
config errors."""

import hashlib
import http.client
import json
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest

from gwtest import gateway_settings, render_config, route_block, upstream_block, \
    wait_until, ws_echo_roundtrip
from tlscerts import Certs
from upstream import pattern

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is missing")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    c = Certs(tmp_path_factory.mktemp("upcerts"))
    c.backend = c.leaf("backend", ["backend.test", "alt.test"])
    c.client = c.leaf("client", ["gateway.client.test"])
    c.front = c.leaf("front", ["localhost"])
    return c


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    c = Certs(tmp_path_factory.mktemp("othercerts"))
    c.backend = c.leaf("backend", ["backend.test"])
    return c


class Silent:
    """Accepts TCP connections (the kernel does, from the backlog) and never says a word."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]


class PlainAnswer:
    """Answers whatever it reads with a plain-text HTTP 400 and closes, as an HTTP server
    does when a ClientHello reaches it."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                c.settimeout(5)
                try:
                    c.recv(4096)
                    c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                              b"Connection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self):
        self.sock.close()
        self.thread.join(timeout=2)


@pytest.fixture
def plain_answer():
    s = PlainAnswer()
    yield s
    s.close()


@pytest.fixture
def blackhole_acceptor():
    s = Silent()
    yield s
    s.sock.close()


def server_ctx(crt_key, client_ca=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*crt_key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx


def settings_for(upstreams, routes=None, workers=1, listen_tls=None):
    def settings(port, admin_port):
        s = gateway_settings(port, admin_port, upstreams,
                             routes or [route_block("default", upstreams[0]["name"])],
                             workers=workers)
        if listen_tls is not None:
            s["listen"] = [{"address": "127.0.0.1:%d" % port, "tls": listen_tls}]
        return s
    return settings


def tls_up(up, tls, name="app", **kw):
    return upstream_block(name, up.addr, tls=tls, **kw)


def test_verified_with_sni_and_kept_alive(gateway_factory, upstream_factory, certs):
    up = upstream_factory("secure", tls=server_ctx(certs.backend))
    gw = gateway_factory(settings=settings_for(
        [tls_up(up, {"ca": certs.ca, "sni": "backend.test"})]))
    for i in range(5):
        r = gw.get("/echo/%d" % i)
        assert r.status == 200, r
        assert r.json()["path"] == "/echo/%d" % i
    assert up.accepted == 1, "TLS connections to the upstream were not reused"
    assert up.sni_seen == ["backend.test"]
    m = gw.metrics()
    assert m.value("gateway_upstream_tls_handshakes_total", upstream="app", server=up.addr,
                   result="ok") == 1
    assert m.value("gateway_upstream_reused_total", upstream="app", server=up.addr) == 4


def test_bodies_both_ways(gateway_factory, upstream_factory, certs):
    up = upstream_factory("secure", tls=server_ctx(certs.backend))
    gw = gateway_factory(settings=settings_for(
        [tls_up(up, {"ca": certs.ca, "sni": "backend.test"})]))
    c = gw.conn(timeout=30)
    n = 10 * 1024 * 1024
    c.request("GET", "/size/%d" % n)
    r = c.getresponse()
    data = r.read()
    assert r.status == 200 and len(data) == n and data == pattern(n)
    body = bytes(range(256)) * (40 * 1024)  # 10 MiB
    c.request("POST", "/upload", body=body)
    r = c.getresponse()
    doc = json.loads(r.read())
    assert doc["length"] == len(body) and doc["sha256"] == hashlib.sha256(body).hexdigest()
    c.request("POST", "/upload", body=iter([body[:70000], body[70000:200000]]),
              headers={"Transfer-Encoding": "chunked"}, encode_chunked=True)
    r = c.getresponse()
    doc = json.loads(r.read())
    assert doc["length"] == 200000 and doc["chunked"] is True
    c.request("GET", "/chunked/300000")
    r = c.getresponse()
    data = r.read()
    assert data == pattern(300000)
    c.close()
    r = gw.get("/until-close/70000")
    assert r.status == 200 and r.body == pattern(70000)


def handshake_failure(gw, up_name, path="/ok"):
    r = gw.get(path)
    assert r.status == 502, r
    m = gw.wait_metric("gateway_upstream_requests_total", 1, upstream=up_name,
                       outcome="tls_error")
    assert m.value("gateway_upstream_tls_handshakes_total", upstream=up_name,
                   result="failed") >= 1
    return gw.stderr()


def test_wrong_name_and_unknown_ca_fail_with_the_reason(gateway_factory, upstream_factory,
                                                        upstream, certs, other_ca):
    named = upstream_factory("named", tls=server_ctx(certs.backend))
    foreign = upstream_factory("foreign", tls=server_ctx(other_ca.backend))
    routes = [route_block("wrongname", "wrongname", path_prefix="/echo/wrongname"),
              route_block("foreign", "foreign", path_prefix="/echo/foreign"),
              route_block("noverify", "noverify", path_prefix="/echo/noverify"),
              route_block("plain", "plain")]
    gw = gateway_factory(settings=settings_for(
        [tls_up(named, {"ca": certs.ca, "sni": "other.test"}, name="wrongname"),
         tls_up(foreign, {"ca": certs.ca, "sni": "backend.test"}, name="foreign"),
         tls_up(foreign, {"verify": False, "sni": "backend.test"}, name="noverify"),
         upstream_block("plain", upstream.addr)], routes=routes))
    err = handshake_failure(gw, "wrongname", "/echo/wrongname")
    assert "TLS handshake with %s failed" % named.addr in err
    assert "CN" in err or "name" in err.lower(), err
    err = handshake_failure(gw, "foreign", "/echo/foreign")
    assert "TLS handshake with %s failed" % foreign.addr in err
    assert "not correctly signed" in err or "trusted" in err.lower(), err
    # verify = false takes the same certificate
    r = gw.get("/echo/noverify")
    assert r.status == 200 and r.json()["path"] == "/echo/noverify"
    # and the gateway goes on serving everyone else
    assert gw.get("/ok").status == 200


def test_plain_and_silent_servers(gateway_factory, plain_answer, blackhole_acceptor, certs):
    routes = [route_block("plain", "plain", path_prefix="/plain"),
              route_block("silent", "silent", path_prefix="/silent")]
    gw = gateway_factory(settings=settings_for(
        [tls_up(plain_answer, {"ca": certs.ca, "sni": "backend.test"}, name="plain"),
         upstream_block("silent", blackhole_acceptor.addr, connect_timeout_ms=300,
                        tls={"ca": certs.ca, "sni": "backend.test"})], routes=routes))
    # a server speaking plain HTTP answers the ClientHello with an HTTP 400 and closes
    t0 = time.monotonic()
    handshake_failure(gw, "plain", "/plain/ok")
    assert time.monotonic() - t0 < 5
    # a server that accepts and never answers: the handshake is bounded by connect_timeout_ms
    t0 = time.monotonic()
    r = gw.get("/silent/ok")
    assert r.status == 504, r
    assert time.monotonic() - t0 < 5
    gw.wait_metric("gateway_upstream_requests_total", 1, upstream="silent",
                   outcome="connect_timeout")
    assert "no answer within connect_timeout_ms" in gw.stderr()


def test_waiters_behind_a_silent_first_handshake_time_out(gateway_factory, blackhole_acceptor,
                                                         certs):
    """Requests connected while a pool's first (full) handshake runs wait for its session; when
    that server never answers, each of them still gets its 504 within connect_timeout_ms, and
    the worker goes on serving."""
    gw = gateway_factory(settings=settings_for(
        [upstream_block("silent", blackhole_acceptor.addr, connect_timeout_ms=300,
                        tls={"ca": certs.ca, "sni": "backend.test"})], workers=1))
    results = []

    def one():
        t0 = time.monotonic()
        results.append((gw.get("/ok").status, time.monotonic() - t0))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert [st for st, _ in results] == [504] * 4, results
    assert all(took < 5 for _, took in results), results
    assert gw.metrics().value("gateway_upstream_requests_total", upstream="silent",
                              outcome="connect_timeout") == 4


def test_client_certificate(gateway_factory, upstream_factory, certs):
    up = upstream_factory("mtls", tls=server_ctx(certs.backend, client_ca=certs.ca))
    base = {"ca": certs.ca, "sni": "backend.test"}
    routes = [route_block("anon", "anon", path_prefix="/echo/anon"),
              route_block("cert", "cert")]
    with_cert = dict(base, cert=certs.client[0], key=certs.client[1])
    gw = gateway_factory(settings=settings_for(
        [tls_up(up, base, name="anon"), tls_up(up, with_cert, name="cert")], routes=routes))
    r = gw.get("/echo/anon")
    assert r.status == 502, "a server that requires a client certificate let us in without"
    r = gw.get("/ok")
    assert (r.status, r.body) == (200, b"ok")


def test_stale_pooled_connection_is_retried(gateway_factory, upstream_factory, certs):
    up = upstream_factory("idle", idle_close_ms=200, tls=server_ctx(certs.backend))
    gw = gateway_factory(settings=settings_for(
        [tls_up(up, {"ca": certs.ca, "sni": "backend.test"})]))
    assert gw.get("/ok").status == 200
    time.sleep(0.6)  # the upstream closes the idle TLS connection
    for _ in range(3):
        r = gw.get("/ok")
        assert (r.status, r.body) == (200, b"ok")


def test_pools_apart_by_sni_and_reload(gateway_factory, upstream_factory, certs):
    up = upstream_factory("shared", tls=server_ctx(certs.backend))
    routes = [route_block("a", "a", path_prefix="/echo/a"), route_block("b", "b")]
    gw = gateway_factory(settings=settings_for(
        [tls_up(up, {"ca": certs.ca, "sni": "backend.test"}, name="a"),
         tls_up(up, {"ca": certs.ca, "sni": "alt.test"}, name="b")], routes=routes))
    for _ in range(3):
        assert gw.get("/echo/a").status == 200
        assert gw.get("/ok").status == 200
    assert sorted(up.sni_seen) == ["alt.test", "backend.test"], up.sni_seen
    assert up.accepted == 2
    # a reload that renames b's server: new connections say the new name
    settings = gw.settings_fn(gw.port, gw.admin_port)
    settings["upstreams"][1]["tls"]["sni"] = "backend.test"
    gw.config_path.write_text(render_config(settings))
    gw.proc.send_signal(signal.SIGHUP)
    gw.wait_metric("gateway_config_generation", 2)
    before = len(up.sni_seen)
    assert gw.get("/ok").status == 200
    assert gw.get("/echo/a").status == 200
    assert up.sni_seen[before:] in ([], ["backend.test"]), up.sni_seen
    gw.stop()
    assert "ERROR: AddressSanitizer" not in gw.stderr()


def test_tls_on_both_sides(gateway_factory, upstream_factory, certs):
    up = upstream_factory("secure", tls=server_ctx(certs.backend))
    gw = gateway_factory(settings=settings_for(
        [tls_up(up, {"ca": certs.ca, "sni": "backend.test"})], workers=2,
        listen_tls={"cert": certs.front[0], "key": certs.front[1]}))
    ctx = ssl.create_default_context(cafile=certs.ca)
    c = http.client.HTTPSConnection("localhost", gw.port, timeout=30, context=ctx)
    n = 3 * 1024 * 1024
    c.request("GET", "/size/%d" % n)
    r = c.getresponse()
    assert r.read() == pattern(n)
    body = pattern(2 * 1024 * 1024 + 17)
    c.request("POST", "/upload", body=body)
    doc = json.loads(c.getresponse().read())
    assert doc["sha256"] == hashlib.sha256(body).hexdigest()
    c.request("GET", "/echo")
    doc = json.loads(c.getresponse().read())
    assert ["X-Forwarded-Proto", "https"] in doc["headers"]
    c.close()


def test_websocket_to_tls_upstream(gateway_factory, upstream_factory, certs):
    """A plain client's tunnel to a TLS upstream, and a TLS client's to a TLS upstream."""
    up = upstream_factory("secure", tls=server_ctx(certs.backend))
    gw = gateway_factory(settings=settings_for(
        [tls_up(up, {"ca": certs.ca, "sni": "backend.test"})]))
    with gw.raw(timeout=10) as c:
        ws_echo_roundtrip(c, 1 << 20)
    both = gateway_factory(name="both", settings=settings_for(
        [tls_up(up, {"ca": certs.ca, "sni": "backend.test"})],
        listen_tls={"cert": certs.front[0], "key": certs.front[1]}))
    ctx = ssl.create_default_context(cafile=certs.ca)
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    with both.raw(timeout=10, tls=ctx, server_hostname="localhost") as c:
        ws_echo_roundtrip(c, 300000)
        # The client's close_notify travels to the upstream as one, and the upstream's end
        # comes back as one: unwrap() waits for the gateway's close_notify, and fails on a
        # bare FIN.
        c.sock.unwrap()
    for g in (gw, both):
        g.wait_metric("gateway_connections_active", 0)
    # Both tunnels ended their TLS stream to the upstream with close_notify.
    wait_until(lambda: len(up.tls_ends) == 2, timeout=5)
    assert up.tls_ends == ["close_notify", "close_notify"]


def test_connections_end_with_close_notify(gateway_factory, upstream_factory, certs):
    """A TLS connection to an upstream that the gateway closes in good order ends with its
    close_notify, not a bare FIN: one left idle past idle_timeout_ms, one the pool has no
    room for (keepalive = 0), one in the pool when the gateway drains."""
    pooled = upstream_factory("pooled", tls=server_ctx(certs.backend))
    unpooled = upstream_factory("unpooled", tls=server_ctx(certs.backend))
    tls = {"ca": certs.ca, "sni": "backend.test"}

    def settings(port, admin_port):
        s = settings_for([tls_up(pooled, tls), tls_up(unpooled, tls, name="nopool", keepalive=0)],
                         routes=[route_block("nopool", "nopool", path_prefix="/echo/nopool"),
                                 route_block("default", "app")])(port, admin_port)
        s["limits"]["idle_timeout_ms"] = 1000
        return s

    gw = gateway_factory(settings=settings)
    for path in ("/echo/nopool/1", "/echo/nopool/2", "/echo/pooled"):
        assert gw.get(path).status == 200
    wait_until(lambda: len(unpooled.tls_ends) == 2, timeout=5)
    assert unpooled.tls_ends == ["close_notify", "close_notify"]
    assert pooled.tls_ends == []  # still in the pool
    wait_until(lambda: pooled.tls_ends, timeout=5)  # the idle timer closed it
    assert pooled.tls_ends == ["close_notify"]
    # and one still pooled when the gateway drains and exits
    assert gw.get("/echo/pooled").status == 200
    gw.stop()
    wait_until(lambda: len(pooled.tls_ends) == 2, timeout=5)
    assert pooled.tls_ends == ["close_notify", "close_notify"]


def test_dump_shows_the_tls_group(gateway_bin, tmp_path, certs):
    conf = tmp_path / "t.conf"
    conf.write_text('listen = ( { address = "127.0.0.1:1"; } );\n'
                    'upstreams = ( { name = "app"; servers = [ "127.0.0.1:2" ];\n'
                    '  tls = { sni = "Backend.Test"; }; } );\n'
                    'routes = ( { name = "r"; upstream = "app"; } );\n')
    out = subprocess.run([gateway_bin, "-T", "-c", str(conf)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'verify = true;' in out.stdout and 'sni = "backend.test";' in out.stdout
    assert 'ca = "/etc/ssl/certs/ca-certificates.crt";' in out.stdout


@pytest.mark.parametrize("case", ["ca", "half_pair", "sni", "cipher", "unknown", "mismatch"])
def test_config_errors(gateway_bin, tmp_path, certs, case):
    tls = {"ca": 'ca = "/nonexistent/ca.crt";',
           "half_pair": 'cert = "%s";' % certs.client[0],
           "sni": 'sni = "not a name";',
           "cipher": 'ca = "%s"; ciphers = [ "TLS-NOPE" ];' % certs.ca,
           "unknown": 'verify_depth = 3;',
           "mismatch": 'ca = "%s"; cert = "%s"; key = "%s";' % (certs.ca, certs.client[0],
                                                                  certs.backend[1])}[case]
    want = {"ca": "cannot load CA certificates /nonexistent/ca.crt",
            "half_pair": "needs both 'cert' and 'key'", "sni": "must be a DNS name",
            "cipher": "unknown cipher suite", "unknown": "verify_depth",
            "mismatch": "does not match"}[case]
    conf = tmp_path / "t.conf"
    conf.write_text('listen = ( { address = "127.0.0.1:1"; } );\n'
                    'upstreams = ( { name = "app"; servers = [ "127.0.0.1:2" ];\n'
                    '  tls = { %s }; } );\n'
                    'routes = ( { name = "r"; upstream = "app"; } );\n' % tls)
    out = subprocess.run([gateway_bin, "-t", "-c", str(conf)], capture_output=True, text=True)
    assert out.returncode == 1, out
    assert "t.conf:3: " in out.stderr and want in out.stderr, out.stderr


def test_sessions_are_resumed(gateway_factory, upstream_factory, certs):
    """Each pool keeps its last TLS session and offers it: with keepalive = 0 (a new
    connection per request), the first handshake is full and the next ones are resumed, also
    for 8 requests sent at once to a cold pool (those connected while the first handshake runs
    wait for its session). A reload starts over with a full handshake: a resumed one checks no
    certificate, and the CA file may have changed."""
    up = upstream_factory("resume", tls=server_ctx(certs.backend))
    gw = gateway_factory(settings=settings_for(
        [tls_up(up, {"ca": certs.ca, "sni": "backend.test"}, keepalive=0)]))

    assert gw.statuses_at_once("/ok", 8) == [200] * 8
    assert wait_until(lambda: len(up.tls_resumed) == 8), up.tls_resumed
    assert sorted(up.tls_resumed) == [False] + [True] * 7, up.tls_resumed

    for _ in range(3):
        assert gw.get("/ok").status == 200
    assert up.tls_resumed[8:] == [True] * 3, up.tls_resumed

    gw.reload(lambda s: None)
    for _ in range(2):
        assert gw.get("/ok").status == 200
    assert up.tls_resumed[11:] == [False, True], up.tls_resumed
    m = gw.metrics()
    assert m.value("gateway_upstream_tls_handshakes_total", upstream="app", server=up.addr,
                   result="ok") == 13
    assert m.value("gateway_upstream_tls_resumed_total", upstream="app", server=up.addr) == \
        up.tls_resumed.count(True) == 11


def test_an_old_session_is_tried_by_one_connection_first(gateway_factory, upstream_factory,
                                                         certs):
    """A session no handshake has used for 10 s may have expired on the server. The next
    connections do not all offer it at once: one tries it while the others wait, and when the
    server refuses it (a full handshake), the others resume the new session. Without this,
    every connection opened after an idle spell paid a full handshake at the same moment."""
    up = upstream_factory("stale", tls=server_ctx(certs.backend))
    gw = gateway_factory(settings=settings_for(
        [tls_up(up, {"ca": certs.ca, "sni": "backend.test"}, keepalive=0)]))
    assert gw.get("/ok").status == 200
    assert wait_until(lambda: len(up.tls_resumed) == 1)
    # the server forgets its sessions (new ticket keys), and the gateway's one grows old
    up.use_tls(server_ctx(certs.backend))
    time.sleep(10.5)

    assert gw.statuses_at_once("/ok", 6) == [200] * 6
    assert wait_until(lambda: len(up.tls_resumed) == 7), up.tls_resumed
    assert sorted(up.tls_resumed[1:]) == [False] + [True] * 5, up.tls_resumed
