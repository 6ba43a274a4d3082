#!/usr/bin/env python3
"""A small demo backend for scripts/run.sh: answers every request with 200.

The body is one JSON line naming the method, the path and how many body
bytes arrived, so a request through the gateway shows where it went:

    $ curl http://127.0.0.1:8080/hello
    {"upstream": "demo", "method": "GET", "path": "/hello", "body_bytes": 0}

Paths under /static/ are marked cacheable (Cache-Control: max-age=60), so the
default config's cache answers their repeats (X-Cache: HIT); the rest are not.

HTTP/1.1 with keep-alive, one thread per connection, standard library only.
Not a test fixture (test/integration/upstream.py is); not for production.

    demo_upstream.py [--host 127.0.0.1] [--port 9000] [--verbose]
                     [--exit-with-parent]
"""

import argparse
import http.server
import json
import os
import signal
import sys
import threading
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client says close
    server_version = "demo-upstream"
    sys_version = ""

    def version_string(self):
        return self.server_version
    verbose = False

    def _read_body(self):
        """Read the whole request body, so the next request on a kept-alive
        connection starts at the right byte; returns its length."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            n = 0
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return n
                n += len(self.rfile.read(size))
                self.rfile.readline(3)  # CRLF after the chunk
        length = int(self.headers.get("Content-Length") or 0)
        left = length
        while left > 0:
            got = self.rfile.read(min(left, 65536))
            if not got:
                break
            left -= len(got)
        return length - left

    def _answer(self):
        try:
            nbody = self._read_body()
        except ValueError:
            self.send_error(400, "bad body framing")
            return
        body = (json.dumps({"upstream": "demo", "method": self.command,
                            "path": self.path, "body_bytes": nbody}) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.path.startswith("/static/"):
            self.send_header("Cache-Control", "max-age=60")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _answer

    def log_message(self, fmt, *args):
        if self.verbose:
            sys.stderr.write("demo-upstream: %s %s\n" % (self.address_string(), fmt % args))


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def watch_parent(server):
    """Stop when the process that started us is gone (run.sh killed with -9)."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1)
    server.shutdown()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    ap.add_argument("--exit-with-parent", action="store_true",
                    help="exit when the parent process exits")
    args = ap.parse_args()

    Handler.verbose = args.verbose
    try:
        server = Server((args.host, args.port), Handler)
    except OSError as e:
        sys.exit("demo-upstream: cannot listen on %s:%d: %s" % (args.host, args.port, e.strerror))

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    # SIGINT keeps its inherited disposition: run.sh starts us in the
    # background, where the shell ignores it, so a Ctrl-C meant for the
    # gateway leaves us serving its in-flight requests while it drains.
    signal.signal(signal.SIGTERM, stop)
    if args.exit_with_parent:
        threading.Thread(target=watch_parent, args=(server,), daemon=True).start()
    print("demo-upstream: listening on http://%s:%d/" % (args.host, args.port), file=sys.stderr,
          flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    server.server_close()


if __name__ == "__main__":
    main()
