"""The RunInstances parameters that shape an instance's metadata, as `boot`/`smoke` flags.

EC2 takes user-data, instance tags (served under `tags/instance/` only when instance metadata
tags are enabled), an instance profile and `MetadataOptions` at launch; these flags carry the
same into `LaunchOptions.metadata` (fields of `InstanceMetadata`). EC2's own limits apply, so
a launch that EC2 would refuse is refused here too, with a one-line error.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from builder.errors import BadInput

USER_DATA_MAX = 16 * 1024  # EC2: "user data is limited to 16 KB, in raw form"
MAX_TAGS = 50
# EC2's rule for tag keys when instance metadata tags are on: each key becomes a path
_METADATA_TAG_KEY = re.compile(r"[A-Za-z0-9+\-=.,_:@]{1,128}")
_ROLE = re.compile(r"[\w+=,.@-]{1,64}")


def add_metadata_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("instance metadata (as RunInstances takes them)")
    g.add_argument("--user-data", type=Path, metavar="FILE", help="user-data, served as is")
    g.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="instance tag (repeat)"
    )
    g.add_argument(
        "--metadata-tags",
        action="store_true",
        help="serve the instance's tags under meta-data/tags/instance/",
    )
    g.add_argument("--iam-role", metavar="NAME", help="instance profile role: iam/ credentials")
    g.add_argument("--instance-type", metavar="TYPE", help="meta-data/instance-type")
    g.add_argument(
        "--http-tokens",
        choices=("optional", "required"),
        help="required: IMDSv2 only (token-less requests get 401)",
    )
    g.add_argument(
        "--http-endpoint",
        choices=("enabled", "disabled"),
        help="disabled: every metadata request gets 403",
    )
    g.add_argument(
        "--hop-limit",
        type=int,
        metavar="N",
        help="IP TTL of IMDSv2 token responses, 1-64 (enforced by `imds serve`; slirp has none)",
    )


def parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise BadInput(f"--tag {text!r}: expected KEY=VALUE")
    if len(key) > 128 or len(value) > 256:
        raise BadInput(f"--tag {key[:40]!r}: keys are at most 128 and values 256 characters")
    if key.lower().startswith("aws:"):
        raise BadInput(f"--tag {key!r}: the aws: prefix is reserved")
    return key, value


def metadata_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """`LaunchOptions.metadata` from the flags above; only what was given, so the AMI's and
    `InstanceMetadata`'s defaults stay in charge of the rest."""
    out: dict[str, Any] = {}
    if args.user_data is not None:
        try:
            data = args.user_data.read_bytes()
        except OSError as e:
            raise BadInput(f"--user-data {args.user_data}: {e.strerror}") from None
        if len(data) > USER_DATA_MAX:
            raise BadInput(
                f"--user-data {args.user_data}: {len(data)} bytes; EC2 takes at most 16 KB"
            )
        out["user_data"] = data
    if args.tag:
        tags = dict(parse_tag(t) for t in args.tag)
        if len(tags) > MAX_TAGS:
            raise BadInput(f"--tag: {len(tags)} tags; EC2 allows {MAX_TAGS} per instance")
        out["tags"] = tags
    if args.metadata_tags:
        for key in out.get("tags", {}):
            if not _METADATA_TAG_KEY.fullmatch(key) or key in (".", "..", "_index"):
                raise BadInput(
                    f"--tag {key!r}: with --metadata-tags a key may hold only letters, digits "
                    "and + - = . , _ : @ (it becomes a metadata path)"
                )
        out["instance_metadata_tags"] = True
    if args.iam_role is not None:
        if not _ROLE.fullmatch(args.iam_role):
            raise BadInput(f"--iam-role {args.iam_role!r}: not an IAM role name")
        out["iam_role"] = args.iam_role
    if args.instance_type is not None:
        if not re.fullmatch(r"[a-z][a-z0-9-]*\.[a-z0-9-]+", args.instance_type):
            raise BadInput(f"--instance-type {args.instance_type!r}: expected e.g. m1.small")
        out["instance_type"] = args.instance_type
    if args.http_tokens is not None:
        out["http_tokens"] = args.http_tokens
    if args.http_endpoint is not None:
        out["http_endpoint"] = args.http_endpoint
    if args.hop_limit is not None:
        if not 1 <= args.hop_limit <= 64:
            raise BadInput(f"--hop-limit {args.hop_limit}: must be 1-64")
        out["http_put_response_hop_limit"] = args.hop_limit
    return out
