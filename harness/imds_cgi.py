"""One HTTP exchange of the instance metadata service, per process.

Slirp's `guestfwd=...-cmd:` starts one process per guest connection with the socket as stdin,
stdout and stderr, so this module is that process: read one request, answer it from the
instance's metadata document, exit. Every guest `curl` pays this start-up, so it runs as a
plain script (`python3 -I -S imds_cgi.py DOC`: no site-packages scan, no amilab package)
and imports nothing that is not already loaded at interpreter start except `marshal`, which
is built in: the document is read in marshal's format (`json` would pull in `re`, ~5 ms).
No `from __future__` either (that too is a module to import).

The document is a tree of JSON objects; a string is a leaf's body and each object carries its
own listing under the key "" (EC2 formats listings differently at different levels, e.g.
`public-keys/` lists `0=name`), so serving is a walk and never needs to know EC2's rules.
`harness.imds_serve` reuses `lookup` and `http_response` for the host-side server.
"""

import marshal
import os
import sys

NOT_FOUND_BODY = (
    '<?xml version="1.0" encoding="iso-8859-1"?>\n'
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"\n'
    '\t"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
    '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
    " <head>\n  <title>404 - Not Found</title>\n </head>\n"
    " <body>\n  <h1>404 - Not Found</h1>\n </body>\n</html>\n"
)
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_MAX_REQUEST = 16384


def lookup(tree: dict, path: str) -> tuple[int, str]:
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
    return 200, str(node)


def http_response(status: int, body: str, head_only: bool = False) -> bytes:
    data = body.encode("utf-8")
    ctype = "text/html" if status == 404 else "text/plain"
    head = (
        f"HTTP/1.0 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {ctype}\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Server: EC2ws\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + (b"" if head_only else data)


def answer(request: bytes, tree: dict) -> bytes:
    """The response bytes for one raw request (request line and headers)."""
    line = request.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.decode("latin-1").split()
    if len(parts) < 2:
        return http_response(400, "")
    method, target = parts[0], parts[1]
    if method not in ("GET", "HEAD"):
        return http_response(405, "")
    if target.startswith("http://"):  # absolute-form, as proxies and some clients send
        target = "/" + target[7:].partition("/")[2]
    status, body = lookup(tree, target)
    return http_response(status, body, head_only=method == "HEAD")


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
