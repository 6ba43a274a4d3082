"""SIGHUP reloads under load: every request is answered by one config or the other, none fails
or is reset, a broken file changes nothing, and a thousand reloads leak nothing (the suite runs
under ASan, which reports leaks at exit) and leave the memory flat."""

import http.client
import json
import os
import signal
import threading
import time

from gwtest import render_config, route_block, upstream_block


def two_upstream_settings(a, b, which):
    def settings(port, admin_port):
        from gwtest import gateway_settings
        route = route_block("default", which)
        route["rate_limit"] = {"rate": 1000000.0, "burst": 1000000, "key": "route"}
        return gateway_settings(port, admin_port,
                                [upstream_block("A", a.addr, breaker={"failures": 1000}),
                                 upstream_block("B", b.addr, breaker={"failures": 1000})],
                                [route], workers=2, access_log=False)
    return settings


def write_and_hup(gw, text):
    gw.config_path.write_text(text)
    gw.proc.send_signal(signal.SIGHUP)


def generation(gw):
    return gw.metrics().value("gateway_config_generation")


def test_reload_under_load_loses_nothing(gateway_factory, upstream_factory):
    """Keep-alive GETs, a new connection per GET and POSTs with bodies run while 20 SIGHUPs
    alternate two valid configs (route to upstream A, route to B) and a broken one: every
    request is answered 200 by A or B, none fails, none is reset."""
    a, b = upstream_factory("A"), upstream_factory("B")
    gw = gateway_factory(settings=two_upstream_settings(a, b, "A"))
    text = {w: render_config(two_upstream_settings(a, b, w)(gw.port, gw.admin_port))
            for w in ("A", "B")}
    broken = text["A"].replace("routes = ", "routes = oops ")
    stop = threading.Event()
    errors, seen, counts = [], set(), {"n": 0}
    lock = threading.Lock()

    def record(kind, r, body=None):
        with lock:
            counts["n"] += 1
            if r.status != 200 or r.getheader("X-Upstream") not in ("A", "B"):
                errors.append((kind, r.status, r.getheader("X-Upstream")))
            else:
                seen.add(r.getheader("X-Upstream"))
            if body is not None:
                try:
                    if json.loads(body)["length"] != 5000:
                        errors.append((kind, "body length", body[:80]))
                except ValueError:
                    errors.append((kind, "not json", body[:80]))

    def keepalive():
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        while not stop.is_set():
            try:
                c.request("GET", "/ok")
                r = c.getresponse()
                r.read()
                record("keepalive", r)
            except Exception as e:  # a reset or a closed keep-alive connection is a loss
                errors.append(("keepalive", repr(e)))
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        c.close()

    def fresh():
        while not stop.is_set():
            c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            try:
                c.request("GET", "/ok", headers={"Connection": "close"})
                r = c.getresponse()
                r.read()
                record("fresh", r)
            except Exception as e:
                errors.append(("fresh", repr(e)))
            finally:
                c.close()

    def poster():
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        while not stop.is_set():
            try:
                c.request("POST", "/upload", body=b"p" * 5000)
                r = c.getresponse()
                record("post", r, r.read())
            except Exception as e:
                errors.append(("post", repr(e)))
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        c.close()

    threads = [threading.Thread(target=f) for f in (keepalive, keepalive, fresh, poster)]
    for t in threads:
        t.start()
    try:
        gen = generation(gw)
        for i in range(20):
            if i % 3 == 2:
                write_and_hup(gw, broken)
                deadline = time.monotonic() + 5
                while (gw.metrics().value("gateway_config_reloads_total", result="failure")
                       < (i + 1) // 3 and time.monotonic() < deadline):
                    time.sleep(0.02)
            else:
                write_and_hup(gw, text["B" if i % 2 == 0 else "A"])
                deadline = time.monotonic() + 5
                while generation(gw) < gen + 1 and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert generation(gw) == gen + 1, gw.stderr()
                gen += 1
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert not errors, errors[:10]
    assert counts["n"] > 100, counts
    assert seen == {"A", "B"}, seen
    m = gw.metrics()
    assert m.value("gateway_config_reloads_total", result="failure") == 6
    assert m.value("gateway_config_reloads_total", result="success") == 14


def test_thousand_reloads_flat_memory(gateway_factory, upstream_factory):
    """1000 reloads between two configs, with traffic in between: every one is taken, the
    resident memory after the last is within a few MiB of that after the first hundred, and
    the gateway still routes. Snapshot and policy-state leaks would also show as ASan leak
    reports when the gateway exits."""
    a, b = upstream_factory("A"), upstream_factory("B")
    # ASan's quarantine would hold every freed snapshot and look like growth.
    asan = os.environ.get("ASAN_OPTIONS", "")
    gw = gateway_factory(settings=two_upstream_settings(a, b, "A"),
                         env={"ASAN_OPTIONS": (asan + ":" if asan else "") +
                              "quarantine_size_mb=0"})
    text = {w: render_config(two_upstream_settings(a, b, w)(gw.port, gw.admin_port))
            for w in ("A", "B")}
    gen = generation(gw)
    rss_100 = None
    c = gw.conn()
    try:
        for i in range(1000):
            write_and_hup(gw, text["B" if i % 2 == 0 else "A"])
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                m = gw.metrics()
                if m.value("gateway_config_generation") >= gen + 1:
                    break
            assert m.value("gateway_config_generation") == gen + 1, gw.stderr()
            gen += 1
            if i % 50 == 0:
                r = gw.request("GET", "/ok", conn=c)
                assert r.status == 200 and r.header("X-Upstream") == ("B" if i % 2 == 0 else "A")
            if i == 100:
                rss_100 = m.value("process_resident_memory_bytes")
    finally:
        c.close()
    rss_end = gw.metrics().value("process_resident_memory_bytes")
    assert rss_end - rss_100 < 8 * 1024 * 1024, (rss_100, rss_end)
    assert gw.get("/ok").header("X-Upstream") == "A"
