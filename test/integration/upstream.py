"""A real, threaded HTTP/1.1 upstream for the integration tests.

Raw sockets and one thread per connection (not http.server), so it can misbehave precisely:
reset, close mid-body, send garbage, stall, close idle keep-alive connections. It counts the
connections it accepts and records every request it reads (method, target, headers in order,
body length and sha256), so tests can assert what the gateway actually forwarded.

Behaviour is chosen by path (the query string is ignored unless noted):

  /ok                 200 "ok"
  /echo[/...]         200, JSON: method, path, headers, body_length, body_sha256, conn_id,
                      upstream; also sets X-Echo and two Set-Cookie headers
  /size/N             N bytes of pattern(N), Content-Length
  /chunked/N          pattern(N) chunked in cycling sizes, trailer X-Checksum (sha256);
                      ?drip=1 writes every piece separately (TCP_NODELAY, 1 ms apart)
  /slow/MS            sleep MS, then 200 "slow"
  /slowbody/MS        head (Content-Length 4) at once, body "slow" after MS
  /status/CODE        that status, body "status CODE\\n" (none for 204/304)
  /reset              read the request, then close with RST (SO_LINGER 0), no response
  /close-mid-body     head with Content-Length 100000, 10 bytes, then close
  /garbage            non-HTTP bytes, then close
  /until-close/N      pattern(N) with neither Content-Length nor chunked, then close
  /upload             200, JSON: length, sha256, chunked (body read by CL or chunked)
  /nocontent          204
  /notmod             304 with ETag (?cl=N adds "Content-Length: N", still no body)
  /head-test          Content-Length 1234; the body (pattern(1234)) only for GET
  /hop                200 with hop-by-hop response headers (Connection: X-Hop, X-Hop,
                      Keep-Alive, Proxy-Authenticate) and an end-to-end X-End
  /ws                 needs Upgrade: websocket; 101, then echoes raw bytes until close
  /close-after        200 "ok" with keep-alive headers, then closes the connection at once
  /cache/NAME         for the cache tests: body "NAME N" where N counts the requests for NAME
                      (so a test tells a stored answer from a fresh one); ?h=Field:Value (URL-
                      encoded, repeatable) adds response fields, ?status=S sets the status,
                      ?size=N pads the body to N bytes, ?chunked=1 sends it chunked (1000-byte chunks and a trailer),
                      ?delay=MS waits before answering
  anything else       404 "no such upstream path"

Failing on command (whatever the path): `up.fail("503"|"reset"|"hang", n=None)` makes the
next n requests (all, when n is None) answer 503, reset the connection after reading the
request, or hang without answering (until stop()); `up.fail(None)` heals it.

Every real response carries "X-Upstream: <name>". Expect: 100-continue is answered with
"100 Continue" before the body is read. With idle_close_ms set, a connection that has no
new request within that time after the previous response (or accept) is closed.

With tls (a server-side ssl.SSLContext) every connection is TLS: the handshake runs in the
connection's thread, the SNI names clients sent are in sni_seen, failed handshakes are
counted in tls_failures and tls_resumed says, for each finished one, whether it resumed a
session. tls_ends says, for each TLS connection the client ended, whether it ended with its
close_notify ("close_notify"), with a bare FIN ("cut") or a reset ("reset").
"""

import base64
import hashlib
import json
import socket
import ssl
import struct
import threading
import time

from rawhttp import PeerClosed, ReadTimeout, SockReader, connection_tokens, header_values, \
    is_tls_cut, parse_header_lines, read_chunked

_BLOCK = bytes((i * 7 + 3) & 0xFF for i in range(4093))  # prime length: offsets show


def pattern(n):
    """n deterministic bytes; the same function checks what clients receive."""
    reps = n // len(_BLOCK) + 1
    return (_BLOCK * reps)[:n]


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (bind 0, read, close)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


class RefusedPort:
    """A port where nothing listens: a socket bound but never listening holds it, so a
    connect gets RST (ECONNREFUSED) and nobody else can take the port meanwhile."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port

    def close(self):
        self.sock.close()


class Blackhole:
    """A port where connect() hangs: a listener with backlog 0 whose accept queue is
    filled and never drained, so the kernel drops further SYNs."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.fillers = []
        for _ in range(8):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(c)
        time.sleep(0.05)

    def close(self):
        for c in self.fillers:
            c.close()
        self.sock.close()


