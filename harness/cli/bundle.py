"""EC2 instance-store bundles (2007-10-10): `bundle`, `unbundle` and `register`."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.images import responses
from harness.cli.command import add_command
from harness.cli.output import add_json, print_result


def _bundle(args: argparse.Namespace) -> int:
    from builder.images.lifecycle import bundle_image

    r = bundle_image(
        args.image, Path(args.cert), Path(args.privatekey), Path(args.destination),
        ec2_cert=Path(args.ec2cert) if args.ec2cert else None, prefix=args.prefix,
        user=args.user,
    )  # fmt: skip
    return print_result(args, r.describe(), [str(r.manifest_path)])


def register_bundle(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "bundle", _bundle, "bundle an image as ec2-bundle-image did (manifest+parts)"
    )
    p.add_argument("image", metavar="IMAGE_ID")
    p.add_argument("--cert", "-c", required=True, help="your X.509 certificate (PEM)")
    p.add_argument("--privatekey", "-k", required=True, help="its RSA private key (PEM)")
    p.add_argument("--ec2cert", help="EC2's certificate (default: amilab's own)")
    p.add_argument("--destination", "-d", required=True, metavar="DIR")
    p.add_argument("--prefix", "-p", help="file name prefix (default: the image's name)")
    p.add_argument("--user", "-u", help="account ID in the manifest (default: yours)")
    add_json(p)


def _unbundle(args: argparse.Namespace) -> int:
    from builder.images.bundle import unbundle

    out = unbundle(
        Path(args.manifest), Path(args.privatekey), Path(args.destination),
        source_dir=Path(args.source) if args.source else None,
        verify_with=[Path(c) for c in args.cert] or None,
    )  # fmt: skip
    return print_result(args, {"ImagePath": str(out), "Size": out.stat().st_size}, [str(out)])


def register_unbundle(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "unbundle", _unbundle, "verify a bundle and restore its image file")
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--privatekey", "-k", required=True, help="your RSA private key (PEM)")
    p.add_argument("--destination", "-d", required=True, metavar="DIR")
    p.add_argument("--source", "-s", metavar="DIR", help="where the parts are (default: beside)")
    p.add_argument("--cert", action="append", default=[], help="check the signature with it")
    add_json(p)


def _register(args: argparse.Namespace) -> int:
    from builder.images.lifecycle import register_manifest

    rec = register_manifest(
        Path(args.manifest), name=args.name, description=args.description,
        certs=[Path(c) for c in args.cert] or None, virtualization=args.virtualization_type,
    )  # fmt: skip
    return print_result(args, responses.registered(rec), [rec.image_id])


def register_register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "register", _register, "register an AMI, AKI or ARI from a bundle manifest"
    )
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--name", help="default: the manifest's name")
    p.add_argument("--description", default="")
    p.add_argument("--cert", action="append", default=[], help="signing certificate to trust")
    p.add_argument("--virtualization-type", choices=("paravirtual", "hvm"))
    add_json(p)
