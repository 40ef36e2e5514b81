"""Everything the CLI prints: `--json`, the ID lines, and the human-readable tables and lines.

Every command that can print JSON declares `--json` through `add_json`; with it the command
prints the payload its library call describes (AWS field names), without it a table, a few
lines for a person, or, for the image lifecycle commands, the IDs one per line so that shell
scripts can take them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from rich.table import Table

from builder.images.registry import ImageRecord
from builder.progress import out as console
from builder.progress import show_table


def add_json(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--json", action="store_true", help=help)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def show(args: argparse.Namespace, payload: Any, human: Callable[[], None]) -> int:
    """The payload as JSON with --json, else what `human` prints for a person."""
    if args.json:
        print_json(payload)
    else:
        human()
    return 0


def print_result(args: argparse.Namespace, payload: dict[str, Any], lines: list[str]) -> int:
    """Lifecycle commands: AWS-shaped JSON with --json, else the IDs, one line each."""
    return show(args, payload, lambda: print("\n".join(lines)))


# ------------------------------------------------------------------------------- images


def print_images(records: list[ImageRecord]) -> None:
    table = Table(title=f"{len(records)} image(s)", show_lines=False)
    for col in ("ImageId", "Type", "Name", "Virtualization", "Kernel", "Ramdisk", "Created"):
        table.add_column(col)
    for r in records:
        table.add_row(
            r.image_id,
            r.image_type,
            r.name,
            r.virtualization_type or "",
            r.kernel_id or (r.kernel_release or ""),
            r.ramdisk_id or "",
            r.creation_date,
        )
    show_table(table)


def print_builds(records: list[ImageRecord]) -> None:
    for rec in records:
        console.print(
            f"[green]registered[/] {rec.image_id} [bold]{rec.name}[/] "
            f"kernel {rec.kernel_id or '-'} ramdisk {rec.ramdisk_id or '-'} "
            f"({rec.virtualization_type}) at {rec.image_location}"
        )
        for fmt, loc in rec.locations.items():
            console.print(f"  {fmt}: {loc}")


def print_verdicts(verdicts: list[Any]) -> None:
    """`build --verify`: one line per recipe, then each difference."""
    for v in verdicts:
        if v.reproducible:
            console.print(f"[green]reproducible[/] [bold]{v.name}[/]: disk {v.digests[0]}")
            continue
        console.print(
            f"[red]not reproducible[/] [bold]{v.name}[/]: disks {v.digests[0][:16]} and "
            f"{v.digests[1][:16]} differ"
        )
        for d in v.differences:
            how = f": {d['First']} / {d['Second']}" if "First" in d else ""
            console.print(f"  {d['Path']}: {d['What']}{how}", markup=False, highlight=False)
            if d.get("Diffoscope"):
                console.print(d["Diffoscope"], markup=False, highlight=False)


def print_import(record: ImageRecord) -> None:
    x = record.extra
    os_ = x.get("os") or {}
    console.print(
        f"[bold]{record.image_id}[/] {record.name}: {os_.get('product')} "
        f"({record.launch.boot}), kernels {', '.join(record.launch.kernel_releases) or 'none'}"
    )
    console.print(f"  {record.image_location}")
    for p in x["problems"]:
        console.print(f"  [red]unbootable here:[/] {p}")


# ------------------------------------------------------------------------------ kernels


def print_kernels(rows: list[dict[str, Any]]) -> None:
    table = Table(title="kernels (kernels/*.yaml)")
    for col in ("Name", "Suite", "Arch", "Package", "Version", "Release", "Downloaded", "AKI"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            row["Name"],
            row.get("Suite", ""),
            row.get("Architecture", "x86_64"),
            row["Package"],
            row.get("Version", ""),
            row.get("KernelRelease", ""),
            "yes" if row.get("Downloaded") else "no",
            row.get("ImageId") or "-",
        )
    show_table(table)


def print_module_cells(cells: list[dict[str, Any]]) -> None:
    """`modules check`: one row per module and kernel, the evidence under each verdict."""
    table = Table(title="out-of-tree modules")
    for col in ("Module", "Built for", "Kernel", "Release", "Verdict", "ms"):
        table.add_column(col)
    for c in cells:
        colour = "green" if c["Class"] == "loads" else "red"
        table.add_row(
            f"{c['Module']} {c['Version']} ({c['Source']})", c["BuiltFor"], c["KernelName"],
            c["KernelRelease"], f"[{colour}]{c['Class']}[/]", f"{c['Milliseconds']:.1f}",
        )  # fmt: skip
    show_table(table)
    for c in cells:
        console.print(f"{c['Module']} on {c['KernelRelease']}: {c['Class']}")
        for line in c["Evidence"] + c["Notes"]:
            console.print(f"  {line}", markup=False)


# -------------------------------------------------------------------------------- disks


def print_inspection(report: dict[str, Any]) -> None:
    os_ = report.get("os") or {}
    source = report["source"]
    console.print(f"[bold]{source['path']}[/]: {source['container']}, {source['capacity']} bytes")
    part = report["partitioning"]
    console.print(
        f"partitions: {part['table'] or 'none'} "
        + ", ".join(f"{p['number']}:{p.get('name') or p.get('type')}" for p in part["parts"])
    )
    for fs in report["filesystems"]:
        console.print(
            f"  {fs['device']}: {fs['type']} uuid={fs.get('uuid')} label={fs.get('label')}"
        )
    if os_:
        console.print(f"os: {os_['product']} ({os_['distro']} {os_['version']}, {os_['arch']})")
    boot = report["bootloader"]
    console.print(f"bootloader: mbr={boot['mbr']} efi={boot['efi']} config={boot.get('config')}")
    for k in report["kernels"]:
        console.print(
            f"kernel {k['release']}: {k['kernel']} modules={bool(k['modules'])} "
            f"initrd={k['initrd']} virtio={'yes' if k['virtio'] else 'NO'}"
        )
    for p in report["problems"]:
        console.print(f"[red]unbootable here:[/] {p}")
