#!/usr/bin/python3
"""Benchmark the gateway beside nginx and HAProxy on one box.

Method: /work/shared/PERF_METHOD.md (summarised in perf/README.md).

  upstream nginx + wrk  -> CPU 0        proxy under test -> CPU 1 alone
  targets: direct (wrk -> upstream), nginx, haproxy, gateway
  scenarios: get128 get16k get1m newconn post1m postchunk, cache, TLS (SCENARIOS)
  rounds: every scenario runs on every target (order rotated per round)
          before the next scenario; medians and spread over rounds.

Only the Python standard library is used. Everything listens on 127.0.0.1.
"""

import argparse
import datetime
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CONF_DIR = os.path.join(HERE, "conf")
LUA = os.path.join(HERE, "report.lua")
RESULTS_DIR = os.path.join(HERE, "results")

CLK_TCK = os.sysconf("SC_CLK_TCK")
WRK_CPU = "0"    # wrk and the upstream share CPU 0
PROXY_CPU = "1"  # the proxy under test gets CPU 1 alone
NOISE_LIMIT_PCT = 15.0  # other processes' CPU (% of one core) above which a cell is rerun
SETTLE_S = 0.5   # pause between runs
READY_TIMEOUT_S = 10.0

FILES = {"128.bin": 128, "16k.bin": 16 * 1024, "1m.bin": 1024 * 1024}
POST_BYTES = 1024 * 1024

SCENARIOS = {
    "get128": dict(path="/128.bin", conns=64, desc="GET 128 B, keep-alive, 64 conns"),
    "get16k": dict(path="/16k.bin", conns=64, desc="GET 16 KiB, keep-alive, 64 conns"),
    "get1m": dict(path="/1m.bin", conns=16, desc="GET 1 MiB, keep-alive, 16 conns"),
    "newconn": dict(path="/128.bin", conns=64, close=True,
                    desc="GET 128 B, Connection: close (new connection per request), 64 conns"),
    "post1m": dict(path="/post", conns=16, post=POST_BYTES,
                   desc="POST 1 MiB body, keep-alive, 16 conns"),
    # The same body chunked (16 chunks of 64 KiB): no proxy can splice it, since the
    # framing is read, so this prices each one's copy path for uploads.
    "postchunk": dict(path="/post", conns=16, post=POST_BYTES, chunked=True,
                      desc="POST 1 MiB chunked body (64 KiB chunks), keep-alive, 16 conns"),
    # The upstream marks /cached/ cacheable (1 h); each proxy caches it, so after the
    # warm-up every request is a hit (the functional check asserts the second one is).
    "cache128": dict(path="/cached/128.bin", conns=64,
                     desc="GET 128 B from the proxy's cache (100% hits), keep-alive, 64 conns"),
    "cache16k": dict(path="/cached/16k.bin", conns=64,
                     desc="GET 16 KiB from the proxy's cache (100% hits), keep-alive, 64 conns"),
    # TLS 1.2 on a second listener of each proxy, same P-256 ECDSA certificate (made at start
    # with openssl), ECDHE-ECDSA-AES-GCM: keep-alive requests, and a new connection per request.
    # wrk resumes its TLS session on a new connection (a tcpdump shows a 141-147 byte server
    # flight, no certificate), so tlsnew prices abbreviated handshakes from a session ticket,
    # not the key exchange.
    "tls128": dict(path="/128.bin", conns=64, tls=True,
                   desc="GET 128 B over TLS 1.2, keep-alive, 64 conns"),
    "tlsnew": dict(path="/128.bin", conns=32, close=True, tls=True,
                   desc="GET 128 B over TLS 1.2, a new connection (resumed session) each, 32 conns"),
    # Plain clients, TLS from the proxy to the upstream (a TLS listener of the upstream nginx
    # with the same certificate, pooled keep-alive connections, no verification: the
    # certificate is self-signed). direct: wrk to the upstream's plain listener.
    "uptls128": dict(path="/tlsup/128.bin", conns=64, uptls=True,
                     desc="GET 128 B, keep-alive, proxy -> upstream over TLS 1.2, 64 conns"),
    # The same with 1 MiB responses: the gateway cannot splice a TLS stream, so this
    # prices its copy path for large bodies.
    "uptls1m": dict(path="/tlsup/1m.bin", conns=16, uptls=True,
                    desc="GET 1 MiB, keep-alive, proxy -> upstream over TLS 1.2, 16 conns"),
}
TLS_SCENARIOS = [k for k, v in SCENARIOS.items() if v.get("tls")]
UPTLS_SCENARIOS = [k for k, v in SCENARIOS.items() if v.get("uptls")]
ALL_TARGETS = ["direct", "nginx", "haproxy", "gateway"]
# The gateway with one policy each, to price it: (route settings, upstream settings) added to
# perf/conf/gateway.conf. "gateway" itself runs the defaults (deadline header on, one retry on
# connect-failure/reset); gw-bare turns those off. Limits are set far above what the box can
# reach, so every request pays for the check and none is refused.
GATEWAY_VARIANTS = {
    "gw-bare": ('deadline_header = ""; retries = 0;', ""),
    "gw-rl": ('rate_limit = { rate = 1000000000.0; burst = 100000000; key = "client_ip"; };', ""),
    "gw-rlroute": ('rate_limit = { rate = 1000000000.0; burst = 100000000; key = "route"; };', ""),
    "gw-breaker": ("", "breaker = { failures = 5; error_rate = 0.5; }; max_requests = 100000;"),
    "gw-all": ('rate_limit = { rate = 1000000000.0; burst = 100000000; key = "client_ip"; '
               'headers = true; }; retries = 2; retry_on = [ "connect-failure", "reset", "5xx", '
               '"timeout" ]; try_timeout_ms = 10000;',
               "breaker = { failures = 5; error_rate = 0.5; }; max_requests = 100000;"),
    # not a policy: the default busy poll before a sleep turned off (a top-level key)
    "gw-nopoll": ("", "", "busy_poll_us = 0;"),
}
# gw-alt: another build of the gateway (--alt-bin), with the same config as "gateway", so a
# change can be measured before/after in one run.
# gw-scrape: the "gateway" config, with a client on CPU 0 fetching its /metrics every
# --scrape-ms while wrk runs (Prometheus scrapes every 15 s; the default 100 ms is 150 times
# that), to show what scrapes cost the data path.
EXTRA_TARGETS = list(GATEWAY_VARIANTS) + ["gw-alt", "gw-scrape"]

