"""Raw HTTP/1.1 over plain sockets, for tests that need exact bytes on the wire.

SockReader is a buffered reader with deadlines, shared by the test client (RawConn) and the
upstream server (upstream.py). RawConn sends arbitrary bytes and reads responses honouring
HEAD / 1xx / 204 / 304, Content-Length, chunked (with trailers) and read-until-close; a
response cut short by the peer comes back with complete=False instead of raising, so tests
can assert "truncated, not hung". Every read has a deadline: nothing here waits forever.
"""

import hashlib
import socket
import ssl
import time

CRLF = b"\r\n"


class ReadTimeout(Exception):
    """A read did not complete before its deadline."""


class PeerClosed(Exception):
    """The peer closed (FIN or RST) before the expected bytes arrived."""


def is_tls_cut(e):
    """Whether ssl.SSLError e says the TCP stream ended without the peer's close_notify
    (OpenSSL 3 names it UNEXPECTED_EOF_WHILE_READING once data has passed, and Python
    raises SSLEOFError before that)."""
    return isinstance(e, ssl.SSLEOFError) or e.reason == "UNEXPECTED_EOF_WHILE_READING"


class SockReader:
    """Buffered reads from a connected socket, each bounded by a deadline."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False
        self.reset = False  # the peer reset the connection
        # over TLS (a socket wrapped with suppress_ragged_eofs=False): the stream ended
        # without the peer's close_notify
        self.cut = False

    def _fill(self, deadline, max_bytes=262144):
        """Reads more bytes into buf. Returns False on EOF/RST, raises ReadTimeout."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ReadTimeout("deadline passed")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(max_bytes)
        except socket.timeout:
            raise ReadTimeout("timed out waiting for data") from None
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            self.eof = True
            self.reset = True
            return False
        except ssl.SSLError as e:
            if not is_tls_cut(e):
                raise
            self.eof = True
            self.cut = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_until(self, marker, deadline, limit=1 << 20):
        """Returns bytes up to and including marker, or None on EOF before it."""
        start = 0
        while True:
            i = self.buf.find(marker, start)
            if i >= 0:
                out = bytes(self.buf[: i + len(marker)])
                del self.buf[: i + len(marker)]
                return out
            start = max(0, len(self.buf) - len(marker) + 1)
            if len(self.buf) > limit:
                raise ValueError("no %r within %d bytes" % (marker, limit))
            if not self._fill(deadline):
                return None

    def read_line(self, deadline):
        """One line ending in LF (CRLF kept), or None on EOF before it."""
        return self.read_until(b"\n", deadline)

    def read_head(self, deadline, limit=1 << 20):
        """A header block up to the empty line (accepting CRLF or bare LF), or None on EOF.

        Returns None also when EOF comes after a partial head; the partial bytes stay in buf.
        """
        while True:
            i = self.buf.find(b"\r\n\r\n")
            j = self.buf.find(b"\n\n")
            ends = [k + 4 for k in [i] if k >= 0] + [k + 2 for k in [j] if k >= 0]
            if ends:
                end = min(ends)
                out = bytes(self.buf[:end])
                del self.buf[:end]
                return out
            if len(self.buf) > limit:
                raise ValueError("head longer than %d bytes" % limit)
            if not self._fill(deadline):
                return None

    def read_exact(self, n, deadline, sink=None):
        """Reads n bytes. Returns them (or feeds them to sink and returns b"").

        Raises PeerClosed with .got = bytes received so far on EOF.
        """
        got = 0
        parts = []
        while got < n:
            if not self.buf and not self._fill(deadline, min(262144, max(n - got, 4096))):
                e = PeerClosed("EOF after %d of %d bytes" % (got, n))
                e.got = got
                e.data = b"".join(parts)
                raise e
            take = min(len(self.buf), n - got)
            piece = bytes(self.buf[:take])
            del self.buf[:take]
            got += take
            if sink is not None:
                sink(piece)
            else:
                parts.append(piece)
        return b"".join(parts)

    def read_to_eof(self, deadline, sink=None):
        """Everything until the peer closes. Raises ReadTimeout if it never does."""
        parts = []
        while True:
            if self.buf:
                piece = bytes(self.buf)
                self.buf.clear()
                if sink is not None:
                    sink(piece)
                else:
                    parts.append(piece)
            if not self._fill(deadline):
                return b"".join(parts)


def parse_header_lines(lines):
    """[(name, value)] from raw header lines (bytes, without line ends)."""
    out = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ValueError("header line without colon: %r" % line)
        out.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return out


def split_head(head):
    """(start_line, [(name, value)]) from a head block."""
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    while lines and lines[-1] == b"":
        lines.pop()
    return lines[0].decode("latin-1"), parse_header_lines(lines[1:])


def header_values(headers, name):
    name = name.lower()
    return [v for n, v in headers if n.lower() == name]


def connection_tokens(headers):
    toks = set()
    for v in header_values(headers, "connection"):
        toks.update(t.strip().lower() for t in v.split(",") if t.strip())
    return toks


def read_chunked(reader, deadline, sink):
    """Decodes a chunked body into sink. Returns (trailers, complete)."""
    while True:
        line = reader.read_line(deadline)
        if line is None:
            return [], False
        size_text = line.split(b";", 1)[0].strip()
        size = int(size_text, 16)  # ValueError on a bad size: the caller decides
        if size == 0:
            trailers = []
            while True:
                t = reader.read_line(deadline)
                if t is None:
                    return trailers, False
                t = t.rstrip(b"\r\n")
                if not t:
                    return trailers, True
                trailers.extend(parse_header_lines([t]))
        try:
            reader.read_exact(size, deadline, sink)
        except PeerClosed:
            return [], False
        end = reader.read_line(deadline)
        if end is None:
            return [], False
        if end not in (b"\r\n", b"\n"):
            raise ValueError("chunk not followed by CRLF: %r" % end[:20])


