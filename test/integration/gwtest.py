"""Running the real gateway binary for a test, and reading what it produces.

- render_config(): libconfig text from Python values (one top-level setting per line, so
  line numbers in error messages are easy to predict).
- upstream_block() / route_block(): the usual upstream and route groups with defaults.
- Gateway: one started process with its config, ports, log files and client helpers;
  stop() sends SIGTERM and raises GatewayCrashed if it died of a signal or a sanitizer spoke.
- parse_metrics(): Prometheus text format 0.0.4 into families and samples.
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rawhttp import RawConn
from upstream import free_port

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "build" / "gateway" / "gateway"

SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "ThreadSanitizer", "runtime error:")
START_TIMEOUT_S = 10.0


class GatewayError(Exception):
    """Base: a failure of the gateway itself (reported as a test failure)."""


class GatewayMissing(GatewayError):
    pass


class GatewayStartFailed(GatewayError):
    pass


class GatewayCrashed(GatewayError):
    pass


def gateway_bin():
    # A relative GATEWAY_BIN is taken from where pytest was started, before
    # any test changes directory.
    return Path(os.environ.get("GATEWAY_BIN", str(DEFAULT_BIN))).absolute()


def sanitizer_report(text):
    """The first sanitizer line in text, or None."""
    for line in text.splitlines():
        if any(m in line for m in SANITIZER_MARKS):
            return line
    return None


def gateway_env():
    env = dict(os.environ)
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    return env


# -- config ----------------------------------------------------------------------------------


class Arr(list):
    """Rendered as a libconfig array [ ... ] (a plain list renders as a list ( ... ))."""


def _render(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v) + ("L" if not -(2 ** 31) <= v < 2 ** 31 else "")
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, Arr):
        return "[ " + ", ".join(_render(x) for x in v) + " ]"
    if isinstance(v, (list, tuple)):
        return "( " + ", ".join(_render(x) for x in v) + " )"
    if isinstance(v, dict):
        return "{ " + " ".join("%s = %s;" % (k, _render(x)) for k, x in v.items()) + " }"
    raise TypeError("cannot render %r" % (v,))


def render_config(settings):
    """libconfig text: one top-level `key = value;` per line, groups on one line."""
    return "".join("%s = %s;\n" % (k, _render(v)) for k, v in settings.items())


DEFAULT_LIMITS = {
    "max_header_bytes": 16384,
    "max_body_bytes": 20971520,
    "header_timeout_ms": 10000,
    "idle_timeout_ms": 60000,
    "max_connections": 10000,
}


def upstream_block(name, *servers, **kw):
    b = {"name": name, "servers": list(servers), "balance": "round_robin", "keepalive": 32,
         "connect_timeout_ms": 1000}
    b.update(kw)
    return b


def route_block(name, upstream, host="*", path_prefix="/", methods=None, timeout_ms=30000,
                path=None):
    b = {"name": name, "host": host}
    if path is not None:
        b["path"] = path
    else:
        b["path_prefix"] = path_prefix
    if methods is not None:
        b["methods"] = Arr(methods)
    b["upstream"] = upstream
    b["timeout_ms"] = timeout_ms
    return b


def gateway_settings(port, admin_port, upstreams, routes, limits=None, workers=2,
                     access_log=True, drain_timeout_ms=1000, **extra):
    lim = dict(DEFAULT_LIMITS)
    lim.update(limits or {})
    s = {
        "workers": workers,
        "access_log": access_log,
        "drain_timeout_ms": drain_timeout_ms,
        "listen": [{"address": "127.0.0.1:%d" % port}],
        "admin": {"address": "127.0.0.1:%d" % admin_port},
        "limits": lim,
        "upstreams": list(upstreams),
        "routes": list(routes),
    }
    s.update(extra)
    return s


# -- the process -----------------------------------------------------------------------------


class HttpResult:
    """An http.client response, read completely."""

    def __init__(self, resp, body):
        self.status = resp.status
        self.reason = resp.reason
        self.headers = resp.getheaders()  # [(name, value)] in order
        self.body = body
        self.will_close = resp.will_close

    def header(self, name, default=None):
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return default

    def headers_all(self, name):
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<HttpResult %d %r>" % (self.status, self.body[:80])


class Gateway:
    """One gateway process started from a config file in a test's tmp dir."""

    def __init__(self, workdir, settings_fn, name="gw"):
        self.workdir = Path(workdir)
        self.settings_fn = settings_fn  # (port, admin_port) -> settings dict
        self.name = name
        self.proc = None
        self.port = None
        self.admin_port = None
        self.config_path = self.workdir / ("%s.conf" % name)
        self.stdout_path = self.workdir / ("%s.stdout" % name)
        self.stderr_path = self.workdir / ("%s.stderr" % name)
        self.killed = False
        self.stopped = False
        self.problem = None  # set by stop() when the exit was bad

    # -- life cycle

    def start(self):
        binary = gateway_bin()
        if not binary.exists():
            raise GatewayMissing(
                "gateway binary not found at %s (build it, or point GATEWAY_BIN at it; "
                "GW_SKIP_NO_BIN=1 turns this into a skip)" % binary)
        for attempt in (1, 2):
            self.port, self.admin_port = free_port(), free_port()
            while self.admin_port == self.port:
                self.admin_port = free_port()
            self.config_path.write_text(render_config(self.settings_fn(self.port,
                                                                       self.admin_port)))
            err = self._start_once(binary)
            if err is None:
                return self
            in_use = re.search(r"in use|EADDRINUSE|bind", err, re.I)
            if attempt == 1 and in_use:
                continue  # lost the free-port race: try again with new ports
            raise GatewayStartFailed(err)

    preexec_fn = None  # e.g. to set resource limits of the gateway process
    env_extra = None  # variables added to the gateway's environment

    def _start_once(self, binary):
        self.stopped = False
        self.killed = False
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([str(binary), "-c", str(self.config_path)],
                                         stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         cwd=str(self.workdir),
                                         env=dict(gateway_env(), **(self.env_extra or {})),
                                         preexec_fn=self.preexec_fn)
        deadline = time.monotonic() + START_TIMEOUT_S
        data_ok = False
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self.stopped = True
                return "gateway exited with %s during start-up; stderr:\n%s" % (
                    _rc_text(rc), self.stderr())
            if not data_ok:
                data_ok = _can_connect(self.port)
            if data_ok and self._healthz_ok():
                return None
            time.sleep(0.02)
        self._terminate()
        self.stopped = True  # reported as a start failure, not again as a crash
        return ("gateway not ready within %.0f s (data port %d accepting: %s, admin /healthz "
                "on %d not 200); stderr:\n%s" % (START_TIMEOUT_S, self.port, data_ok,
                                                 self.admin_port, self.stderr()))

    def _healthz_ok(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=1)
            try:
                c.request("GET", "/healthz")
                r = c.getresponse()
                r.read()
                return r.status == 200
            finally:
                c.close()
        except (OSError, http.client.HTTPException):
            return False

    def _terminate(self):
        """SIGTERM, bounded wait, SIGKILL only if needed. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self._drain_s() + 5)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def _drain_s(self):
        try:
            return self.settings_fn(self.port, self.admin_port).get("drain_timeout_ms",
                                                                    2000) / 1000.0
        except Exception:
            return 2.0

    def stop(self, check=True):
        """Stops the process (idempotent). Raises GatewayCrashed (when check) if it died of a
        signal we did not send as SIGKILL, or a sanitizer reported on stderr."""
        if self.proc is None:
            return
        if not self.stopped:
            self.stopped = True
            already = self.proc.poll()
            rc = self._terminate()
            problems = []
            if rc < 0 and not (self.killed and rc == -signal.SIGKILL):
                problems.append("gateway died of %s" % _rc_text(rc))
            if already is not None and already > 0:
                problems.append("gateway had already exited (%s) before the test ended"
                                % _rc_text(already))
            san = sanitizer_report(self.stderr())
            if san:
                problems.append("sanitizer report on stderr: %s" % san)
            if problems:
                self.problem = "; ".join(problems) + "\n--- stderr ---\n" + self.stderr()[-8000:]
            elif self.killed:
                warnings.warn("gateway %s ignored SIGTERM for %.1f s and was SIGKILLed"
                              % (self.name, self._drain_s() + 5))
            elif rc != 0:
                warnings.warn("gateway %s exited with status %d after SIGTERM" % (self.name, rc))
        if check and self.problem:
            problem, self.problem = self.problem, None
            raise GatewayCrashed(problem)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # -- output

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stdout(self):
        try:
            return self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def access_log(self):
        """Every stdout line parsed as JSON (fails on a line that is not a JSON object)."""
        out = []
        for line in self.stdout().splitlines():
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                raise AssertionError("access log line is not JSON: %r" % line) from None
            assert isinstance(doc, dict), "access log line is not a JSON object: %r" % line
            out.append(doc)
        return out

    def wait_access_log(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            lines = self.access_log()
            if len(lines) >= n or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    # -- clients

    def conn(self, timeout=10):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=10, conn=None):
        """One request (on conn, or a fresh connection closed afterwards)."""
        own = conn is None
        c = self.conn(timeout) if own else conn
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return HttpResult(r, r.read())
        finally:
            if own:
                c.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def raw(self, timeout=10, tls=None, server_hostname=None):
        return RawConn("127.0.0.1", self.port, timeout=timeout, tls=tls,
                       server_hostname=server_hostname)

    def admin(self, path, timeout=10):
        c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return HttpResult(r, r.read())
        finally:
            c.close()

    def metrics(self):
        r = self.admin("/metrics")
        assert r.status == 200, "GET /metrics on the admin port: %d" % r.status
        return parse_metrics(r.body.decode())

    def statuses_at_once(self, path, n, timeout=15):
        """n GETs of path released together (a barrier); their statuses, sorted."""
        barrier = threading.Barrier(n)

        def one(_):
            barrier.wait(5)
            return self.get(path, timeout=timeout).status

        with ThreadPoolExecutor(n) as pool:
            return sorted(pool.map(one, range(n)))

    def reload(self, change):
        """Rewrites the config with change(settings) applied, sends SIGHUP and waits until
        the next generation serves (fails with the gateway's stderr otherwise)."""
        before = self.metrics().value("gateway_config_generation")
        settings = self.settings_fn(self.port, self.admin_port)
        change(settings)
        self.config_path.write_text(render_config(settings))
        self.proc.send_signal(signal.SIGHUP)
        m = self.wait_metric("gateway_config_generation", before + 1)
        assert m.value("gateway_config_generation") == before + 1, self.stderr()

    def wait_metric(self, name, value, timeout=5.0, **labels):
        """Polls /metrics until the summed sample reaches value (counters are updated after
        the response is written); returns the last Metrics."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if m.value(name, **labels) >= value or time.monotonic() > deadline:
                return m
            time.sleep(0.05)


def _rc_text(rc):
    if rc is None:
        return "running"
    if rc < 0:
        try:
            return "signal %s" % signal.Signals(-rc).name
        except ValueError:
            return "signal %d" % -rc
    return "status %d" % rc


def _can_connect(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.5)
    except OSError:
        return False
    s.close()
    return True


# -- metrics ---------------------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


def _parse_labels(text):
    labels = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if not m:
            raise ValueError("bad label set: {%s}" % text)
        labels[m.group(1)] = (m.group(2).replace('\\"', '"').replace("\\n", "\n")
                              .replace("\\\\", "\\"))
        pos = m.end()
    return labels


def _float(v):
    return float(v)  # also takes +Inf, -Inf, NaN


class Metrics:
    def __init__(self, text):
        self.text = text
        self.help = {}
        self.type = {}
        self.samples = []  # (name, labels, value, line_no)
        self.first_sample_line = {}

    def find(self, name, **labels):
        """Samples named name whose labels include the given ones."""
        return [(n, l, v) for n, l, v, _ in self.samples
                if n == name and all(l.get(k) == str(x) for k, x in labels.items())]

    def value(self, name, **labels):
        """Sum over the matching samples (0 when there is none)."""
        return sum(v for _, _, v in self.find(name, **labels))

    def family_of(self, name):
        """The declared family a sample name belongs to, or None."""
        if name in self.type:
            return name
        for suf, kinds in (("_bucket", ("histogram",)), ("_sum", ("histogram", "summary")),
                           ("_count", ("histogram", "summary")), ("_total", ("counter",))):
            if name.endswith(suf):
                base = name[: -len(suf)]
                if self.type.get(base) in kinds:
                    return base
        return None


def parse_metrics(text):
    m = Metrics(text)
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] == "HELP":
                m.help[parts[2]] = parts[3] if len(parts) > 3 else ""
            elif len(parts) >= 4 and parts[1] == "TYPE":
                m.type[parts[2]] = parts[3].strip()
            continue
        s = _SAMPLE.match(line)
        if not s:
            raise ValueError("line %d is not a Prometheus sample: %r" % (no, line))
        labels = _parse_labels(s.group(3) or "")
        m.samples.append((s.group(1), labels, _float(s.group(4)), no))
        m.first_sample_line.setdefault(s.group(1), no)
    return m


def wait_until(pred, timeout=5.0):
    """Polls pred until it is true (True) or timeout seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def connect_refused(port):
    """Whether a TCP connect to 127.0.0.1:port is refused."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


def wait_redis_up(gw, want=1, timeout=5.0):
    """Waits until gateway_redis_up is want; whether it got there."""
    return wait_until(lambda: gw.metrics().value("gateway_redis_up") == want, timeout)


WS_UPGRADE = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
              ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]


def ws_echo_roundtrip(c, size=300000):
    """Upgrades raw connection c at the test upstream's /ws and checks that bytes come back:
    a short message, then size bytes in 32 KiB pieces (one piece in flight, so that a TLS
    socket is never read and written from two threads)."""
    import random
    from rawhttp import request_bytes
    c.send(request_bytes("GET", "/ws", WS_UPGRADE))
    r = c.read_response()
    assert r is not None and r.status == 101, r
    assert r.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    c.send(b"hello")
    assert c.recv_exact(5) == b"hello"
    blob = random.Random(7).randbytes(size)
    for i in range(0, size, 32768):
        piece = blob[i:i + 32768]
        c.send(piece)
        assert c.recv_exact(len(piece), timeout=20) == piece


def helper_threads(pid):
    """{tid: user+system ticks} of the gateway's helper threads (core/jobs.c)."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                if not f.read().startswith("gw-help-"):
                    continue
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[tid] = int(fields[11]) + int(fields[12])
    return out
