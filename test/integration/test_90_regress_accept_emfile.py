"""Regression: when accept failed for lack of descriptors (EMFILE), the listener was re-armed
at once, so the worker spun on the same error and wrote one log line per failure. It now
pauses that listener for 100 ms, logs at most every ten seconds, and serves again as soon as
descriptors free up."""

import resource
import socket
import time

from gwtest import upstream_block


def _low_fd_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def test_accept_out_of_descriptors_pauses_and_recovers(gateway_factory, upstream):
    """With a hard limit of 64 open files, 100 client connections that sent one byte exhaust the
    descriptors; the gateway logs the condition a few times (not per failure), keeps running,
    and answers normally once those clients have gone."""
    gw = gateway_factory(upstreams=[upstream_block("app", upstream.addr)], workers=1,
                         preexec_fn=_low_fd_limit)
    assert gw.get("/ok").status == 200
    idle = []
    try:
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            # a first byte, for the listener's defer_accept to hand the connection over now
            s.sendall(b"G")
            idle.append(s)
        time.sleep(1.0)  # the accept errors happen now
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        try:
            status = gw.get("/ok", timeout=2).status
            if status == 200:
                break
        except OSError:
            pass
        time.sleep(0.1)
    assert status == 200, "not serving again after the idle clients left"
    lines = [l for l in gw.stderr().splitlines() if "accept:" in l]
    assert 1 <= len(lines) <= 5, "%d accept error lines:\n%s" % (len(lines), "\n".join(lines[:10]))
    assert "open-file limit is 64" in gw.stderr()
