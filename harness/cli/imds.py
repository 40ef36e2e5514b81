"""`imds serve`: an instance's metadata service on the host."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli.command import add_command


def _serve(args: argparse.Namespace) -> int:
    from harness.imds.server import serve

    serve(port=args.port, config=args.config, bind=args.bind)
    return 0


def register_imds(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("imds", help="the instance metadata service")
    # the parent's parser class (the CLI's, with its exit code and error line) is inherited
    imds_sub = p.add_subparsers(dest="imds_command", required=True)
    s = add_command(imds_sub, "serve", _serve, "serve an instance's metadata on the host")
    s.add_argument("--port", type=int, default=1338, help="default 1338")
    s.add_argument("--bind", default="127.0.0.1", help="default 127.0.0.1")
    s.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML: ami_id, instance_id, kernel_id, public_key_file, user_data_file, "
        "iam_role, http_tokens (optional|required), http_endpoint (enabled|disabled), ...",
    )
