"""Servers on loopback for the remote-input tests: a folder over HTTP with range requests, and a
proxy that puts faults (503 answers, delays) in front of any HTTP server (that one, or moto's S3).
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and ranges, as GDAL's curl expects

    def log_message(self, *args):
        pass  # quiet tests


def _serve(handler) -> tuple[_Server, str]:
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class FileServer:
    """A folder over HTTP/1.1 with HEAD, single byte ranges, ETag and Last-Modified. Paths listed in
    ``forbidden`` answer 403. With ``credentials`` (user, password), a request without them in
    HTTP Basic authentication answers 401."""

    def __init__(self, root: str, credentials: tuple[str, str] | None = None):
        self.root = root
        expected = "Basic " + base64.b64encode(":".join(credentials).encode()).decode() if credentials else None
        self.forbidden: set[str] = set()
        self.requests: list[tuple[str, str, str]] = []  # (method, path, range)
        owner = self

        class Handler(_Handler):
            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body: bool):
                owner.requests.append((self.command, self.path, self.headers.get("Range", "")))
                name = self.path.split("?")[0].lstrip("/")
                path = os.path.join(owner.root, name)
                if name in owner.forbidden:
                    return self.empty(403)
                if expected and self.headers.get("Authorization") != expected:
                    return self.empty(401)
                if not os.path.isfile(path):
                    return self.empty(404)
                st = os.stat(path)
                size = st.st_size
                start, end, status = 0, size - 1, 200
                m = _RANGE.match(self.headers.get("Range", ""))
                if m:
                    start = int(m.group(1))
                    end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
                    status = 206
                    if start >= size:
                        return self.empty(416)
                self.send_response(status)
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", f'"{st.st_size:x}-{st.st_mtime_ns:x}"')
                self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                if body:
                    with open(path, "rb") as f:
                        f.seek(start)
                        self.wfile.write(f.read(end - start + 1))

            def empty(self, status):
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server, self.url = _serve(Handler)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class FaultyProxy:
    """Forwards every request to ``upstream`` (host:port), except that every ``fail_every``-th
    request is answered 503 and every ``delay_every``-th is held ``delay`` seconds first. Counts
    what it did."""

    def __init__(self, upstream: str, fail_every: int = 4, delay_every: int = 5, delay: float = 0.3):
        self.upstream = upstream
        self.fail_every, self.delay_every, self.delay = fail_every, delay_every, delay
        self.count = self.failed = self.delayed = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(_Handler):
            def do_GET(self):
                self.forward()

            def do_HEAD(self):
                self.forward()

            def do_PUT(self):
                self.forward()

            def do_POST(self):
                self.forward()

            def forward(self):
                with owner.lock:
                    owner.count += 1
                    n = owner.count
                    fail = owner.fail_every and n % owner.fail_every == 0
                    hold = owner.delay_every and n % owner.delay_every == 0
                    owner.failed += bool(fail)
                    owner.delayed += bool(hold)
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else None
                if hold:
                    threading.Event().wait(owner.delay)
                if fail:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection(owner.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                conn.request(self.command, self.path, body=data, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                        self.send_header(k, v)
                # A HEAD answer has no body but tells the size of the GET's.
                size = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", size or str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                conn.close()

        self.server, self.url = _serve(Handler)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
