"""A matrix cell: one image × one kernel × one set of launch options, as plain data.

A `Cell` is what an executor needs to run one smoke test and nothing more (strings, numbers
and tuples), so it can be pickled to another process or machine (the Dask executor) as well
as handed to a thread. Its `key` names it across runs, from the names the user gave (recipe
name, kernel name, options), not from IDs a rebuild changes, so a baseline still matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

OWN = "own"  # the kernel column of the image's own kernel (its AKI, or its GRUB's for HVM)

# launch settings a cell may vary, with the values each may take (None: any text)
OPTIONS: dict[str, tuple[str, ...] | None] = {
    "firmware": ("bios", "uefi"),
    "instance_type": None,
    "http_tokens": ("optional", "required"),
    "disk_bus": ("virtio", "nvme", "ide", "scsi"),
    "ramdisk": None,
    # which images a row takes: a cell of another architecture than its image's is SKIP
    "architecture": ("x86_64", "i386", "arm64"),
}


@dataclass(frozen=True)
class Cell:
    image: str  # as the user named it: a recipe name, an AMI ID or name
    kernel: str  # the column's label: OWN, a kernel name or aki- ID, or a label of the file's
    kernel_ref: str | None = None  # what boots: None for the image's own kernel
    options: tuple[tuple[str, str], ...] = ()  # sorted (name, value) pairs
    image_id: str = ""  # filled in once the image is built or found
    skip: str = ""  # why the cell cannot apply (SKIP); empty: it runs
    # the options that belong to the row (the image's axes); the column's own options (a
    # kernel entry's disk_bus, say) are part of its label instead
    row_options: tuple[str, ...] = ()
    # filled in once the image is known (harness.matrix.prepare): what the start order and
    # the cores a cell holds go by (harness.matrix.order)
    architecture: str = ""
    vcpus: int = 1

    @property
    def row(self) -> str:
        """The report's row: the image with its options (a firmware is a row of its own)."""
        opts = " ".join(f"{k}={v}" for k, v in self.options if k in self.row_options)
        return f"{self.image} {opts}" if opts else self.image

    @property
    def key(self) -> str:
        return f"{self.row} × {self.kernel}"

    @property
    def option_dict(self) -> dict[str, str]:
        return dict(self.options)

    def resolved(self, **changes: Any) -> Cell:
        return replace(self, **changes)


def options_tuple(options: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in options.items() if v is not None))


@dataclass(frozen=True)
class KernelColumn:
    label: str
    ref: str | None  # None: the image's own
    options: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class ImageRow:
    ref: str
    axes: dict[str, list[str]] = field(default_factory=dict, hash=False, compare=False)


def expand(
    images: list[ImageRow],
    kernels: list[KernelColumn],
    axes: dict[str, list[str]],
    exclude: list[dict[str, str]] = (),  # type: ignore[assignment]
    include: list[dict[str, str]] = (),  # type: ignore[assignment]
) -> list[Cell]:
    """Every combination, in a stable order (images, then options, then kernels), less the
    `exclude` rows (a cell is excluded when it matches every key of one), plus `include`
    rows (single cells: image, kernel and options)."""
    cells: list[Cell] = []
    for row in images:
        own_axes = {**axes, **row.axes}
        for combo in _product(own_axes):
            for k in kernels or [KernelColumn(OWN, None)]:
                opts = {**combo, **k.options}
                cells.append(
                    Cell(row.ref, k.label, k.ref, options_tuple(opts), row_options=_own(combo, k))
                )
    cells = [c for c in cells if not any(matches(c, ex) for ex in exclude)]
    by_label = {k.label: k for k in kernels}
    for extra in include:
        extra = dict(extra)
        image = extra.pop("image")
        label = extra.pop("kernel", OWN)
        col = by_label.get(label, KernelColumn(label, None if label == OWN else label))
        opts = {**col.options, **extra}
        cells.append(
            Cell(image, col.label, col.ref, options_tuple(opts), row_options=_own(extra, col))
        )
    out, seen = [], set()
    for c in cells:
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out


def _own(options: dict[str, str], column: KernelColumn) -> tuple[str, ...]:
    return tuple(sorted(k for k in options if k not in column.options))


def matches(cell: Cell, row: dict[str, str]) -> bool:
    values = {"image": cell.image, "kernel": cell.kernel, **cell.option_dict}
    return all(values.get(k) == str(v) for k, v in row.items())


def _product(axes: dict[str, list[str]]) -> list[dict[str, str]]:
    combos: list[dict[str, str]] = [{}]
    for name in sorted(axes):
        values = axes[name]
        if not values:
            continue
        combos = [{**c, name: v} for c in combos for v in values]
    return combos
