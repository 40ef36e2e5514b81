"""A registry written before the typed launch settings (amilab 6f828e4, see
tests/data/legacy-registry/README.md) still reads: `amilab images --json` prints the same
describe-images JSON byte for byte, and every launch plan recorded then comes out the same.

The records name their artifacts by absolute paths under /tmp/amilab-legacy-registry/home;
describe-images reads none of them and a plan only needs its disk to exist, so sparse stubs
(the recorded first 64 KiB, truncated to the real size) stand in for them while the tests run.
"""

from __future__ import annotations

import ast
import fcntl
import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from builder.images import factory, records
from builder.images.registry import Registry
from harness.launch.plan import make_plan
from tests.conftest import run_amilab

DATA = Path(__file__).resolve().parents[3] / "data" / "legacy-registry"
LEGACY_ROOT = Path("/tmp/amilab-legacy-registry")
# other test runs on this machine use the same stub paths: one at a time
LOCK = Path("/tmp/amilab-legacy-registry.lock")


@pytest.fixture(scope="module")
def stubs() -> Iterator[None]:
    """The recorded artifacts at their absolute paths; only what this fixture made is
    removed afterwards (the files may also be there for real, left by the capture)."""
    index: dict[str, dict[str, Any]] = json.loads((DATA / "heads" / "index.json").read_text())
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        made: list[Path] = []
        dirs: list[Path] = []
        try:
            for name, entry in sorted(index.items()):
                path = Path(name)
                if LEGACY_ROOT not in path.parents or path.exists():
                    continue  # e.g. the import's source file: informational, never read
                for parent in reversed(path.parents):
                    mine = LEGACY_ROOT in parent.parents or parent == LEGACY_ROOT
                    if mine and not parent.exists():
                        parent.mkdir()
                        dirs.append(parent)
                with open(path, "wb") as f:
                    f.write((DATA / "heads" / entry["head"]).read_bytes())
                    f.truncate(entry["size"])
                made.append(path)
            yield
        finally:
            for path in made:
                path.unlink(missing_ok=True)
            for d in reversed(dirs):
                shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def legacy_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stubs: None) -> Path:
    """A copy of the old registry (plans may register PV-GRUB: never into the test data)."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(DATA / "registry.sqlite", home / "registry.sqlite")
    monkeypatch.setenv("AMILAB_HOME", str(home))
    monkeypatch.delenv("AMILAB_ACCOUNT_ID", raising=False)
    return home


def _old_rows() -> dict[str, dict[str, Any]]:
    with sqlite3.connect(f"file:{DATA / 'registry.sqlite'}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT image_id, record FROM images").fetchall()
    return {image_id: json.loads(text) for image_id, text in rows}


def test_describe_images_is_unchanged(legacy_home: Path) -> None:
    result = run_amilab("images", "--json", env={"AMILAB_HOME": str(legacy_home)})
    assert result.returncode == 0, result.stderr
    assert result.stdout == (DATA / "describe-images.json").read_text()


def test_old_rows_read_as_typed_records(legacy_home: Path) -> None:
    """IDs stay; what the harness reads moved out of `extra` into typed settings, and the
    same record written in the new shape reads back equal."""
    old = _old_rows()
    registry = Registry()
    listed = registry.list()
    assert [r.image_id for r in listed] == [r["image_id"] for r in sorted(
        old.values(), key=lambda r: r["creation_date"])]  # fmt: skip
    for rec in listed:
        assert registry.get(rec.image_id) == rec == registry.find(rec.image_id)
        assert records.record_from_dict(records.record_to_dict(rec)) == rec
        extra = old[rec.image_id]["extra"]
        for key in ("locations", "root_label", "root_uuid", "kernel_id", "cmdline", "pv_grub"):
            assert key not in rec.extra, (rec.image_id, key)
        assert rec.locations == (extra.get("locations") or {})
        assert rec.digest == extra.get("disk_digest" if rec.image_type == "machine" else "digest")
    pv = registry.find("debian-pv", "machine")
    assert pv.launch.root_label == "cloudimg-rootfs" and pv.launch.partitioning == "none"
    assert pv.launch.kernel_release == "6.1.0-56-cloud-amd64" and pv.launch.boot is None
    assert pv.extra["engine"] == "native" and "recipe" in pv.extra  # informational: kept
    hvm = registry.find("debian-hvm", "machine")
    assert hvm.launch.boot == "hybrid" and hvm.launch.fs_offset == 106954752
    assert hvm.launch.partitions["root"] == records.Partition(106954752, 2039480320)
    imported = registry.find("debian-hvm-reimported", "machine")
    assert imported.launch.imported and imported.launch.partitioning == "gpt"
    assert imported.launch.kernel_releases == ["6.1.0-56-cloud-amd64"]
    assert imported.extra["partitioning"]["table"] == "gpt"  # the inspection report stays
    ramdisk = registry.find("ari-839eb5f1b0f0687da")
    assert ramdisk.ramdisk_settings == records.RamdiskSettings("generated", "aki-51349501a3d1ff838")
    kernel = registry.find("aki-51349501a3d1ff838")
    assert kernel.kernel_settings.cmdline == "console=ttyS0"
    assert kernel.kernel_settings.definition == "debian-cloud"
    assert registry.find("pv-grub-hd0").kernel_settings.pv_grub


def test_updated_rows_keep_describing_the_same(legacy_home: Path) -> None:
    """A row rewritten by an attribute change is stored in the new shape; it describes
    as before apart from the change."""
    registry = Registry()
    before = {r.image_id: r.describe() for r in registry.list()}
    for image_id in before:
        registry.update(image_id, lambda r: None)
    with sqlite3.connect(legacy_home / "registry.sqlite") as conn:
        rows = [json.loads(t) for (t,) in conn.execute("SELECT record FROM images")]
    assert all(
        records.SETTINGS_FIELD[row["image_type"]] in row and "locations" in row for row in rows
    )
    assert {r.image_id: r.describe() for r in registry.list()} == before


def test_the_factory_gives_built_and_imported_images_the_ids_they_had(
    legacy_home: Path,
) -> None:
    """The same disk and registration give the same AMI ID and EBS mapping as before."""
    index = json.loads((DATA / "heads" / "index.json").read_text())
    registry = Registry()
    for name, id_extra in (("debian-pv", {}), ("debian-hvm", {}), ("ubuntu", {"imported": True}),
                           ("debian-hvm-reimported", {"imported": True})):  # fmt: skip
        old = registry.find(name, "machine")
        assert old.digest is not None
        launch = replace(old.launch, disk_size=index[old.locations["raw"]]["size"])
        again = factory.machine_image(
            factory.Registration.of(old), old.digest, launch, old.locations, id_extra=id_extra
        )
        assert again.image_id == old.image_id, name
        assert again.block_device_mappings == old.block_device_mappings, name
    for old in registry.list("kernel") + registry.list("ramdisk"):
        assert old.digest and factory.new_image_id(old.image_type, old.digest, {}) == old.image_id


def _recorded_serialise() -> Callable[[Any], dict[str, Any]]:
    """make_plans.py's own `serialise`, which wrote plans.json (taken out of the script by
    its syntax tree: the script itself imports the old module paths)."""
    tree = ast.parse((DATA / "make_plans.py").read_text())
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef)
              and n.name in ("_path", "serialise")]  # fmt: skip
    namespace: dict[str, Any] = {"Any": Any, "Path": Path}
    exec(compile(ast.Module(wanted, []), "make_plans.py", "exec"), namespace)  # noqa: S102
    return namespace["serialise"]


_PLANS = json.loads((DATA / "plans.json").read_text())["plans"]


@pytest.mark.parametrize("case", _PLANS, ids=[c["label"] for c in _PLANS])
def test_launch_plans_are_unchanged(legacy_home: Path, case: dict[str, Any]) -> None:
    call = dict(case["call"])
    image = Registry().find(call.pop("image"), "machine")
    serialise = _recorded_serialise()
    try:
        got: dict[str, Any] = {"plan": serialise(make_plan(image, **call))}
    except Exception as e:  # noqa: BLE001 - a refusal is the recorded result
        got = {"error": {"type": type(e).__name__, "message": str(e)}}
    expected = {k: v for k, v in case.items() if k in ("plan", "error")}
    assert got == expected
