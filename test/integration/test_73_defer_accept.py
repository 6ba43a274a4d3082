"""listen `defer_accept` (TCP_DEFER_ACCEPT, on by default): the kernel hands a connection to the
gateway once its first bytes arrive, or after about a second from a client that stays silent.
Nothing a client sends is lost either way, and a reload switches the option on a kept socket."""

import socket
import subprocess
import time

from gwtest import gateway_bin, gateway_env, route_block, upstream_block, wait_until
from rawhttp import SockReader, request_bytes


def accepted(gw):
    return gw.metrics().value("gateway_connections_accepted_total")


def set_defer(value):
    def change(s):
        s["listen"][0]["defer_accept"] = value
    return change


def test_connection_is_accepted_with_its_first_bytes(gateway):
    """A silent connection stays with the kernel (not counted as accepted after 0.3 s, where
    an accept without the option takes microseconds); its first request is then accepted and
    answered."""
    a0 = accepted(gateway)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
        time.sleep(0.3)
        assert accepted(gateway) == a0, "accepted before the client sent anything"
        s.sendall(request_bytes("GET", "/ok", headers=[("Connection", "close")]))
        data = SockReader(s).read_to_eof(time.monotonic() + 5)
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert accepted(gateway) == a0 + 1


def test_silent_client_is_accepted_after_the_defer_period(gateway_factory, upstream):
    """A client that says nothing is still accepted (after about a second), and then the
    header timeout closes it: it neither waits forever in the kernel nor gets lost."""
    gw = gateway_factory(upstreams=[upstream_block("app", upstream.addr)],
                         routes=[route_block("default", "app")],
                         limits={"header_timeout_ms": 300})
    a0 = accepted(gw)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        assert wait_until(lambda: accepted(gw) == a0 + 1, timeout=8), gw.stderr()
        assert s.recv(100) == b"", "a silent connection is closed after header_timeout_ms"


def test_client_slower_than_the_defer_period_is_served(gateway):
    """A client that sends its request 1.5 s after connecting (past the kernel's deferral,
    within header_timeout_ms) gets its answer."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
        time.sleep(1.5)
        s.sendall(request_bytes("GET", "/ok", headers=[("Connection", "close")]))
        data = SockReader(s).read_to_eof(time.monotonic() + 5)
    assert data.startswith(b"HTTP/1.1 200"), data[:200]


def test_reload_turns_defer_accept_off_and_on(gateway):
    """defer_accept = false: a silent connection is accepted at once. A reload back to true
    defers again, on the same socket (the port never refuses a connection)."""
    gateway.reload(set_defer(False))
    a0 = accepted(gateway)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5):
        assert wait_until(lambda: accepted(gateway) == a0 + 1, timeout=0.5), \
            "defer_accept = false: not accepted at once"
    assert wait_until(lambda: gateway.metrics().value("gateway_connections_active") == 0)

    gateway.reload(set_defer(True))
    a1 = accepted(gateway)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5):
        time.sleep(0.3)
        assert accepted(gateway) == a1, "defer_accept = true again: accepted at once"


def test_dump_prints_defer_accept(tmp_path):
    """`gateway -T` prints the option for every listener, and what it prints reads back."""
    conf = tmp_path / "t.conf"
    conf.write_text('listen = ( { address = "127.0.0.1:1"; }, '
                    '{ address = "127.0.0.1:2"; defer_accept = false; } );\n')
    out = subprocess.run([gateway_bin(), "-T", "-c", str(conf)], capture_output=True,
                         text=True, env=gateway_env(), timeout=10)
    assert out.returncode == 0, out.stderr
    assert 'address = "127.0.0.1:1"; defer_accept = true;' in out.stdout, out.stdout
    assert 'address = "127.0.0.1:2"; defer_accept = false;' in out.stdout, out.stdout
    again = tmp_path / "again.conf"
    again.write_text(out.stdout)
    back = subprocess.run([gateway_bin(), "-T", "-c", str(again)], capture_output=True,
                          text=True, env=gateway_env(), timeout=10)
    assert back.returncode == 0, back.stderr
    # the first line is a comment naming the file
    assert back.stdout.splitlines()[1:] == out.stdout.splitlines()[1:]
