"""The qemu-img wrapper, with the real qemu-img on small temporary disks: conversions keep
every byte, errors are one line of the right class, and a failed convert leaves nothing."""

from __future__ import annotations

import filecmp
import os
import subprocess
from pathlib import Path

import pytest

from builder.disk import qemu_img
from builder.errors import BadInput, BuildFailed, EnvironmentProblem

SIZE = 16 << 20


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for at in (0, 5 << 20, SIZE - 4096):
            f.seek(at)
            f.write(os.urandom(4096))
    return path


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_raw_to_qcow2_to_raw_keeps_every_byte(raw: Path, tmp_path: Path) -> None:
    qcow2, back = tmp_path / "disk.qcow2", tmp_path / "back.raw"
    qemu_img.convert(raw, qcow2, src_format="raw", out_format="qcow2")
    info = qemu_img.info(qcow2)
    assert (info["format"], info["virtual-size"]) == ("qcow2", SIZE)
    assert qemu_img.check(qcow2, "qcow2").get("corruptions", 0) == 0
    qemu_img.convert(qcow2, back, src_format="qcow2", out_format="raw")
    assert filecmp.cmp(back, raw, shallow=False)
    assert _allocated(back) < SIZE // 2  # holes stay holes


def test_sparse_false_writes_the_zeros(raw: Path, tmp_path: Path) -> None:
    full = tmp_path / "full.raw"
    qemu_img.convert(raw, full, src_format="raw", out_format="raw", sparse=False)
    assert filecmp.cmp(full, raw, shallow=False)
    assert _allocated(full) >= SIZE


def test_options_reach_qemu_img(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "disk.vmdk"
    qemu_img.convert(
        raw, out, src_format="raw", out_format="vmdk", options=["subformat=monolithicSparse"]
    )
    assert qemu_img.info(out, "vmdk")["format-specific"]["data"]["create-type"] == (
        "monolithicSparse"
    )


def test_a_missing_input_is_one_line_of_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "out.raw"
    with pytest.raises(BadInput) as e:
        qemu_img.convert(tmp_path / "nope.qcow2", out, src_format="qcow2", out_format="raw")
    assert str(e.value) == f"{tmp_path / 'nope.qcow2'}: no such file"
    assert not out.exists()
    with pytest.raises(BadInput, match="no such file"):
        qemu_img.info(tmp_path / "nope.qcow2")


def test_qemu_imgs_refusal_is_its_own_message_on_one_line(tmp_path: Path) -> None:
    text = tmp_path / "notes.qcow2"
    text.write_text("not a disk\n")
    out = tmp_path / "out.raw"
    with pytest.raises(qemu_img.QemuImgFailed) as e:
        qemu_img.convert(text, out, src_format="qcow2", out_format="raw")
    assert isinstance(e.value, BuildFailed) and e.value.exit_code == 1
    message = str(e.value)
    assert message.startswith("qemu-img convert to raw failed: ") and "\n" not in message
    assert "qcow2" in e.value.detail  # qemu-img's own words: "Image is not in qcow2 format"
    assert not out.exists()


def test_a_failed_convert_removes_its_partial_output(tmp_path: Path) -> None:
    # A compressed qcow2 whose last clusters are garbage: qemu-img creates the output, writes
    # what it can read, then fails with an I/O error.
    text = tmp_path / "text.raw"
    text.write_bytes((b"amilab test line\n" * 300_000)[: 4 << 20])
    os.truncate(text, 64 << 20)
    compressed = tmp_path / "z.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", str(text), str(compressed)],
        check=True,
    )
    data = bytearray(compressed.read_bytes())
    data[-8192:] = b"\x55" * 8192
    compressed.write_bytes(bytes(data))
    out = tmp_path / "out.raw"
    with pytest.raises(qemu_img.QemuImgFailed) as e:
        qemu_img.convert(compressed, out, src_format="qcow2", out_format="raw")
    assert "Input/output error" in e.value.detail and "\n" not in str(e.value)
    assert not out.exists()


def test_create_an_overlay_over_a_named_backing_format(raw: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.qcow2"
    qemu_img.create(overlay, "qcow2", backing=raw, backing_format="raw")
    info = qemu_img.info(overlay)
    assert info["backing-filename"] == str(raw)
    assert info["backing-filename-format"] == "raw"
    assert info["virtual-size"] == SIZE
    with pytest.raises(ValueError, match="backing file's format"):
        qemu_img.create(tmp_path / "guess.qcow2", "qcow2", backing=raw)


def test_a_failed_create_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bad.vmdk"
    with pytest.raises(qemu_img.QemuImgFailed) as e:
        qemu_img.create(out, "vmdk", size=1 << 20, options=["subformat=noSuchType"])
    assert str(e.value).startswith("qemu-img create vmdk failed: ")
    assert not out.exists()


def test_a_missing_qemu_img_is_an_environment_problem(
    raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    out = tmp_path / "out.qcow2"
    with pytest.raises(EnvironmentProblem) as e:
        qemu_img.convert(raw, out, src_format="raw", out_format="qcow2")
    assert str(e.value) == "qemu-img is missing (qemu-utils)" and e.value.exit_code == 3
    assert not out.exists()
