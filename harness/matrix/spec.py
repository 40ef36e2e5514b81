"""What a matrix is made of, from a YAML matrix file or the command line.

A matrix file (like a tuxsuite plan):

    recipes: build.yaml                  # where recipe names come from (default build.yaml)
    images:                              # recipe names, AMI IDs or names
      - debian-pv
      - {image: debian-hvm, firmware: [bios, uefi]}   # axes of this image alone
    kernels:                             # `own`, kernel names, aki- IDs
      - own
      - debian-cloud-sid
      - {name: no-ide-driver, kernel: own, disk_bus: ide}  # a column with launch options
    firmware: [bios]                     # axes crossing every image: firmware, instance_type,
    http_tokens: [optional, required]    #   http_tokens, disk_bus, ramdisk
    exclude:
      - {image: debian-pv, kernel: debian-cloud-sid}
    include:
      - {image: debian-pv, kernel: own, instance_type: m1.large}

Every mistake is one BadInput line naming the file, the key and what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import config
from builder.errors import BadInput
from harness.matrix.cells import OPTIONS, OWN, Cell, ImageRow, KernelColumn, expand

TOP_KEYS = {"recipes", "images", "kernels", "exclude", "include", *OPTIONS}


@dataclass
class MatrixSpec:
    images: list[ImageRow]
    kernels: list[KernelColumn]
    axes: dict[str, list[str]] = field(default_factory=dict)
    exclude: list[dict[str, str]] = field(default_factory=list)
    include: list[dict[str, str]] = field(default_factory=list)
    recipes: Path = Path("build.yaml")

    def cells(self) -> list[Cell]:
        return expand(self.images, self.kernels, self.axes, self.exclude, self.include)


def _option_value(where: str, name: str, value: Any) -> str:
    allowed = OPTIONS[name]
    text = str(value)
    if not isinstance(value, (str, int)) or (allowed is not None and text not in allowed):
        want = ", ".join(allowed) if allowed else "a string"
        raise BadInput(f"{where}: {name}: {value!r} is not allowed; allowed: {want}")
    return text


def _axis(where: str, name: str, value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise BadInput(f"{where}: {name}: an empty list")
    return [_option_value(where, name, v) for v in values]


def _image_row(where: str, entry: Any) -> ImageRow:
    if isinstance(entry, str) and entry:
        return ImageRow(entry)
    if isinstance(entry, dict) and isinstance(entry.get("image"), str):
        axes = {}
        for k, v in entry.items():
            if k == "image":
                continue
            if k not in OPTIONS:
                raise BadInput(
                    f"{where}: images: unknown key {k!r}; allowed: image, " + ", ".join(OPTIONS)
                )
            axes[k] = _axis(where, k, v)
        return ImageRow(entry["image"], axes)
    raise BadInput(f"{where}: images: {entry!r}: expected a name or {{image: NAME, ...}}")


def _kernel_column(where: str, entry: Any) -> KernelColumn:
    if isinstance(entry, str) and entry:
        return KernelColumn(entry, None if entry == OWN else entry)
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        ref = entry.get("kernel", OWN)
        if not isinstance(ref, str):
            raise BadInput(f"{where}: kernels: {entry['name']}: kernel must be a name")
        opts = {}
        for k, v in entry.items():
            if k in ("name", "kernel"):
                continue
            if k not in OPTIONS:
                raise BadInput(
                    f"{where}: kernels: unknown key {k!r}; allowed: name, kernel, "
                    + ", ".join(OPTIONS)
                )
            opts[k] = _option_value(where, k, v)
        return KernelColumn(entry["name"], None if ref == OWN else ref, opts)
    raise BadInput(f"{where}: kernels: {entry!r}: expected a name or {{name: LABEL, kernel: ...}}")


def _rows(where: str, key: str, value: Any, allowed: set[str]) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise BadInput(f"{where}: {key}: expected a list of mappings")
    out = []
    for row in value:
        if not isinstance(row, dict) or not row:
            raise BadInput(f"{where}: {key}: {row!r}: expected a mapping such as {{image: X}}")
        bad = set(row) - allowed
        if bad:
            raise BadInput(
                f"{where}: {key}: unknown key {sorted(bad)[0]!r}; allowed: "
                + ", ".join(sorted(allowed))
            )
        out.append({k: str(v) for k, v in row.items()})
    return out


def from_mapping(doc: Any, where: str, base: Path = Path(".")) -> MatrixSpec:
    if not isinstance(doc, dict):
        raise BadInput(f"{where}: expected a mapping with images: and kernels:")
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise BadInput(
            f"{where}: unknown key {sorted(unknown)[0]!r}; allowed: " + ", ".join(sorted(TOP_KEYS))
        )
    images = doc.get("images")
    if not isinstance(images, list) or not images:
        raise BadInput(f"{where}: images: a list of at least one recipe name or AMI is required")
    kernels = doc.get("kernels", [OWN])
    if not isinstance(kernels, list) or not kernels:
        raise BadInput(f"{where}: kernels: expected a list of kernel names")
    spec = MatrixSpec(
        images=[_image_row(where, e) for e in images],
        kernels=[_kernel_column(where, e) for e in kernels],
        axes={k: _axis(where, k, doc[k]) for k in OPTIONS if k in doc},
    )
    labels = [k.label for k in spec.kernels]
    if len(set(labels)) != len(labels):
        raise BadInput(f"{where}: kernels: a column label is given twice")
    cell_keys = {"image", "kernel", *OPTIONS}
    spec.exclude = _rows(where, "exclude", doc.get("exclude", []), cell_keys)
    spec.include = _rows(where, "include", doc.get("include", []), cell_keys)
    for row in spec.include:
        if "image" not in row:
            raise BadInput(f"{where}: include: {row!r}: names no image")
        for k, v in row.items():
            if k in OPTIONS:
                _option_value(where, k, v)
    recipes = doc.get("recipes", "build.yaml")
    if not isinstance(recipes, str):
        raise BadInput(f"{where}: recipes: expected a file name")
    spec.recipes = (base / recipes) if not Path(recipes).is_absolute() else Path(recipes)
    return spec


def load(path: Path) -> MatrixSpec:
    cfg = config.load(path, what="matrix file")
    return from_mapping(cfg.data, str(path), path.parent)


def from_arguments(
    images: list[str],
    kernels: list[str],
    axes: dict[str, list[str]],
    exclude: list[str],
    recipes: Path | None,
) -> MatrixSpec:
    """The command line's form: `--image`, `--kernel`, `--firmware`, … repeated; an
    `--exclude IMAGE:KERNEL` drops one cell."""
    doc: dict[str, Any] = {"images": images, "kernels": kernels or [OWN]}
    doc.update({k: v for k, v in axes.items() if v})
    rows = []
    for text in exclude:
        image, sep, kernel = text.partition(":")
        if not sep or not image or not kernel:
            raise BadInput(f"--exclude {text!r}: expected IMAGE:KERNEL")
        rows.append({"image": image, "kernel": kernel})
    doc["exclude"] = rows
    if recipes is not None:
        doc["recipes"] = str(recipes)
    return from_mapping(doc, "command line")
