"""EC2 instance-store bundles (2007-10-10): `bundle`, `unbundle` and `register`."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.images import responses
from harness.cli.command import add_command
from harness.cli.flags import add_instance_id, add_no_reboot, add_switch
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

    manifest = args.manifest if args.manifest.startswith("s3://") else Path(args.manifest)
    rec = register_manifest(
        manifest, name=args.name, description=args.description,
        certs=[Path(c) for c in args.cert] or None, virtualization=args.virtualization_type,
        endpoint_url=args.endpoint_url,
    )  # fmt: skip
    return print_result(args, responses.registered(rec), [rec.image_id])


def register_register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "register", _register, "register an AMI, AKI or ARI from a bundle manifest"
    )
    p.add_argument("manifest", metavar="MANIFEST", help="a path, or s3://BUCKET/PATH.manifest.xml")
    p.add_argument("--name", help="default: the manifest's name")
    p.add_argument("--endpoint-url", help="S3 endpoint (default: boto3's configuration)")
    p.add_argument("--description", default="")
    p.add_argument("--cert", action="append", default=[], help="signing certificate to trust")
    p.add_argument("--virtualization-type", choices=("paravirtual", "hvm"))
    add_json(p)


def _upload_bundle(args: argparse.Namespace) -> int:
    from builder.images.bundle_upload import upload_bundle

    up = upload_bundle(Path(args.manifest), args.bucket, args.endpoint_url)
    return print_result(args, up.describe(), [up.location])


def register_upload_bundle(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "upload-bundle", _upload_bundle,
        "upload a bundle's parts, then its manifest, to a directory or S3 (ec2-upload-bundle)",
    )  # fmt: skip
    p.add_argument("--manifest", "-m", required=True, metavar="MANIFEST")
    p.add_argument("--bucket", "-b", required=True, help="DIR or s3://BUCKET[/PATH]")
    p.add_argument("--endpoint-url", help="S3 endpoint (default: boto3's configuration)")
    add_json(p, "ImageLocation (what register takes) and the objects written")


def _bundle_vol(args: argparse.Namespace) -> int:
    from harness.instances.operations.images import bundle_vol

    excludes = [p for item in args.exclude for p in item.split(",") if p]
    r, removed = bundle_vol(
        args.instance_id, Path(args.cert), Path(args.privatekey), Path(args.destination),
        prefix=args.prefix, excludes=excludes, no_filter=args.no_filter,
        no_reboot=args.no_reboot, kernel=args.kernel, ramdisk=args.ramdisk, user=args.user,
        ec2_cert=Path(args.ec2cert) if args.ec2cert else None,
    )  # fmt: skip
    out = r.describe() | {"InstanceId": args.instance_id, "Excluded": removed}
    return print_result(args, out, [str(r.manifest_path)])


def register_bundle_vol(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "bundle-vol", _bundle_vol,
        "an instance's root filesystem as an instance-store bundle (ec2-bundle-vol)",
        description="Bundle the root volume of an instance, from the host: the volume is "
        "only read (a running instance is stopped first and started again, unless "
        "--no-reboot). Key, certificate and history files (ec2-bundle-vol's filter), the "
        "contents of /dev /media /mnt /proc /sys and --exclude paths are left out.",
    )  # fmt: skip
    add_instance_id(p)
    p.add_argument("--cert", "-c", required=True, help="your X.509 certificate (PEM)")
    p.add_argument("--privatekey", "-k", required=True, help="its RSA private key (PEM)")
    p.add_argument("--ec2cert", help="EC2's certificate (default: amilab's own)")
    p.add_argument("--destination", "-d", required=True, metavar="DIR")
    p.add_argument("--prefix", "-p", default="image", help="file name prefix (default: image)")
    p.add_argument("--user", "-u", help="account ID in the manifest (default: yours)")
    p.add_argument("--exclude", "-e", action="append", default=[], metavar="PATH[,PATH]",
                   help="leave out this path of the instance (repeatable)")  # fmt: skip
    add_switch(p, "--no-filter", "keep key, certificate and history files (left out by default)")
    p.add_argument("--kernel", metavar="AKI", help="default: the instance's kernel")
    p.add_argument("--ramdisk", metavar="ARI", help="default: the instance's ramdisk")
    add_no_reboot(p, "read a running instance's volume without stopping it")
    add_json(p)
