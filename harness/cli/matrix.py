"""`amilab matrix`: images × kernels × launch options, one smoke run per cell."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.errors import BadInput
from harness.cli.command import add_command
from harness.cli.flags import add_seconds, add_switch
from harness.cli.output import add_json
from harness.launch.accel import ACCELERATORS
from harness.matrix.connect import Tls, check_address

# the option axes on the command line (harness.matrix.cells.OPTIONS), repeatable
AXES = (
    ("--firmware", "firmware", "hvm firmware: bios or uefi (paravirtual images: SKIP)"),
    ("--instance-type", "instance_type", "meta-data/instance-type"),
    ("--http-tokens", "http_tokens", "optional or required (IMDSv2 only)"),
    ("--disk-bus", "disk_bus", "how the root disk is attached: virtio, nvme, ide, scsi"),
    ("--architecture", "architecture", "x86_64, i386 or arm64: images of another: SKIP"),
)


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of 1 or more")
    return n


def _retries(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 or more")
    return int(text)


def _tls(args: argparse.Namespace) -> Tls | None:
    files = (args.tls_ca, args.tls_cert, args.tls_key)
    if not any(files):
        return None
    if not all(files):
        raise BadInput("TLS needs all three of --tls-ca, --tls-cert and --tls-key")
    return Tls(*files)


def _matrix(args: argparse.Namespace) -> int:
    from harness.matrix import spec as spec_mod
    from harness.matrix.run import MatrixRequest, matrix

    axes = {dest: getattr(args, dest) for _, dest, _ in AXES}
    tls = _tls(args)
    if args.scheduler:
        check_address(args.scheduler, tls)  # before anything is built
    elif tls or args.artifacts:
        raise BadInput("--tls-*/--artifacts apply to --scheduler")
    if args.file:
        if args.images or args.kernels or any(axes.values()) or args.exclude:
            raise BadInput("give the cells either in a matrix file or with --image/--kernel/…")
        spec = spec_mod.load(Path(args.file))
        if args.recipes:
            spec.recipes = args.recipes
    else:
        if not args.images:
            raise BadInput("matrix needs a matrix file or at least one --image")
        spec = spec_mod.from_arguments(args.images, args.kernels, axes, args.exclude, args.recipes)
    req = MatrixRequest(
        spec=spec,
        jobs=args.jobs,
        retries=args.retries,
        accel=args.accel,
        ssh_timeout=args.ssh_timeout,
        keep=args.keep,
        known_issues=args.known_issues,
        json=args.json,
        json_file=args.json_file,
        junit=args.junit,
        html=args.html,
        baseline=args.baseline if args.baseline in (None, "last") else Path(args.baseline),
        record=args.record is not False,
        results_db=args.results_db,
        name=str(args.file or ""),
        fail_on=args.fail_on,
        scheduler=args.scheduler,
        tls=tls,
        artifacts=args.artifacts,
        endpoint_url=args.endpoint_url,
        static_only=args.static_only,
    )
    return matrix(req)


def register_matrix(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "matrix",
        _matrix,
        "smoke-test images × kernels × options in parallel, compare runs",
        description="Run one smoke test per cell (image × kernel × launch options) on fresh "
        "instances, several at once; recipes not built yet are built first, once. Each cell "
        "is PASS, FAIL (image or kernel at fault), ERROR (harness or host; retried) or SKIP, "
        "with a class and console evidence. Exit 1 when a cell fails (--fail-on regression: "
        "only on a regression against --baseline), 130 when interrupted.",
    )
    p.add_argument("file", nargs="?", metavar="MATRIX.yaml", help="a matrix file")
    p.add_argument(
        "--image",
        dest="images",
        action="append",
        default=[],
        metavar="NAME",
        help="recipe name (built from --recipes) or AMI ID/name (repeat)",
    )
    p.add_argument(
        "--kernel",
        dest="kernels",
        action="append",
        default=[],
        metavar="AKI",
        help="own, a kernel name or aki- ID (repeat; default: own)",
    )
    for option, dest, help in AXES:
        p.add_argument(option, dest=dest, action="append", default=[], help=f"{help} (repeat)")
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="IMAGE:KERNEL",
        help="leave this cell out (repeat)",
    )
    p.add_argument(
        "--recipes",
        type=Path,
        metavar="FILE",
        help="the recipe file recipe names come from (default build.yaml)",
    )
    p.add_argument(
        "--jobs",
        type=_positive,
        metavar="N",
        help="guests at once (default: what cores and free memory allow)",
    )
    p.add_argument(
        "--retries",
        type=_retries,
        default=1,
        metavar="N",
        help="further attempts of a cell that ends in ERROR (default 1)",
    )
    p.add_argument(
        "--known-issues",
        type=Path,
        metavar="FILE",
        help="YAML: console patterns of known issues, their class and verdict",
    )
    p.add_argument(
        "--baseline",
        metavar="OLD.json|last",
        help="an earlier run's JSON report, or `last`: the previous run of the same matrix in "
        "the results database; mark regressions, fixes, new, vanished",
    )
    p.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the run's cells to the results database (the default; --no-record: not)",
    )
    p.add_argument(
        "--results-db",
        metavar="URL",
        help="sqlite:////PATH or postgresql://… (else AMILAB_RESULTS_DB, else "
        "results.sqlite in AMILAB_HOME)",
    )
    p.add_argument(
        "--fail-on",
        choices=("failure", "regression"),
        default="failure",
        help="exit 1 on any failed cell (default) or only on regressions",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the cells on a running dask scheduler's workers (tcp:// on loopback only, "
        "else tls://); default: an embedded cluster on this machine",
    )
    p.add_argument("--tls-ca", type=Path, metavar="FILE", help="CA the scheduler's cert is from")
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="this client's certificate")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="this client's private key")
    p.add_argument(
        "--artifacts",
        metavar="s3://BUCKET/PREFIX|DIR",
        help="move disks, kernels and ramdisks to the workers through this bucket or shared "
        "directory (S3 credentials from boto3's usual chain)",
    )
    p.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="S3 endpoint for --artifacts (else AMILAB_S3_ENDPOINT_URL or boto3's config)",
    )
    p.add_argument("--accel", choices=ACCELERATORS, default="auto")
    add_seconds(p, "--ssh-timeout", default=300.0)
    add_switch(p, "--keep", "keep the instance directories")
    add_switch(p, "--static-only", "only the out-of-tree modules' static verdicts (images "
               "× kernels × modules), no guest started, nothing recorded")  # fmt: skip
    add_json(p, "print the report as JSON (one object per cell)")
    p.add_argument("--json-file", type=Path, metavar="FILE", help="also write the JSON report")
    p.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML")
    p.add_argument("--html", type=Path, metavar="FILE", help="also write the HTML report")
