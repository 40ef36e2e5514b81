"""The `amilab` command line: parses arguments and calls library functions, nothing more."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from builder.build.recipe import keys_help
from builder.errors import AmilabError
from harness.cli.flags import add_metadata_arguments, metadata_from_args


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def _cmd_build(args: argparse.Namespace) -> int:
    from builder.build.pipeline import build_file, report_builds

    results = build_file(Path(args.recipe_file), image=args.image, quiet=args.json)
    if args.json:
        _print_json({"Images": [r.describe() for r in results]})
    else:
        report_builds(results)
    return 0


def _cmd_kernels(args: argparse.Namespace) -> int:
    from builder.build.kernel import load_catalogue
    from harness.cli.tables import kernel_rows, print_kernels

    rows = kernel_rows(list(load_catalogue().values()))
    if args.json:
        _print_json({"Kernels": rows})
    else:
        print_kernels(rows)
    return 0


def _add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="build recipes and register their AKI, ARI and AMI",
        description="Build the images a recipe file defines and register them.",
        epilog=keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe_file", nargs="?", default="build.yaml", help="default: build.yaml")
    p.add_argument("--image", help="build only the recipe with this name")
    p.add_argument("--json", action="store_true", help="print describe-images JSON")
    p.set_defaults(func=_cmd_build)


def _add_images(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.images.lifecycle import ImageFilter, describe_images
        from harness.cli.tables import print_images

        flt = ImageFilter(args.owner, args.name, args.tag, args.executable_by, args.image_id)
        records = describe_images(args.type, flt)
        if args.json:
            _print_json({"Images": [r.describe() for r in records]})
        else:
            print_images(records)
        return 0

    p = sub.add_parser("images", help="describe the registry (AMIs, AKIs, ARIs)")
    p.add_argument("--type", choices=("machine", "kernel", "ramdisk"))
    p.add_argument("--json", action="store_true", help="print describe-images JSON")
    # describe-images --owners/--executable-users/--filters; each may be repeated
    p.add_argument("--owner", action="append", default=[], help="account ID or 'self'")
    p.add_argument("--name", action="append", default=[], help="name pattern (* and ?)")
    p.add_argument("--tag", action="append", default=[], help="KEY=PATTERN, or KEY alone")
    p.add_argument(
        "--executable-by", action="append", default=[], help="account ID, 'self' or 'all'"
    )
    p.add_argument("--image-id", action="append", default=[], metavar="IMAGE_ID")
    p.set_defaults(func=run)


def _add_kernels(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kernels", help="the kernel catalogue (kernels/*.yaml)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_kernels)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.disk.convert import convert

        result = convert(
            Path(args.src), Path(args.dst), args.format, args.subformat, workers=args.workers
        )
        if args.json:
            _print_json(result.describe())
        else:
            print(
                f"{result.output}: {result.format}"
                f"{' ' + result.subformat if result.subformat else ''}, "
                f"{result.output_bytes} bytes, {result.seconds:.1f} s"
            )
        return 0

    p = sub.add_parser(
        "convert",
        help="validate a VMDK/OVA/OVF/qcow2/raw disk and convert it",
        description="Validate SRC (VMDK, OVA, OVF, qcow2 or raw), then write it to DST.",
    )
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--format", default="raw", choices=("raw", "qcow2", "vmdk"))
    p.add_argument(
        "--subformat",
        choices=("monolithicSparse", "streamOptimized"),
        help="VMDK subformat (default monolithicSparse)",
    )
    p.add_argument("--workers", type=int, help="compression threads (default: all cores)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.disk.inspection import inspect_disk, print_inspection

        report = inspect_disk(Path(args.disk))
        if args.json:
            _print_json(report)
        else:
            print_inspection(report)
        return 0

    p = sub.add_parser(
        "inspect",
        help="what a disk holds: partitions, filesystems, OS, bootloader, kernels (read-only)",
    )
    p.add_argument("disk")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _add_import(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.images.importer import import_disk, report_import

        record = import_disk(Path(args.src), name=args.name, quiet=args.json)
        if args.json:
            _print_json({"Images": [record.describe()]})
        else:
            report_import(record)
        return 0

    p = sub.add_parser("import", help="validate, convert, inspect and register a disk as an AMI")
    p.add_argument("src")
    p.add_argument("--name", help="image name (default: the OVF's or the file's name)")
    p.add_argument("--json", action="store_true", help="print describe-images JSON")
    p.set_defaults(func=run)


def _ids_out(args: argparse.Namespace, payload: dict[str, Any], lines: list[str]) -> int:
    """Lifecycle commands: AWS-shaped JSON with --json, else the IDs, one line each."""
    if args.json:
        _print_json(payload)
    else:
        print("\n".join(lines))
    return 0


def _add_bundle(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.images.lifecycle import bundle_image

        r = bundle_image(
            args.image, Path(args.cert), Path(args.privatekey), Path(args.destination),
            ec2_cert=Path(args.ec2cert) if args.ec2cert else None, prefix=args.prefix,
            user=args.user,
        )  # fmt: skip
        m = r.manifest
        payload = {
            "ImageId": r.image_id, "ManifestPath": str(r.manifest_path), "Name": m.name,
            "Digest": m.digest, "Size": m.size, "BundledSize": m.bundled_size,
            "Parts": [p.filename for p in m.parts], "Seconds": round(r.seconds, 3),
        }  # fmt: skip
        return _ids_out(args, payload, [str(r.manifest_path)])

    p = sub.add_parser("bundle", help="bundle an image as ec2-bundle-image did (manifest+parts)")
    p.add_argument("image", metavar="IMAGE_ID")
    p.add_argument("--cert", "-c", required=True, help="your X.509 certificate (PEM)")
    p.add_argument("--privatekey", "-k", required=True, help="its RSA private key (PEM)")
    p.add_argument("--ec2cert", help="EC2's certificate (default: amilab's own)")
    p.add_argument("--destination", "-d", required=True, metavar="DIR")
    p.add_argument("--prefix", "-p", help="file name prefix (default: the image's name)")
    p.add_argument("--user", "-u", help="account ID in the manifest (default: yours)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _add_unbundle(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.images.bundle import unbundle

        out = unbundle(
            Path(args.manifest), Path(args.privatekey), Path(args.destination),
            source_dir=Path(args.source) if args.source else None,
            verify_with=[Path(c) for c in args.cert] or None,
        )  # fmt: skip
        payload = {"ImagePath": str(out), "Size": out.stat().st_size}
        return _ids_out(args, payload, [str(out)])

    p = sub.add_parser("unbundle", help="verify a bundle and restore its image file")
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--privatekey", "-k", required=True, help="your RSA private key (PEM)")
    p.add_argument("--destination", "-d", required=True, metavar="DIR")
    p.add_argument("--source", "-s", metavar="DIR", help="where the parts are (default: beside)")
    p.add_argument("--cert", action="append", default=[], help="check the signature with it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _add_register(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.images.lifecycle import register_manifest

        rec = register_manifest(
            Path(args.manifest), name=args.name, description=args.description,
            certs=[Path(c) for c in args.cert] or None, virtualization=args.virtualization_type,
        )  # fmt: skip
        return _ids_out(args, {"ImageId": rec.image_id, "Images": [rec.describe()]}, [rec.image_id])

    p = sub.add_parser("register", help="register an AMI, AKI or ARI from a bundle manifest")
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--name", help="default: the manifest's name")
    p.add_argument("--description", default="")
    p.add_argument("--cert", action="append", default=[], help="signing certificate to trust")
    p.add_argument("--virtualization-type", choices=("paravirtual", "hvm"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _add_store(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.images.store import store_image

        t = store_image(
            args.image, args.bucket, endpoint_url=args.endpoint_url, with_kernel=args.with_kernel
        )
        return _ids_out(args, {**t.describe(), "Bytes": t.bytes_stored}, [t.object_key])

    p = sub.add_parser("store", help="store an AMI as one object <ami-id>.bin (dir or s3://)")
    p.add_argument("image", metavar="AMI_ID")
    p.add_argument("--bucket", required=True, help="DIR or s3://BUCKET[/PATH]")
    p.add_argument("--endpoint-url", help="S3 endpoint (default: boto3's configuration)")
    p.add_argument("--with-kernel", action="store_true", help="include its AKI and ARI")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _add_store_tasks(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.images.store import TaskLog

        tasks = [t for t in TaskLog().recent() if not args.image or t.image_id in args.image]
        lines = [
            f"{t.image_id} {t.state} {t.progress}% {t.bucket}/{t.object_key}"
            + (f" ({t.failure_reason})" if t.failure_reason else "")
            for t in tasks
        ]
        return _ids_out(args, {"StoreImageTaskResults": [t.describe() for t in tasks]}, lines)

    p = sub.add_parser("store-tasks", help="store tasks of the last 31 days and their progress")
    p.add_argument("--image", action="append", metavar="AMI_ID", help="only these images")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _add_restore(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.images.store import restore_image

        r = restore_image(
            args.bucket, args.object_key, name=args.name, endpoint_url=args.endpoint_url
        )
        payload = {
            "ImageId": r.image.image_id, "ObjectKey": r.object_key,
            "KernelId": r.image.kernel_id, "RamdiskId": r.image.ramdisk_id,
            "Images": [x.describe() for x in (r.image, r.kernel, r.ramdisk) if x],
        }  # fmt: skip
        return _ids_out(args, payload, [r.image.image_id])

    p = sub.add_parser("restore", help="register a stored <ami-id>.bin under a new ID")
    p.add_argument("--bucket", required=True, help="DIR or s3://BUCKET[/PATH]")
    p.add_argument("--object-key", required=True)
    p.add_argument("--name", help="default: the stored image's name (must be free)")
    p.add_argument("--endpoint-url", help="S3 endpoint (default: boto3's configuration)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _add_copy_image(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.images.lifecycle import copy_image

        rec = copy_image(
            args.source, args.name, description=args.description, copy_tags=args.copy_image_tags
        )
        return _ids_out(args, {"ImageId": rec.image_id}, [rec.image_id])

    p = sub.add_parser("copy-image", help="copy an AMI under a new ID and name")
    p.add_argument("source", metavar="SOURCE_IMAGE_ID")
    p.add_argument("--name", required=True)
    p.add_argument("--description")
    p.add_argument("--copy-image-tags", action="store_true", help="copy its tags too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _add_deregister(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.images.lifecycle import deregister

        gone = [deregister(ref, force=args.force).image_id for ref in args.image]
        return _ids_out(args, {"Deregistered": [{"ImageId": i} for i in gone]}, gone)

    p = sub.add_parser("deregister", help="deregister images (refused while others use them)")
    p.add_argument("image", nargs="+", metavar="IMAGE_ID")
    p.add_argument("--force", action="store_true", help="even if registered AMIs use it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _tags_out(args: argparse.Namespace, records: list[Any]) -> int:
    payload = {"Images": [{"ImageId": r.image_id, "Tags": r.describe()["Tags"]} for r in records]}
    return _ids_out(args, payload, [r.image_id for r in records])


def _add_tag(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.images.lifecycle import parse_tags, tag

        return _tags_out(args, tag([args.image], parse_tags(args.tags)))

    p = sub.add_parser("tag", help="add or change an image's tags")
    p.add_argument("image", metavar="IMAGE_ID")
    p.add_argument("tags", nargs="+", metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _add_untag(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.images.lifecycle import untag

        return _tags_out(args, untag([args.image], args.tags))

    p = sub.add_parser("untag", help="remove tags (KEY, or KEY=VALUE only with that value)")
    p.add_argument("image", metavar="IMAGE_ID")
    p.add_argument("tags", nargs="+", metavar="KEY[=VALUE]")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _add_launch_permission(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from builder.images.lifecycle import set_launch_permission

        rec = set_launch_permission(
            args.image, add=args.add, remove=args.remove, public=args.public, reset=args.reset
        )
        d = rec.describe()
        payload = {k: d[k] for k in ("ImageId", "Public", "LaunchPermissions")}
        return _ids_out(args, payload, [rec.image_id])

    p = sub.add_parser("launch-permission", help="who may launch an image (accounts, public)")
    p.add_argument("image", metavar="IMAGE_ID")
    p.add_argument("--add", action="append", default=[], metavar="ACCOUNT_ID")
    p.add_argument("--remove", action="append", default=[], metavar="ACCOUNT_ID")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--public", dest="public", action="store_true", default=None)
    g.add_argument("--private", dest="public", action="store_false")
    p.add_argument("--reset", action="store_true", help="private, no accounts (before the rest)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _add_boot(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from harness.launch.boot import BootRequest, boot

        return boot(
            BootRequest(
                image=args.image,
                kernel=args.kernel,
                ramdisk=args.ramdisk,
                accel=args.accel,
                console=args.console,
                runner=args.runner,
                keep=args.keep,
                open_network=args.open_network,
                firmware=args.firmware,
                disk_format=args.format,
                disk_bus=args.disk_bus,
                layers=[str(p) for p in args.layer or []],
                append=args.append,
                ssh_timeout=args.ssh_timeout,
                metadata=metadata_from_args(args),
            )
        )

    p = sub.add_parser(
        "boot",
        help="boot an AMI under QEMU (SSH or the serial console), or write its runner",
        description="Boot one instance of an AMI. Without --console: wait for SSH, print how "
        "to log in, run until Ctrl-C. With --console: the serial console (Ctrl-] leaves).",
    )
    p.add_argument("image", help="AMI ID or image name")
    p.add_argument("--kernel", metavar="AKI", help="boot with this kernel (aki- ID or name)")
    _launch_arguments(p)
    p.add_argument("--console", action="store_true", help="attach the serial console")
    p.add_argument(
        "--runner",
        type=Path,
        metavar="FILE.pyz",
        help="write a qemu-runner runner for this image instead of booting",
    )
    p.set_defaults(func=run)


def _launch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ramdisk", metavar="ARI", help="another ramdisk (ari- ID or name), or none")
    p.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="auto: KVM only where a probe guest runs under it, else TCG",
    )
    p.add_argument("--keep", action="store_true", help="keep the instance directory")
    p.add_argument(
        "--open-network",
        action="store_true",
        help="lift restrict=on: let the guest reach the host's network",
    )
    p.add_argument("--firmware", choices=("bios", "uefi"), help="hvm: override the firmware")
    p.add_argument(
        "--format",
        choices=("raw", "qcow2", "vmdk", "vmdk-stream"),
        help="which of the image's disk formats to boot (default: raw first)",
    )
    p.add_argument(
        "--disk-bus",
        choices=("virtio", "nvme", "ide", "scsi"),
        default="virtio",
        help="how the root disk is attached (nvme: the cloud kernel's built-in driver)",
    )
    p.add_argument("--ssh-timeout", type=float, default=300.0, metavar="SECONDS")
    p.add_argument(
        "--layer",
        action="append",
        type=Path,
        metavar="FILE.ini",
        help="a qemu-runner layer applied over the machine profile (repeatable)",
    )
    p.add_argument("--append", metavar="ARGS", help="paravirtual: more kernel command line")
    add_metadata_arguments(p)


def _add_smoke(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from harness.smoke.run import SmokeRequest, smoke

        _, code = smoke(
            SmokeRequest(
                target=args.target,
                image=args.image,
                kernels=args.kernel or [],
                ramdisk=args.ramdisk,
                accel=args.accel,
                keep=args.keep,
                open_network=args.open_network,
                ssh_timeout=args.ssh_timeout,
                json=args.json,
                junit=args.junit,
                firmware=args.firmware,
                disk_format=args.format,
                disk_bus=args.disk_bus,
                layers=[str(p) for p in args.layer or []],
                append=args.append,
                metadata=metadata_from_args(args),
            )
        )
        return code

    p = sub.add_parser(
        "smoke",
        help="build if needed, boot, check kernel/modules/metadata, report",
        description="Smoke-test images: a recipe file is built first (default build.yaml); "
        "an AMI ID or name is booted as registered. Exit 1 when a check fails.",
    )
    p.add_argument(
        "target",
        nargs="?",
        metavar="RECIPE_FILE | AMI_ID",
        help="recipe file (default build.yaml), or an AMI ID or name",
    )
    p.add_argument("--image", metavar="NAME", help="only this recipe of the file")
    p.add_argument(
        "--kernel",
        metavar="AKI",
        action="append",
        help="boot with this kernel instead (repeat: one instance per kernel)",
    )
    _launch_arguments(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--junit", type=Path, metavar="FILE", help="also write a JUnit XML report")
    p.set_defaults(func=run)


def _add_imds(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from harness.imds.server import serve

        serve(port=args.port, config=args.config, bind=args.bind)
        return 0

    p = sub.add_parser("imds", help="the instance metadata service")
    imds_sub = p.add_subparsers(dest="imds_command", required=True, parser_class=_Parser)
    s = imds_sub.add_parser("serve", help="serve an instance's metadata on the host")
    s.add_argument("--port", type=int, default=1338, help="default 1338")
    s.add_argument("--bind", default="127.0.0.1", help="default 127.0.0.1")
    s.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML: ami_id, instance_id, kernel_id, public_key_file, user_data_file, "
        "iam_role, http_tokens (optional|required), http_endpoint (enabled|disabled), ...",
    )
    s.set_defaults(func=run)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is 2 as well
        self.exit(2, f"amilab: error: {message}\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="amilab",
        description="Bake VM images from YAML recipes and boot them under QEMU as EC2 did AMIs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_build(sub)
    _add_images(sub)
    _add_kernels(sub)
    _add_convert(sub)
    _add_inspect(sub)
    _add_import(sub)
    _add_bundle(sub)
    _add_unbundle(sub)
    _add_register(sub)
    _add_store(sub)
    _add_store_tasks(sub)
    _add_restore(sub)
    _add_copy_image(sub)
    _add_deregister(sub)
    _add_tag(sub)
    _add_untag(sub)
    _add_launch_permission(sub)
    _add_boot(sub)
    _add_smoke(sub)
    _add_imds(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AmilabError as e:
        print(f"amilab: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("amilab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
