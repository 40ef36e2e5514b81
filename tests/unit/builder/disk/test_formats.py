"""The one format table: every command's names, unique suffixes, the streamOptimized alias,
and each format's qemu-img declaration and writer checked against real qemu-img."""

from __future__ import annotations

import filecmp
import os
import subprocess
from pathlib import Path

import pytest

from builder.build.recipe import FORMATS as RECIPE_FORMATS
from builder.disk import qemu_img
from builder.disk.formats import (
    FORMATS,
    USES,
    VMDK_SUBFORMATS,
    by_suffix,
    format_names,
    qemu_format,
    resolve_format,
)
from builder.errors import BadInput

TODAY = ("raw", "qcow2", "vmdk", "vmdk-stream")


@pytest.mark.parametrize("use", USES)
def test_every_command_accepts_todays_formats_in_todays_order(use: str) -> None:
    assert format_names(use) == TODAY


def test_an_unknown_use_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="use: 'bundle'"):
        format_names("bundle")


def test_the_recipe_schema_derives_from_the_table() -> None:
    assert format_names("recipe") == RECIPE_FORMATS


def test_names_and_suffixes_are_unique_and_suffixes_name_their_format() -> None:
    assert list(FORMATS) == [f.name for f in FORMATS.values()]
    suffixes = [f.suffix for f in FORMATS.values()]
    assert len(set(suffixes)) == len(suffixes)
    for fmt in FORMATS.values():
        found = by_suffix(f"disk{fmt.suffix}")
        assert found is fmt, (fmt.name, found)
    assert by_suffix("DISK.QCOW2") is FORMATS["qcow2"]
    assert by_suffix("notes.txt") is None


def test_qemu_formats() -> None:
    assert {n: qemu_format(n) for n in FORMATS} == {
        "raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vmdk-stream": "vmdk",
    }  # fmt: skip
    assert VMDK_SUBFORMATS == ("monolithicSparse", "streamOptimized")
    assert [FORMATS[n].subformat for n in ("vmdk", "vmdk-stream")] == list(VMDK_SUBFORMATS)


@pytest.mark.parametrize(
    "name,subformat,expected",
    [
        ("vmdk", "streamOptimized", "vmdk-stream"),  # the alias stays
        ("vmdk", "monolithicSparse", "vmdk"),
        ("vmdk", None, "vmdk"),
        ("vmdk", "", "vmdk"),
        ("vmdk-stream", None, "vmdk-stream"),
        ("vmdk-stream", "streamOptimized", "vmdk-stream"),
        ("raw", None, "raw"),
        ("qcow2", None, "qcow2"),
    ],
)
def test_resolve_format(name: str, subformat: str | None, expected: str) -> None:
    assert resolve_format(name, subformat) is FORMATS[expected]


@pytest.mark.parametrize(
    "name,subformat,message",
    [
        ("raw", "streamOptimized", "--subformat: only for --format vmdk"),
        ("qcow2", "monolithicSparse", "--subformat: only for --format vmdk"),
        ("vmdk-stream", "monolithicSparse", "--subformat: only for --format vmdk"),
        ("vmdk", "twoGbMaxExtentSparse",
         "--subformat: 'twoGbMaxExtentSparse' (one of monolithicSparse, streamOptimized)"),
        ("vhd", None, "--format: 'vhd' (one of raw, qcow2, vmdk, vmdk-stream)"),
    ],
)  # fmt: skip
def test_resolve_format_refuses(name: str, subformat: str | None, message: str) -> None:
    with pytest.raises(BadInput) as e:
        resolve_format(name, subformat)
    assert str(e.value) == message


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("formats") / "disk.raw"
    with open(path, "wb") as f:
        f.truncate(8 << 20)
        for at in (0, 3 << 20, (8 << 20) - 65536):  # data with holes between
            f.seek(at)
            f.write(os.urandom(65536))
    return path


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_writer_writes_what_its_row_declares(name: str, raw: Path, tmp_path: Path) -> None:
    fmt = FORMATS[name]
    out = tmp_path / f"disk{fmt.suffix}"
    fmt.write(raw, out)
    info = qemu_img.info(out)
    assert info["format"] == fmt.qemu_format
    assert info["virtual-size"] == raw.stat().st_size
    if fmt.subformat:
        assert info["format-specific"]["data"]["create-type"] == fmt.subformat
    back = tmp_path / "back.raw"
    qemu_img.convert(out, back, src_format=fmt.qemu_format, out_format="raw")
    assert filecmp.cmp(back, raw, shallow=False)


@pytest.mark.parametrize("name", [n for n in FORMATS if FORMATS[n].options])
def test_each_rows_create_options_are_qemu_imgs(name: str, tmp_path: Path) -> None:
    fmt = FORMATS[name]
    out = tmp_path / f"blank{fmt.suffix}"
    qemu_img.create(out, fmt.qemu_format, size=1 << 20, options=fmt.options)
    assert qemu_img.info(out)["format-specific"]["data"]["create-type"] == fmt.subformat


def _qemu_vmdk(raw: Path, out: Path, cid: str) -> None:
    """qemu-img's monolithicSparse VMDK of `raw`, its random CID replaced by `cid` as qemu-img
    would print it (no leading zeros), the descriptor's NUL padding taking up the difference."""
    subprocess.run(["qemu-img", "convert", "-q", "-O", "vmdk", str(raw), str(out)], check=True)
    data = bytearray(out.read_bytes())
    at = data.index(b"\nCID=") + 5
    old_end = data.index(b"\n", at)
    text_end = data.index(b"\0", old_end)
    text = bytes(data[at:text_end]).replace(data[at:old_end], cid.encode(), 1)
    # qemu-img's own CID may be shorter than `cid` (1 in 16): take the extra bytes from the
    # padding after the text, so no offset in the file moves
    region_end = text_end + 8
    assert data[text_end:region_end] == bytes(8)
    data[at:region_end] = text + b"\0" * (region_end - at - len(text))
    out.write_bytes(bytes(data))


def test_a_vmdk_cid_of_any_width_becomes_one_content_cid(tmp_path: Path) -> None:
    """qemu-img prints the CID with %x: 1 in 16 conversions has fewer than 8 digits (a cold
    build pair once differed only there). Any width gives the same file afterwards."""
    from builder.disk.formats import content_cid

    raw = tmp_path / "disk.raw"
    raw.write_bytes(os.urandom(1 << 16) + bytes(1 << 20))
    variants = []
    for cid in ("c3b6e6b", "40fcf846", "7"):
        (tmp_path / cid).mkdir()
        out = tmp_path / cid / "disk.vmdk"  # the descriptor names its own file
        _qemu_vmdk(raw, out, cid)
        assert f"\nCID={cid}\n".encode() in out.read_bytes()
        content_cid(out)
        variants.append(out)
    assert filecmp.cmp(variants[0], variants[1], shallow=False)
    assert filecmp.cmp(variants[0], variants[2], shallow=False)
    assert b"\nCID=c3b6e6b\n" not in variants[0].read_bytes()
    qemu_img.check(variants[0], "vmdk")  # still a sound VMDK, holding the same disk
    same = subprocess.run(["qemu-img", "compare", "-q", str(raw), str(variants[0])])
    assert same.returncode == 0
