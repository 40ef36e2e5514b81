"""The disk input policy through the CLI: a file is what its content is; a name that says
VMDK, OVA, OVF or qcow2 over other content is bad input (exit 2, one line, nothing
written), raw is taken only from .raw/.img or with --source-format raw, and `import` of a
file with no disk in it registers nothing."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
from pathlib import Path

import pytest

from builder.disk import qemu_img
from tests.conftest import run_amilab


def _raw_bytes(path: Path, size: int = 4 << 20) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(os.urandom(65536))
        f.seek(size // 2)
        f.write(os.urandom(65536))
    return path


def _refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stdout, err)
    assert "Traceback" not in result.stderr
    assert len(err.splitlines()) == 1 and err.startswith("amilab: "), err
    for word in words:
        assert word in err, err
    return err


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    return src, out


def test_a_text_file_named_vmdk_is_refused_and_nothing_is_written(
    dirs: tuple[Path, Path],
) -> None:
    src, out = dirs
    notes = src / "notes.vmdk"
    notes.write_text("meeting notes\nnot a disk\n")
    result = run_amilab("convert", str(notes), str(out / "out.raw"))
    err = _refused(result, "notes.vmdk", "expected a VMDK", "found text")
    assert err == "amilab: notes.vmdk: expected a VMDK (by its name), found text"
    assert not (out / "out.raw").exists()
    assert list(out.iterdir()) == []  # no temporary either


@pytest.mark.parametrize(
    "name,expected",
    [
        ("x.qcow2", "expected a qcow2 image (by its name)"),
        ("x.ova", "expected an OVA package (by its name)"),
        ("x.ovf", "expected an OVF descriptor (by its name)"),
        ("x.stream.vmdk", "expected a VMDK (by its name)"),
    ],
)
def test_a_text_file_named_as_a_disk_format_is_refused(
    name: str, expected: str, dirs: tuple[Path, Path]
) -> None:
    src, out = dirs
    (src / name).write_text("hello\n")
    for fmt in ("raw", "qcow2", "vmdk-stream"):
        result = run_amilab("convert", str(src / name), str(out / "o"), "--format", fmt)
        _refused(result, name, expected, "found text")
        assert list(out.iterdir()) == []


def test_content_of_another_format_than_the_name_says_is_refused(
    dirs: tuple[Path, Path],
) -> None:
    src, out = dirs
    raw = _raw_bytes(src / "disk.raw")
    qemu_img.convert(raw, src / "disk.vmdk", src_format="raw", out_format="qcow2")
    result = run_amilab("convert", str(src / "disk.vmdk"), str(out / "o.raw"))
    _refused(result, "disk.vmdk: expected a VMDK (by its name), found a qcow2 image")
    binary = src / "binary.qcow2"
    binary.write_bytes(raw.read_bytes()[:65536])
    result = run_amilab("convert", str(binary), str(out / "o.raw"))
    _refused(result, "expected a qcow2 image (by its name), found data with no disk format")
    assert list(out.iterdir()) == []


def test_an_unsuffixed_raw_file_needs_source_format_raw(dirs: tuple[Path, Path]) -> None:
    src, out = dirs
    disk = _raw_bytes(src / "disk")
    dst = out / "disk.raw"
    result = run_amilab("convert", str(disk), str(dst))
    _refused(result, "disk:", "raw is taken only from a file named .raw or .img",
             "--source-format raw")  # fmt: skip
    assert list(out.iterdir()) == []
    result = run_amilab("convert", str(disk), str(dst), "--source-format", "raw", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Source"]["format"] == "raw"
    assert filecmp.cmp(dst, disk, shallow=False)


def test_a_named_source_format_must_match_the_content(dirs: tuple[Path, Path]) -> None:
    src, out = dirs
    disk = _raw_bytes(src / "disk")
    result = run_amilab("convert", str(disk), str(out / "o.raw"), "--source-format", "qcow2")
    _refused(result, "disk: expected a qcow2 image (--source-format), found data")
    result = run_amilab("convert", str(disk), str(out / "o.raw"), "--source-format", "vhd")
    assert result.returncode == 2 and "--source-format" in result.stderr
    assert list(out.iterdir()) == []


def test_source_format_raw_takes_any_name(dirs: tuple[Path, Path]) -> None:
    src, out = dirs
    disk = _raw_bytes(src / "misnamed.vmdk")
    dst = out / "o.qcow2"
    result = run_amilab(
        "convert", str(disk), str(dst), "--format", "qcow2", "--source-format", "raw"
    )
    assert result.returncode == 0, result.stderr
    back = out / "back.raw"
    qemu_img.convert(dst, back, src_format="qcow2", out_format="raw")
    assert filecmp.cmp(back, disk, shallow=False)


@pytest.mark.parametrize("name", ["disk.img", "disk.raw", "DISK.IMG"])
def test_a_raw_file_named_raw_or_img_converts(name: str, dirs: tuple[Path, Path]) -> None:
    src, out = dirs
    disk = _raw_bytes(src / name)
    dst = out / "disk.vmdk"
    result = run_amilab("convert", str(disk), str(dst), "--format", "vmdk-stream", "--json")
    assert result.returncode == 0, result.stderr
    described = json.loads(result.stdout)
    assert (described["Format"], described["Subformat"]) == ("vmdk", "streamOptimized")
    assert qemu_img.info(dst)["format-specific"]["data"]["create-type"] == "streamOptimized"
    back = out / "back.raw"
    assert run_amilab("convert", str(dst), str(back)).returncode == 0
    assert filecmp.cmp(back, disk, shallow=False)


def test_an_img_holding_a_qcow2_is_read_as_qcow2(dirs: tuple[Path, Path]) -> None:
    # Cloud images are often qcow2 named .img: the content decides, not the name.
    src, out = dirs
    raw = _raw_bytes(src / "disk.raw")
    img = src / "cloud.img"
    qemu_img.convert(raw, img, src_format="raw", out_format="qcow2")
    result = run_amilab("convert", str(img), str(out / "back.raw"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Source"]["format"] == "qcow2"
    assert filecmp.cmp(out / "back.raw", raw, shallow=False)


def test_import_of_a_text_file_registers_nothing(amilab_home: Path, tmp_path: Path) -> None:
    hostname = tmp_path / "hostname"
    hostname.write_text("amilab\n")  # what /etc/hostname holds: 7 bytes of text
    result = run_amilab("import", str(hostname))
    _refused(result, "hostname", "found text")
    (tmp_path / "hostname.vmdk").write_text("amilab\n")
    assert run_amilab("import", str(tmp_path / "hostname.vmdk")).returncode == 2
    images = run_amilab("images", "--json")
    assert images.returncode == 0, images.stderr
    assert json.loads(images.stdout)["Images"] == []
    assert not (amilab_home / "artifacts").exists() or not any(
        (amilab_home / "artifacts").rglob("*")
    )
    assert not (amilab_home / "work").exists() or list((amilab_home / "work").iterdir()) == []


def test_inspect_follows_the_same_policy(dirs: tuple[Path, Path]) -> None:
    src, _ = dirs
    disk = _raw_bytes(src / "disk")
    _refused(run_amilab("inspect", str(disk)), "disk:", "--source-format raw")


@pytest.mark.integration
def test_inspect_reads_an_unsuffixed_raw_disk_with_source_format_raw(
    dirs: tuple[Path, Path],
) -> None:
    src, _ = dirs
    disk = _raw_bytes(src / "disk")
    result = run_amilab("inspect", str(disk), "--source-format", "raw", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"]["format"] == "raw"
    assert report["partitioning"]["device_size"] == 4 << 20
    assert report["os"] is None