class Request:
    """One request as the upstream read it."""

    def __init__(self, conn_id, method, target, version, headers):
        self.conn_id = conn_id
        self.method = method
        self.target = target
        self.path = target.split("?", 1)[0]
        self.query = target.split("?", 1)[1] if "?" in target else ""
        self.version = version
        self.headers = headers  # [(name, value)] in received order
        self.body_len = 0
        self.body_sha256 = sha256(b"")
        self.body = b""  # kept only when small
        self.chunked = False
        self.trailers = []
        self.complete = True  # False when the body was cut short

    def header(self, name, default=None):
        vals = header_values(self.headers, name)
        return vals[0] if vals else default

    def headers_all(self, name):
        return header_values(self.headers, name)

    def has_header(self, name):
        return bool(header_values(self.headers, name))

    def qparam(self, key, default=None):
        for kv in self.query.split("&"):
            k, _, v = kv.partition("=")
            if k == key:
                return v
        return default

    def __repr__(self):
        return "<Request %s %s conn=%d body=%d>" % (self.method, self.target, self.conn_id,
                                                     self.body_len)


class _Close(Exception):
    """A handler's way of saying: drop the connection now (already handled)."""


class Upstream:
    """The server. start() binds 127.0.0.1:0; stop() closes everything."""

    KEEP_BODY = 1 << 20

    def __init__(self, name="up", idle_close_ms=None, tls=None):
        self.name = name
        self.idle_close_ms = idle_close_ms
        self.sni_seen = []
        self.tls_failures = 0
        self.tls_resumed = []  # per finished handshake: whether it resumed a session
        # per TLS connection that the client ended: "close_notify", or "cut" (a FIN
        # without it), or "reset"
        self.tls_ends = []
        self.use_tls(tls)
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.accepted = 0
        self.cache_hits = {}
        self.requests = []
        self.active = set()
        self.port = None
        self._lsock = None
        self._stopping = threading.Event()
        self._threads = []
        self._fail_how = None
        self._fail_left = None  # None: every request while _fail_how is set

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def start(self):
        return self.start_on(0)

    def start_on(self, port):
        """Starts listening on 127.0.0.1:port (0: any free port)."""
        self._stopping.clear()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(512)
        s.settimeout(0.1)
        self._lsock = s
        self.port = s.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, name="upstream-accept-%s" % self.name,
                             daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self):
        """Closes the listener and every open connection (idempotent)."""
        self._stopping.set()
        if self._lsock is not None:
            self._lsock.close()
            self._lsock = None
        with self.lock:
            socks = list(self.active)
        for c in socks:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in list(self._threads):
            t.join(timeout=2)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def fail(self, how, n=None):
        """Misbehave on the next n requests (every request when n is None); None heals."""
        assert how in (None, "503", "reset", "hang"), how
        with self.lock:
            self._fail_how = how
            self._fail_left = n

    def _take_failure(self):
        with self.lock:
            how = self._fail_how
            if how is None:
                return None
            if self._fail_left is not None:
                self._fail_left -= 1
                if self._fail_left <= 0:
                    self._fail_how = None
            return how

    # -- what tests look at ------------------------------------------------------------

    def reset_stats(self):
        with self.lock:
            self.accepted = 0
            self.requests = []

    def paths(self):
        with self.lock:
            return [r.path for r in self.requests]

    def wait_requests(self, n, timeout=5.0):
        """Waits until at least n requests were recorded; returns the list."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return list(self.requests)

    def last(self, path=None):
        with self.lock:
            for r in reversed(self.requests):
                if path is None or r.path == path:
                    return r
        return None

    # -- serving -------------------------------------------------------------------------

    def _accept_loop(self):
        ls = self._lsock
        while not self._stopping.is_set():
            try:
                c, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                conn_id = self.accepted
                self.active.add(c)
            t = threading.Thread(target=self._serve, args=(c, conn_id),
                                 name="upstream-%s-%d" % (self.name, conn_id), daemon=True)
            t.start()
            with self.lock:
                self._threads = [x for x in self._threads if x.is_alive()]
                self._threads.append(t)

    def _on_sni(self, sock, name, ctx):
        with self.lock:
            self.sni_seen.append(name)

    def use_tls(self, ctx):
        """Serves new connections with ctx (a new context also forgets every session that the
        old one handed out)."""
        if ctx is not None:
            ctx.sni_callback = self._on_sni
            # a FIN without close_notify is an error, not an end (what tls_ends tells apart;
            # Python ignores it by default)
            ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
        self.tls = ctx

    def _tls_accept(self, c):
        """The server side of the handshake; the TLS socket, or None when it failed."""
        c.settimeout(10)
        raw = c
        try:
            c = self.tls.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False)
        except (ssl.SSLError, OSError):
            with self.lock:
                self.tls_failures += 1
                self.active.discard(raw)
            raw.close()
            return None
        with self.lock:
            self.active.discard(raw)
            self.active.add(c)
            self.tls_resumed.append(c.session_reused)
        return c

    def _serve(self, c, conn_id):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            c = self._tls_accept(c)
            if c is None:
                return
        r = SockReader(c)
        try:
            while not self._stopping.is_set():
                if self.idle_close_ms is not None and not r.buf:
                    wait = self.idle_close_ms / 1000.0
                else:
                    wait = 60.0
                try:
                    # First byte of the next request within the idle window, rest within 30 s.
                    if not r.buf and not r._fill(time.monotonic() + wait):
                        self._peer_end(c, r.reset, r.cut)
                        return
                    head = r.read_head(time.monotonic() + 30)
                except ReadTimeout:
                    return  # idle keep-alive connection: close it
                if head is None:
                    self._peer_end(c, r.reset, r.cut)
                    return
                if not self._one_request(c, r, conn_id, head):
                    return
        except (OSError, _Close, PeerClosed, ReadTimeout, ValueError):
            return
        finally:
            with self.lock:
                self.active.discard(c)
            try:
                c.close()
            except OSError:
                pass

    def _peer_end(self, c, reset=False, cut=False):
        """Notes how the client ended TLS connection c."""
        if isinstance(c, ssl.SSLSocket):
            with self.lock:
                self.tls_ends.append("reset" if reset else "cut" if cut else "close_notify")

    def _one_request(self, c, r, conn_id, head):
        """Reads the body, records, answers. Returns True to keep the connection."""
        lines = head.replace(b"\r\n", b"\n").split(b"\n")
        while lines and lines[-1] == b"":
            lines.pop()
        parts = lines[0].decode("latin-1").split(" ")
        if len(parts) != 3:
            self._send(c, 400, b"bad request line\n", keep=False)
            return False
        method, target, version = parts
        try:
            headers = parse_header_lines(lines[1:])
        except ValueError:
            self._send(c, 400, b"bad header\n", keep=False)
            return False
        req = Request(conn_id, method, target, version, headers)

        if req.header("expect", "").lower() == "100-continue":
            c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

        hasher = hashlib.sha256()
        kept = []
        count = [0]

        def sink(piece):
            count[0] += len(piece)
            hasher.update(piece)
            if count[0] <= self.KEEP_BODY:
                kept.append(piece)

        deadline = time.monotonic() + 60
        te = ",".join(req.headers_all("transfer-encoding")).lower()
        try:
            if te:
                req.chunked = True
                req.trailers, req.complete = read_chunked(r, deadline, sink)
            elif req.headers_all("content-length"):
                try:
                    r.read_exact(int(req.header("content-length")), deadline, sink)
                except PeerClosed:
                    req.complete = False
        except ValueError:
            req.complete = False
        req.body_len = count[0]
        req.body_sha256 = hasher.hexdigest()
        if count[0] <= self.KEEP_BODY:
            req.body = b"".join(kept)
        with self.cond:
            self.requests.append(req)
            self.cond.notify_all()
        if not req.complete:
            return False

        toks = connection_tokens(headers)
        keep = "close" not in toks and (version == "HTTP/1.1" or "keep-alive" in toks)
        how = self._take_failure()
        if how == "503":
            return self._send(c, 503, b"failing on command\n", [("Content-Type", "text/plain")],
                              keep=keep)
        if how == "reset":
            return self._h_reset(c, req, keep, "")
        if how == "hang":
            self._stopping.wait(30)
            raise _Close()
        return self._dispatch(c, req, keep)

    # -- responses -----------------------------------------------------------------------

    def _head(self, status, headers, reason=None):
        reason = reason or _REASONS.get(status, "Whatever")
        out = ["HTTP/1.1 %d %s" % (status, reason), "X-Upstream: %s" % self.name]
        out += ["%s: %s" % (n, v) for n, v in headers]
        return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")

    def _send(self, c, status, body=b"", headers=(), keep=True, with_cl=True):
        h = list(headers)
        if with_cl:
            h.append(("Content-Length", str(len(body))))
        if not keep:
            h.append(("Connection", "close"))
        c.sendall(self._head(status, h) + body)
        return keep

    def _dispatch(self, c, req, keep):
        seg = req.path.split("/")
        first = seg[1] if len(seg) > 1 else ""
        arg = seg[2] if len(seg) > 2 else ""
        fn = getattr(self, "_h_" + first.replace("-", "_"), None)
        if fn is None or not first:
            return self._send(c, 404, b"no such upstream path\n", [("Content-Type", "text/plain")],
                              keep=keep)
        return fn(c, req, keep, arg)

    def _h_cache(self, c, req, keep, arg):
        from urllib.parse import unquote_plus
        with self.lock:
            self.cache_hits[arg] = self.cache_hits.get(arg, 0) + 1
            n = self.cache_hits[arg]
        hdrs = [("Content-Type", "text/plain")]
        status = 200
        size = None
        chunked = False
        for kv in req.query.split("&"):
            k, _, v = kv.partition("=")
            if k == "h":
                name, _, value = unquote_plus(v).partition(":")
                hdrs.append((name.strip(), value.strip()))
            elif k == "status":
                status = int(v)
            elif k == "size":
                size = int(v)
            elif k == "chunked":
                chunked = v == "1"
            elif k == "delay":
                time.sleep(int(v) / 1000.0)
        body = ("%s %d" % (arg, n)).encode()
        if size is not None:
            body = (body + b" " + pattern(size))[:size] if size >= len(body) else body
        if status in (204, 304) or req.method == "HEAD":
            c.sendall(self._head(status, hdrs + ([] if status in (204, 304) else
                                                 [("Content-Length", str(len(body)))])
                                 + ([] if keep else [("Connection", "close")])))
            return keep
        if chunked:
            pieces = [body[i:i + 1000] for i in range(0, len(body), 1000)]
            c.sendall(self._head(status, hdrs + [("Transfer-Encoding", "chunked")]
                                 + ([] if keep else [("Connection", "close")]))
                      + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
                      + b"0\r\nX-Trailer: t\r\n\r\n")
            return keep
        return self._send(c, status, body, hdrs, keep=keep)

    def cache_count(self, name):
        with self.lock:
            return self.cache_hits.get(name, 0)

    def _h_ok(self, c, req, keep, arg):
        return self._send(c, 200, b"ok", [("Content-Type", "text/plain")], keep=keep)

    def _h_echo(self, c, req, keep, arg):
        doc = {
            "method": req.method,
            "path": req.target,
            "version": req.version,
            "headers": [[n, v] for n, v in req.headers],
            "body_length": req.body_len,
            "body_sha256": req.body_sha256,
            "conn_id": req.conn_id,
            "upstream": self.name,
        }
        body = json.dumps(doc).encode()
        hdrs = [("Content-Type", "application/json"), ("X-Echo", "yes"),
                ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/")]
        return self._send(c, 200, body, hdrs, keep=keep)

    def _h_size(self, c, req, keep, arg):
        n = int(arg)
        c.sendall(self._head(200, [("Content-Type", "application/octet-stream"),
                                   ("Content-Length", str(n))]
                             + ([] if keep else [("Connection", "close")])))
        if req.method != "HEAD":
            data = pattern(n)
            view = memoryview(data)
            for i in range(0, n, 1 << 18):
                c.sendall(view[i:i + (1 << 18)])
        return keep

    def _h_chunked(self, c, req, keep, arg):
        n = int(arg)
        data = pattern(n)
        drip = req.qparam("drip") == "1"
        c.sendall(self._head(200, [("Content-Type", "application/octet-stream"),
                                   ("Transfer-Encoding", "chunked"),
                                   ("Trailer", "X-Checksum")]
                             + ([] if keep else [("Connection", "close")])))
        sizes = (1, 10, 100, 1000, 4093, 65536, 7)
        i = k = 0
        pieces = []
        while i < n:
            m = min(sizes[k % len(sizes)], n - i)
            pieces.append(b"%x\r\n" % m)
            pieces.append(data[i:i + m] + b"\r\n")
            i += m
            k += 1
        pieces.append(b"0\r\n")
        pieces.append(b"X-Checksum: " + sha256(data).encode() + b"\r\n\r\n")
        if drip:
            for p in pieces:
                # split even the size lines, so the gateway sees chunk framing across reads
                for j in range(0, len(p), 3 if len(p) < 16 else len(p)):
                    c.sendall(p[j:j + (3 if len(p) < 16 else len(p))])
                    time.sleep(0.001)
        else:
            c.sendall(b"".join(pieces))
        return keep

    def _h_slow(self, c, req, keep, arg):
        self._stopping.wait(int(arg) / 1000.0)
        return self._send(c, 200, b"slow", [("Content-Type", "text/plain")], keep=keep)

    def _h_slowbody(self, c, req, keep, arg):
        c.sendall(self._head(200, [("Content-Length", "4")]))
        self._stopping.wait(int(arg) / 1000.0)
        c.sendall(b"slow")
        return keep

    def _h_status(self, c, req, keep, arg):
        code = int(arg)
        if code in (204, 304):
            return self._send(c, code, b"", keep=keep, with_cl=False)
        return self._send(c, code, b"status %d\n" % code, [("Content-Type", "text/plain")],
                          keep=keep)

    def _h_reset(self, c, req, keep, arg):
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raise _Close()

    def _h_close_mid_body(self, c, req, keep, arg):
        c.sendall(self._head(200, [("Content-Length", "100000")]) + pattern(10))
        raise _Close()

    def _h_garbage(self, c, req, keep, arg):
        c.sendall(b"\x00\xffTHIS IS NOT HTTP AT ALL\x01\x02\r\n\r\n")
        c.shutdown(socket.SHUT_WR)
        time.sleep(0.05)
        raise _Close()

    def _h_until_close(self, c, req, keep, arg):
        n = int(arg)
        c.sendall(self._head(200, [("Content-Type", "application/octet-stream")]))
        c.sendall(pattern(n))
        c.shutdown(socket.SHUT_WR)
        raise _Close()

    def _h_upload(self, c, req, keep, arg):
        body = json.dumps({"length": req.body_len, "sha256": req.body_sha256,
                           "chunked": req.chunked}).encode()
        return self._send(c, 200, body, [("Content-Type", "application/json")], keep=keep)

    def _h_nocontent(self, c, req, keep, arg):
        return self._send(c, 204, b"", keep=keep, with_cl=False)

    def _h_notmod(self, c, req, keep, arg):
        h = [("ETag", '"v1"')]
        cl = req.qparam("cl")
        if cl is not None:
            h.append(("Content-Length", cl))
        return self._send(c, 304, b"", h, keep=keep, with_cl=False)

    def _h_head_test(self, c, req, keep, arg):
        c.sendall(self._head(200, [("Content-Type", "application/octet-stream"),
                                   ("Content-Length", "1234")]))
        if req.method != "HEAD":
            c.sendall(pattern(1234))
        return keep

    def _h_hop(self, c, req, keep, arg):
        h = [("Connection", "keep-alive, X-Hop"), ("X-Hop", "secret"),
             ("Keep-Alive", "timeout=5"), ("Proxy-Authenticate", "Basic realm=x"),
             ("X-End", "kept")]
        c.sendall(self._head(200, h + [("Content-Length", "3")]) + b"hop")
        return keep

    def _h_ws(self, c, req, keep, arg):
        if (req.header("upgrade", "").lower() != "websocket"
                or "upgrade" not in connection_tokens(req.headers)):
            return self._send(c, 400, b"expected an Upgrade: websocket request\n", keep=False)
        h = [("Upgrade", "websocket"), ("Connection", "Upgrade")]
        key = req.header("sec-websocket-key")
        if key:
            acc = base64.b64encode(hashlib.sha1(
                (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            h.append(("Sec-WebSocket-Accept", acc))
        c.sendall(self._head(101, h, reason="Switching Protocols"))
        c.settimeout(30)
        reset = cut = False
        while not self._stopping.is_set():
            try:
                data = c.recv(65536)
            except socket.timeout:
                continue
            except ssl.SSLError as e:
                if not is_tls_cut(e):
                    raise
                cut, data = True, b""
            except (ConnectionResetError, BrokenPipeError):
                reset, data = True, b""
            if not data:
                self._peer_end(c, reset, cut)
                break
            c.sendall(data)
        raise _Close()

    def _h_close_after(self, c, req, keep, arg):
        c.sendall(self._head(200, [("Connection", "keep-alive"), ("Keep-Alive", "timeout=60"),
                                   ("Content-Length", "2")]) + b"ok")
        raise _Close()


_REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No Content",
    301: "Moved Permanently", 304: "Not Modified", 400: "Bad Request", 404: "Not Found",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}
