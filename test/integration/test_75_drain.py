"""SIGTERM drains: /readyz turns 503 at once, the listeners close (new connections are
refused), idle keep-alive connections are closed, requests and WebSocket tunnels in flight
finish (their responses say Connection: close), and the process exits 0 - or when
drain_timeout_ms runs out, or at once on a second signal."""

import base64
import os
import signal
import socket
import threading
import time

from gwtest import connect_refused, wait_until
from rawhttp import SockReader






def up(upstream):
    return {"name": "app", "servers": [upstream.addr]}


def raw_get(port, path, keepalive=True):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(("GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" %
               (path, "" if keepalive else "Connection: close\r\n")).encode())
    return s


def read_response(s, timeout=10):
    """(status, headers dict lower-case, body) of one Content-Length response."""
    r = SockReader(s)
    deadline = time.monotonic() + timeout
    head = r.read_head(deadline)
    assert head is not None, "connection closed without a response"
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = r.read_exact(int(headers.get("content-length", "0")), deadline)
    return int(lines[0].split()[1]), headers, body


def eof(s, timeout=5.0):
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_drain_finishes_in_flight_and_exits_zero(gateway_factory, upstream):
    gw = gateway_factory(upstreams=[up(upstream)], drain_timeout_ms=8000)
    idle = raw_get(gw.port, "/ok")
    assert read_response(idle)[0] == 200
    busy = raw_get(gw.port, "/slow/1500")
    assert wait_until(lambda: any(r.path.startswith("/slow") for r in upstream.requests))
    t0 = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)

    assert wait_until(lambda: gw.admin("/readyz").status == 503, 2), "readyz still ready"
    assert wait_until(lambda: connect_refused(gw.port), 2), "the listener still accepts"
    assert eof(idle), "an idle keep-alive connection was left open"

    status, headers, body = read_response(busy)
    assert (status, body) == (200, b"slow")
    assert headers.get("connection", "").lower() == "close", headers
    assert eof(busy)
    assert gw.proc.wait(10) == 0
    assert time.monotonic() - t0 < 7, "exited by the drain timeout, not when work was done"
    assert "draining" in gw.stderr()


def test_drain_timeout_ends_what_is_left(gateway_factory, upstream):
    gw = gateway_factory(upstreams=[up(upstream)], drain_timeout_ms=500)
    stuck = raw_get(gw.port, "/slow/20000")
    assert wait_until(lambda: any(r.path.startswith("/slow") for r in upstream.requests))
    t0 = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(10) == 0
    took = time.monotonic() - t0
    assert 0.4 < took < 5, took
    assert "drain timeout" in gw.stderr()
    assert eof(stuck)


def test_second_signal_exits_at_once(gateway_factory, upstream):
    gw = gateway_factory(upstreams=[up(upstream)], drain_timeout_ms=30000)
    stuck = raw_get(gw.port, "/slow/20000")
    assert wait_until(lambda: any(r.path.startswith("/slow") for r in upstream.requests))
    gw.proc.send_signal(signal.SIGTERM)
    assert wait_until(lambda: gw.admin("/readyz").status == 503, 2)
    t0 = time.monotonic()
    gw.proc.send_signal(signal.SIGINT)
    assert gw.proc.wait(5) == 0
    assert time.monotonic() - t0 < 2
    stuck.close()


def test_websocket_tunnel_survives_drain(gateway_factory, upstream):
    """A tunnel open when the drain starts keeps working until a side closes it; then the
    gateway exits."""
    gw = gateway_factory(upstreams=[up(upstream)], drain_timeout_ms=8000)
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key).encode())
    r = SockReader(s)
    head = r.read_head(time.monotonic() + 10)
    assert head is not None and b" 101 " in head.split(b"\r\n")[0], head
    gw.proc.send_signal(signal.SIGTERM)
    assert wait_until(lambda: connect_refused(gw.port), 2)
    for i in range(3):
        msg = b"still here %d" % i
        s.sendall(msg)
        assert r.read_exact(len(msg), time.monotonic() + 5) == msg
        time.sleep(0.2)
    assert gw.proc.poll() is None, "the gateway left before the tunnel closed"
    s.close()
    assert gw.proc.wait(10) == 0


def test_requests_racing_the_drain_are_answered(gateway_factory, upstream):
    """Clients that keep opening connections while the drain starts either get refused (and
    would go to another instance) or get a whole answer: no connection is accepted and then
    dropped without one."""
    gw = gateway_factory(upstreams=[up(upstream)], drain_timeout_ms=5000, workers=2)
    stop = threading.Event()
    results = {"ok": 0, "refused": 0, "lost": []}
    lock = threading.Lock()

    def client():
        while not stop.is_set():
            try:
                s = raw_get(gw.port, "/ok", keepalive=False)
            except ConnectionRefusedError:
                with lock:
                    results["refused"] += 1
                time.sleep(0.01)
                continue
            try:
                st = read_response(s)[0]
                with lock:
                    if st == 200:
                        results["ok"] += 1
                    else:
                        results["lost"].append(st)
            except Exception as e:  # accepted, then closed or reset without an answer
                with lock:
                    results["lost"].append(repr(e))
            finally:
                s.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    gw.proc.send_signal(signal.SIGTERM)
    time.sleep(0.7)
    stop.set()
    for t in threads:
        t.join(10)
    assert gw.proc.wait(10) == 0
    assert results["ok"] > 10 and results["refused"] > 0, results
    assert not results["lost"], results