SCRAPER = r"""
import http.client, sys, time
port, every, until = int(sys.argv[1]), float(sys.argv[2]) / 1000, time.monotonic() + float(sys.argv[3])
took, size, bad = [], 0, 0
while time.monotonic() < until:
    t0 = time.monotonic()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/metrics")
        r = c.getresponse()
        body = r.read()
        c.close()
        bad += r.status != 200
        size = len(body)
    except OSError:
        bad += 1
    took.append(time.monotonic() - t0)
    time.sleep(max(0.0, every - (time.monotonic() - t0)))
took.sort()
print("SCRAPES %d bad %d bytes %d p50_ms %.2f max_ms %.2f" % (
    len(took), bad, size, 1000 * took[len(took) // 2], 1000 * took[-1]))
"""


def log(msg=""):
    print(msg, flush=True)


# --------------------------------------------------------------------------
# /proc accounting

def read_pid_stat(pid):
    """Returns (comm, ppid, ticks, child_ticks, starttime) or None."""
    try:
        with open("/proc/%s/stat" % pid, "rb") as f:
            s = f.read().decode("latin-1")
    except OSError:
        return None
    lp, rp = s.find("("), s.rfind(")")
    comm = s[lp + 1:rp]
    f = s[rp + 2:].split()
    # f[0] = field 3 (state); utime/stime = fields 14/15, cutime/cstime = 16/17, starttime = 22
    try:
        return (comm, int(f[1]), int(f[11]) + int(f[12]), int(f[13]) + int(f[14]), int(f[19]))
    except (IndexError, ValueError):
        return None


def snapshot_procs():
    snap = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_pid_stat(name)
            if st:
                snap[int(name)] = st
    return snap


def read_cpu_times():
    """Per-CPU (busy, total, steal) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                p = line.split()
                vals = [int(x) for x in p[1:]]
                total = sum(vals[:8])  # guest time is already inside user/nice
                idle = vals[3] + vals[4]
                steal = vals[7] if len(vals) > 7 else 0
                out[p[0]] = (total - idle, total, steal)
    return out


def descendants(snap, roots):
    """roots plus every process whose ancestry reaches one of them."""
    children = {}
    for pid, st in snap.items():
        children.setdefault(st[1], []).append(pid)
    seen, todo = set(), [r for r in roots if r]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo.extend(children.get(p, []))
    return seen


def is_kthread(pid, snap):
    return pid == 2 or snap[pid][1] == 2


def group_ticks(before, after, pids):
    """CPU ticks used by pids between the snapshots (own + reaped children)."""
    t = 0
    for pid in pids:
        a = after.get(pid)
        if not a:
            continue
        b = before.get(pid)
        if b and b[4] == a[4]:
            t += (a[2] - b[2]) + (a[3] - b[3])
        else:
            t += a[2] + a[3]
    return t


def other_ticks(before, after, exclude):
    """Ticks of every process outside `exclude`: (userspace, kernel threads, top 5).

    Includes the reaped-children time (cutime/cstime) of each survivor, so that
    short-lived processes (a test suite's, a compiler's) still count once their
    parent has waited for them. A process that ended during the window brings
    its whole lifetime into its reaper's cutime: the part it had used before the
    window (known from `before`) is taken off again."""
    user = kern = 0
    top = []
    for pid, b in before.items():
        if pid in exclude or is_kthread(pid, before):
            continue
        a = after.get(pid)
        if a is None or a[4] != b[4]:
            user -= b[2] + b[3]
    for pid, a in after.items():
        if pid in exclude:
            continue
        b = before.get(pid)
        if b and b[4] == a[4]:
            d = (a[2] - b[2]) + (a[3] - b[3])
        else:
            d = a[2] + a[3]
        if d <= 0:
            continue
        if is_kthread(pid, after):
            kern += d
        else:
            user += d
            top.append((d, pid, a[0]))
    top.sort(reverse=True)
    return max(0, user), kern, top[:5]


def calibrate(cpu):
    """Host speed probe: ms for a fixed integer loop pinned to `cpu` (best of 3).

    The box is a shared VM whose speed drifts; comparing this figure between
    runs says whether a change in req/s may be the host rather than the code."""
    code = "import time\nb=1e9\nfor _ in range(3):\n t=time.perf_counter();s=0\n" \
           " for i in range(2000000): s+=i\n b=min(b,time.perf_counter()-t)\nprint(b*1000)"
    try:
        p = subprocess.run(["taskset", "-c", cpu, sys.executable, "-c", code],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
        return round(float(p.stdout), 1)
    except (subprocess.SubprocessError, ValueError):
        return None


# --------------------------------------------------------------------------
# processes

class Proc:
    def __init__(self, name, argv, logdir, env=None):
        self.name = name
        self.argv = argv
        self.out_path = os.path.join(logdir, name + ".out")
        self.outf = open(self.out_path, "wb")
        self.popen = subprocess.Popen(argv, stdout=self.outf, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env,
                                      start_new_session=True)
        self.pid = self.popen.pid
        self.known = {}  # pid -> starttime of descendants seen (for cleanup)

    def alive(self):
        return self.popen.poll() is None

    def tree(self, snap=None):
        snap = snap or snapshot_procs()
        pids = descendants(snap, [self.pid])
        for p in pids:
            if p in snap:
                self.known[p] = snap[p][4]
        return pids

    def tail(self, n=15):
        try:
            self.outf.flush()
            with open(self.out_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "\n".join("    | " + l for l in lines[-n:])
        except OSError:
            return ""

    def stop(self, timeout=5.0):
        if self.popen.poll() is None:
            try:
                self.tree()
            except Exception:
                pass
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
            except ProcessLookupError:
                pass
        # children we saw (e.g. nginx workers) that outlived their parent:
        # kill only if the pid still belongs to the same process
        for pid, start in self.known.items():
            if pid == self.pid:
                continue
            st = read_pid_stat(pid)
            if st and st[4] == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        self.outf.close()


def free_ports(n):
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def render(template, dest, **vals):
    with open(os.path.join(CONF_DIR, template)) as f:
        text = f.read()
    for k, v in vals.items():
        text = text.replace("@@%s@@" % k, str(v))
    if "@@" in text:
        raise RuntimeError("unfilled placeholder in %s" % template)
    with open(dest, "w") as f:
        f.write(text)
    return dest


def http_request(port, path, method="GET", body=None, headers=None, timeout=5.0):
    """One request on a fresh connection: (status, body bytes, header dict)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, data, {k.lower(): v for k, v in r.getheaders()}
    finally:
        c.close()


