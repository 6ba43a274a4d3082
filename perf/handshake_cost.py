#!/usr/bin/python3
"""CPU that one full TLS 1.2 handshake (no session resumed) costs each proxy.

    /usr/bin/python3 perf/handshake_cost.py [build/gateway/gateway] [handshakes]
                                             [--alt OTHER_BUILD] [--rounds R]

perf/bench.py's tlsnew row prices resumed handshakes only: wrk resumes its session on every
new connection. This prices the full one, with the key exchange and the signature. It makes a
P-256 certificate with openssl, starts the gateway (workers = 1), nginx (1 worker) and HAProxy
(1 thread) with a TLS listener each, pinned to CPU 1, and from CPU 0 makes N handshakes
(default 1000) one after the other to each, with a client that offers no session and asks for
no ticket, once per ECDHE group (X25519, P-256). It reads each proxy's user+system time from
/proc before and after and prints CPU per handshake and the client's median wall time per
handshake. A proxy that is not installed is left out. The handshakes are sequential, so the
CPU figure is the proxy's own cost, not a throughput under load.

--alt measures a second gateway build beside the first (gw-alt), for a before/after. With
--rounds R every proxy is measured R times, interleaved, and the median is printed with the
range: on a shared box one round can be 40 % off.
"""

import argparse
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

from perfutil import free_port, make_cert, wait_port, write_file

CLIENT_CPU = 0
PROXY_CPU = "1"
SUITE = "ECDHE-ECDSA-AES128-GCM-SHA256"
# None: the client's default list, X25519 first, which all three pick
GROUPS = (None, "prime256v1")
BINS = {}


def cpu_s(pid):
    """User + system seconds of a process and its children that are still running."""
    total = 0
    pids = [pid] + [int(x) for x in subprocess.run(
        ["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def start(name, tmp, port):
    crt, key, pem = (os.path.join(tmp, n) for n in ("tls.crt", "tls.key", "tls.pem"))
    if name in ("gateway", "gw-alt"):
        conf = write_file(os.path.join(tmp, name + ".conf"),
                          'workers = 1; access_log = false;\n'
                          'listen = ( { address = "127.0.0.1:%d"; tls = { cert = "%s"; key = "%s"; }; } );\n'
                          'admin = { address = "127.0.0.1:%d"; };\n'
                          'upstreams = ( { name = "app"; servers = ( "127.0.0.1:%d" ); } );\n'
                          'routes = ( { name = "default"; upstream = "app"; } );\n'
                          % (port, crt, key, free_port(), free_port()))
        argv = [BINS[name], "-c", conf]
    elif name == "nginx":
        conf = write_file(os.path.join(tmp, "nginx.conf"),
                          "worker_processes 1; daemon off; pid %s/nginx.pid; error_log %s/nginx.err;\n"
                          "events {}\nhttp { access_log off;\n"
                          " client_body_temp_path %s; proxy_temp_path %s; fastcgi_temp_path %s;"
                          " uwsgi_temp_path %s; scgi_temp_path %s;\n"
                          " server { listen 127.0.0.1:%d ssl; ssl_certificate %s;"
                          " ssl_certificate_key %s; ssl_protocols TLSv1.2;"
                          " location / { return 200 ok; } } }\n"
                          % ((tmp,) * 7 + (port, crt, key)))
        argv = [shutil.which("nginx") or "/usr/sbin/nginx", "-p", tmp + "/", "-c", conf,
                "-e", os.path.join(tmp, "nginx.err")]
    else:
        conf = write_file(os.path.join(tmp, "haproxy.cfg"),
                          "global\n    nbthread 1\n"
                          "defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n"
                          "    timeout server 5s\n"
                          "frontend f\n    bind 127.0.0.1:%d ssl crt %s ssl-min-ver TLSv1.2"
                          " ssl-max-ver TLSv1.2\n    http-request return status 200\n" % (port, pem))
        argv = [shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", conf]
    p = subprocess.Popen(["taskset", "-c", PROXY_CPU] + argv, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    if not wait_port(port, p):
        p.kill()
        p.wait()
        return None
    return p


def handshakes(port, group, n):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(SUITE)
    if group is not None:
        ctx.set_ecdh_curve(group)
    ctx.options |= ssl.OP_NO_TICKET
    walls = []
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            t = time.perf_counter()
            with ctx.wrap_socket(s) as tls:
                walls.append(time.perf_counter() - t)
                if tls.session_reused:
                    raise RuntimeError("a session was resumed")
    walls.sort()
    return walls[len(walls) // 2]


def main():
    ap = argparse.ArgumentParser(description="CPU per full TLS handshake, by proxy.")
    ap.add_argument("gateway", nargs="?", default="build/gateway/gateway")
    ap.add_argument("handshakes", nargs="?", type=int, default=1000)
    ap.add_argument("--alt", help="another gateway build, measured as gw-alt")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    BINS["gateway"] = os.path.abspath(args.gateway)
    names = ["gateway"]
    if args.alt:
        BINS["gw-alt"] = os.path.abspath(args.alt)
        names.append("gw-alt")
    n = args.handshakes
    os.sched_setaffinity(0, {CLIENT_CPU})
    names += [x for x in ("nginx", "haproxy")
              if shutil.which(x) or os.path.exists("/usr/sbin/" + x)]
    with tempfile.TemporaryDirectory() as tmp:
        crt, key = make_cert(tmp)
        write_file(os.path.join(tmp, "tls.pem"), open(crt).read() + open(key).read())
        procs = {}
        try:
            for name in names:
                port = free_port()
                p = start(name, tmp, port)
                if p is None:
                    print("%s: did not start, left out" % name)
                    continue
                procs[name] = (p, port)
            print("%d full TLS 1.2 handshakes (%s, P-256 ECDSA certificate) one after the other"
                  ", %d round(s)" % (n, SUITE, args.rounds))
            for group in GROUPS:
                cpu = {name: [] for name in procs}
                wall = {name: [] for name in procs}
                order = list(procs)
                for r in range(args.rounds):
                    for name in order[r % len(order):] + order[:r % len(order)]:
                        p, port = procs[name]
                        handshakes(port, group, 20)  # warm up
                        c0 = cpu_s(p.pid)
                        wall[name].append(handshakes(port, group, n))
                        cpu[name].append((cpu_s(p.pid) - c0) / n * 1e6)
                for name in procs:
                    c = sorted(cpu[name])
                    rng = " (%.0f-%.0f)" % (c[0], c[-1]) if len(c) > 1 else ""
                    print("  %-10s %-8s CPU %5.0f us per handshake%s, client wall median %.2f ms"
                          % (group or "X25519", name, c[len(c) // 2], rng,
                             sorted(wall[name])[len(c) // 2] * 1e3))
        finally:
            for p, _ in procs.values():
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
