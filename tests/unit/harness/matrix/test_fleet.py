"""The Dask executor's pieces without guests: scheduler addresses (plain TCP only on
loopback), artifacts through a shared directory (uploaded once by digest, fetched and
registered under the same IDs, corruption refused), and the embedded cluster running cells
through the real task path with a stand-in for the smoke run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.errors import BadInput
from builder.ids import file_sha256, sparse_sha256
from builder.images import objects, targets
from builder.images.records import ImageRecord
from builder.images.registry import Registry
from harness.matrix import artifacts, worker
from harness.matrix.cell_run import RunSettings
from harness.matrix.cells import Cell
from harness.matrix.connect import Tls, check_address
from harness.matrix.fleet import DaskExecutor
from harness.matrix.results import PASS, Attempt, CellResult, Verdict


@pytest.mark.parametrize(
    "address", ["tcp://127.0.0.1:8786", "127.0.0.3:8786", "tcp://localhost:1", "tcp://[::1]:8786"]
)
def test_plain_tcp_on_loopback_is_accepted(address: str) -> None:
    assert check_address(address, None).startswith("tcp://")


@pytest.mark.parametrize(
    "address", ["tcp://192.0.2.1:8786", "10.0.0.5:8786", "tcp://[2001:db8::1]:1"]
)
def test_plain_tcp_elsewhere_is_refused(address: str) -> None:
    with pytest.raises(BadInput, match="plain TCP is accepted only on loopback"):
        check_address(address, None)


def test_tls_needs_its_files(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="needs --tls-ca"):
        check_address("tls://192.0.2.1:8786", None)
    files = Tls(tmp_path / "ca", tmp_path / "cert", tmp_path / "key")
    with pytest.raises(BadInput, match="--tls-ca .*: no such file"):
        check_address("tls://192.0.2.1:8786", files)
    for p in (files.ca, files.cert, files.key):
        p.write_text("x")
    assert check_address("tls://192.0.2.1:8786", files) == "tls://192.0.2.1:8786"
    with pytest.raises(BadInput, match="plain tcp"):
        check_address("tcp://127.0.0.1:1", files)


def _images(home: Path) -> tuple[ImageRecord, ImageRecord, Path]:
    home.mkdir(parents=True, exist_ok=True)
    disk = home / "disk.raw"
    with open(disk, "wb") as f:  # sparse: data, a hole, data
        f.write(os.urandom(70_000))
        f.seek(8 << 20)
        f.write(b"end of disk")
    kernel = home / "vmlinuz"
    kernel.write_bytes(os.urandom(5000))
    aki = ImageRecord("aki-0123456789abcdef0", "kernel", "k", digest=file_sha256(kernel),
                      image_location=str(kernel))  # fmt: skip
    ami = ImageRecord("ami-0123456789abcdef0", "machine", "m", kernel_id=aki.image_id,
                      virtualization_type="paravirtual", digest=sparse_sha256(disk),
                      image_location=str(disk), locations={"raw": str(disk)})  # fmt: skip
    return ami, aki, disk


def test_artifacts_through_a_directory_once_and_under_the_same_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = tmp_path / "shared"
    monkeypatch.setenv("AMILAB_HOME", str(tmp_path / "client"))
    ami, aki, disk = _images(tmp_path / "client")
    needed = artifacts.for_plan(str(bucket), None, ami, aki, None, disk)
    assert artifacts.upload([needed], lambda _: None) == 2
    assert artifacts.upload([needed, needed], lambda _: None) == 0  # by digest: already there
    monkeypatch.setenv("AMILAB_HOME", str(tmp_path / "worker"))
    artifacts.ensure_local(needed)
    reg = Registry()
    got_ami, got_aki = reg.get(ami.image_id), reg.get(aki.image_id)
    assert got_ami is not None and got_aki is not None
    local = Path(got_ami.locations["raw"])
    assert local.is_relative_to(tmp_path / "worker") and sparse_sha256(local) == ami.digest
    assert local.stat().st_blocks * 512 < 1 << 20  # the hole stayed a hole
    assert file_sha256(Path(got_aki.image_location)) == aki.digest
    artifacts.ensure_local(needed)  # again: nothing to do, nothing changes
    assert Registry().get(ami.image_id) == got_ami


def test_a_corrupt_artifact_is_refused_and_nothing_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = tmp_path / "shared"
    monkeypatch.setenv("AMILAB_HOME", str(tmp_path / "client"))
    ami, aki, disk = _images(tmp_path / "client")
    needed = artifacts.for_plan(str(bucket), None, ami, None, None, disk)
    artifacts.upload([needed], lambda _: None)
    obj = bucket / needed.artifacts[0].key
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))
    monkeypatch.setenv("AMILAB_HOME", str(tmp_path / "worker"))
    with pytest.raises(BadInput):
        artifacts.ensure_local(needed)
    assert Registry().get(ami.image_id) is None


def test_put_file_get_file_roundtrip(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(os.urandom(100_000))
    target = targets.parse_bucket(str(tmp_path / "b"))
    objects.put_file(target, "x.bin", src, {"k": "v"})
    objects.get_file(target, "x.bin", tmp_path / "g")
    assert (tmp_path / "g").read_bytes() == src.read_bytes()


def test_embedded_cluster_runs_every_cell_through_the_task(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AMILAB_HOME", str(tmp_path))

    def fake(cell: Cell, settings: RunSettings, hooks: object) -> CellResult:
        return CellResult(cell, [Attempt(Verdict(PASS), {"ConsoleLog": ""})])

    monkeypatch.setattr(worker, "run_cell", fake)
    cells = [Cell("img", f"k{i}") for i in range(5)]
    started: list[Cell] = []
    done: list[CellResult] = []
    ex = DaskExecutor(2)
    out = ex.run(cells, RunSettings(), started.append, done.append)
    assert [r.cell for r in out] == cells and all(r.status == PASS for r in out)
    assert len(done) == 5 and all(r.final and "Worker" in r.final.report for r in out)
    assert ex.slots == 2
