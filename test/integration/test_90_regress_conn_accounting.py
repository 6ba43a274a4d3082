"""Regression: a client that hangs up in the middle of a large response used to have its
connection freed twice (once when the aborted request finished, once more by the abort
itself). The worker's connection count then wrapped below zero and every later connection
was refused as over max_connections."""

import socket
import time

ACTIVE = "gateway_connections_active"


def _hang_up_mid_body(port, path):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()  # with most of the body unread: the gateway's send fails


def test_clients_hanging_up_mid_body_leave_counts_sane(gateway):
    """Twenty clients close mid-download (both the splice and the copy path: 4 MB and 40 KB
    bodies); afterwards gateway_connections_active settles at 0, never below, and new
    connections are still served."""
    for i in range(20):
        _hang_up_mid_body(gateway.port, "/size/4000000" if i % 2 == 0 else "/size/40000")
    deadline = time.monotonic() + 5
    while True:
        active = gateway.metrics().value(ACTIVE)
        if active == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert active == 0, "connections_active is %s after every client left" % active
    for _ in range(5):
        r = gateway.get("/ok")
        assert r.status == 200
    assert gateway.metrics().value(ACTIVE) >= 0
    assert gateway.metrics().value("gateway_connections_rejected_total") == 0
