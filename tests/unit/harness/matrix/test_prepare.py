"""Which cells cannot apply to their image (SKIP), and recipe names read from a file."""

from __future__ import annotations

from pathlib import Path

from builder.images.records import ImageRecord
from harness.matrix.cells import Cell
from harness.matrix.prepare import recipe_names, skip_reason


def image(virtualization: str) -> ImageRecord:
    rec = ImageRecord("ami-0123456789abcdef0", "machine", "x", "x86_64", "")
    rec.virtualization_type = virtualization
    return rec


def test_skips() -> None:
    hvm, pv = image("hvm"), image("paravirtual")
    assert skip_reason(Cell("a", "own", None, (("firmware", "uefi"),)), hvm) == ""
    assert "this one is hvm" in skip_reason(Cell("a", "sid", "aki-1"), hvm)
    assert "this one is hvm" in skip_reason(Cell("a", "own", None, (("ramdisk", "none"),)), hvm)
    assert "this one is paravirtual" in skip_reason(
        Cell("a", "own", None, (("firmware", "bios"),)), pv
    )
    assert skip_reason(Cell("a", "sid", "aki-1", (("disk_bus", "ide"),)), pv) == ""


def test_recipe_names(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("images:\n  - name: a\n  - name: b\n")
    assert recipe_names(path) == {"a", "b"}
    assert recipe_names(tmp_path / "missing.yaml") == set()
