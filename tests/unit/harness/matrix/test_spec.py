"""Matrix files and command lines into cells: axes, per-image axes, kernel columns with
options, exclude and include rows, and one clear line for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import BadInput
from harness.matrix import spec
from harness.matrix.cells import OWN

FILE = """
recipes: recipes.yaml
images:
  - debian-pv
  - {image: debian-hvm, firmware: [bios, uefi]}
kernels: [own, debian-cloud-sid, {name: ide, kernel: own, disk_bus: ide}]
http_tokens: [optional, required]
exclude:
  - {image: debian-hvm, kernel: ide}
  - {image: debian-pv, kernel: debian-cloud-sid, http_tokens: required}
include:
  - {image: debian-pv, kernel: own, firmware: uefi}
"""


def test_file_expands_to_cells(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(FILE)
    s = spec.load(path)
    assert s.recipes == tmp_path / "recipes.yaml"
    keys = [c.key for c in s.cells()]
    assert keys == [
        "debian-pv http_tokens=optional × own",
        "debian-pv http_tokens=optional × debian-cloud-sid",
        "debian-pv http_tokens=optional × ide",
        "debian-pv http_tokens=required × own",
        "debian-pv http_tokens=required × ide",
        "debian-hvm firmware=bios http_tokens=optional × own",
        "debian-hvm firmware=bios http_tokens=optional × debian-cloud-sid",
        "debian-hvm firmware=bios http_tokens=required × own",
        "debian-hvm firmware=bios http_tokens=required × debian-cloud-sid",
        "debian-hvm firmware=uefi http_tokens=optional × own",
        "debian-hvm firmware=uefi http_tokens=optional × debian-cloud-sid",
        "debian-hvm firmware=uefi http_tokens=required × own",
        "debian-hvm firmware=uefi http_tokens=required × debian-cloud-sid",
        "debian-pv firmware=uefi × own",
    ]
    cells = {c.key: c for c in s.cells()}
    ide = cells["debian-pv http_tokens=optional × ide"]
    # the column's option is in the cell but not in its row
    assert ide.option_dict == {"disk_bus": "ide", "http_tokens": "optional"}
    assert ide.kernel_ref is None and cells["debian-pv firmware=uefi × own"].kernel_ref is None
    assert (
        cells["debian-pv http_tokens=optional × debian-cloud-sid"].kernel_ref == "debian-cloud-sid"
    )


def test_command_line_form() -> None:
    s = spec.from_arguments(["a", "b"], ["own", "k1"], {"firmware": []}, ["b:k1"], None)
    assert [c.key for c in s.cells()] == ["a × own", "a × k1", "b × own"]
    assert spec.from_arguments(["a"], [], {}, [], None).kernels[0].label == OWN


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kernels: [own]", "images: a list of at least one"),
        ("images: [a]\nfirmware: [efi]", "firmware: 'efi' is not allowed; allowed: bios, uefi"),
        ("images: [a]\nkernal: [own]", "unknown key 'kernal'"),
        ("images: [{image: a, colour: red}]", "images: unknown key 'colour'"),
        ("images: [a]\nexclude: [{imagee: a}]", "exclude: unknown key 'imagee'"),
        ("images: [a]\ninclude: [{kernel: own}]", "include: {'kernel': 'own'}: names no image"),
        ("images: [a]\nkernels: [own, own]", "a column label is given twice"),
        ("images: [a\n", "m.yaml:2: not YAML"),
    ],
)
def test_mistakes_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(BadInput) as e:
        spec.load(path)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(str(path))


def test_exclude_argument_needs_both_halves() -> None:
    with pytest.raises(BadInput, match="--exclude 'a': expected IMAGE:KERNEL"):
        spec.from_arguments(["a"], [], {}, ["a"], None)
