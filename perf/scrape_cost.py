#!/usr/bin/python3
"""CPU one /metrics scrape costs the gateway's main thread (where the admin listener runs).

    /usr/bin/python3 perf/scrape_cost.py [build/gateway/gateway] [scrapes]

Starts the gateway on free loopback ports with three routes (one rate-limited) and an upstream
of two servers with a breaker, sends a few requests so that every family has series, then
scrapes N times (default 2000) one after the other and reads the main thread's user+system
time from /proc before and after. Prints CPU and wall time per scrape and the page size.
"""

import http.client
import os
import subprocess
import sys
import tempfile
import time

from perfutil import free_port, wait_port


def main():
    gw = sys.argv[1] if len(sys.argv) > 1 else "build/gateway/gateway"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    port, admin, up1, up2 = (free_port() for _ in range(4))
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "scrape.conf")
        with open(conf, "w") as f:
            f.write('workers = 2; access_log = false;\n'
                    'listen = ( { address = "127.0.0.1:%d"; } );\n'
                    'admin = { address = "127.0.0.1:%d"; };\n'
                    'upstreams = ( { name = "app"; servers = [ "127.0.0.1:%d", "127.0.0.1:%d" ];'
                    ' breaker = {}; } );\n'
                    'routes = ( { name = "a"; path_prefix = "/a"; upstream = "app";'
                    ' rate_limit = { rate = 100.0; }; },\n'
                    '  { name = "b"; path_prefix = "/b"; upstream = "app"; },\n'
                    '  { name = "default"; upstream = "app"; } );\n' % (port, admin, up1, up2))
        p = subprocess.Popen([gw, "-c", conf], stderr=subprocess.DEVNULL)
        try:
            if not wait_port(admin, p):
                sys.exit("the gateway did not start")
            for path in ("/a", "/b", "/x"):
                for _ in range(3):  # 502s (no upstream runs): series for codes, outcomes
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    c.request("GET", path)
                    c.getresponse().read()
                    c.close()

            def cpu():
                with open("/proc/%d/task/%d/stat" % (p.pid, p.pid)) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

            c0, t0, size = cpu(), time.monotonic(), 0
            for _ in range(n):
                c = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
                c.request("GET", "/metrics")
                size = len(c.getresponse().read())
                c.close()
            t1, c1 = time.monotonic(), cpu()
            print("%d scrapes of %d bytes: main-thread CPU %.0f us per scrape, wall %.2f ms"
                  % (n, size, (c1 - c0) / n * 1e6, (t1 - t0) / n * 1e3))
        finally:
            p.terminate()
            p.wait(10)


if __name__ == "__main__":
    main()
