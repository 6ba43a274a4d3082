"""Concurrency and lifetimes of the cache under ASan: many clients mixing hits, misses,
coalesced waits, HEAD, conditional requests, PURGE, clients that leave mid-request, a small L1
that evicts entries while they are being sent, and Redis restarting in the middle. Every
answered request must be right; the gateway must not crash or leak (the suite's ASan build and
the fixture's check at exit)."""

import random
import socket
import threading
import time
from urllib.parse import quote_plus

from gwtest import route_block


def test_cache_under_churn(gateway_factory, upstream, redis_server):
    route = route_block("default", "app", timeout_ms=3000)
    route["cache"] = {"stale_if_error_s": 30}
    gw = gateway_factory(upstreams=[{"name": "app", "servers": [upstream.addr]}],
                         routes=[route], workers=2,
                         redis={"address": redis_server.addr, "timeout_ms": 200},
                         cache={"l1_bytes": 400000, "l1_ttl_s": 1})
    stop = threading.Event()
    errors, counts = [], {"ok": 0, "left": 0}
    lock = threading.Lock()

    def target(rng):
        name = "k%d" % rng.randrange(60)
        cc = rng.choice(["max-age=1", "max-age=30", "no-store", "max-age=2, stale-if-error=30"])
        q = "h=" + quote_plus("Cache-Control: " + cc) + "&size=%d" % rng.choice([10, 5000, 60000])
        if rng.random() < 0.2:
            q += "&delay=%d" % rng.randrange(50, 300)
        if rng.random() < 0.2:
            q += "&chunked=1"
        return "/cache/%s?%s" % (name, q), name

    def client(seed):
        rng = random.Random(seed)
        c = None
        while not stop.is_set():
            path, name = target(rng)
            roll = rng.random()
            try:
                if roll < 0.05:
                    # send a request and leave before the answer
                    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
                    s.sendall(("GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path).encode())
                    s.close()
                    with lock:
                        counts["left"] += 1
                    continue
                if c is None:
                    c = gw.conn(timeout=10)
                if roll < 0.10:
                    r = gw.request("PURGE", path, conn=c)
                    ok = r.status == 200
                elif roll < 0.25:
                    r = gw.request("HEAD", path, conn=c)
                    ok = r.status == 200 and r.body == b""
                elif roll < 0.35:
                    r = gw.request("GET", path, conn=c, headers={"If-None-Match": '"nope"'})
                    ok = r.status == 200 and r.body.startswith(name.encode() + b" ")
                else:
                    r = gw.request("GET", path, conn=c)
                    ok = r.status == 200 and r.body.startswith(name.encode() + b" ")
                with lock:
                    if ok:
                        counts["ok"] += 1
                    else:
                        errors.append((path, r.status, r.body[:40]))
            except Exception as e:
                with lock:
                    errors.append((path, repr(e)))
                if c is not None:
                    c.close()
                c = None
        if c is not None:
            c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        redis_server.restart()
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert not errors, errors[:10]
    assert counts["ok"] > 300, counts
    m = gw.metrics()
    assert m.value("gateway_cache_requests_total", route="default", result="hit") > 50
    assert m.value("gateway_cache_l1_evictions_total") > 0
    assert gw.get("/ok").status == 200