def wait_ready(proc, port, timeout=READY_TIMEOUT_S):
    """Polls with a real HTTP GET until 200; returns None or an error string."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            return "exited with status %s" % proc.popen.returncode
        try:
            st, _, _ = http_request(port, "/128.bin", timeout=1.0)
            if st == 200:
                return None
            last = "HTTP %d" % st
        except (OSError, http.client.HTTPException) as e:
            last = str(e) or e.__class__.__name__
        time.sleep(0.05)
    return "not ready after %.0f s (%s)" % (timeout, last)


def check_post_reads_body(port):
    """The upstream's POST sink must read the whole body before it answers.

    Sends the head and half of a 1 MiB body, checks that no response arrives
    within 300 ms, then sends the rest and expects 200 twice on one
    keep-alive connection."""
    body = b"x" * POST_BYTES
    head = ("POST /post HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            "Content-Length: %d\r\n\r\n" % len(body)).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(head + body[:len(body) // 2])
        s.settimeout(0.3)
        try:
            early = s.recv(4096)
        except socket.timeout:
            early = None
        if early is not None:
            return "answered before the body was complete: %r" % early[:60]
        s.settimeout(5)
        s.sendall(body[len(body) // 2:] + head + body)
        f = s.makefile("rb")
        for i in range(2):
            status = f.readline()
            if b" 200 " not in status:
                return "response %d: %r" % (i + 1, status)
            clen = 0
            while True:
                line = f.readline()
                if line in (b"\r\n", b""):
                    break
                if line.lower().startswith(b"content-length:"):
                    clen = int(line.split(b":")[1])
            f.read(clen)
        return None
    finally:
        s.close()


def functional_checks(port, files):
    """Per-scenario sanity checks through a target; {scenario: error or None}."""
    out = {}

    def get(path, close=False):
        hdr = {"Connection": "close"} if close else {}
        st, data, _ = http_request(port, path, headers=hdr, timeout=10)
        if st != 200:
            return "GET %s -> HTTP %d" % (path, st)
        if data != files[path.rsplit("/", 1)[1]]:
            return "GET %s -> wrong body (%d bytes)" % (path, len(data))
        return None

    def cached(path):
        err = get(path) or get(path)
        if err:
            return err
        st, _, hdrs = http_request(port, path, timeout=10)
        # nginx and the gateway say HIT in X-Cache; HAProxy says nothing (its check is the body)
        xc = hdrs.get("x-cache")
        if xc is not None and xc.upper() != "HIT":
            return "GET %s twice, then X-Cache: %s (not served from the cache)" % (path, xc)
        return None

    def post():
        st, data, _ = http_request(port, "/post", method="POST", body=b"x" * POST_BYTES,
                                   headers={"Content-Type": "application/octet-stream"},
                                   timeout=10)
        return None if st == 200 else "POST /post (1 MiB) -> HTTP %d" % st

    def post_chunked():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            piece = b"x" * (64 * 1024)
            c.request("POST", "/post", body=iter([piece] * (POST_BYTES // len(piece))),
                      headers={"Content-Type": "application/octet-stream",
                               "Transfer-Encoding": "chunked"}, encode_chunked=True)
            r = c.getresponse()
            r.read()
            st = r.status
        finally:
            c.close()
        return None if st == 200 else "POST /post (1 MiB chunked) -> HTTP %d" % st

    checks = {"get128": lambda: get("/128.bin"), "get16k": lambda: get("/16k.bin"),
              "get1m": lambda: get("/1m.bin"), "newconn": lambda: get("/128.bin", True),
              "post1m": post, "postchunk": post_chunked, "cache128": lambda: cached("/cached/128.bin"),
              "cache16k": lambda: cached("/cached/16k.bin")}
    for name, fn in checks.items():
        try:
            out[name] = fn()
        except (OSError, http.client.HTTPException) as e:
            out[name] = "%s: %s" % (name, e or e.__class__.__name__)
    return out


# --------------------------------------------------------------------------
# one measured run

def run_wrk(port, scen, duration, procs_by_role, target, scrape=None):
    """Runs wrk once against port; returns a result dict. scrape: (admin port, ms) to fetch
    /metrics that often during the run, from CPU 0."""
    env = dict(os.environ)
    env["BENCH_POST_BYTES"] = str(scen.get("post", 0))
    env["BENCH_CONN_CLOSE"] = "1" if scen.get("close") else "0"
    env["BENCH_POST_CHUNKED"] = "1" if scen.get("chunked") else "0"
    argv = ["taskset", "-c", WRK_CPU, "wrk", "-t1", "-c%d" % scen["conns"],
            "-d%ds" % duration, "--timeout", "5s", "--latency", "-s", LUA,
            "%s://127.0.0.1:%d%s" % ("https" if scen.get("tls") else "http", port, scen["path"])]

    proxy = procs_by_role.get(target)
    upstream = procs_by_role["upstream"]
    ours_static = set()
    for p in procs_by_role.values():
        ours_static |= p.tree()
    ours_static.add(os.getpid())

    before = snapshot_procs()
    cpu_before = read_cpu_times()
    t0 = time.monotonic()
    scraper = None
    if scrape:
        scraper = subprocess.Popen(["taskset", "-c", WRK_CPU, sys.executable, "-c", SCRAPER,
                                    str(scrape[0]), str(scrape[1]), str(duration)],
                                   stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        out, _ = wrk.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        wrk.kill()
        wrk.communicate()
        raise RuntimeError("wrk did not finish within %d s" % (duration + 30))
    except BaseException:  # Ctrl-C: wrk is in its own session, stop it here
        wrk.kill()
        wrk.wait()
        raise
    after = snapshot_procs()
    cpu_after = read_cpu_times()
    wall = time.monotonic() - t0
    scrapes = None
    if scraper is not None:
        try:
            sout, _ = scraper.communicate(timeout=15)
            scrapes = sout.decode().strip()
        except subprocess.TimeoutExpired:
            scraper.kill()
            scraper.communicate()
            scrapes = "scraper did not finish"

    text = out.decode("utf-8", "replace")
    res = None
    for line in text.splitlines():
        if line.startswith("BENCH_RESULT "):
            res = json.loads(line[len("BENCH_RESULT "):])
    if res is None:
        raise RuntimeError("wrk printed no BENCH_RESULT line (exit %s):\n%s" % (wrk.returncode, text[-1500:]))

    def pct(ticks):
        return 100.0 * ticks / CLK_TCK / wall

    # wrk's own CPU ended up in our cutime (we reaped it): difference of self stat
    selfb, selfa = before.get(os.getpid()), after.get(os.getpid())
    wrk_ticks = (selfa[3] - selfb[3]) if (selfa and selfb) else 0

    up_pids = upstream.tree(after) | upstream.tree(before)
    proxy_pids = (proxy.tree(after) | proxy.tree(before)) if proxy else set()
    exclude = ours_static | up_pids | proxy_pids | {wrk.pid}
    if scraper is not None:
        exclude.add(scraper.pid)
    noise_user, noise_kern, noise_top = other_ticks(before, after, exclude)

    cpu = {}
    for name in ("cpu0", "cpu1"):
        if name in cpu_before and name in cpu_after:
            b, a = cpu_before[name], cpu_after[name]
            tot = max(1, a[1] - b[1])
            cpu[name + "_busy_pct"] = round(100.0 * (a[0] - b[0]) / tot, 1)
            cpu[name + "_steal_pct"] = round(100.0 * (a[2] - b[2]) / tot, 1)

    dur_s = res["duration_us"] / 1e6
    errors = sum(res[k] for k in ("connect_errors", "read_errors", "write_errors",
                                  "status_errors", "timeout_errors"))
    r = dict(res)
    r.update({
        "req_s": res["requests"] / dur_s if dur_s > 0 else 0.0,
        "mb_s": res["bytes"] / dur_s / 1e6 if dur_s > 0 else 0.0,
        "bytes_per_req": res["bytes"] / res["requests"] if res["requests"] else 0,
        "errors": errors,
        "wall_s": round(wall, 3),
        "proxy_cpu_pct": round(pct(group_ticks(before, after, proxy_pids)), 1) if proxy else None,
        "upstream_cpu_pct": round(pct(group_ticks(before, after, up_pids)), 1),
        "wrk_cpu_pct": round(pct(wrk_ticks), 1),
        "noise_pct": round(pct(noise_user), 1),
        "kthreads_pct": round(pct(noise_kern), 1),
        "noise_top": [{"pid": p, "comm": c, "cpu_pct": round(pct(t), 1)} for t, p, c in noise_top],
        "wrk_stdout": text,
        "scrapes": scrapes,
    })
    r.update(cpu)
    if proxy and r["proxy_cpu_pct"]:
        r["req_s_per_core"] = r["req_s"] / (r["proxy_cpu_pct"] / 100.0)
    else:
        r["req_s_per_core"] = None
    return r


# --------------------------------------------------------------------------
# formatting

def fmt_rate(x):
    if x is None:
        return "-"
    if x >= 10000:
        return "%.1fk" % (x / 1000)
    return "%.0f" % x


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return "%.2fx" % (a / b)


def summarize(runs):
    """runs: kept runs of one (scenario, target) cell, one per round."""
    rs = [r["req_s"] for r in runs]
    med = statistics.median(rs)
    cpu = [r["proxy_cpu_pct"] for r in runs if r["proxy_cpu_pct"] is not None]
    per = [r["req_s_per_core"] for r in runs if r["req_s_per_core"]]
    return {
        "rounds": len(runs),
        "req_s_median": med,
        "req_s_min": min(rs),
        "req_s_max": max(rs),
        "spread_pct": 100.0 * (max(rs) - min(rs)) / med if med else 0.0,
        "p50_ms_median": statistics.median(r["lat_p50_us"] for r in runs) / 1000.0,
        "p99_ms_median": statistics.median(r["lat_p99_us"] for r in runs) / 1000.0,
        "proxy_cpu_pct_median": statistics.median(cpu) if cpu else None,
        "req_s_per_core_median": statistics.median(per) if per else None,
        "noise_pct_max": max(r["noise_pct"] for r in runs),
        "cpu0_busy_pct_median": statistics.median(r.get("cpu0_busy_pct", 0) for r in runs),
        "cpu1_busy_pct_median": statistics.median(r.get("cpu1_busy_pct", 0) for r in runs),
        "errors_total": sum(r["errors"] for r in runs),
        "noisy": any(r["noise_pct"] > NOISE_LIMIT_PCT for r in runs),
        # per round, for the paired comparison (paired_line)
        "by_round": {r["round"]: [r["req_s"], r["lat_p99_us"] / 1000.0] for r in runs},
    }


def paired_line(g, p):
    """The gateway against a peer round by round. Both ran within the same round, a minute
    apart at most, so a host that slows down for a while slows both: on a shared box the
    per-round ratios vary less than the medians of each target do."""
    rounds = sorted(set(g["by_round"]) & set(p["by_round"]))
    if len(rounds) < 2:
        return None
    rq = [g["by_round"][k][0] / p["by_round"][k][0] for k in rounds if p["by_round"][k][0]]
    lat = [g["by_round"][k][1] / p["by_round"][k][1] for k in rounds if p["by_round"][k][1]]
    if not rq or not lat:
        return None
    return ("req/s higher in %d/%d rounds, p99 lower in %d/%d; median per-round ratio req/s "
            "%.2fx, p99 %.2fx" % (sum(x > 1 for x in rq), len(rq), sum(x < 1 for x in lat),
                                  len(lat), statistics.median(rq), statistics.median(lat)))


def print_tables(scenarios, targets, summary, skipped, duration, rounds):
    log()
    log("=" * 100)
    log("Results: median over %d round(s) of %d s; spread = (max-min)/median; "
        "p99 = median of per-round p99" % (rounds, duration))
    log("proxy CPU = % of one core used by the proxy process(es) on CPU 1; "
        "req/s/core = req/s / proxy CPU share")
    log("noise = CPU of other processes on the box, %% of a core (max over rounds; "
        "'*' = above %.0f%% even after a rerun)" % NOISE_LIMIT_PCT)
    log("cpu0 / cpu1 = how busy CPU 0 (wrk + upstream) and CPU 1 (the proxy) were, from /proc/stat, "
        "softirq included")
    for sc in scenarios:
        log()
        log("%s - %s" % (sc, SCENARIOS[sc]["desc"]))
        hdr = "  %-10s %9s %7s %8s %8s %9s %11s %7s %5s %5s %6s" % (
            "target", "req/s", "spread", "p50 ms", "p99 ms", "proxyCPU", "req/s/core",
            "noise", "cpu0", "cpu1", "errors")
        log(hdr)
        log("  " + "-" * (len(hdr) - 2))
        for t in targets:
            s = summary.get(sc, {}).get(t)
            if s is None:
                log("  %-10s %s" % (t, "(skipped: %s)" % skipped.get((sc, t), "not run")))
                continue
            log("  %-10s %9s %6.1f%% %8.2f %8.2f %9s %11s %5.1f%%%s %4.0f%% %4.0f%% %6d" % (
                t, fmt_rate(s["req_s_median"]), s["spread_pct"], s["p50_ms_median"],
                s["p99_ms_median"],
                "-" if s["proxy_cpu_pct_median"] is None else "%.0f%%" % s["proxy_cpu_pct_median"],
                fmt_rate(s["req_s_per_core_median"]), s["noise_pct_max"],
                "*" if s["noisy"] else " ", s["cpu0_busy_pct_median"],
                s["cpu1_busy_pct_median"], s["errors_total"]))
        cell = summary.get(sc, {})
        g = cell.get("gateway")
        for other in ("gw-alt", "gw-scrape", "gw-nopoll"):
            alt = cell.get(other)
            if g is not None and alt is not None:
                log("  %s/gateway req/s %s   req/s/core %s   p99 %s" % (
                    other, fmt_ratio(alt["req_s_median"], g["req_s_median"]),
                    fmt_ratio(alt["req_s_per_core_median"], g["req_s_per_core_median"]),
                    fmt_ratio(alt["p99_ms_median"], g["p99_ms_median"])))
        for peer in ("nginx", "haproxy"):
            p = cell.get(peer)
            if peer not in targets:
                continue
            if g is None or p is None:
                log("  gateway/%-7s n/a (%s not measured)" % (peer, "gateway" if g is None else peer))
                continue
            log("  gateway/%-7s req/s %s   req/s/core %s   p99 %s (<1 = gateway faster)" % (
                peer, fmt_ratio(g["req_s_median"], p["req_s_median"]),
                fmt_ratio(g["req_s_per_core_median"], p["req_s_per_core_median"]),
                fmt_ratio(g["p99_ms_median"], p["p99_ms_median"])))
            paired = paired_line(g, p)
            if paired:
                log("    paired by round: " + paired)
        base = cell.get("gw-bare")
        for t in targets:
            if t in GATEWAY_VARIANTS and t != "gw-bare" or (t == "gateway" and base):
                v = cell.get(t)
                if base is None or v is None:
                    continue
                log("  %s/gw-bare  req/s %s   req/s/core %s   p99 %s" % (
                    t, fmt_ratio(v["req_s_median"], base["req_s_median"]),
                    fmt_ratio(v["req_s_per_core_median"], base["req_s_per_core_median"]),
                    fmt_ratio(v["p99_ms_median"], base["p99_ms_median"])))
        if "direct" in cell:
            d = cell["direct"]["req_s_median"]
            parts = ["%s %.0f%%" % (t, 100.0 * cell[t]["req_s_median"] / d)
                     for t in targets if t != "direct" and t in cell and d]
            if parts:
                log("  of direct:     " + ", ".join(parts))


# --------------------------------------------------------------------------

def tool_version(argv):
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=5)
        return p.stdout.decode("utf-8", "replace").strip().splitlines()[0]
    except Exception as e:  # informational only
        return "unknown (%s)" % e


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=None, help="seconds per run (default 10)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3)")
    ap.add_argument("--quick", action="store_true", help="duration 5 s, 1 round (unless given)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="comma list from: " + ",".join(SCENARIOS))
    ap.add_argument("--targets", default=",".join(ALL_TARGETS),
                    help="comma list from: " + ",".join(ALL_TARGETS + EXTRA_TARGETS) +
                    " (the gw-* targets are the gateway with one policy on; see GATEWAY_VARIANTS)")
    ap.add_argument("--gateway-bin", default=os.path.join(REPO, "build", "gateway", "gateway"))
    ap.add_argument("--alt-bin", default=None,
                    help="another gateway build, measured as target gw-alt (before/after)")
    ap.add_argument("--gateway-args", default=None,
                    help="gateway arguments, {config} is replaced by the config path "
                         "(default: try '-c {config}', then '{config}')")
    ap.add_argument("--scrape-ms", type=int, default=100,
                    help="gw-scrape: fetch /metrics this often during each run (default 100)")
    ap.add_argument("--no-defer-accept", dest="defer_accept", action="store_false",
                    help="listen without TCP_DEFER_ACCEPT on every proxy (nginx 'deferred', "
                         "HAProxy 'defer-accept' and the gateway's defer_accept are on by "
                         "default, so that all three take new connections the same way)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--no-json", action="store_true", help="do not write perf/results/*.json")
    a = ap.parse_args()
    a.duration = a.duration or (5 if a.quick else 10)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    a.targets = [t for t in a.targets.split(",") if t]
    for s in a.scenarios:
        if s not in SCENARIOS:
            ap.error("unknown scenario %r" % s)
    for t in a.targets:
        if t == "gw-alt" and not a.alt_bin:
            ap.error("target gw-alt needs --alt-bin")
        if t not in ALL_TARGETS + EXTRA_TARGETS:
            ap.error("unknown target %r" % t)
    if a.duration < 1 or a.rounds < 1:
        ap.error("duration and rounds must be >= 1")
    return a


def start_target(name, args, tmp, ports, files):
    """Starts one proxy pinned to CPU 1. Returns (Proc or None, reason or None)."""
    up = ports["upstream"]
    port = ports[name]
    if name == "nginx":
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            return None, "nginx binary not found"
        os.makedirs(os.path.join(tmp, "nginx-proxy-tmp"), exist_ok=True)
        defer = " deferred" if args.defer_accept else ""
        tls = ("listen 127.0.0.1:%d ssl%s; ssl_certificate %s/tls.crt; ssl_certificate_key "
               "%s/tls.key; ssl_protocols TLSv1.2; ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:"
               "ECDHE-ECDSA-AES256-GCM-SHA384;" % (ports[name + "_tls"], defer, tmp, tmp)) \
            if args.tls else ""
        uptls_up = ("upstream app_tls { server 127.0.0.1:%d; keepalive 64; "
                    "keepalive_requests 1000000; keepalive_timeout 300s; }"
                    % ports["upstream_tls"]) if args.tls else ""
        uptls_loc = ("location /tlsup/ { proxy_pass https://app_tls; proxy_ssl_session_reuse on; "
                     "proxy_ssl_protocols TLSv1.2; }") if args.tls else ""
        cfg = render("proxy-nginx.conf", os.path.join(tmp, "nginx-proxy.conf"),
                     DIR=tmp, PORT=port, DEFER=defer, UPPORT=up, TLS_LISTEN=tls,
                     UPTLS_UPSTREAM=uptls_up,
                     UPTLS_LOCATION=uptls_loc)
        variants = [["taskset", "-c", PROXY_CPU, nginx, "-p", tmp + "/", "-c", cfg,
                     "-e", os.path.join(tmp, "nginx-proxy-error.log")]]
    elif name == "haproxy":
        hap = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not os.path.exists(hap):
            return None, "haproxy binary not found"
        defer = " defer-accept" if args.defer_accept else ""
        tls = ("bind 127.0.0.1:%d ssl crt %s/tls.pem ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2%s"
               % (ports[name + "_tls"], tmp, defer)) if args.tls else ""
        uptls_use = "use_backend app_tls if { path_beg /tlsup/ }" if args.tls else ""
        uptls_be = ("backend app_tls\n    server s1 127.0.0.1:%d ssl verify none "
                    "ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2" % ports["upstream_tls"]) \
            if args.tls else ""
        cfg = render("haproxy.cfg", os.path.join(tmp, "haproxy.cfg"), PORT=port, DEFER=defer,
                     UPPORT=up,
                     TLS_BIND=tls, UPTLS_USE=uptls_use, UPTLS_BACKEND=uptls_be)
        variants = [["taskset", "-c", PROXY_CPU, hap, "-db", "-f", cfg]]
    elif name == "gateway" or name in GATEWAY_VARIANTS or name in ("gw-alt", "gw-scrape"):
        gw = os.path.abspath(args.alt_bin if name == "gw-alt" else args.gateway_bin)
        if not (os.path.isfile(gw) and os.access(gw, os.X_OK)):
            return None, "binary %s is missing (build it first)" % gw
        route_extra, up_extra, top_extra = (GATEWAY_VARIANTS.get(name, ()) + ("", "", ""))[:3]
        defer = "defer_accept = %s;" % ("true" if args.defer_accept else "false")
        tls = (', { address = "127.0.0.1:%d"; %s tls = { cert = "%s/tls.crt"; '
               'key = "%s/tls.key"; ciphers = [ "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256", '
               '"TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384" ]; }; }'
               % (ports[name + "_tls"], defer, tmp, tmp)) if args.tls else ""
        uptls_up = (', { name = "app_tls"; servers = ( "127.0.0.1:%d" ); keepalive = 64; '
                    'tls = { verify = false; }; }' % ports["upstream_tls"]) if args.tls else ""
        uptls_route = ('{ name = "tlsup"; path_prefix = "/tlsup/"; upstream = "app_tls"; '
                       'timeout_ms = 30000; %s },' % route_extra) if args.tls else ""
        cfg = render("gateway.conf", os.path.join(tmp, name + ".conf"), PORT=port, DEFER=defer,
                     ADMINPORT=ports[name + "_admin"], UPPORT=up, ROUTE_EXTRA=route_extra,
                     UPSTREAM_EXTRA=up_extra, TLS_LISTEN=tls, UPTLS_UPSTREAM=uptls_up,
                     UPTLS_ROUTE=uptls_route, TOP_EXTRA=top_extra)
        forms = [args.gateway_args] if args.gateway_args else ["-c {config}", "{config}"]
        variants = [["taskset", "-c", PROXY_CPU, gw] + [w.replace("{config}", cfg) for w in f.split()]
                    for f in forms]
    else:
        raise ValueError(name)

    reasons = []
    for i, argv in enumerate(variants):
        p = Proc("%s-%d" % (name, i), argv, tmp)
        err = wait_ready(p, port)
        if err is None:
            p.name = name
            return p, None
        reasons.append("`%s`: %s\n%s" % (" ".join(argv[3:]), err, p.tail()))
        p.stop()
    return None, "failed to start: " + "\n  ".join(reasons)


def main():
    args = parse_args()
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit("bench: %s not found in PATH" % tool)
    upstream_nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(upstream_nginx):
        sys.exit("bench: nginx (needed for the upstream) not found")
    if os.cpu_count() < 2:
        sys.exit("bench: needs 2 CPUs (CPU 0 for wrk+upstream, CPU 1 for the proxy)")

    ncells = len(args.scenarios) * len(args.targets) * args.rounds
    est = ncells * (args.duration + SETTLE_S + 0.4) + 10 + 2 * len(args.targets)
    log("bench: %d scenario(s) x %d target(s) x %d round(s) x %d s = %d runs; "
        "estimated %.0f min %02.0f s (plus reruns of noisy cells)"
        % (len(args.scenarios), len(args.targets), args.rounds, args.duration, ncells,
           est // 60, est % 60))

    # Ctrl-C and SIGTERM both unwind through the finally below.
    def on_term(signum, frame):
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started in the background

    tmp = tempfile.mkdtemp(prefix="gw-bench-")
    os.chmod(tmp, 0o755)  # nginx workers may run as nobody
    procs = {}
    results = {"runs": [], "skipped": {}}
    started_at = datetime.datetime.now()
    t_start = time.monotonic()
    interrupted = False
    failed = None
    raw = {}  # scenario -> target -> kept runs
    calib = {}
    summary = {}
    skipped = {}
    try:
        calib["before"] = {"cpu0_ms": calibrate(WRK_CPU), "cpu1_ms": calibrate(PROXY_CPU)}
        log("host speed probe: %s / %s ms on CPU 0 / 1 (fixed loop, lower is faster; "
            "compare between runs)" % (calib["before"]["cpu0_ms"], calib["before"]["cpu1_ms"]))

        # content
        www = os.path.join(tmp, "www")
        os.makedirs(www)
        files = {}
        for fname, size in FILES.items():
            data = os.urandom(size)
            files[fname] = data
            with open(os.path.join(www, fname), "wb") as f:
                f.write(data)
        open(os.path.join(www, "post"), "wb").close()  # the static handler needs a file to 405 on
        for root, dirs, fs in os.walk(tmp):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
            for fn in fs:
                os.chmod(os.path.join(root, fn), 0o644)
        os.makedirs(os.path.join(tmp, "upstream-tmp"))

        pnames = ["upstream", "upstream_tls", "nginx", "haproxy", "gateway", "gateway_admin",
                  "nginx_tls", "haproxy_tls", "gateway_tls"]
        for v in EXTRA_TARGETS:
            pnames += [v, v + "_admin", v + "_tls"]
        ports = dict(zip(pnames, free_ports(len(pnames))))
        ports["direct"] = ports["upstream"]
        # TLS scenarios: one self-signed P-256 certificate for every proxy (wrk does not verify)
        args.tls = bool(set(args.scenarios) & set(TLS_SCENARIOS + UPTLS_SCENARIOS))
        if args.tls:
            try:
                subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                                "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                                os.path.join(tmp, "tls.key"), "-out",
                                os.path.join(tmp, "tls.crt"), "-days", "2", "-subj",
                                "/CN=localhost"], check=True, capture_output=True)
                with open(os.path.join(tmp, "tls.pem"), "w") as pem:
                    for part in ("tls.crt", "tls.key"):
                        with open(os.path.join(tmp, part)) as f:
                            pem.write(f.read())
            except (OSError, subprocess.CalledProcessError) as e:
                args.tls = False
                for sc in TLS_SCENARIOS + UPTLS_SCENARIOS:
                    for t in args.targets:
                        skipped[(sc, t)] = "no certificate (openssl: %s)" % e
        for sc in TLS_SCENARIOS:
            skipped.setdefault((sc, "direct"), "the upstream speaks no TLS")

        # upstream on CPU 0
        uptls = ("server { listen 127.0.0.1:%d ssl backlog=4096; ssl_certificate %s/tls.crt; "
                 "ssl_certificate_key %s/tls.key; ssl_protocols TLSv1.2; "
                 "ssl_session_cache shared:up:1m; location /tlsup/ { alias %s/www/; } }"
                 % (ports["upstream_tls"], tmp, tmp, tmp)) if args.tls else ""
        cfg = render("upstream-nginx.conf", os.path.join(tmp, "upstream.conf"),
                     DIR=tmp, PORT=ports["upstream"], UPTLS_SERVER=uptls)
        up = Proc("upstream", ["taskset", "-c", WRK_CPU, upstream_nginx, "-p", tmp + "/",
                               "-c", cfg, "-e", os.path.join(tmp, "upstream-error.log")], tmp)
        procs["upstream"] = up
        err = wait_ready(up, ports["upstream"])
        if err:
            raise RuntimeError("upstream nginx %s\n%s" % (err, up.tail()))
        err = check_post_reads_body(ports["upstream"])
        if err:
            raise RuntimeError("upstream POST sink does not read the whole body: " + err)
        bad = {k: v for k, v in functional_checks(ports["upstream"], files).items() if v}
        if bad:
            raise RuntimeError("upstream checks failed: %s" % bad)
        log("upstream: nginx on 127.0.0.1:%d (CPU %s), POST sink reads the whole body: ok"
            % (ports["upstream"], WRK_CPU))
        log("proxies listen with TCP_DEFER_ACCEPT %s (--no-defer-accept turns it off)"
            % ("on" if args.defer_accept else "off"))

        # proxies on CPU 1
        active = []
        for t in args.targets:
            if t == "direct":
                active.append(t)
                continue
            p, why = start_target(t, args, tmp, ports, files)
            if p is None:
                log("SKIP target %s: %s" % (t, why))
                results["skipped"][t] = why
                for sc in args.scenarios:
                    skipped[(sc, t)] = why.splitlines()[0]
                continue
            procs[t] = p
            bad = {k: v for k, v in functional_checks(ports[t], files).items() if v}
            for sc, why in bad.items():
                if sc in args.scenarios:
                    skipped[(sc, t)] = "check failed: " + why
                    log("SKIP %s on %s: check failed: %s" % (sc, t, why))
            log("%s: pid %d on 127.0.0.1:%d (CPU %s), ready" % (t, p.pid, ports[t], PROXY_CPU))
            active.append(t)
        if not active:
            raise RuntimeError("no target could be started")

        # warm-up: 1 s per target (connection pools, caches); not recorded
        for t in active:
            if all((sc, t) in skipped for sc in args.scenarios):
                continue
            run_wrk(ports[t], dict(SCENARIOS["get128"], conns=16), 1, procs, t)

        # measure
        for rnd in range(args.rounds):
            k = rnd % len(active)
            order = active[k:] + active[:k]
            for sc in args.scenarios:
                for t in order:
                    if (sc, t) in skipped:
                        continue
                    if t in procs and not procs[t].alive():
                        why = "process exited (status %s) during the run" % procs[t].popen.returncode
                        log("SKIP %s: %s\n%s" % (t, why, procs[t].tail()))
                        for s2 in args.scenarios:
                            skipped.setdefault((s2, t), why)
                        continue
                    attempts = []
                    for attempt in range(2):
                        time.sleep(SETTLE_S)
                        try:
                            port = ports[t + "_tls"] if SCENARIOS[sc].get("tls") else ports[t]
                            r = run_wrk(port, SCENARIOS[sc], args.duration, procs, t,
                                        scrape=(ports[t + "_admin"], args.scrape_ms)
                                        if t == "gw-scrape" else None)
                        except RuntimeError as e:
                            log("ERROR %s/%s round %d: %s" % (sc, t, rnd + 1, e))
                            r = None
                            break
                        r.update({"round": rnd + 1, "scenario": sc, "target": t,
                                  "attempt": attempt + 1})
                        attempts.append(r)
                        results["runs"].append(r)
                        noisy = r["noise_pct"] > NOISE_LIMIT_PCT
                        log("  round %d %-8s %-8s %9.0f req/s  p99 %7.2f ms  proxy %5s  "
                            "noise %4.1f%%%s  cpu0 %3.0f%%  cpu1 %3.0f%%  err %d%s" % (
                                rnd + 1, sc, t, r["req_s"], r["lat_p99_us"] / 1000.0,
                                "-" if r["proxy_cpu_pct"] is None else "%.0f%%" % r["proxy_cpu_pct"],
                                r["noise_pct"], "*" if noisy else "",
                                r.get("cpu0_busy_pct", 0), r.get("cpu1_busy_pct", 0), r["errors"],
                                ("  (noisy: %s; rerun)" % ", ".join(
                                    "%s %.0f%%" % (n["comm"], n["cpu_pct"]) for n in r["noise_top"][:3])
                                 if noisy and attempt == 0 else "")))
                        if r.get("scrapes"):
                            log("           %s" % r["scrapes"])
                        if not noisy:
                            break
                    if attempts:
                        best = min(attempts, key=lambda x: x["noise_pct"])
                        best["kept"] = True
                        raw.setdefault(sc, {}).setdefault(t, []).append(best)

        calib["after"] = {"cpu0_ms": calibrate(WRK_CPU), "cpu1_ms": calibrate(PROXY_CPU)}
    except KeyboardInterrupt:
        interrupted = True
        log("\nbench: interrupted, cleaning up")
    except RuntimeError as e:
        failed = str(e)
        log("bench: error: %s" % e)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        for name in list(procs)[::-1]:
            try:
                procs[name].stop()
            except Exception as e:
                log("bench: stopping %s: %s" % (name, e))
        if args.keep_tmp:
            log("bench: temp dir kept: %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    for sc, cells in raw.items():  # also after Ctrl-C: what was measured so far
        for t, runs in cells.items():
            summary.setdefault(sc, {})[t] = summarize(runs)
    if summary:
        print_tables(args.scenarios, args.targets, summary, skipped, args.duration, args.rounds)
    elapsed = time.monotonic() - t_start
    noisy = sorted("%s/%s" % (sc, t) for sc, cells in summary.items()
                   for t, c in cells.items() if c["noisy"])
    if noisy:
        log()
        log("WARNING: %d cell(s) stayed above %.0f%% noise after a rerun (%s): other work on "
            "the box competed with the benchmark; treat them as unreliable and rerun when the box "
            "is quiet." % (len(noisy), NOISE_LIMIT_PCT, ", ".join(noisy[:6]) +
                           (", ..." if len(noisy) > 6 else "")))
    if calib.get("after"):
        log()
        log("host speed probe: before %s / %s ms, after %s / %s ms (CPU 0 / 1)" % (
            calib["before"]["cpu0_ms"], calib["before"]["cpu1_ms"],
            calib["after"]["cpu0_ms"], calib["after"]["cpu1_ms"]))
    log()
    log("bench: total %.0f min %02.0f s%s" % (elapsed // 60, elapsed % 60,
                                              " (interrupted)" if interrupted else ""))

    if not args.no_json and results["runs"]:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        path = os.path.join(RESULTS_DIR, "bench-%s.json" % started_at.strftime("%Y%m%d-%H%M%S"))
        doc = {
            "started": started_at.isoformat(timespec="seconds"),
            "elapsed_s": round(elapsed, 1),
            "interrupted": interrupted,
            "args": {"duration": args.duration, "rounds": args.rounds,
                     "scenarios": args.scenarios, "targets": args.targets,
                     "gateway_bin": os.path.abspath(args.gateway_bin),
                     "defer_accept": args.defer_accept},
            "method": {"wrk_cpu": WRK_CPU, "proxy_cpu": PROXY_CPU,
                       "noise_limit_pct": NOISE_LIMIT_PCT, "clk_tck": CLK_TCK},
            "host": {"uname": " ".join(os.uname()), "cpus": os.cpu_count(),
                     "speed_probe_ms": calib},
            "versions": {"nginx": tool_version([upstream_nginx, "-v"]),
                         "haproxy": tool_version(["haproxy", "-v"]),
                         "wrk": tool_version(["wrk", "-v"])},
            "scenarios": {s: SCENARIOS[s] for s in args.scenarios},
            "skipped": {"%s/%s" % k: v for k, v in skipped.items()},
            "summary": summary,
            "runs": results["runs"],
        }
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
        log("bench: raw results in %s" % os.path.relpath(path, os.getcwd()))
    if interrupted:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
