"""Human-readable tables of the registry and the kernel catalogue (rich)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from builder.images.registry import ImageRecord, Registry
from builder.progress import out as console


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
    console.print(table)


def kernel_rows(definitions: list[Any]) -> list[dict[str, Any]]:
    """The catalogue with the AKIs registered from each definition."""
    registered = Registry().list("kernel")
    rows = []
    for d in definitions:
        akis = [
            {"ImageId": r.image_id, "KernelRelease": r.kernel_release, "Version": r.package_version}
            for r in registered
            if r.extra.get("definition") == d.name
        ]
        rows.append(
            {
                "Name": d.name,
                "Package": d.package,
                "Description": d.description,
                "RamdiskModules": list(d.ramdisk_modules),
                "Cmdline": d.cmdline,
                "Registered": akis,
            }
        )
    return rows


def print_kernels(rows: list[dict[str, Any]]) -> None:
    table = Table(title="kernels (kernels/*.yaml)")
    for col in ("Name", "Package", "Registered AKIs", "Description"):
        table.add_column(col)
    for row in rows:
        akis = "\n".join(f"{a['ImageId']} {a['KernelRelease']}" for a in row["Registered"])
        table.add_row(row["Name"], row["Package"], akis or "-", row["Description"])
    console.print(table)
