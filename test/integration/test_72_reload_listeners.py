"""Reloads that change sockets: listen addresses added and removed (unchanged ones keep their
sockets, so new connections never see a gap), the admin listener moved, servers removed from a
pool (their idle connections are closed), and the changes a reload cannot make."""

import http.client
import socket
import threading
import time

from gwtest import connect_refused, helper_threads, render_config, wait_until
from upstream import free_port


def listen_on(*ports):
    return [{"address": "127.0.0.1:%d" % p} for p in ports]






def get_status(port, path="/ok"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def test_listener_added_then_removed(gateway):
    """A reload adding an address starts accepting on it in every worker; one removing it
    stops new connections there, while a keep-alive connection it accepted earlier goes on
    being served and the unchanged address serves throughout."""
    extra = free_port()
    gateway.reload(lambda s: s.update(listen=listen_on(gateway.port, extra)))
    assert wait_until(lambda: not connect_refused(extra)), gateway.stderr()
    # Each worker has its own SO_REUSEPORT socket: many connections reach them all.
    assert all(get_status(extra) == 200 for _ in range(20))
    cfg = gateway.admin("/config").json()
    assert "127.0.0.1:%d" % extra in cfg["listen"], cfg["listen"]

    kept = http.client.HTTPConnection("127.0.0.1", extra, timeout=5)
    kept.request("GET", "/ok")
    r = kept.getresponse()
    r.read()
    assert r.status == 200
    m = gateway.metrics()
    assert m.value("gateway_connections_active", listener="127.0.0.1:%d" % extra) == 1

    gateway.reload(lambda s: s.update(listen=listen_on(gateway.port)))
    assert wait_until(lambda: connect_refused(extra)), gateway.stderr()
    assert "no longer listening on 127.0.0.1:%d" % extra in gateway.stderr()
    kept.request("GET", "/ok")
    r = kept.getresponse()
    r.read()
    assert r.status == 200, "a connection of a removed listener is served to its end"
    # The removed listener's gauge stays while its connection does, then goes.
    m = gateway.metrics()
    assert m.value("gateway_connections_active", listener="127.0.0.1:%d" % extra) == 1
    kept.close()
    assert wait_until(lambda: not gateway.metrics().find(
        "gateway_connections_active", listener="127.0.0.1:%d" % extra))
    assert get_status(gateway.port) == 200
    assert "127.0.0.1:%d" % extra not in gateway.admin("/config").json()["listen"]


def test_unchanged_listener_has_no_accept_gap(gateway):
    """New connections to an address that every reload keeps never fail while reloads add and
    remove another address around it."""
    extra = free_port()
    stop = threading.Event()
    errors, done = [], [0]

    def fresh():
        while not stop.is_set():
            try:
                st = get_status(gateway.port)
                if st != 200:
                    errors.append(st)
                done[0] += 1
            except Exception as e:  # refused or reset: a gap
                errors.append(repr(e))

    threads = [threading.Thread(target=fresh) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(10):
            ports = (gateway.port, extra) if i % 2 == 0 else (gateway.port,)
            gateway.reload(lambda s, p=ports: s.update(listen=listen_on(*p)))
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors[:5]
    assert done[0] > 20, done


def test_reload_with_unbindable_listener_changes_nothing(gateway):
    """An added address another process holds fails the whole reload, as a bad file does: the
    old config keeps serving, the failure is counted and the log says which address."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    busy = holder.getsockname()[1]
    try:
        gen = gateway.metrics().value("gateway_config_generation")
        settings = gateway.settings_fn(gateway.port, gateway.admin_port)
        settings["listen"] = listen_on(gateway.port, busy)
        settings["routes"][0]["timeout_ms"] = 1234
        gateway.config_path.write_text(render_config(settings))
        gateway.proc.send_signal(1)  # SIGHUP
        m = gateway.wait_metric("gateway_config_reloads_total", 1, result="failure")
        assert m.value("gateway_config_reloads_total", result="failure") == 1
        assert m.value("gateway_config_generation") == gen
        assert m.value("gateway_config_last_reload_success") == 0
        assert "cannot listen on 127.0.0.1:%d" % busy in gateway.stderr()
        assert gateway.admin("/config").json()["routes"][0]["timeout_ms"] != 1234
        assert get_status(gateway.port) == 200
    finally:
        holder.close()


def test_admin_listener_moves(gateway):
    """A reload moving the admin address serves /healthz on the new one and frees the old."""
    old, new = gateway.admin_port, free_port()
    settings = gateway.settings_fn(gateway.port, new)
    gateway.config_path.write_text(render_config(settings))
    gateway.proc.send_signal(1)
    gateway.admin_port = new
    assert wait_until(lambda: not connect_refused(new)), gateway.stderr()
    assert gateway.admin("/healthz").status == 200
    assert wait_until(lambda: connect_refused(old))
    assert gateway.metrics().value("gateway_config_generation") == 2
    assert get_status(gateway.port) == 200


def test_removed_server_pool_is_drained(gateway_factory, upstream_factory):
    """Servers dropped from an upstream have their idle keep-alive connections closed at the
    reload and get no more requests; new servers join the pool."""
    a, b, c = upstream_factory("A"), upstream_factory("B"), upstream_factory("C")
    gw = gateway_factory(upstreams=[{"name": "app", "servers": [a.addr, b.addr],
                                     "keepalive": 8}], workers=1)
    for _ in range(10):
        assert gw.get("/ok").status == 200
    m = gw.metrics()
    assert m.value("gateway_upstream_connections", server=b.addr, state="idle") >= 1
    assert len(b.active) >= 1

    gw.reload(lambda s: s["upstreams"][0].update(servers=[a.addr, c.addr]))
    # The worker switches at its next loop turn; a request makes sure it has.
    assert gw.get("/ok").status == 200
    assert wait_until(lambda: len(b.active) == 0), "B's pooled connections were not closed"
    m = gw.metrics()
    assert m.value("gateway_upstream_connections", server=b.addr, state="idle") == 0
    before = len(b.requests)
    seen = {gw.get("/ok").header("X-Upstream") for _ in range(10)}
    assert seen == {"A", "C"}, seen
    assert len(b.requests) == before


def test_workers_change_is_logged(gateway):
    """`workers` cannot change without a restart: the reload is taken for everything else and
    the log says so."""
    gateway.reload(lambda s: s.update(workers=3))
    assert "'workers' changed from 2 to 3; that takes a restart" in gateway.stderr()
    assert get_status(gateway.port) == 200


def test_tls_helpers_change_is_logged(gateway):
    """`tls_helpers` is read at start too: a reload that changes it is taken for everything
    else, the log says it takes a restart, and the helper threads stay as they were."""
    before = len(helper_threads(gateway.proc.pid))
    gateway.reload(lambda s: s.update(tls_helpers=5))
    assert "'tls_helpers' changed from -1 to 5; that takes a restart" in gateway.stderr()
    assert gateway.get("/ok").status == 200
    assert len(helper_threads(gateway.proc.pid)) == before == 2