class Response:
    """A response as read off the wire."""

    def __init__(self, version, status, reason, headers, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.raw_head = raw_head
        self.body = b""
        self.trailers = []
        self.complete = True  # framing satisfied (False: peer closed early)
        self.framing = "none"  # none | length | chunked | close
        self.interim = []  # 1xx responses seen before this one

    def header(self, name, default=None):
        vals = header_values(self.headers, name)
        return vals[0] if vals else default

    def headers_all(self, name):
        return header_values(self.headers, name)

    @property
    def connection_tokens(self):
        return connection_tokens(self.headers)

    def __repr__(self):
        return "<Response %d %s, %d body bytes%s>" % (
            self.status, self.reason, len(self.body), "" if self.complete else ", truncated")


class RawConn:
    """One client TCP connection speaking raw bytes (over TLS with an ssl context)."""

    def __init__(self, host, port, timeout=10.0, tls=None, server_hostname=None):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=server_hostname or host)
        self.reader = SockReader(self.sock)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def local_port(self):
        return self.sock.getsockname()[1]

    def send(self, data):
        """Sends all bytes; returns False if the peer already closed/reset."""
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.settimeout(self.timeout)
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def _deadline(self, timeout):
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def read_head(self, timeout=None):
        """Reads one response head (may be a 1xx). Returns Response without body, or None on EOF."""
        head = self.reader.read_head(self._deadline(timeout))
        if head is None:
            return None
        start, headers = split_head(head)
        parts = start.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ValueError("not an HTTP status line: %r" % start)
        return Response(parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "", headers, head)

    def read_response(self, method="GET", timeout=None, sink=None):
        """Reads the next final response (skipping and keeping 1xx in .interim).

        Returns None when the connection closed before any status line arrived.
        A 101 is returned as final: the bytes after it belong to the tunnel.
        """
        deadline = self._deadline(timeout)
        interim = []
        while True:
            resp = self.read_head(max(0.001, deadline - time.monotonic()))
            if resp is None:
                return None
            if 100 <= resp.status < 200 and resp.status != 101:
                interim.append(resp)
                continue
            break
        resp.interim = interim
        self._read_body(resp, method, deadline, sink)
        return resp

    def _read_body(self, resp, method, deadline, sink):
        parts = []
        hasher = hashlib.sha256()
        count = [0]

        def collect(piece):
            count[0] += len(piece)
            hasher.update(piece)
            if sink is not None:
                sink(piece)
            else:
                parts.append(piece)

        te = ",".join(resp.headers_all("transfer-encoding")).lower()
        cl = resp.headers_all("content-length")
        if method == "HEAD" or resp.status in (101, 204, 304) or 100 <= resp.status < 200:
            resp.framing = "none"
        elif te:
            resp.framing = "chunked"
            if te.split(",")[-1].strip() != "chunked":
                raise ValueError("response Transfer-Encoding not ending in chunked: %r" % te)
            resp.trailers, resp.complete = read_chunked(self.reader, deadline, collect)
        elif cl:
            resp.framing = "length"
            n = int(cl[0])
            try:
                self.reader.read_exact(n, deadline, collect)
            except PeerClosed:
                resp.complete = False
        else:
            resp.framing = "close"
            self.reader.read_to_eof(deadline, collect)
        resp.body = b"".join(parts)
        resp.body_len = count[0]
        resp.body_sha256 = hasher.hexdigest()

    def recv_some(self, timeout=None):
        """Returns whatever bytes are buffered or arrive next; b"" on EOF."""
        if self.reader.buf:
            out = bytes(self.reader.buf)
            self.reader.buf.clear()
            return out
        if not self.reader._fill(self._deadline(timeout)):
            return b""
        out = bytes(self.reader.buf)
        self.reader.buf.clear()
        return out

    def recv_exact(self, n, timeout=None):
        return self.reader.read_exact(n, self._deadline(timeout))

    def wait_closed(self, timeout=5.0):
        """True if the peer closes (FIN or RST) within timeout; extra bytes are discarded."""
        deadline = time.monotonic() + timeout
        try:
            while self.reader._fill(deadline):
                self.reader.buf.clear()
            return True
        except ReadTimeout:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def request_bytes(method, path, headers=(), body=b"", version="HTTP/1.1", host="gw.test"):
    """A request head (+ body) as bytes. Adds Host (if host) and Content-Length for bodies
    unless the caller's headers already frame it."""
    names = {n.lower() for n, _ in headers}
    lines = ["%s %s %s" % (method, path, version)]
    if host is not None and "host" not in names:
        lines.append("Host: %s" % host)
    for n, v in headers:
        lines.append("%s: %s" % (n, v))
    if body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked_body(data, sizes=(1, 10, 100, 1000, 4093, 65536, 7), trailers=()):
    """Encodes data as chunked with cycling chunk sizes and optional trailers."""
    out = bytearray()
    i = 0
    k = 0
    while i < len(data):
        n = min(sizes[k % len(sizes)], len(data) - i)
        out += b"%x\r\n" % n + data[i:i + n] + CRLF
        i += n
        k += 1
    out += b"0\r\n"
    for n, v in trailers:
        out += ("%s: %s\r\n" % (n, v)).encode("latin-1")
    out += CRLF
    return bytes(out)
