"""Architecture as a matrix dimension: cells that cannot apply to the image's are SKIP."""

from __future__ import annotations

from builder.images.records import ImageRecord
from harness.matrix.cells import Cell
from harness.matrix.prepare import skip_reason
from harness.matrix.spec import from_mapping


def image(arch: str, virtualization: str = "hvm") -> ImageRecord:
    rec = ImageRecord("ami-0123456789abcdef0", "machine", "x", arch, "")
    rec.virtualization_type = virtualization
    return rec


def cell(**options: str) -> Cell:
    return Cell("a", "own", None, tuple(sorted(options.items())))


def test_architecture_axis_skips_images_of_another() -> None:
    assert skip_reason(cell(architecture="arm64"), image("arm64")) == ""
    assert skip_reason(cell(architecture="arm64"), image("x86_64")) == "the image is x86_64"
    assert skip_reason(cell(architecture="i386"), image("i386", "paravirtual")) == ""


def test_instance_type_of_another_architecture_is_skip() -> None:
    reason = skip_reason(cell(instance_type="t3.micro"), image("arm64"))
    assert reason == "t3.micro runs x86_64; the image is arm64"
    assert skip_reason(cell(instance_type="m1.small"), image("i386", "paravirtual")) == ""
    assert "t4g.micro runs arm64" in skip_reason(cell(instance_type="t4g.micro"), image("i386"))


def test_firmware_the_architecture_does_not_boot_on_is_skip() -> None:
    assert "UEFI only" in skip_reason(cell(firmware="bios"), image("arm64"))
    assert "BIOS only" in skip_reason(cell(firmware="uefi"), image("i386"))
    assert skip_reason(cell(firmware="uefi"), image("arm64")) == ""


def test_matrix_file_takes_the_axis() -> None:
    spec = from_mapping(
        {"images": ["debian-pv", "debian-arm64-hvm"], "kernels": ["own"],
         "architecture": ["x86_64", "arm64"]},
        "m.yaml",
    )  # fmt: skip
    cells = spec.cells()
    assert len(cells) == 4
    assert {c.option_dict["architecture"] for c in cells} == {"x86_64", "arm64"}
