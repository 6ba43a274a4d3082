"""Regression: a request body that turned out bad (a broken chunk) or too large after the
upstream connection was made was counted in outcome slot GW_OUTCOME_COUNT, one past the end of
the outcome counters; the write landed in gateway_upstream_connects_total. Client errors are
not an upstream outcome and now count nowhere in the upstream families."""

import time

from gwtest import upstream_block


def test_bad_chunk_mid_body_does_not_touch_upstream_counters(gateway_factory, upstream):
    """A chunked POST whose second chunk size is garbage gets 400; the upstream counters still
    say exactly one connection was opened and no outcome was recorded for the failed request."""
    gw = gateway_factory(upstreams=[upstream_block("app", upstream.addr)], workers=1)
    with gw.raw() as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n")
        time.sleep(0.3)  # the upstream connection is made and the first chunk forwarded
        c.send(b"zz\r\nnot a chunk\r\n")
        r = c.read_response(timeout=5)
        assert r is not None and r.status == 400
    m = gw.metrics()
    labels = dict(upstream="app", server=upstream.addr)
    assert m.value("gateway_upstream_connects_total", **labels) == upstream.accepted
    for outcome in ("success", "connect_error", "connect_timeout", "reset", "timeout",
                    "bad_response"):
        assert m.value("gateway_upstream_requests_total", outcome=outcome, **labels) == 0, outcome
