#!/usr/bin/python3
"""How long requests on open connections wait while the gateway does full TLS handshakes.

    /usr/bin/python3 perf/handshake_stall.py [GATEWAY_BIN ...] [--seconds S] [--clients N]

For each binary given (default build/gateway/gateway), in turn: starts it with workers = 1 on
CPU 1, with a TLS listener and a plain one whose route serves a cached 128-byte response (so
a request costs the worker microseconds and no upstream is involved), then runs for S seconds
(default 8) from CPU 0:
- N processes (default 2) that make full TLS 1.2 handshakes in a loop (no session offered,
  no ticket asked for), as a burst of new clients would;
- one prober that sends GETs on one keep-alive plain connection, one after the other and at
  most --probe-rate a second (1000 by default, so that its own share of CPU 0 stays the same
  whatever the gateway does), and times each.
Prints the handshakes per second and the prober's p50 / p99 / p99.9 / max in ms. The first
binary is the reference; the point is the comparison of two builds in one run, on one box.
"""

import argparse
import http.server
import multiprocessing
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

from perfutil import free_port, make_cert, wait_port, write_file

PROXY_CPU = "1"
CLIENT_CPU = 0


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"x" * 128
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def handshaker(port, until, counter):
    os.sched_setaffinity(0, {CLIENT_CPU})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_TICKET
    n = 0
    while time.monotonic() < until:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                with ctx.wrap_socket(s):
                    n += 1
        except OSError:
            time.sleep(0.01)
    with counter.get_lock():
        counter.value += n


def probe(port, until, every=0.0):
    """GETs one after the other, one every `every` seconds at most (0: back to back)."""
    req = b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
    lat = []
    nxt = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    while time.monotonic() < until:
        if every > 0:
            nxt += every
            pause = nxt - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        t = time.perf_counter()
        s.sendall(req)
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head = buf[:end].lower()
                clen = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                if len(buf) >= end + 4 + clen:
                    buf = buf[end + 4 + clen:]
                    break
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("the gateway closed the probe connection")
            buf += chunk
        lat.append(time.perf_counter() - t)
    s.close()
    return lat


def run_one(gw, tmp, args, up_port):
    port, tls_port, admin = free_port(), free_port(), free_port()
    conf = write_file(os.path.join(tmp, "stall.conf"),
                      'workers = 1; access_log = false;\n'
                      'listen = ( { address = "127.0.0.1:%d"; },\n'
                      '  { address = "127.0.0.1:%d"; tls = { cert = "%s/tls.crt"; key = "%s/tls.key"; }; } );\n'
                      'admin = { address = "127.0.0.1:%d"; };\n'
                      'upstreams = ( { name = "app"; servers = ( "127.0.0.1:%d" ); } );\n'
                      'routes = ( { name = "default"; upstream = "app"; cache = { ttl_s = 3600; }; } );\n'
                      % (port, tls_port, tmp, tmp, admin, up_port))
    p = subprocess.Popen(["taskset", "-c", PROXY_CPU, gw, "-c", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_port(port, p):
            sys.exit("%s did not start" % gw)
        probe(port, time.monotonic() + 0.5)  # fills the cache
        quiet = sorted(probe(port, time.monotonic() + 1.0, 1.0 / args.probe_rate))
        until = time.monotonic() + args.seconds
        counter = multiprocessing.Value("L", 0)
        procs = [multiprocessing.Process(target=handshaker, args=(tls_port, until, counter))
                 for _ in range(args.clients)]
        for x in procs:
            x.start()
        lat = sorted(probe(port, until, 1.0 / args.probe_rate))
        for x in procs:
            x.join()

        def q(v, f):
            return v[min(len(v) - 1, int(len(v) * f))] * 1e3
        print("%s\n  quiet:      %6d GETs  p50 %.3f  p99 %.3f  max %.2f ms"
              % (gw, len(quiet), q(quiet, 0.5), q(quiet, 0.99), quiet[-1] * 1e3))
        print("  handshakes: %6.0f/s    GETs %d  p50 %.3f  p99 %.3f  p99.9 %.3f  max %.2f ms"
              % (counter.value / args.seconds, len(lat), q(lat, 0.5), q(lat, 0.99),
                 q(lat, 0.999), lat[-1] * 1e3))
    finally:
        p.terminate()
        p.wait(10)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bins", nargs="*", default=["build/gateway/gateway"])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--probe-rate", type=float, default=1000.0,
                    help="GETs per second the prober sends at most (default 1000)")
    args = ap.parse_args()
    os.sched_setaffinity(0, {CLIENT_CPU})
    with tempfile.TemporaryDirectory() as tmp:
        make_cert(tmp)
        up_port = free_port()
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", up_port), Upstream)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        for gw in args.bins:
            run_one(os.path.abspath(gw), tmp, args, up_port)
        srv.shutdown()


if __name__ == "__main__":
    main()
