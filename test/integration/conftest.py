"""Fixtures for the integration tests: upstream servers, the gateway process, clients.

Fixtures
  upstream            a started Upstream("app") on 127.0.0.1 (see upstream.py)
  upstream_factory    make(name="upN", idle_close_ms=None) -> started Upstream; all stopped
                      at teardown
  refused_port        a RefusedPort: .port/.addr where connects are refused
  gateway_factory     make(upstreams=[...], routes=[...], limits={...}, workers=2, name=...,
                      env={...}, **top_level_settings) -> started Gateway (gwtest.py); or
                      make(settings=fn(port, admin_port) -> dict)
  gateway             gateway_factory with upstream "app" = [upstream] and one route
                      "default" (host "*", prefix "/", every method)
  gateway_bin         path of the binary, for tests that run it by hand (CLI tests)
  redis_server        a private redis-server on 127.0.0.1 (.port, .addr, .command(*args));
                      for the cache tests

A gateway is started with `-c FILE` and is ready once its data port accepts and GET /healthz
on its admin port answers 200 (10 s at most; otherwise the test fails with its stderr).
It is stopped with SIGTERM right after the test body, inside the test's call phase, so a
gateway that died of a signal or printed a sanitizer report fails that very test. A missing
binary or a failed start is reported as a test failure too (GW_SKIP_NO_BIN=1: skip instead).
"""

import os
import shutil
import socket
import subprocess
import time

import pytest

from gwtest import Gateway, GatewayCrashed, GatewayError, GatewayMissing, gateway_bin as _bin, \
    gateway_settings, route_block, upstream_block
from upstream import RefusedPort, Upstream, free_port

_GATEWAYS = "_gw_gateways"


def _missing_binary():
    path = _bin()
    if path.exists():
        return None
    msg = ("gateway binary not found at %s (build it, or point GATEWAY_BIN at it; "
           "GW_SKIP_NO_BIN=1 turns this into a skip)" % path)
    if os.environ.get("GW_SKIP_NO_BIN") == "1":
        pytest.skip(msg)
    return msg


@pytest.fixture
def gateway_bin():
    msg = _missing_binary()
    if msg:
        raise GatewayMissing(msg)
    return str(_bin())


@pytest.fixture
def upstream():
    up = Upstream("app").start()
    yield up
    up.stop()


@pytest.fixture
def upstream_factory():
    made = []

    def make(name=None, idle_close_ms=None, tls=None):
        up = Upstream(name or "up%d" % (len(made) + 1), idle_close_ms=idle_close_ms,
                      tls=tls).start()
        made.append(up)
        return up

    yield make
    for up in made:
        up.stop()


@pytest.fixture
def refused_port():
    rp = RefusedPort()
    yield rp
    rp.close()


class RedisServer:
    """A redis-server process of our own; command() speaks RESP over a fresh connection."""

    def __init__(self, workdir, port=None, extra=()):
        self.port = port or free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.workdir = workdir
        self.extra = list(extra)
        self.password = None
        if "--requirepass" in self.extra:
            self.password = self.extra[self.extra.index("--requirepass") + 1]
        self.log_path = workdir / ("redis-%d.log" % self.port)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(workdir)] + self.extra,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start: %s" % self.log_path.read_text())
            time.sleep(0.05)

    def command(self, *args, timeout=5, raw=False, db=0):
        """Sends one command (after AUTH when the server has a password); returns str / int /
        None / list (errors raise RuntimeError); raw: bulk strings as bytes."""
        def encode(cmd):
            return b"*%d\r\n" % len(cmd) + b"".join(
                b"$%d\r\n%s\r\n" % (len(a), a) for a in
                (x if isinstance(x, bytes) else str(x).encode() for x in cmd))

        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            f = s.makefile("rb")
            if self.password is not None:
                s.sendall(encode(("AUTH", self.password)))
                _resp(f)
            if db:
                s.sendall(encode(("SELECT", db)))
                _resp(f)
            s.sendall(encode(args))
            return _resp(f, raw)

    def restart(self):
        """Stops the server and starts a new one on the same port (empty)."""
        self.stop()
        self.__init__(self.workdir, port=self.port, extra=self.extra)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _resp(f, raw=False):
    line = f.readline()
    if not line:
        raise OSError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data if raw else data.decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp(f, raw) for _ in range(n)]
    raise OSError("bad RESP reply %r" % line)


@pytest.fixture
def redis_server(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed")
    r = RedisServer(tmp_path)
    yield r
    r.stop()


@pytest.fixture
def gateway_factory(request, tmp_path):
    started = getattr(request.node, _GATEWAYS, None)
    if started is None:
        started = []
        setattr(request.node, _GATEWAYS, started)

    def make(upstreams=None, routes=None, limits=None, settings=None, name=None,
             preexec_fn=None, env=None, **top):
        msg = _missing_binary()
        if msg:
            raise GatewayMissing(msg)
        if settings is None:
            if upstreams is None:
                raise ValueError("gateway_factory needs upstreams= or settings=")
            if routes is None:
                routes = [route_block("default", upstreams[0]["name"])]

            def settings(port, admin_port):
                return gateway_settings(port, admin_port, upstreams, routes, limits, **top)

        gw = Gateway(tmp_path, settings, name=name or "gw%d" % (len(started) + 1))
        gw.preexec_fn = preexec_fn
        gw.env_extra = env
        started.append(gw)
        return gw.start()

    yield make
    # Normally already stopped at the end of the call phase (pytest_pyfunc_call below).
    problems = []
    for gw in started:
        try:
            gw.stop()
        except GatewayCrashed as e:
            problems.append(str(e))
    if problems:
        raise GatewayCrashed("\n\n".join(problems))


@pytest.fixture
def gateway(gateway_factory, upstream):
    return gateway_factory(upstreams=[upstream_block("app", upstream.addr)],
                           routes=[route_block("default", "app")])


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Runs the test, then stops its gateways while still in the call phase, so that a crash
    or sanitizer report during the test fails the test itself."""
    testargs = {a: pyfuncitem.funcargs[a] for a in pyfuncitem._fixtureinfo.argnames}
    failure = None
    try:
        pyfuncitem.obj(**testargs)
    except BaseException as e:  # noqa: B902 - re-raised below
        failure = e
    crashes = []
    for gw in getattr(pyfuncitem, _GATEWAYS, []):
        try:
            gw.stop()
        except GatewayCrashed as e:
            crashes.append(str(e))
    if crashes:
        raise GatewayCrashed("\n\n".join(crashes)) from failure
    if failure is not None:
        raise failure
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when in ("setup", "teardown") and call.excinfo is not None \
            and call.excinfo.errisinstance(GatewayError):
        rep.gateway_failure = True


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(report, config):
    """A missing binary, a failed start or a crash found at teardown counts as a failed
    test, not as an error of the test harness."""
    if getattr(report, "gateway_failure", False) and report.failed:
        return "failed", "F", "FAILED"
    return None
