"""`amilab imds serve`: the metadata service on the host, for people testing their tools.

It answers exactly as the per-connection guest service does (same `lookup`/`answer`), from an
instance described in a YAML file (`InstanceMetadata`'s fields, e.g. `http_tokens: required`,
`iam_role`, `tags`; `public_key_file` may name an OpenSSH public key file and `user_data_file`
the user-data, both relative to the file) or, without one, a made-up instance.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from builder.errors import BadInput
from builder.ids import random_id
from builder.sockets import unix_path
from harness.imds.document import SETTINGS_KEY, InstanceMetadata, document
from harness.imds.protocol import answer, http_response

DEFAULT_PORT = 1338  # the port amazon-ec2-metadata-mock uses
_MAX_REQUEST = 16384


def load_config(path: Path | None) -> InstanceMetadata:
    if path is None:
        return InstanceMetadata(ami_id=random_id("ami"), instance_id=random_id("i"))
    try:
        data: Any = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except (OSError, yaml.YAMLError) as e:
        raise BadInput(f"{path}: cannot read: {e}") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a mapping of metadata keys")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    if key_file := data.pop("public_key_file", None):
        try:
            data["public_key"] = (path.parent / str(key_file)).read_text().strip()
        except OSError as e:
            raise BadInput(f"{path}: public_key_file: {e}") from None
    if ud_file := data.pop("user_data_file", None):
        try:
            # bytes, as given: EC2 serves user-data unchanged (scripts, gzip, MIME multipart)
            data["user_data"] = (path.parent / str(ud_file)).read_bytes()
        except OSError as e:
            raise BadInput(f"{path}: user_data_file: {e}") from None
    data.setdefault("ami_id", random_id("ami"))
    data.setdefault("instance_id", random_id("i"))
    try:
        return InstanceMetadata.from_dict(data)
    except (TypeError, ValueError) as e:
        raise BadInput(f"{path}: {e}") from None


class _Connection:
    __slots__ = ("sock", "inbox", "outbox", "deadline", "linger")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.inbox = b""
        self.outbox = b""
        self.deadline = deadline
        # the client may still be sending (an oversized request, a body): closing with
        # unread bytes sends a reset that can destroy the answer before the client reads it
        self.linger = False


class MetadataServer:
    """One thread, non-blocking sockets, `selectors`: a request costs microseconds to answer
    (a dict walk), so a thread per connection (socketserver's way) cost several times more
    than the answer itself (measured ~2,000 vs ~15,000 requests/s here); a client that is
    slow to send its headers is dropped after `timeout` instead of holding anything up."""

    def __init__(self, tree: dict[str, Any], listener: socket.socket, timeout: float = 10.0):
        self.tree = tree
        self.timeout = timeout
        self.listener = listener
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.stopping = False
        self.answered = 0  # requests answered: an instance's supervisor reads it (reachability)
        # `stop` from another thread writes here so the select returns at once
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._wake_r)

    @classmethod
    def tcp(
        cls, tree: dict[str, Any], bind: str, port: int, timeout: float = 10.0
    ) -> MetadataServer:
        return cls(tree, socket.create_server((bind, port), backlog=256), timeout)

    @classmethod
    def unix(cls, tree: dict[str, Any], path: Path, timeout: float = 10.0) -> MetadataServer:
        """Listening at `path`: a guest's connections arrive here through the relay that
        slirp's `cmd:` starts per connection (see `harness.launch.steps.StartMetadataService`)."""
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(unix_path(path))
            sock.listen(256)
        except OSError:
            sock.close()
            raise
        return cls(tree, sock, timeout)

    def serve_forever(self) -> None:
        try:
            while not self.stopping:
                for key, events in self.selector.select(timeout=1.0):
                    if key.data is self._wake_r:
                        continue
                    if key.data is None:
                        self._accept()
                    elif events & selectors.EVENT_READ:
                        self._read(key.data)
                    else:
                        self._write(key.data)
                self._expire()
        finally:
            self.close()

    def stop(self) -> None:
        """From another thread: `serve_forever` returns (and closes everything) promptly."""
        self.stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def close(self) -> None:
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()
        self._wake_w.close()

    def _accept(self) -> None:
        for _ in range(64):  # drain a burst without starving the connections already open
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of file descriptors: let the backlog wait
                return
            sock.setblocking(False)
            conn = _Connection(sock, time.monotonic() + self.timeout)
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Connection) -> None:
        try:
            chunk = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(conn)
            return
        if conn.linger:  # answered: discard what the client still sends until it closes
            return
        conn.inbox += chunk
        head = conn.inbox
        if b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < _MAX_REQUEST:
            return
        try:
            conn.outbox = answer(head, self.tree)
        except Exception:  # a bad request must get a status code, never a dropped socket
            conn.outbox = http_response(500, "")
        self.answered += 1
        if head.startswith(b"PUT ") and conn.outbox.startswith(b"HTTP/1.1 200"):
            self._limit_hops(conn.sock)
        conn.linger = len(head) >= _MAX_REQUEST or not head.endswith((b"\r\n\r\n", b"\n\n"))
        self.selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)

    def _limit_hops(self, sock: socket.socket) -> None:
        """EC2's `HttpPutResponseHopLimit`: the token goes out with that IP TTL, so each
        router on the way takes one off and a client too far away never receives it."""
        hops = int((self.tree.get(SETTINGS_KEY) or {}).get("hop_limit", 1))
        if sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hops)
        elif sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hops)

    def _write(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        conn.outbox = conn.outbox[sent:]
        if conn.outbox:
            return
        if not conn.linger:
            self._drop(conn)  # Connection: close, as EC2
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(conn)
            return
        self.selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _drop(self, conn: _Connection) -> None:
        self.selector.unregister(conn.sock)
        conn.sock.close()

    def _expire(self) -> None:
        now = time.monotonic()
        for key in list(self.selector.get_map().values()):
            if isinstance(key.data, _Connection) and key.data.deadline < now:
                self._drop(key.data)


def serve(port: int = DEFAULT_PORT, config: Path | None = None, bind: str = "127.0.0.1") -> None:
    md = load_config(config)
    try:
        server = MetadataServer.tcp(document(md), bind, port)
    except OSError as e:
        raise BadInput(f"cannot listen on {bind}:{port}: {e.strerror}") from None
    print(
        f"amilab: metadata for {md.instance_id} ({md.ami_id}) at "
        f"http://{bind}:{server.address[1]}/latest/meta-data/ (Ctrl-C stops)",
        file=sys.stderr,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
