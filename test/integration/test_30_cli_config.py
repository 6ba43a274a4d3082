"""The command line and config validation: -V, -t, "FILE:LINE: reason" errors with the right
line, and clear start-up failures (port in use, missing file)."""

import re
import signal
import socket
import subprocess

import pytest

from gwtest import gateway_env, gateway_settings, render_config, route_block, \
    sanitizer_report, upstream_block
from upstream import free_port

ERR_LINE = re.compile(r"^.*bad\.conf:(\d+): \S", re.M)


def run_cli(binary, *args, timeout=10):
    """Runs the binary to completion (bounded); fails on a signal death or sanitizer report."""
    try:
        p = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout,
                           env=gateway_env(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("gateway %s did not exit within %d s" % (" ".join(args), timeout))
    assert p.returncode >= 0, "gateway %s died of signal %d; stderr:\n%s" % (
        " ".join(args), -p.returncode, p.stderr)
    san = sanitizer_report(p.stderr)
    assert not san, "sanitizer report: %s\n%s" % (san, p.stderr)
    return p


def base_lines(upstream_port=None):
    """A valid config, one top-level setting per line (line N = index N-1)."""
    s = gateway_settings(free_port(), free_port(),
                         [upstream_block("app", "127.0.0.1:%d" % (upstream_port or free_port()))],
                         [route_block("default", "app", methods=["GET", "POST"])])
    return render_config(s).splitlines()


def line_of(lines, key):
    for i, line in enumerate(lines):
        if line.startswith(key + " "):
            return i
    raise KeyError(key)


GOOD_CONF = """\
# A hand-written config, formatted the way an operator would.
workers = 2;
access_log = true;
drain_timeout_ms = 2000;

listen = ( { address = "127.0.0.1:%(port)d"; } );
admin = { address = "127.0.0.1:%(admin)d"; };

limits = {
    max_header_bytes = 16384;
    max_body_bytes = 10485760;
    header_timeout_ms = 10000;
    idle_timeout_ms = 60000;
    max_connections = 10000;
};

upstreams = (
    {
        name = "app";
        servers = ( "127.0.0.1:%(up1)d", "127.0.0.1:%(up2)d" );
        balance = "round_robin";
        keepalive = 32;
        connect_timeout_ms = 1000;
    },
    {
        name = "api";
        servers = ( "127.0.0.1:%(up1)d" );
        balance = "least_conn";   // the other policy
        keepalive = 8;
        connect_timeout_ms = 500;
    }
);

routes = (
    { name = "health"; host = "*"; path = "/exact"; upstream = "api"; timeout_ms = 1000; },
    { name = "api"; host = "*.example.com"; path_prefix = "/api/"; methods = [ "GET", "POST" ];
      upstream = "api"; timeout_ms = 5000; },
    { name = "default"; host = "*"; path_prefix = "/"; upstream = "app"; timeout_ms = 30000; }
);
"""


def good_conf(tmp_path):
    p = tmp_path / "good.conf"
    p.write_text(GOOD_CONF % {"port": free_port(), "admin": free_port(), "up1": free_port(),
                              "up2": free_port()})
    return p


def test_version(gateway_bin):
    """`gateway -V` prints "gateway <version>" and exits 0."""
    p = run_cli(gateway_bin, "-V")
    assert p.returncode == 0
    assert re.match(r"^gateway \d+\.\d+\S*\s*$", p.stdout), repr(p.stdout)


def test_check_good_config(gateway_bin, tmp_path):
    """`gateway -t -c good.conf` accepts a full hand-written config and exits 0."""
    p = run_cli(gateway_bin, "-t", "-c", str(good_conf(tmp_path)))
    assert p.returncode == 0, p.stderr


def test_check_rendered_config(gateway_bin, tmp_path):
    """The config the fixtures generate passes -t too."""
    p = tmp_path / "good.conf"
    p.write_text("\n".join(base_lines()) + "\n")
    r = run_cli(gateway_bin, "-t", "-c", str(p))
    assert r.returncode == 0, r.stderr


def _sub(key, old, new):
    """Edits the line of top-level setting `key` (regex old -> new); returns its number."""
    def edit(lines):
        i = line_of(lines, key)
        assert re.search(old, lines[i]), (old, lines[i])
        lines[i] = re.sub(old, new, lines[i], count=1)
        return i + 1
    return edit


def _insert_after(key, text):
    def edit(lines):
        i = line_of(lines, key)
        lines.insert(i + 1, text)
        return i + 2
    return edit


BAD = {
    "unknown_top_level_key": _insert_after("access_log", "bogus_key = 1;"),
    "unknown_key_in_limits": _sub("limits", "max_connections", "frobnicate = 3; max_connections"),
    "unknown_key_in_route": _sub("routes", "timeout_ms", 'colour = "red"; timeout_ms'),
    "route_names_missing_upstream": _sub("routes", 'upstream = "app"', 'upstream = "nope"'),
    "bad_listen_port": _sub("listen", r'127\.0\.0\.1:\d+', '127.0.0.1:99999'),
    "listen_not_ip_literal": _sub("listen", r'"127\.0\.0\.1:', '"localhost:'),
    "bad_admin_address": _sub("admin", r'127\.0\.0\.1:', '300.1.2.3:'),
    "upstream_server_without_port": _sub("upstreams", r'"127\.0\.0\.1:\d+"', '"127.0.0.1"'),
    "negative_workers": _sub("workers", "workers = 2", "workers = -1"),
    "negative_keepalive": _sub("upstreams", "keepalive = 32", "keepalive = -3"),
    "negative_header_timeout": _sub("limits", "header_timeout_ms = 10000",
                                    "header_timeout_ms = -1"),
    "unknown_balance": _sub("upstreams", 'round_robin', 'random'),
    "wrong_type": _sub("access_log", "true", '"yes"'),
    "syntax_error": _sub("drain_timeout_ms", "= 1000", "= = 1000"),
}


def _write_bad(tmp_path, case):
    lines = base_lines()
    want = BAD[case](lines)
    p = tmp_path / "bad.conf"
    p.write_text("\n".join(lines) + "\n")
    return p, want


@pytest.mark.parametrize("case", sorted(BAD))
def test_check_bad_config(gateway_bin, tmp_path, case):
    """`gateway -t` on a bad config exits 1 with "bad.conf:LINE: reason" naming the line."""
    p, want = _write_bad(tmp_path, case)
    r = run_cli(gateway_bin, "-t", "-c", str(p))
    assert r.returncode == 1, "exit %d for %s; stderr: %r" % (r.returncode, case, r.stderr)
    m = ERR_LINE.search(r.stderr)
    assert m, "no 'bad.conf:LINE: reason' line on stderr: %r" % r.stderr
    assert int(m.group(1)) == want, "line %s, expected %d: %r\n%s" % (
        m.group(1), want, r.stderr, p.read_text())


def test_start_with_bad_config_fails(gateway_bin, tmp_path):
    """Starting (not -t) with a bad config exits non-zero with the same FILE:LINE error."""
    p, want = _write_bad(tmp_path, "route_names_missing_upstream")
    r = run_cli(gateway_bin, "-c", str(p))
    assert r.returncode != 0
    m = ERR_LINE.search(r.stderr)
    assert m and int(m.group(1)) == want, r.stderr


@pytest.mark.parametrize("which", ["listen", "admin"])
def test_port_in_use(gateway_bin, tmp_path, which):
    """A listen (or admin) address already in use: non-zero exit and a clear stderr line
    naming the address."""
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(8)
    busy = blocker.getsockname()[1]
    try:
        port, admin = (busy, free_port()) if which == "listen" else (free_port(), busy)
        s = gateway_settings(port, admin, [upstream_block("app", "127.0.0.1:%d" % free_port())],
                             [route_block("default", "app")])
        conf = tmp_path / "busy.conf"
        conf.write_text(render_config(s))
        proc = subprocess.Popen([gateway_bin, "-c", str(conf)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=gateway_env(),
                                stdin=subprocess.DEVNULL)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            pytest.fail("gateway kept running although 127.0.0.1:%d was in use" % busy)
    finally:
        blocker.close()
    assert proc.returncode > 0, "exit %d; stderr: %r" % (proc.returncode, err)
    assert not sanitizer_report(err), err
    addr = "127.0.0.1:%d" % busy
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert any(addr in ln for ln in lines), "no stderr line names %s: %r" % (addr, err)
    assert len(lines) <= 5, "expected one clear line, got:\n%s" % err


@pytest.mark.parametrize("check_only", [False, True], ids=["run", "check"])
def test_missing_config_file(gateway_bin, tmp_path, check_only):
    """A config path that does not exist: non-zero exit and a message naming the file."""
    missing = tmp_path / "does-not-exist.conf"
    args = (["-t"] if check_only else []) + ["-c", str(missing)]
    r = run_cli(gateway_bin, *args)
    assert r.returncode != 0
    assert "does-not-exist.conf" in r.stderr, r.stderr
