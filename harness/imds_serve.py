"""`amilab imds serve`: the metadata service on the host, for people testing their tools.

It answers exactly as the per-connection guest service does (same `lookup`/`answer`), from an
instance described in a YAML file (`InstanceMetadata`'s fields, e.g. `http_tokens: required`,
`iam_role`, `tags`; `public_key_file` may name an OpenSSH public key file and `user_data_file`
the user-data, both relative to the file) or, without one, a made-up instance.
"""

from __future__ import annotations

import contextlib
import socketserver
import sys
from pathlib import Path
from typing import Any

import yaml

from builder.errors import BadInput
from builder.ids import random_id
from harness.imds_cgi import answer, http_response
from harness.metadata import InstanceMetadata, document

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


class _Handler(socketserver.StreamRequestHandler):
    tree: dict[str, Any] = {}

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < _MAX_REQUEST:
            chunk = self.request.recv(4096)
            if not chunk:
                break
            head += chunk
        if not head:
            return
        try:
            response = answer(head, self.tree)
        except Exception:  # a bad request must get a status code, never a dropped socket
            response = http_response(500, "")
        self.wfile.write(response)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve(port: int = DEFAULT_PORT, config: Path | None = None, bind: str = "127.0.0.1") -> None:
    md = load_config(config)
    handler = type("Handler", (_Handler,), {"tree": document(md)})
    try:
        server = _Server((bind, port), handler)
    except OSError as e:
        raise BadInput(f"cannot listen on {bind}:{port}: {e.strerror}") from None
    with server:
        print(
            f"amilab: metadata for {md.instance_id} ({md.ami_id}) at "
            f"http://{bind}:{server.server_address[1]}/latest/meta-data/ (Ctrl-C stops)",
            file=sys.stderr,
        )
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
