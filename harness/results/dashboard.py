"""`amilab dashboard`: the results database as web pages and JSON, on the standard
library's HTTP server.

Pages: `/` the runs, `/runs/ID` a run's grid (each cell's evidence, its console, its
history), `/timeline?image=X` an image across runs and kernels, `/flaky`, `/boot-times` (an
SVG chart per kernel over runs), `/history?image=X&kernel=K`. The same data as JSON under
`/api/…` for CI bots: `/api/runs` is what `amilab results --json` prints, `/api/runs/ID`
`results --run ID --json`, and so on. It binds loopback by default; any other address needs
`--token`, and then every request must carry it (`Authorization: Bearer TOKEN` or
`?token=TOKEN`), or gets 401.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from builder.errors import AmilabError, BadInput
from harness.results import db, queries, svg
from harness.results.known_view import Known
from harness.results.pages import Page

RUNS_LISTED = 50


def is_loopback(bind: str) -> bool:
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


class Dashboard:
    """What the handler asks: one database connection, used by one request at a time."""

    def __init__(self, store: db.Database, known: Known, token: str = "") -> None:
        self.store = store
        self.known = known
        self.token = token
        self.lock = threading.Lock()

    def api(self, path: str, q: dict[str, str], multi: dict[str, list[str]]) -> Any:
        s = self.store
        if path == "/api/runs":
            return {"Runs": queries.runs(s, int(q.get("limit", RUNS_LISTED)), q.get("matrix"))}
        if m := re.fullmatch(r"/api/runs/(\w+)", path):
            return queries.grid(s, m.group(1))
        if path == "/api/regressions":
            return {
                "Since": q.get("since", ""),
                "Regressions": queries.regressions(s, q.get("since")),
            }
        if path == "/api/flaky":
            return {"Flaky": queries.flaky(s, int(q.get("window", queries.FLAKY_WINDOW)))}
        if path == "/api/boot-times":
            return {"BootTimes": queries.boot_times(s, q.get("image"))}
        if path == "/api/history":
            image, kernel = self._need(q, "image"), q.get("kernel")
            return {"Image": image, "Kernel": kernel or "",
                    "History": queries.history(s, image, kernel)}  # fmt: skip
        if path == "/api/timeline":
            return queries.timeline(s, self._need(q, "image"))
        if path == "/api/first-broken":
            return queries.first_broken(s, self._need(q, "image"), multi.get("kernel") or None)
        raise LookupError(path)

    @staticmethod
    def _need(q: dict[str, str], key: str) -> str:
        if not q.get(key):
            raise BadInput(f"?{key}= is needed")
        return q[key]

    def page(self, path: str, q: dict[str, str]) -> str:
        s, page = self.store, Page(self.known, q.get("token", "") if self.token else "")
        if path == "/":
            return page.runs(queries.runs(s, RUNS_LISTED))
        if m := re.fullmatch(r"/runs/(\w+)", path):
            return page.grid(queries.grid(s, m.group(1)))
        if path == "/timeline":
            images = queries.images(s)
            image = q.get("image") or (images[0] if images else "")
            return page.timeline(queries.timeline(s, image) if image else {}, images)
        if path == "/flaky":
            return page.flaky(queries.flaky(s))
        if path == "/boot-times":
            trends = queries.boot_times(s, q.get("image"))
            return page.boot_times(trends, svg.chart(trends))
        if path == "/history":
            image, kernel = self._need(q, "image"), q.get("kernel", "")
            return page.history(image, kernel, queries.history(s, image, kernel or None))
        raise LookupError(path)

    def console(self, cell_id: int) -> str:
        log = queries.cell(self.store, cell_id)["ConsoleLog"]
        try:  # only a file the database names as a cell's console
            return Path(log).read_text(errors="replace") if log else ""
        except OSError as e:
            raise LookupError(f"{log}: {e.strerror}") from None


def _handler(board: Dashboard) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "amilab-dashboard"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
            pass

        def _send(self, code: int, body: str, kind: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self, q: dict[str, str]) -> bool:
            if not board.token:
                return True
            got = q.get("token", "")
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                got = auth[len("Bearer ") :]
            return hmac.compare_digest(got.encode(), board.token.encode())

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urlsplit(self.path)
            multi = parse_qs(url.query)
            q = {k: v[-1] for k, v in multi.items()}
            api = url.path.startswith("/api/")
            if not self._authorized(q):
                self._send(401, '{"Error": "a token is needed"}' if api else "401: token needed",
                           "application/json" if api else "text/plain")  # fmt: skip
                return
            try:
                with board.lock:
                    if api:
                        body = json.dumps(board.api(url.path, q, multi), indent=1)
                        kind = "application/json"
                    elif m := re.fullmatch(r"/console/(\d+)", url.path):
                        body, kind = board.console(int(m.group(1))), "text/plain"
                    else:
                        body, kind = board.page(url.path, q), "text/html"
            except (LookupError, AmilabError, ValueError) as e:
                code = 404 if isinstance(e, LookupError) else 400
                msg = str(e).strip("'") or "not found"
                self._send(code, json.dumps({"Error": msg}) if api else f"{code}: {msg}",
                           "application/json" if api else "text/plain")  # fmt: skip
                return
            self._send(200, body, kind)

    return Handler


def make_server(board: Dashboard, bind: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((bind, port), _handler(board))
    server.daemon_threads = True
    return server


def serve(
    url: str | None,
    bind: str = "127.0.0.1",
    port: int = 8700,
    token: str = "",
    known_issues: Path | None = None,
) -> int:
    if not is_loopback(bind) and not token:
        raise BadInput(f"--bind {bind} is not loopback: give --token (every request needs it)")
    known = Known.load(known_issues)
    store = db.connect(url)
    board = Dashboard(store, known, token)
    try:
        server = make_server(board, bind, port)
    except OSError as e:
        store.close()
        raise BadInput(f"cannot listen on {bind}:{port}: {e.strerror}") from None
    host, real_port = server.server_address[:2]
    print(f"amilab dashboard of {store.where} at http://{host}:{real_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        store.close()
    print("amilab dashboard: stopped", file=sys.stderr)
    return 0
