"""The HTTP side: a threaded server, one request per thread, on loopback unless told.

A request is read whole (up to MAX_BODY), its signature checked against the accounts file,
its form parsed from the service model, and its action run acting as the signer's account
(`builder.images.shapes.acting_as`); the reply is the serialised result or EC2's error.
Only a fault of the server's own is a 500, and its traceback goes to the log, not the
client.
"""

from __future__ import annotations

import logging
import secrets
import sys
import threading
import traceback
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from builder import paths
from builder.errors import AmilabError
from builder.images.shapes import acting_as
from builder.state import diskfull
from harness.api import auth, protocol
from harness.api.accounts import Account
from harness.api.actions import ACTIONS, STS_ACTIONS, Context
from harness.api.errors import ApiError, from_library, no_space

DRY_RUN = "Request would have succeeded, but DryRun flag is set."
MAX_BODY = 1 << 20  # EC2's own limit on a request is far below; a bigger one is refused
log = logging.getLogger("amilab.api")


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], accounts: Mapping[str, Account],
                 settings: dict[str, Any] | None = None) -> None:  # fmt: skip
        super().__init__(address, Handler)
        self.accounts = dict(accounts)
        self.settings = settings or {}
        self.shared: dict[str, Any] = {"lock": threading.Lock()}  # ClientTokens and the like


class Handler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"
    server_version = "amilab-ec2"
    sys_version = ""
    # http.server writes the headers and the body in two sends; with Nagle's algorithm the
    # body then waits for the client's delayed ACK of the headers (~40 ms on Linux), which
    # capped one keep-alive client at ~16 requests per second (bench/api.py).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._handle(b"")

    def do_POST(self) -> None:  # noqa: N802
        length_text = self.headers.get("Content-Length", "0")
        try:
            length = int(length_text)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self._send_error("ec2", ApiError(
                "InvalidParameterValue" if length < 0 else "RequestEntityTooLarge",
                f"Content-Length {length_text!r}: at most {MAX_BODY} bytes are taken"))  # fmt: skip
            return
        self._handle(self.rfile.read(length))

    def _send(self, status: int, body: bytes, request_id: str) -> None:
        if self.server.settings.get("log"):  # one line per request: what clients asked
            code = (
                body.split(b"<Code>", 1)[1].split(b"</Code>", 1)[0].decode()
                if status >= 400
                else ""
            )
            # one write per line: print() writes the text and the newline apart, so two
            # threads' lines could run into each other
            line = f"amilab api: {self._action or '-'} {status} {code}".rstrip()
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        self.send_response(status)
        self.send_header("Content-Type", "text/xml;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", request_id)
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, service: str, err: ApiError, request_id: str | None = None) -> None:
        request_id = request_id or str(uuid.uuid4())
        self._send(err.status, protocol.error(service, err, request_id), request_id)

    _action = ""

    def _handle(self, body: bytes) -> None:
        request_id = str(uuid.uuid4())
        service = "ec2"
        try:
            host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
            account, signed_for = auth.verify(
                self.command, f"http://{host}", self.path, dict(self.headers.items()), body,
                self.server.accounts,
            )  # fmt: skip
            fields = _form(urlsplit(self.path).query, body, self.headers.get("Content-Type", ""))
            action = self._action = fields.get("Action", "")
            if signed_for == "sts" or action in STS_ACTIONS:
                service = "sts"
            if not action:
                raise ApiError("MissingAction", "The request must contain the parameter Action")
            table = STS_ACTIONS if service == "sts" else ACTIONS
            func = table.get(action)
            if func is None:
                raise ApiError(
                    "InvalidAction", f"The action {action} is not valid for this web service."
                )
            params = protocol.parse(service, action, fields)
            if params.get("DryRun") is True:
                # EC2's answer to a permitted dry run: nothing is done (an aws CLI user's
                # `--dry-run` must not launch a real VM); the request was checked above
                raise ApiError("DryRunOperation", DRY_RUN, 412)
            ctx = Context(account=account, server=self.server, request_id=request_id)
            with acting_as(account.account_id):
                try:
                    result = func(params, ctx)
                except AmilabError as e:
                    code = getattr(func, "default_code", "InvalidParameterValue")
                    raise from_library(e, code) from None
            out = protocol.reply(service, action, result, request_id)
            self._send(200, out, request_id)
        except ApiError as e:
            if e.status >= 500:
                log.error("%s %s: %s", request_id, self.path, e)
            self._send_error(service, e, request_id)
        except Exception as e:  # noqa: BLE001 - a fault of ours: 500, traceback to the log
            if full := diskfull.from_exception(e, paths.amilab_home(), "the request's files"):
                log.error("%s %s: %s", request_id, self.path, full)  # a full disk, not a bug
                self._send_error(service, no_space(full), request_id)
                return
            print(f"amilab api: {request_id}: {type(e).__name__}: {e}", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            self._send_error(service, ApiError(
                "InternalError", "An internal error has occurred", 500), request_id)  # fmt: skip


def _form(query: str, body: bytes, content_type: str) -> dict[str, str]:
    """The request's fields: the query string's, then the form body's (POST)."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        if body:
            if "json" in content_type or "xml" in content_type:
                raise ValueError("not a form")
            pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                               strict_parsing=True)  # fmt: skip
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError("MalformedQueryString", f"the request body is not a form: {e}") from None
    return dict(pairs)


def make_server(bind: str, port: int, accounts: Mapping[str, Account],
                settings: dict[str, Any] | None = None) -> ApiServer:  # fmt: skip
    return ApiServer((bind, port), accounts, settings)


def new_request_token() -> str:
    return secrets.token_hex(8)
