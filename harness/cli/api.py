"""`api serve`: EC2's Query API over amilab's registry and instances."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli.command import add_command
from harness.cli.flags import add_switch


def _serve(args: argparse.Namespace) -> int:
    from harness.api.serve import serve

    serve(bind=args.bind, port=args.port, accounts_file=args.accounts,
          s3_endpoint=args.s3_endpoint, log=args.log)  # fmt: skip
    return 0


def register_api(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("api", help="the EC2 Query API endpoint")
    api_sub = p.add_subparsers(dest="api_command", required=True)
    s = add_command(
        api_sub, "serve", _serve,
        "serve EC2's Query API (aws CLI, boto3, Terraform) over the registry and instances",
        description="EC2's Query API (and STS GetCallerIdentity): requests signed with SigV4 "
        "by an access key of the accounts file; instances are real guests.",
    )  # fmt: skip
    s.add_argument(
        "--port",
        type=int,
        default=8773,
        help="default 8773, the port of the EC2 API in Eucalyptus and OpenStack (0: any free port)",
    )
    s.add_argument("--bind", default="127.0.0.1", help="default 127.0.0.1 (loopback)")
    s.add_argument(
        "--accounts", type=Path, metavar="FILE",
        help="YAML: accounts: [{AccountId, AccessKeyId, SecretAccessKey}] (default: one "
        "for the local account, made at $AMILAB_HOME/api/accounts.yaml)",
    )  # fmt: skip
    add_switch(s, "--log", "one line per request on stderr")
    s.add_argument(
        "--s3-endpoint", metavar="URL",
        help="where CreateStoreImageTask's buckets are (default: directories under "
        "$AMILAB_HOME/api/buckets)",
    )  # fmt: skip
