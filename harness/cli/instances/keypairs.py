"""Key pairs: create, import, describe, delete."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.cli.command import add_command
from harness.cli.flags import add_tags
from harness.cli.output import add_json, print_result, show


def _create_key_pair(args: argparse.Namespace) -> int:
    from builder.images.lifecycle import parse_tags
    from harness.instances.keypairs import create_key_pair, public_view

    row, private = create_key_pair(args.key_name, args.key_type, parse_tags(args.tag))
    payload = public_view(row) | {"KeyMaterial": private}
    return show(args, payload, lambda: sys.stdout.write(private))


def _import_key_pair(args: argparse.Namespace) -> int:
    from builder.errors import BadInput
    from builder.images.lifecycle import parse_tags
    from harness.instances.keypairs import import_key_pair, public_view

    try:
        material = Path(args.public_key_material).read_text()
    except OSError as e:
        raise BadInput(f"--public-key-material {args.public_key_material}: {e.strerror}") from None
    row = import_key_pair(args.key_name, material, parse_tags(args.tag))
    return print_result(args, public_view(row), [row["KeyName"]])


def _describe_key_pairs(args: argparse.Namespace) -> int:
    from harness.instances.keypairs import describe_key_pairs

    rows = describe_key_pairs(args.key_names)
    return print_result(args, {"KeyPairs": rows},
                        [f"{r['KeyName']}\t{r['KeyFingerprint']}" for r in rows])  # fmt: skip


def _delete_key_pair(args: argparse.Namespace) -> int:
    from harness.instances.keypairs import delete_key_pair

    delete_key_pair(args.key_name)
    return print_result(args, {"Return": True}, [])


def register_key_pairs(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "create-key-pair",
        _create_key_pair,
        "make a key pair: amilab keeps the public half, prints the private key once",
    )
    p.add_argument("--key-name", required=True)
    p.add_argument("--key-type", default="ed25519", choices=("ed25519", "rsa"))
    add_tags(p)
    add_json(p, "CreateKeyPair's response (KeyMaterial is the private key)")
    p = add_command(sub, "import-key-pair", _import_key_pair, "register your own public key")
    p.add_argument("--key-name", required=True)
    p.add_argument("--public-key-material", required=True, metavar="FILE.pub")
    add_tags(p)
    add_json(p)
    p = add_command(sub, "describe-key-pairs", _describe_key_pairs, "list key pairs")
    p.add_argument("--key-names", nargs="*", default=[], metavar="NAME")
    add_json(p)
    p = add_command(sub, "delete-key-pair", _delete_key_pair, "forget a key pair")
    p.add_argument("--key-name", required=True)
    add_json(p)
