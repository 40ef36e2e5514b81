"""One HTTP exchange of the instance metadata service, per process.

Slirp's `guestfwd=...-cmd:` starts one process per guest connection with the socket as stdin,
stdout and stderr, so this module is that process: read one request, answer it from the
instance's metadata document, exit. Every guest `curl` pays this start-up, so it runs as a
plain script (`python3 -I -S imds_cgi.py DOC`: no site-packages scan, no amilab package)
and imports only modules compiled into the interpreter (`marshal`, `time`, `binascii`,
`_sha256`, `_operator`) or frozen in it (`os`): no file to find and load. The document is
read in marshal's format (`json` would pull in `re`, ~5 ms).
No `from __future__` either (that too is a module to import). IMDSv2 tokens are
HMAC-signed expiry times keyed by a secret in the document, so a token issued by one
connection's process is checked by another's without shared memory or files.

The document is a tree of objects; a string (bytes for user-data) is a leaf's body and each
object carries its own listing under the key "" (EC2 formats listings differently at
different levels, e.g. `public-keys/` lists `0=name`), so serving is a walk and never needs
to know EC2's rules. `harness.imds.server` reuses `answer` and `http_response` on the host.
"""

import binascii
import marshal
import os
import sys
import time
from _operator import _compare_digest

try:
    from _sha256 import sha256
except ImportError:  # Python 3.12 merged it into _sha2 (still built in)
    from _sha2 import sha256

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}
_MAX_REQUEST = 16384
SETTINGS_KEY = "/imds"  # harness.imds.document.SETTINGS_KEY; no request path reaches it
TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "x-aws-ec2-metadata-token"
MAX_TTL = 21600


def error_body(status: int) -> str:
    """EC2's XHTML error page (it sends the same page for 400/401/403/404/405)."""
    title = f"{status} - {_REASONS.get(status, 'Error')}"
    return (
        '<?xml version="1.0" encoding="iso-8859-1"?>\n'
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"\n'
        '\t"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
        f" <head>\n  <title>{title}</title>\n </head>\n"
        f" <body>\n  <h1>{title}</h1>\n </body>\n</html>\n"
    )


NOT_FOUND_BODY = error_body(404)


def lookup(tree: dict, path: str) -> tuple[int, str | bytes]:
    """(status, body) for a request path; double and trailing slashes are ignored as EC2
    does, and the query string is dropped."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    node: object = tree
    for part in path.split("/"):
        if not part:
            continue
        if not isinstance(node, dict) or part not in node:
            return 404, NOT_FOUND_BODY
        node = node[part]
    if isinstance(node, dict):
        return 200, node.get("", "")
    if isinstance(node, bytes):
        return 200, node
    return 200, str(node)


def http_response(
    status: int, body: str | bytes, head_only: bool = False, ttl: int | None = None
) -> bytes:
    data = body if isinstance(body, bytes) else body.encode("utf-8")
    ctype = "text/plain" if status == 200 else "text/html"
    if status != 200 and not data:
        data = error_body(status).encode()
    extra = f"X-Aws-Ec2-Metadata-Token-Ttl-Seconds: {ttl}\r\n" if ttl is not None else ""
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"{extra}"
        f"Content-Type: {ctype}\r\n"
        "Accept-Ranges: none\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Server: EC2ws\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + (b"" if head_only else data)


def _mac(secret: str, expiry: int) -> bytes:
    """HMAC-SHA256 (RFC 2104) of the expiry: the `hmac` module would cost an import per
    request, the construction is four lines."""
    key = bytes.fromhex(secret).ljust(64, b"\0")
    inner = sha256(bytes(b ^ 0x36 for b in key) + expiry.to_bytes(8, "big")).digest()
    return sha256(bytes(b ^ 0x5C for b in key) + inner).digest()


def make_token(secret: str, ttl: int, now: float) -> str:
    """A token any process holding the secret can check: its expiry, signed. 8 + 32 bytes in
    base64 is 56 characters, the length of EC2's tokens."""
    expiry = int(now) + ttl
    raw = expiry.to_bytes(8, "big") + _mac(secret, expiry)
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def token_ttl(secret: str, token: str, now: float) -> int | None:
    """Seconds the token has left, or None when it is forged, mangled or expired."""
    try:
        raw = binascii.a2b_base64(token)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 40:
        return None
    expiry = int.from_bytes(raw[:8], "big")
    # _mac before the expiry test: a forged token costs as much as a stale one
    if not _compare_digest(raw[8:], _mac(secret, expiry)) or expiry <= now:
        return None
    return expiry - int(now)


def _headers(request: bytes) -> dict[str, str]:
    headers = {}
    for line in request.decode("latin-1").split("\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def answer(request: bytes, tree: dict, now: float | None = None) -> bytes:
    """The response bytes for one raw request (request line and headers)."""
    line = request.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.decode("latin-1").split()
    # METHOD SP TARGET SP HTTP/x.y, the method a token of capitals: anything else is not HTTP
    if len(parts) != 3 or not parts[2].startswith("HTTP/") or not parts[0].isalpha():
        return http_response(400, "")
    method, target = parts[0], parts[1]
    if target.startswith("http://"):  # absolute-form, as proxies and some clients send
        target = "/" + target[7:].partition("/")[2]
    if not target.startswith("/") or not method.isupper():
        return http_response(400, "")
    settings = tree.get(SETTINGS_KEY) or {}
    if settings.get("http_endpoint") == "disabled":
        return http_response(403, "")
    if method not in ("GET", "HEAD", "PUT"):
        return http_response(405, "")
    if now is None:
        now = time.time()
    headers = _headers(request)
    secret = settings.get("token_secret", "")
    if method == "PUT":
        path = "/" + "/".join(p for p in target.split("?", 1)[0].split("/") if p)
        if path != TOKEN_PATH:
            # EC2 issues tokens only at latest/api/token (not under a dated version)
            return http_response(403, "")
        if "x-forwarded-for" in headers or not secret:
            # a token requested through a proxy could leak off the instance
            return http_response(403, "")
        ttl_text = headers.get(TTL_HEADER, "")
        if not (ttl_text.isascii() and ttl_text.isdigit()) or not 1 <= int(ttl_text) <= MAX_TTL:
            return http_response(400, "")
        ttl = int(ttl_text)
        return http_response(200, make_token(secret, ttl, now), ttl=ttl)
    ttl = None
    if TOKEN_HEADER in headers:
        # a token that is sent must be good, even where IMDSv1 is allowed (as EC2)
        ttl = token_ttl(secret, headers[TOKEN_HEADER], now) if secret else None
        if ttl is None:
            return http_response(401, "")
    elif settings.get("http_tokens") == "required":
        return http_response(401, "")
    status, body = lookup(tree, target)
    return http_response(status, body, head_only=method == "HEAD", ttl=ttl)


def _read_request(fd: int) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf and b"\n\n" not in buf and len(buf) < _MAX_REQUEST:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main(argv: list[str]) -> int:
    # stderr is the guest's socket too: never let a traceback reach it.
    try:
        with open(argv[1], "rb") as f:
            tree = marshal.loads(f.read())
        request = _read_request(0)
        if request:
            _write_all(1, answer(request, tree))
    except Exception:
        try:  # noqa: SIM105 - contextlib would be one more import per request
            _write_all(1, http_response(500, ""))
        except OSError:
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
