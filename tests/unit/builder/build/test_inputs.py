"""Build inputs: what decides whether an unchanged rebuild finds its registered AMI."""

from __future__ import annotations

from pathlib import Path

from builder.build import inputs
from builder.build.elements import Element
from builder.images import factory
from builder.images.records import LaunchSettings
from builder.images.registry import Registry


def element(tmp: Path, text: str) -> Element:
    path = tmp / "stamp"
    (path / "install.d").mkdir(parents=True, exist_ok=True)
    (path / "install.d" / "50-stamp").write_text(text)
    return Element("stamp", path, (), ())


def test_elements_digest_follows_content_and_mode(tmp_path: Path) -> None:
    first = inputs.elements_digest([element(tmp_path, "echo one\n")])
    assert inputs.elements_digest([element(tmp_path, "echo one\n")]) == first
    changed = inputs.elements_digest([element(tmp_path, "echo two\n")])
    assert changed != first
    (tmp_path / "stamp/install.d/50-stamp").chmod(0o755)
    assert inputs.elements_digest([element(tmp_path, "echo two\n")]) != changed


def test_installed_packages_reads_dpkg_status(tmp_path: Path) -> None:
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: less\nStatus: install ok installed\nArchitecture: amd64\nVersion: 590-2\n"
        "Description: pager\n more text\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n"
        "Package: libc6\nStatus: install ok installed\nArchitecture: i386\nVersion: 2.36\n"
    )
    assert inputs.installed_packages(tmp_path) == {"less": "590-2", "libc6:i386": "2.36"}


def _ami(tmp: Path, digest: str, built_from: str) -> factory.ImageRecord:
    disk = tmp / f"{digest}.raw"
    disk.write_bytes(b"x")
    reg = factory.Registration("r", "paravirtual", "/dev/sda1")
    return factory.machine_image(
        reg, digest, LaunchSettings(disk_size=1), {"raw": str(disk)},
        extra={inputs.RECORD_KEY: {"InputsDigest": built_from}},
    )  # fmt: skip


def test_registered_finds_the_ami_of_the_same_inputs_or_of_inputs_added_later(
    tmp_path: Path, amilab_home: Path
) -> None:
    made = inputs.BuildInputs("r", "native", "e", "k=1", "i")
    other = inputs.BuildInputs("r", "native", "e", "k=1", "index moved on")
    registry = Registry()
    (rec,) = registry.register([_ami(tmp_path, "d" * 64, made.digest)])
    assert inputs.registered(made).image_id == rec.image_id
    assert inputs.registered(other) is None
    inputs.add_inputs(registry, rec, other.digest)
    assert inputs.registered(other).image_id == rec.image_id
    Path(rec.locations["raw"]).unlink()  # its disk is gone: build again
    assert inputs.registered(made) is None
