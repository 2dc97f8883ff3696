"""``onegrid dashboard``: a live page of the run, served on 127.0.0.1.

It only reads the status database (a read-only connection: it never migrates, replays or writes),
and serves three things: the page and its script (static files beside this module), and
``/api/state`` (progress, running jobs, failures, each dataset's tile grid with the state of every
tile, throughput over time) and ``/api/tile`` (one tile's row) as JSON, which the page polls. Every
text in the page is set with ``textContent``, never parsed as HTML, and the Content-Security-Policy
allows no inline script: a dataset name or an error message is shown as text, whatever it holds.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from workflow_lib.domain import TileIndex
from workflow_lib.status.queries import RunRecord
from workflow_lib.status.store import StatusStore, redact
from workflow_lib.views.status import build_report, report_dict

log = logging.getLogger(__name__)

STATIC = os.path.join(os.path.dirname(__file__), "static")
FILES = {"/": ("dashboard.html", "text/html; charset=utf-8"),
         "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
         "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8")}
# One letter per tile in the grids sent to the page: cheap to send for a million tiles.
STATE_LETTERS = {"pending": "p", "running": "r", "done": "d", "failed": "f"}


def tile_grids(store: StatusStore) -> dict[str, dict]:
    """Per dataset, the rectangle of the tile grid that holds its tiles, with one state letter per
    tile in row-major order ('.' where the dataset has no tile), and the running tiles' progress."""
    tiles: dict[str, list] = {}
    for s in store.tile_states():
        try:
            index = TileIndex.parse(s.tile)
        except ValueError:
            continue
        tiles.setdefault(s.dataset, []).append((index.row, index.col, s.tile, s.status, s.progress))
    grids = {}
    for d, rows in tiles.items():
        r0, r1 = min(r for r, *_ in rows), max(r for r, *_ in rows)
        c0, c1 = min(c for _, c, *_ in rows), max(c for _, c, *_ in rows)
        width = c1 - c0 + 1
        cells = bytearray(b"." * ((r1 - r0 + 1) * width))
        running = {}
        for r, c, t, status, progress in rows:
            cells[(r - r0) * width + (c - c0)] = ord(STATE_LETTERS.get(status, "p"))
            if status == "running":
                running[t] = float(progress or 0)
        grids[d] = {"row0": r0, "col0": c0, "rows": r1 - r0 + 1, "cols": width, "states": cells.decode(),
                    "running": running}
    return grids


def throughput(store: StatusStore, run: RunRecord | None, now: float, buckets: int = 60) -> dict:
    """Tiles and estimated work finished per interval of this run, in up to ``buckets`` intervals."""
    if not run or not run.started_at:
        return {"seconds": 0, "tiles": [], "work": []}
    start = run.started_at
    span = max((run.ended_at or now) - start, 1.0)
    step = max(span / buckets, 1.0)
    counts, work = [0] * buckets, [0.0] * buckets
    for bucket, n, w in store.finished_per_interval(run, start, step):
        i = min(max(bucket, 0), buckets - 1)
        counts[i] += n
        work[i] += w
    return {"seconds": step, "tiles": counts, "work": work}


def state(store: StatusStore, controller: dict | None = None, now: float | None = None,
          workdir: str | None = None) -> dict:
    now = now or time.time()
    if store.schema_version() == 0:
        return {"generated_at": now, "database": redact(store.url), "ready": False}
    report = build_report(store, now=now, controller=controller, workdir=workdir)
    run = RunRecord(**report.run) if report.run else None
    return {"generated_at": now, "database": redact(store.url), "ready": True, "report": report_dict(report),
            "grids": tile_grids(store), "throughput": throughput(store, run, now)}


_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]"}
_WILDCARDS = {"", "0.0.0.0", "::"}


def host_allowed(header: str, bound: str) -> bool:
    """Whether a request's Host header names this server: a loopback name, or the host it was
    bound to; any when the user bound it to every interface (and was warned)."""
    if bound in _WILDCARDS:
        return True
    name = header[:header.index("]") + 1] if header.startswith("[") and "]" in header else header.rsplit(":", 1)[0]
    name = name.lower()
    return name in _LOOPBACK_NAMES or name in (bound.lower(), f"[{bound.lower()}]")


def make_server(store: StatusStore, host: str = "127.0.0.1", port: int = 8765,
                refresh_seconds: float = 3.0, controller=None, workdir: str | None = None) -> ThreadingHTTPServer:
    """The dashboard's server (not started). ``controller``: a callable giving the controller's run
    state, or None; ``workdir``: the run's folder, where a finished run's outputs are looked for."""
    lock = threading.Lock()  # one query at a time on the store's one connection

    class Handler(BaseHTTPRequestHandler):
        server_version = "workflow-dashboard"

        def log_message(self, fmt, *args):  # requests go to the log at debug level, not to stderr
            log.debug("%s " + fmt, self.address_string(), *args)

        def do_GET(self):  # noqa: N802 - the name http.server calls
            url = urlparse(self.path)
            if not host_allowed(self.headers.get("Host", ""), host):
                # DNS rebinding: a page of another site whose name now points at 127.0.0.1 would
                # read the run's paths and errors; its requests carry that site's name.
                return self._json({"error": "unknown host"}, HTTPStatus.MISDIRECTED_REQUEST)
            try:
                if url.path in FILES:
                    name, kind = FILES[url.path]
                    with open(os.path.join(STATIC, name), "rb") as f:
                        body = f.read()
                    if name == "dashboard.html":
                        body = body.replace(b"{{REFRESH_MS}}", str(int(refresh_seconds * 1000)).encode())
                    return self._send(HTTPStatus.OK, kind, body)
                if url.path == "/api/state":
                    with lock:
                        data = state(store, controller() if controller else None, workdir=workdir)
                    return self._json(data)
                if url.path == "/api/tile":
                    q = parse_qs(url.query)
                    with lock:
                        row = store.tile_row(q.get("dataset", [""])[0], q.get("tile", [""])[0])
                    if row is None:
                        return self._json({"error": "no such tile"}, HTTPStatus.NOT_FOUND)
                    return self._json(row)
                return self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
            except Exception as exc:  # noqa: BLE001 - the page shows it and polls again
                log.warning("dashboard: %s failed: %s", url.path, exc)
                return self._json({"error": f"{type(exc).__name__}: {exc}"}, HTTPStatus.SERVICE_UNAVAILABLE)

        def _json(self, data, status=HTTPStatus.OK):
            self._send(status, "application/json", json.dumps(data, default=str).encode())

        def _send(self, status, kind, body: bytes):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            # No inline script, no other origin: whatever a dataset name holds cannot run.
            self.send_header("Content-Security-Policy",
                             "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                             "img-src 'self' data:")
            self.end_headers()
            self.wfile.write(body)

    return ThreadingHTTPServer((host, port), Handler)


def serve(url: str, host: str, port: int, refresh_seconds: float, controller=None,
          workdir: str | None = None) -> int:
    store = StatusStore(url, read_only=True)
    server = make_server(store, host, port, refresh_seconds, controller, workdir)
    bound_host, bound_port = server.server_address[:2]
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: the dashboard listens on {host}, not only on this machine: anyone who can reach "
              f"it sees the run's paths and errors")
    print(f"dashboard on http://{bound_host}:{bound_port}/ (reads {redact(url)}; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        store.close()
    return 0
